"""The ControlNet-style baseline trainer (gradients through the frozen base's decoder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contract.modalities import ModalitySpec
from ..contract.schedule import ScheduleConfig, alpha_bar
from ..data.folder import Dataset
from ..nets.controlnet import ControlNet
from ..nets.unet import UNet
from .batches import Batches, conditioned_batch
from .loop import TrainConfig, TrainResult, train_loop


def check_base_matches(net: UNet, model_dir: Path, atol: float = 1e-3) -> None:
    """Check that the PyTorch base `net` computes what `model_dir/base.onnx` does, on the exporter's
    test vectors (`test_vectors/base.{sample,timestep,eps}.npy`); skipped when there are none.

    Raises:
        ValueError: the outputs differ by more than `atol` (the run is not the exported base).
    """
    vec = Path(model_dir) / "test_vectors"
    if not all((vec / f"base.{n}.npy").exists() for n in ("sample", "timestep", "eps")):
        return
    load = lambda n: torch.from_numpy(np.load(vec / f"base.{n}.npy"))  # noqa: E731
    with torch.no_grad():
        diff = float((net(load("sample"), load("timestep")) - load("eps")).abs().max())
    if diff > atol:
        raise ValueError(f"the PyTorch base differs from {model_dir}/base.onnx by {diff:.2g} on its test vectors: "
                         "--base-run must be the run that base.onnx was exported from")


def controlnet_loss(data: Dataset, modalities: list[ModalitySpec], sched: ScheduleConfig, batch_size: int,
                    drop_prob: float = 0.3, device: str = "cpu") -> Callable[[nn.Module, torch.Generator], torch.Tensor]:
    """The plain DDPM loss `||eps_controlnet(x_t, cond, t) - eps_true||^2` with each modality dropped
    with probability `drop_prob`, on `training.conditioned_batch` (the MCM trainer's batches)."""
    batches, ab = Batches(data), alpha_bar(sched)
    T = sched.num_train_timesteps

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x_t, t, noise, cond, _ = conditioned_batch(batches, ab, T, modalities, batch_size, drop_prob, gen, device)
        return F.mse_loss(net(x_t, cond, t.float()), noise)

    return loss_fn


def train_controlnet(data: Dataset, net: ControlNet, modalities: list[ModalitySpec], sched: ScheduleConfig,
                     tc: TrainConfig, run_dir: Path, drop_prob: float = 0.3) -> TrainResult:
    """Train the ControlNet's copy, hint block and zero convs (the base stays frozen) with
    `controlnet_loss` in `training.train_loop` (AdamW, EMA, checkpoints `run_dir/controlnet.pt`, budget)."""
    loss_fn = controlnet_loss(data, modalities, sched, tc.batch_size, drop_prob, tc.device)
    return train_loop("controlnet", net, loss_fn, tc, run_dir)


