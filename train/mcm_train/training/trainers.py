"""The trainers: base (DDPM loss), MCM (modulated loss, base frozen), reference segmenter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..contract.modalities import ModalitySpec
from ..contract.schedule import ScheduleConfig, add_noise, alpha_bar, alpha_sigma, to_x0_eps
from ..data.folder import Dataset
from ..nets.mcm import MCM, modulate
from ..nets.unet import UNet
from .batches import Batches, conditioned_batch, to_device
from .loop import TrainConfig, TrainResult, train_loop

#: A frozen base: (x_t [B, C, H, W], timestep f32 [B][, text embeddings [B, L, D] of a
#: text-conditional base]) -> its prediction [B, C, H, W] (of the schedule's `prediction_type`),
#: on x_t's device.
BaseFn = Callable[..., torch.Tensor]
#: A frozen MCM: (x_t, eps [B, C, H, W], cond [B, K, H, W], timestep f32 [B]) -> (gamma, beta)
#: [B, C, H, W], on x_t's device.
McmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def pretrain_base(data: Dataset, model: UNet, sched: ScheduleConfig, tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Train the base eps-predictor with the DDPM loss `||eps_theta(x_t, t) - eps||^2` (Ho et al. 2020, Eq. 14)."""
    batches, ab = Batches(data), alpha_bar(sched)
    T = sched.num_train_timesteps

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x_0, _ = batches.sample(gen, tc.batch_size)
        t = torch.randint(0, T, (x_0.shape[0],), generator=gen)
        eps = torch.randn(x_0.shape, generator=gen)
        x_t, t, eps = to_device(tc.device, add_noise(x_0, eps, t, ab), t, eps)
        return F.mse_loss(net(x_t, t.float()), eps)

    return train_loop("base", model, loss_fn, tc, run_dir)


def train_mcm(data: Dataset, mcm: MCM, base_fn: BaseFn, modalities: list[ModalitySpec], sched: ScheduleConfig,
              tc: TrainConfig, run_dir: Path, drop_prob: float = 0.3, l1_weight: float = 1e-4,
              timesteps: list[int] | None = None, batches: Batches | None = None) -> TrainResult:
    """Train the MCM on the modulated denoising loss (Ham et al. 2023, Sec. 3.2):
    `||eps*(1+gamma)+beta - eps_true||^2 + l1_weight * (|gamma| + |beta|)`, with eps from the frozen
    base `base_fn` (no gradient through it; a v- or x_0-predicting base's output is converted to eps
    first, as the device does) and each modality dropped with probability `drop_prob`. Timesteps
    are uniform over [0, T), or drawn from `timesteps` (a distilled base's grid: the only ones the
    device samples it at). `batches` (default: the dataset's images) gives a latent base its
    latents and prompt embeddings (`Batches(data, latents, text)`); the MCM sees only x_t, eps,
    the maps and t, never the prompt (the paper's setting for Stable Diffusion)."""
    batches, ab = batches or Batches(data), alpha_bar(sched)
    T = sched.num_train_timesteps
    grid = None if timesteps is None else torch.tensor(timesteps)

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        t = None if grid is None else grid[torch.randint(0, len(grid), (tc.batch_size,), generator=gen)]
        x_t, t, noise, cond, text = conditioned_batch(batches, ab, T, modalities, tc.batch_size, drop_prob, gen, tc.device,
                                                      timesteps=t)
        with torch.no_grad():
            alpha, sigma = alpha_sigma(ab, t, x_t)
            prediction = base_fn(x_t, t.float()) if text is None else base_fn(x_t, t.float(), text)
            eps = to_x0_eps(prediction, x_t, alpha, sigma, sched.prediction_type)[1]
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
        x, truth = to_device(tc.device, _augment(x, gen), maps[seg])
        return F.cross_entropy(net(x), truth)

    return train_loop("segmenter", model, loss_fn, tc, run_dir)


def train_estimator(data: Dataset, model: UNet, modality: str, tc: TrainConfig, run_dir: Path) -> TrainResult:
    """Train the reference estimator of a dense modality (image [B, 3, H, W] in [-1, 1] -> the map
    [B, C, H, W] in its value range), e.g. a depth estimator, with the L1 loss and the segmenter's
    augmentations; `mcm-edge eval` scores how well generated images follow an input map with it.

    Raises:
        DataError: the dataset has no such modality.
        ValueError: the modality is not dense.
    """
    spec = data.modality(modality)
    if spec.kind != "dense":
        raise ValueError(f"modality {modality!r} is a {spec.kind}; estimators are for dense modalities")
    batches = Batches(data)

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x, maps = batches.sample(gen, tc.batch_size)
        x, truth = to_device(tc.device, _augment(x, gen), maps[modality])
        return F.l1_loss(net(x), truth)

    return train_loop(f"{modality}_estimator", model, loss_fn, tc, run_dir)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness/contrast changes, blur and noise on images [B, 3, H, W], so that the reference
    nets also read generated images (which are softer and noisier than the training images)."""
    b = x.shape[0]
    gain = 1 + 0.3 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    offset = 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    x = x * gain + offset
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(b, 1, 1, 1, generator=gen)
    return mix * blurred + (1 - mix) * x + 0.05 * torch.randn(x.shape, generator=gen)


