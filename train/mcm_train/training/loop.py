"""Training loops: the base (DDPM loss), the MCM (modulated DDPM loss, base frozen) and the
reference segmenter (cross-entropy). One generic loop does optimisation, EMA, logging, the loss
plot, time budgets and checkpoint + resume; each trainer only supplies its loss.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm


@dataclass
class TrainConfig:
    """Optimisation settings shared by all trainers.

    Attributes:
        steps: stop after this many optimiser steps in total (across resumes).
        batch_size: images per step.
        lr: AdamW learning rate.
        ema_decay: decay of the exponential moving average of the weights that is exported.
        seed: seeds batch sampling and noise (step s uses seed * 1_000_003 + s, so a resume replays nothing).
        minutes: optional wall-clock budget for this invocation; the run checkpoints and stops when spent.
        checkpoint_every: steps between checkpoints.
        threads: torch intra-op threads.
        device: where the net trains, `cpu` or `cuda` (`resolve_device`). Batches and noise are
            drawn on the CPU from the step's generator, so a seed gives the same batches on both.
        budget_final: the `minutes` budget ends training (the caller exports what is there)
            instead of pausing it for a later resume; only changes what the loop reports.
        identity: what the run is (command, output directory, dataset, architecture, modalities):
            stored in the checkpoint, which resumes only a run of the same identity.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    ema_decay: float = 0.999
    seed: int = 0
    minutes: float | None = None
    checkpoint_every: int = 200
    threads: int = 2
    device: str = "cpu"
    budget_final: bool = False
    identity: dict = field(default_factory=dict)


def resolve_device(name: str | None) -> str:
    """The training device: `name` (`cpu` or `cuda`), or `cuda` when PyTorch sees a GPU, else `cpu`.

    Raises:
        ValueError: `cuda` asked for where PyTorch sees no CUDA device, or an unknown name.
    """
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: choose cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA device here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    return name


class CheckpointError(ValueError):
    """A checkpoint belongs to another run (its output, data or configuration differ)."""


def _check_identity(ckpt_path: Path, stored: dict | None, wanted: dict) -> None:
    """Refuse to resume a checkpoint written for another run (see `TrainConfig.identity`).

    Raises:
        CheckpointError: a key differs; the message names each key with both values.
    """
    if not stored or not wanted:
        return
    diff = [f"{k}: checkpoint {stored.get(k)!r}, now {wanted.get(k)!r}"
            for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if diff:
        raise CheckpointError(f"{ckpt_path} belongs to another run ({'; '.join(diff)}); "
                              f"give another --run-dir or delete {ckpt_path.parent} to start afresh")


@dataclass
class TrainResult:
    """What a finished (or paused) run reports; goes into model.toml provenance."""

    model: nn.Module  # the EMA weights, in eval mode, on the CPU
    steps: int
    wall_time_s: float
    final_loss: float
    seconds_per_step: float
    done: bool


def train_loop(name: str, model: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], torch.Tensor],
               tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Optimise `model` on `loss_fn(model, generator)` with AdamW + EMA, resuming from
    `run_dir/NAME.pt` when it exists and was written for the same `tc.identity`. Writes
    `NAME_loss.csv` and `NAME_loss.png` to `run_dir`.

    Raises:
        CheckpointError: the checkpoint in `run_dir` belongs to another run.
    """
    torch.set_num_threads(tc.threads)
    model.to(tc.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / f"{name}.pt", run_dir / f"{name}_loss.csv"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    step, wall, smooth = 0, 0.0, None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_identity(ckpt_path, state.get("identity"), tc.identity)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, wall, smooth = state["step"], state["wall"], state["smooth"]
        print(f"{name}: resumed from {ckpt_path} at step {step}")

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "step": step, "wall": wall, "smooth": smooth, "identity": tc.identity}, tmp)
        tmp.replace(ckpt_path)

    start = time.monotonic()
    model.train()
    with open(log_path, "a", newline="") as log, tqdm(total=tc.steps, initial=step, desc=name) as bar:
        writer = csv.writer(log)
        if step == 0:
            writer.writerow(["step", "loss", "wall_s"])
        while step < tc.steps:
            t0 = time.monotonic()
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
            loss = loss_fn(model, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update_parameters(model)
            step += 1
            wall += time.monotonic() - t0
            value = float(loss.detach())
            smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
            writer.writerow([step, f"{value:.6f}", f"{wall:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}")
            out_of_time = tc.minutes is not None and time.monotonic() - start > tc.minutes * 60
            if step % tc.checkpoint_every == 0 or step == tc.steps or out_of_time:
                save()
                log.flush()
            if out_of_time:
                then = "training ends here (--budget-final)" if tc.budget_final else "run again to resume"
                print(f"{name}: time budget of {tc.minutes} min spent at step {step}; {then}")
                break
    if step:
        plot_loss(log_path, run_dir / f"{name}_loss.png", name)
    result = ema.module.cpu().eval()  # exported and compared on the CPU
    return TrainResult(result, step, wall, float(smooth if smooth is not None else float("nan")),
                       wall / step if step else float("nan"), step >= tc.steps)


def plot_loss(csv_path: Path, png_path: Path, title: str) -> None:
    """Plot a loss log (raw and smoothed, log scale) to PNG with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.loadtxt(csv_path, delimiter=",", skiprows=1, ndmin=2)
    if rows.size == 0:
        return
    steps, loss = rows[:, 0], rows[:, 1]
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps[k - 1:], smooth, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
