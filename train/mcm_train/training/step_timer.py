"""Per-step timing of a training run in its own process, for `mcm-train cost` (`training.cost`).

`mcm-train cost` starts `python -m mcm_train.cli METHOD ...` with `ENV_VAR` set to
`{"result": FILE, "warmup": W, "steps": N}`; the CLI then calls `StepTimer.from_env()` before it
runs the command. A global forward pre-hook on the trained module (the `MCM` or `ControlNet`,
called once per step by the loss) time-stamps the start of every step: the interval between two
stamps is one whole optimiser step (batch, forward, backward, clipping, AdamW, EMA, log). After `W`
untimed warm-up steps and `N` timed steps the figures go to FILE as JSON and the process exits at
once (`os._exit(0)`: no checkpoint, no export). Figures: `training.cost`'s module doc.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ..nets.controlnet import ControlNet
from ..nets.mcm import MCM
from ..nets.unet import count_parameters

#: The environment variable that turns the timer on (set by `training.cost`).
ENV_VAR = "MCM_TRAIN_STEP_TIMER"


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (e.g. `VmHWM`, `VmRSS`) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class StepTimer:
    """Times `warmup + steps` training steps of this process (module doc)."""

    def __init__(self, result_path: Path, warmup: int, steps: int) -> None:
        self.result_path, self.warmup = Path(result_path), warmup
        self.needed = warmup + steps + 1
        self.stamps: list[tuple[float, float]] = []  # (wall, cpu) at the start of each step
        self.first: dict = {}
        torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    @staticmethod
    def from_env() -> StepTimer | None:
        """A timer configured by `ENV_VAR`, or None when it is not set.

        Raises:
            ValueError: the variable is not `{"result", "warmup", "steps"}` JSON.
        """
        text = os.environ.get(ENV_VAR)
        if not text:
            return None
        try:
            cfg = json.loads(text)
            return StepTimer(Path(cfg["result"]), int(cfg["warmup"]), int(cfg["steps"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{ENV_VAR}: expected {{\"result\", \"warmup\", \"steps\"}} JSON: {e}") from e

    def check_done(self) -> None:
        """Called when the command returned: the run ended before every step was timed.

        Raises:
            RuntimeError: always (a finished timer exits the process before this).
        """
        raise RuntimeError(f"training ended after {len(self.stamps)} steps, before {self.needed} were timed")

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if not isinstance(module, MCM | ControlNet) or not module.training:
            return
        self.stamps.append((time.perf_counter(), time.process_time()))
        if len(self.stamps) == 1:
            self._first_step(module)
        if len(self.stamps) >= self.needed:
            self.result_path.write_text(json.dumps(self._figures()))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def _first_step(self, module: MCM | ControlNet) -> None:
        self.first = {"rss": _proc_status_mib("VmRSS"), "hwm": _proc_status_mib("VmHWM"),
                      "trainable": count_parameters(module),
                      "frozen": sum(p.numel() for p in module.parameters() if not p.requires_grad)}
        if isinstance(module, MCM):
            self.first["architecture"] = module.net.cfg.to_dict()
        else:
            self.first["architecture"] = {"copy_of_base": module.cfg.to_dict(),
                                          "hint": [m.out_channels for m in module.hint if isinstance(m, torch.nn.Conv2d)]}

    def _figures(self) -> dict:
        peak = _proc_status_mib("VmHWM")
        pairs = list(zip(self.stamps, self.stamps[1:], strict=False))
        wall = [b[0] - a[0] for a, b in pairs][self.warmup:]
        cpu = [b[1] - a[1] for a, b in pairs][self.warmup:]
        return {
            "trainable_parameters": self.first["trainable"],
            "frozen_parameters_in_module": self.first["frozen"],
            "architecture": self.first["architecture"],
            "seconds_per_step": round(statistics.median(wall), 4),
            "cpu_seconds_per_step": round(statistics.median(cpu), 4),
            "step_seconds": [round(w, 4) for w in wall],
            "cpu_step_seconds": [round(c, 4) for c in cpu],
            "peak_rss_mib": round(peak, 1),
            "rss_at_first_step_mib": round(self.first["rss"], 1),
            "training_working_set_mib": round(peak - self.first["rss"], 1),
            "peak_rss_before_training_mib": round(self.first["hwm"], 1),
        }
