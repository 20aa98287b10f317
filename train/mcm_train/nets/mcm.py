"""The multimodal conditioning module (Ham et al. 2023, Sec. 3) and its modulation (Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNet, UNetConfig


class MCM(nn.Module):
    """Multimodal conditioning module (Ham et al. 2023, Sec. 3): a small U-Net reading
    `concat(x_t, eps, cond)` and the timestep, returning `(gamma, beta)` shaped like `eps`.

    Inputs: `sample` x_t [B, C, H, W], `eps` base prediction [B, C, H, W], `cond` [B, K, H, W],
    `timestep` f32 [B] in [0, T). Outputs `gamma`, `beta` [B, C, H, W]; both are exactly zero at
    initialisation (zero-initialised output conv), so an untrained MCM leaves eps unchanged.
    """

    def __init__(self, image_channels: int, cond_channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.image_channels = image_channels
        cfg = UNetConfig(**{**cfg.to_dict(), "in_channels": 2 * image_channels + cond_channels,
                            "out_channels": 2 * image_channels, "zero_out": True, "timestep_embedding": True})
        self.net = UNet(cfg)

    def forward(self, sample: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor,
                timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([sample, eps, cond], dim=1), timestep)
        gamma, beta = out.split(self.image_channels, dim=1)
        return gamma, beta


def modulate(eps: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Modulated prediction `eps_hat = eps * (1 + gamma) + beta` (Ham et al. 2023, Eq. 2); all [B, C, H, W]."""
    return eps * (1 + gamma) + beta


