"""Noise schedule (DDPM, Ho et al. 2020) with the beta schedules diffusers names.

The device implements the same formulas in `src/diffusion/schedule.rs`; `model.toml` carries the settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass
class ScheduleConfig:
    """Settings written to `[schedule]` in model.toml.

    Attributes:
        beta_schedule: "linear", "scaled_linear" (linear in sqrt(beta)) or "squaredcos_cap_v2" (cosine).
        beta_start / beta_end: first and last beta for the linear kinds.
        num_train_timesteps: T; timesteps are 0..T-1.
        prediction_type: what the base predicts; only "epsilon" is supported.
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"

    def to_dict(self) -> dict:
        return asdict(self)


def betas(cfg: ScheduleConfig) -> torch.Tensor:
    """beta_t, f64 [T].

    Raises:
        ValueError: unknown beta_schedule or prediction_type.
    """
    if cfg.prediction_type != "epsilon":
        raise ValueError(f"prediction_type {cfg.prediction_type!r}: only 'epsilon' is supported")
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float64)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float64) ** 2
    if cfg.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17
        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    raise ValueError(f"beta_schedule {cfg.beta_schedule!r}: expected linear, scaled_linear or squaredcos_cap_v2")


def alpha_bar(cfg: ScheduleConfig) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), f64 [T] in (0, 1): computed in f64 like the device's
    `Schedule` (`src/diffusion/schedule.rs`); the exporter writes it as a test vector that the Rust
    tests compare with their own (`export.parity`)."""
    return torch.cumprod(1.0 - betas(cfg), dim=0)


def add_noise(x_0: torch.Tensor, eps: torch.Tensor, timestep: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0) (DDPM Eq. 4): `x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps`.

    `x_0`, `eps` [B, C, H, W]; `timestep` int64 [B]; `alpha_bar_t` [T] from `alpha_bar`. The
    coefficients are taken in f64 and cast to the dtype of `x_0`.
    """
    ab = alpha_bar_t[timestep].view(-1, 1, 1, 1)
    return ab.sqrt().to(x_0.dtype) * x_0 + (1 - ab).sqrt().to(x_0.dtype) * eps

