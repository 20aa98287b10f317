"""Random training batches held in memory and the conditioned batches of the MCM-style trainers."""

from __future__ import annotations

import numpy as np
import torch

from ..contract.modalities import ModalitySpec, build_cond
from ..contract.schedule import add_noise
from ..data.folder import Dataset


class Batches:
    """Random training batches from a dataset held in memory as torch tensors (no per-step decoding).

    `sample(gen, B)` returns `(x_0, maps)`: x_0 the images [B, 3, S, S] in [-1, 1], or with
    `latents` (f32 [N, 2, c, h, w]: each image's latent and its flip's, `data.latents`) the latents
    [B, c, h, w]; `maps[name]` the batch's maps of every modality of the dataset at image size (a
    segmentation's class ids int64 [B, S, S], other kinds float32 [B, C, S, S]); one random
    horizontal flip applied to the image (its flip's latent) and its maps alike. With `text` (f32
    [N, L, D], each image's prompt embedding), `sample(gen, B, with_text=True)` also returns the
    batch's embeddings [B, L, D].
    """

    def __init__(self, data: Dataset, latents: np.ndarray | None = None, text: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(data.images)
        self.latents = None if latents is None else torch.from_numpy(latents)
        self.text = None if text is None else torch.from_numpy(text)
        self.maps = {name: torch.from_numpy(a.astype(np.int64) if a.dtype == np.uint8 else a)
                     for name, a in data.maps.items()}
        self.n = len(data)

    def sample(self, gen: torch.Generator, batch: int, with_text: bool = False) -> tuple:
        idx = torch.randint(0, self.n, (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5

        def take(t: torch.Tensor) -> torch.Tensor:
            x = t[idx]
            return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)

        x_0 = take(self.images) if self.latents is None else self.latents[idx, flip.long()]
        maps = {name: take(t) for name, t in self.maps.items()}
        if not with_text:
            return x_0, maps
        return x_0, maps, None if self.text is None else self.text[idx]


def to_device(device: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` on `device`: batches are drawn on the CPU from a CPU generator (the same batches for
    a seed on every device) and moved to the training device afterwards."""
    return tuple(t.to(device) for t in tensors)


def conditioned_batch(batches: Batches, ab: torch.Tensor, num_timesteps: int, modalities: list[ModalitySpec],
                      batch_size: int, drop_prob: float, gen: torch.Generator, device: str = "cpu",
                      timesteps: torch.Tensor | None = None) -> tuple:
    """One training batch of a conditioning trainer (MCM or ControlNet baseline), drawn from `gen`
    in a fixed order (batch, timesteps, noise, modality dropout) so that both trainers see identical
    batches for one seed: `(x_t [B, C, H, W], timestep int64 [B] in [0, T), noise [B, C, H, W],
    cond [B, K, S, S], text)` on `device`, each modality dropped with probability `drop_prob` (Ham
    et al. 2023, Sec. 3.2). For a latent base C, H, W are the latent's and S the image size; `text`
    is the batch's prompt embeddings [B, L, D] for a text-conditional base, else None.
    `timesteps` (int64 [B]) gives the timesteps instead of drawing them uniformly (e.g. from a
    distilled base's grid)."""
    x_0, maps, text = batches.sample(gen, batch_size, with_text=True)
    b = x_0.shape[0]
    t = torch.randint(0, num_timesteps, (b,), generator=gen) if timesteps is None else timesteps
    noise = torch.randn(x_0.shape, generator=gen)
    present = torch.rand(b, len(modalities), generator=gen) >= drop_prob
    x_t, t, noise, cond = to_device(device, add_noise(x_0, noise, t, ab), t, noise, build_cond(modalities, maps, present))
    return x_t, t, noise, cond, None if text is None else text.to(device)


