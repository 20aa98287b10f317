"""Random training batches held in memory and the conditioned batches of the MCM-style trainers."""

from __future__ import annotations

import numpy as np
import torch

from ..contract.modalities import ModalitySpec, build_cond
from ..contract.schedule import add_noise
from ..data.folder import Dataset


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


def to_device(device: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` on `device`: batches are drawn on the CPU from a CPU generator (the same batches for
    a seed on every device) and moved to the training device afterwards."""
    return tuple(t.to(device) for t in tensors)


def conditioned_batch(batches: Batches, ab: torch.Tensor, num_timesteps: int, modalities: list[ModalitySpec],
                      batch_size: int, drop_prob: float, gen: torch.Generator, device: str = "cpu",
                      timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch of a conditioning trainer (MCM or ControlNet baseline), drawn from `gen`
    in a fixed order (batch, timesteps, noise, modality dropout) so that both trainers see identical
    batches for one seed: `(x_t [B, C, H, W], timestep int64 [B] in [0, T), noise [B, C, H, W],
    cond [B, K, H, W])` on `device`, each modality dropped with probability `drop_prob` (Ham et al.
    2023, Sec. 3.2). `timesteps` (int64 [B]) gives the timesteps instead of drawing them
    uniformly (e.g. from a distilled base's grid)."""
    x_0, maps = batches.sample(gen, batch_size)
    b = x_0.shape[0]
    t = torch.randint(0, num_timesteps, (b,), generator=gen) if timesteps is None else timesteps
    noise = torch.randn(x_0.shape, generator=gen)
    present = torch.rand(b, len(modalities), generator=gen) >= drop_prob
    x_t, t, noise, cond = to_device(device, add_noise(x_0, noise, t, ab), t, noise, build_cond(modalities, maps, present))
    return x_t, t, noise, cond


