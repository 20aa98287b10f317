"""Training loops: the base (DDPM loss), the MCM (modulated DDPM loss, base frozen) and the
reference segmenter (cross-entropy). One generic loop does optimisation, EMA, logging, the loss
plot, time budgets and checkpoint + resume; each trainer only supplies its loss.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .contract import ModalitySpec, build_cond
from .data import Dataset
from .models import MCM, UNet, modulate
from .schedule import ScheduleConfig, add_noise, alpha_bar

#: A frozen noise predictor: (x_t [B, C, H, W], timestep f32 [B]) -> eps [B, C, H, W].
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
        budget_final: the `minutes` budget ends training (the caller exports what is there)
            instead of pausing it for a later resume; only changes what the loop reports.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    ema_decay: float = 0.999
    seed: int = 0
    minutes: float | None = None
    checkpoint_every: int = 200
    threads: int = 2
    budget_final: bool = False


@dataclass
class TrainResult:
    """What a finished (or paused) run reports; goes into model.toml provenance."""

    model: nn.Module  # the EMA weights, in eval mode
    steps: int
    wall_time_s: float
    final_loss: float
    seconds_per_step: float
    done: bool


def train_loop(name: str, model: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], torch.Tensor],
               tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Optimise `model` on `loss_fn(model, generator)` with AdamW + EMA, resuming from
    `run_dir/NAME.pt` when it exists. Writes `NAME_loss.csv` and `NAME_loss.png` to `run_dir`."""
    torch.set_num_threads(tc.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / f"{name}.pt", run_dir / f"{name}_loss.csv"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    step, wall, smooth = 0, 0.0, None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, wall, smooth = state["step"], state["wall"], state["smooth"]
        print(f"{name}: resumed from {ckpt_path} at step {step}")

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "step": step, "wall": wall, "smooth": smooth}, tmp)
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
    plot_loss(log_path, run_dir / f"{name}_loss.png", name)
    result = ema.module.eval()
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


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------

class Batches:
    """Random training batches from a dataset held in memory as torch tensors (no per-step decoding).

    `sample(gen, B)` returns `(x_0 [B, 3, S, S] in [-1, 1], maps)`, `maps[name]` holding the batch's
    maps of every modality of the dataset (a segmentation's class ids int64 [B, S, S], other kinds
    float32 [B, C, S, S]), with one random horizontal flip applied to the image and its maps alike.
    """

    def __init__(self, data: Dataset) -> None:
        self.images = torch.from_numpy(data.images)
        self.maps = {name: torch.from_numpy(a.astype(np.int64) if a.dtype == np.uint8 else a)
                     for name, a in data.maps.items()}
        self.n = len(data)

    def sample(self, gen: torch.Generator, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.randint(0, self.n, (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5

        def take(t: torch.Tensor) -> torch.Tensor:
            x = t[idx]
            return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)

        return take(self.images), {name: take(t) for name, t in self.maps.items()}


def conditioned_batch(batches: Batches, ab: torch.Tensor, num_timesteps: int, modalities: list[ModalitySpec],
                      batch_size: int, drop_prob: float, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch of a conditioning trainer (MCM or ControlNet baseline), drawn from `gen`
    in a fixed order (batch, timesteps, noise, modality dropout) so that both trainers see identical
    batches for one seed: `(x_t [B, C, H, W], timestep int64 [B] in [0, T), noise [B, C, H, W],
    cond [B, K, H, W])`, each modality dropped with probability `drop_prob` (Ham et al. 2023, Sec. 3.2)."""
    x_0, maps = batches.sample(gen, batch_size)
    b = x_0.shape[0]
    t = torch.randint(0, num_timesteps, (b,), generator=gen)
    noise = torch.randn(x_0.shape, generator=gen)
    present = torch.rand(b, len(modalities), generator=gen) >= drop_prob
    return add_noise(x_0, noise, t, ab), t, noise, build_cond(modalities, maps, present)


# --------------------------------------------------------------------------------------------
# Trainers
# --------------------------------------------------------------------------------------------

def pretrain_base(data: Dataset, model: UNet, sched: ScheduleConfig, tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Train the base eps-predictor with the DDPM loss `||eps_theta(x_t, t) - eps||^2` (Ho et al. 2020, Eq. 14)."""
    batches, ab = Batches(data), alpha_bar(sched)
    T = sched.num_train_timesteps

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x_0, _ = batches.sample(gen, tc.batch_size)
        t = torch.randint(0, T, (x_0.shape[0],), generator=gen)
        eps = torch.randn(x_0.shape, generator=gen)
        return F.mse_loss(net(add_noise(x_0, eps, t, ab), t.float()), eps)

    return train_loop("base", model, loss_fn, tc, run_dir)


def train_mcm(data: Dataset, mcm: MCM, eps_fn: EpsFn, modalities: list[ModalitySpec], sched: ScheduleConfig,
              tc: TrainConfig, run_dir: Path, drop_prob: float = 0.3, l1_weight: float = 1e-4) -> TrainResult:
    """Train the MCM on the modulated denoising loss (Ham et al. 2023, Sec. 3.2):
    `||eps*(1+gamma)+beta - eps_true||^2 + l1_weight * (|gamma| + |beta|)`, with eps from the frozen
    base `eps_fn` (no gradient through it) and each modality dropped with probability `drop_prob`."""
    batches, ab = Batches(data), alpha_bar(sched)
    T = sched.num_train_timesteps

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x_t, t, noise, cond = conditioned_batch(batches, ab, T, modalities, tc.batch_size, drop_prob, gen)
        with torch.no_grad():
            eps = eps_fn(x_t, t.float())
        gamma, beta = net(x_t, eps, cond, t.float())
        l1 = gamma.abs().mean() + beta.abs().mean()
        return F.mse_loss(modulate(eps, gamma, beta), noise) + l1_weight * l1

    return train_loop("mcm", mcm, loss_fn, tc, run_dir)


def train_segmenter(data: Dataset, model: UNet, tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Train the reference segmenter (image [B, 3, H, W] in [-1, 1] -> class logits) with cross-entropy.
    Augmented with brightness/contrast changes, blur and noise so that it also reads generated images."""
    seg = next((m.name for m in data.modalities if m.kind == "segmentation"), None)
    if seg is None:
        raise ValueError("the segmenter needs a dataset with segmentation maps")
    batches = Batches(data)

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x, maps = batches.sample(gen, tc.batch_size)
        labels = maps[seg]
        b = x.shape[0]
        gain = 1 + 0.3 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
        offset = 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
        x = x * gain + offset
        blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        mix = torch.rand(b, 1, 1, 1, generator=gen)
        x = mix * blurred + (1 - mix) * x + 0.05 * torch.randn(x.shape, generator=gen)
        return F.cross_entropy(net(x), labels)

    return train_loop("segmenter", model, loss_fn, tc, run_dir)
