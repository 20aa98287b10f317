"""The multimodal conditioning module (Ham et al. 2023, Sec. 3) and its modulation (Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNet, UNetConfig

#: Default width of the learnt projection of the folded maps of a latent MCM (`cond_fold > 1`).
COND_WIDTH = 64


class MCM(nn.Module):
    """Multimodal conditioning module (Ham et al. 2023, Sec. 3): a small U-Net reading
    `concat(x_t, eps, cond)` and the timestep, returning `(gamma, beta)` shaped like `eps`.

    Inputs: `sample` x_t [B, C, H, W], `eps` base prediction [B, C, H, W], `cond` [B, K, f H, f W],
    `timestep` f32 [B] in [0, T). Outputs `gamma`, `beta` [B, C, H, W]; both are exactly zero at
    initialisation (zero-initialised output conv), so an untrained MCM leaves eps unchanged.

    For a latent base the maps arrive at image resolution, `f = cond_fold` (the VAE's
    downsampling, 8) times the latent grid, and are brought to it inside the MCM: folded without
    loss (pixel unshuffle: every f x f block of the K map channels becomes K f^2 channels of one
    latent cell) and projected by a learnt 1x1 convolution to `min(K f^2, cond_width)` channels.
    Inside the MCM rather than by the device's cond builder, so that a one-pixel sketch stroke is
    not averaged away before the net sees it, the device keeps a single `cond` layout for every
    base, and what to keep of the fine detail is learnt.
    """

    def __init__(self, image_channels: int, cond_channels: int, cfg: UNetConfig, cond_fold: int = 1,
                 cond_width: int = COND_WIDTH) -> None:
        super().__init__()
        self.image_channels, self.cond_fold = image_channels, cond_fold
        width = cond_channels
        if cond_fold > 1:
            width = min(cond_channels * cond_fold**2, cond_width)
            self.cond_in = nn.Sequential(nn.PixelUnshuffle(cond_fold), nn.Conv2d(cond_channels * cond_fold**2, width, 1))
        cfg = UNetConfig(**{**cfg.to_dict(), "in_channels": 2 * image_channels + width,
                            "out_channels": 2 * image_channels, "zero_out": True, "timestep_embedding": True})
        self.net = UNet(cfg)

    def forward(self, sample: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor,
                timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cond_fold > 1:
            cond = self.cond_in(cond)
        out = self.net(torch.cat([sample, eps, cond], dim=1), timestep)
        gamma, beta = out.split(self.image_channels, dim=1)
        return gamma, beta


def modulate(eps: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Modulated prediction `eps_hat = eps * (1 + gamma) + beta` (Ham et al. 2023, Eq. 2); all [B, C, H, W]."""
    return eps * (1 + gamma) + beta


