"""Training cost of the MCM vs the ControlNet-style baseline (issue 4): `mcm-train cost`.

For each method the real trainer runs (`mcm-train mcm` / `mcm-train controlnet` with their default
architectures and optimiser settings, i.e. `training.train_loop` with AdamW, gradient clipping and
EMA) in its own fresh Python process, so that memory figures are that method's alone:

    python -m mcm_train.cli METHOD [mcm-train METHOD options]    (with MCM_TRAIN_STEP_TIMER set)

Both methods use the frozen base the same way it is used in training: the MCM gets eps from the
PyTorch base (`--base-run`) under `no_grad`; the ControlNet runs the base's encoder under `no_grad`
and its decoder with gradients (its trainable copy sits before the decoder).

In the child a global forward pre-hook on the trained module (the `MCM` or `ControlNet`, called once
per step by the loss) time-stamps the start of every step: the interval between two stamps is one
whole optimiser step (batch, forward, backward, clipping, AdamW, EMA, log). After `W` untimed warm-up
steps and `N` timed steps the child writes its figures and exits at once (no checkpoint, no export):

- `seconds_per_step`: median wall-clock seconds of the timed steps; `samples_per_second` = batch / it;
- `cpu_seconds_per_step`: median process CPU time (user + system) per step, less sensitive than wall
  time to other jobs on a shared machine;
- `peak_rss_mib`: the child's peak resident memory (`VmHWM` in /proc/self/status) at the end of the
  last timed step; `rss_at_first_step_mib` is its resident memory when the first step starts (data set,
  models, optimiser and EMA copy loaded) and `training_working_set_mib` their difference (activations,
  gradients, AdamW state); `process_max_rss_mib` is the child's `ru_maxrss` from `os.wait4`;
- `trainable_parameters`: parameters with `requires_grad` in the trained module.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .step_timer import ENV_VAR

METHODS = ("mcm", "controlnet")


# --------------------------------------------------------------------------------------------
# Parent: one child per method
# --------------------------------------------------------------------------------------------


def _measure_one(method: str, cli_args: list[str], warmup: int, steps: int, tmp: Path, tag: str) -> dict:
    result = tmp / f"{tag}.json"
    log = tmp / f"{tag}.log"
    cmd = [sys.executable, "-m", "mcm_train.cli", method, *cli_args]
    env = {**os.environ, ENV_VAR: json.dumps({"result": str(result), "warmup": warmup, "steps": steps})}
    load = os.getloadavg()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"cost of {method}: the child failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(result.read_text())
    r["process_max_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    r["load_average_before"] = [round(v, 2) for v in load]
    return r


def measure_cost(base: Path, base_run: Path, data: Path, batch_size: int = 16, steps: int = 20, warmup: int = 3,
                 threads: int = 2, limit: int | None = None, methods: Sequence[str] = METHODS,
                 extra_args: dict[str, list[str]] | None = None, repeats: int = 1) -> dict:
    """Measure the training cost of each method (module doc) and return the report as a dict:
    `settings`, `machine`, `methods` (per method: `seconds_per_step`, `samples_per_second`,
    `peak_rss_mib`, `trainable_parameters`, ...) and, with both methods, `controlnet_over_mcm` ratios.

    `extra_args[method]` are appended to that method's `mcm-train` options. With `repeats` > 1 the
    methods run alternately that many times each (a fresh process every time, against drifting load
    on a shared machine); times are medians over all timed steps, memory the maximum over the runs,
    and `runs` lists each run's figures.

    Raises:
        ValueError: an unknown method.
        RuntimeError: a child failed (its log tail is in the message).
    """
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}: known are {', '.join(METHODS)}")
    extra_args = extra_args or {}
    report: dict = {
        "what": "training cost per optimiser step: MCM (base eps under no_grad) vs ControlNet-style baseline "
                "(gradients through the frozen base's decoder); `mcm-train cost`, module mcm_train.training.cost",
        "settings": {"base": str(base), "base_run": str(base_run), "data": str(data), "limit": limit,
                     "batch_size": batch_size, "warmup_steps": warmup, "timed_steps": steps, "threads": threads,
                     "repeats": repeats, "extra_args": {m: extra_args.get(m, []) for m in methods}},
        "machine": _machine(),
        "methods": {},
    }
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="mcm-cost-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(repeats):
            for m in methods:
                tag = f"{m}-{i}"
                args = ["--base", str(base), "--base-run", str(base_run), "--data", str(data),
                        "--out", str(tmp / f"{tag}-out"), "--run-dir", str(tmp / f"{tag}-run"),
                        "--batch-size", str(batch_size), "--steps", str(warmup + steps + 10),
                        "--checkpoint-every", str(10**9), "--threads", str(threads)]
                if limit is not None:
                    args += ["--limit", str(limit)]
                print(f"cost: {m} (run {i + 1}/{repeats}), {warmup} + {steps} steps of batch {batch_size} "
                      "in a fresh process", file=sys.stderr)
                runs[m].append(_measure_one(m, args + extra_args.get(m, []), warmup, steps, tmp, tag))
    report["methods"] = {m: _combine(rs, batch_size) for m, rs in runs.items()}
    r = report["methods"]
    if "mcm" in r and "controlnet" in r:
        report["controlnet_over_mcm"] = {
            k: round(r["controlnet"][k] / r["mcm"][k], 2)
            for k in ("seconds_per_step", "cpu_seconds_per_step", "peak_rss_mib", "training_working_set_mib",
                      "trainable_parameters") if r["mcm"][k] > 0
        }
    return report


def _combine(runs: list[dict], batch_size: int) -> dict:
    """One method's figures over its runs: medians over all timed steps, maxima of memory."""
    wall = [w for r in runs for w in r["step_seconds"]]
    cpu = [c for r in runs for c in r["cpu_step_seconds"]]
    first = runs[0]
    median = statistics.median(wall)
    return {
        "trainable_parameters": first["trainable_parameters"],
        "frozen_parameters_in_module": first["frozen_parameters_in_module"],
        "architecture": first["architecture"],
        "seconds_per_step": round(median, 4),
        "cpu_seconds_per_step": round(statistics.median(cpu), 4),
        "samples_per_second": round(batch_size / median, 2),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "rss_at_first_step_mib": min(r["rss_at_first_step_mib"] for r in runs),
        "training_working_set_mib": max(r["training_working_set_mib"] for r in runs),
        "process_max_rss_mib": max(r["process_max_rss_mib"] for r in runs),
        "step_seconds": wall,
        "runs": [{k: r[k] for k in ("seconds_per_step", "cpu_seconds_per_step", "peak_rss_mib", "rss_at_first_step_mib",
                                    "training_working_set_mib", "process_max_rss_mib", "load_average_before")}
                 for r in runs],
    }


def _machine() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def format_report(report: dict) -> str:
    """A short text table of a `measure_cost` report."""
    lines = [f"{'method':<12}{'s/step':>9}{'cpu s/step':>12}{'samples/s':>11}{'peak MiB':>10}{'train MiB':>11}{'trainable':>12}"]
    for name, r in report["methods"].items():
        lines.append(f"{name:<12}{r['seconds_per_step']:>9.3f}{r['cpu_seconds_per_step']:>12.3f}{r['samples_per_second']:>11.1f}"
                     f"{r['peak_rss_mib']:>10.0f}{r['training_working_set_mib']:>11.0f}{r['trainable_parameters']:>12,}")
    if "controlnet_over_mcm" in report:
        lines.append("controlnet / mcm: " + ", ".join(f"{k} {v}x" for k, v in report["controlnet_over_mcm"].items()))
    return "\n".join(lines)
