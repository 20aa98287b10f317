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
        prediction_type: what the base predicts (`PREDICTION_TYPES`, diffusers' names):
            "epsilon" (the noise), "v_prediction" (v = alpha eps - sigma x_0, Salimans & Ho 2022,
            Sec. 4) or "sample" (x_0).
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_toml(section: dict) -> ScheduleConfig:
        """The noise schedule of a `[schedule]` section; sampling keys (`timestep_spacing`,
        `distilled_steps` of a distilled base) are not part of it and are left out."""
        return ScheduleConfig(**{k: v for k, v in section.items() if k in ScheduleConfig.__dataclass_fields__})


#: What a base can predict (`[schedule] prediction_type`), and the name of `base.onnx`'s output for each.
PREDICTION_OUTPUTS = {"epsilon": "eps", "v_prediction": "v", "sample": "x_0"}
PREDICTION_TYPES = tuple(PREDICTION_OUTPUTS)

#: Spacings of a timestep grid (`timestep_grid`).
TIMESTEP_SPACINGS = ("trailing", "quadratic")


def betas(cfg: ScheduleConfig) -> torch.Tensor:
    """beta_t, f64 [T].

    Raises:
        ValueError: unknown beta_schedule or prediction_type.
    """
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {cfg.prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}")
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



def timestep_grid(steps: int, num_train_timesteps: int, spacing: str = "quadratic") -> list[int]:
    """The `steps` timesteps of a sampler, noisiest first; the step after the last goes to x_0
    (alpha_bar = 1), as on the device (`src/diffusion/schedule.rs`).

    `trailing` (Lin et al. 2024, Table 2): `t_i = round(T - i T / steps) - 1`; `quadratic` (Song et
    al. 2021, DDIM, Sec. D.2 "quad"): `t_i = round(T ((steps - i) / steps)^2) - 1`, clamped at 0:
    more steps where the signal-to-noise ratio is high. Both start at T - 1, and the grid of `n`
    steps is every other timestep of the grid of `2n` (what progressive distillation needs). With
    the default linear schedule and 4 steps, trailing leaves three steps at SNR < 0.1 (999, 749,
    499) and quadratic two (999, 562, 249, 62: SNR 4e-5, 0.04, 1.1, 22).

    Raises:
        ValueError: `steps` not in 1..T, or an unknown spacing.
    """
    T = num_train_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps {steps}: expected 1 to {T}")
    def round_half_up(x: float) -> int:  # as Rust's f64::round for x >= 0 (Python's round is to even)
        return math.floor(x + 0.5)

    if spacing == "trailing":
        return [max(round_half_up(T - i * T / steps) - 1, 0) for i in range(steps)]
    if spacing == "quadratic":
        return [max(round_half_up(T * ((steps - i) / steps) ** 2) - 1, 0) for i in range(steps)]
    raise ValueError(f"timestep spacing {spacing!r}: expected one of {', '.join(TIMESTEP_SPACINGS)}")


def alpha_sigma(alpha_bar_t: torch.Tensor, timestep: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(alpha, sigma)` = (sqrt(ab_t), sqrt(1 - ab_t)) for int64 `timestep` [B] (-1: x_0, ab = 1),
    shaped [B, 1, 1, 1] in the dtype and device of `like`."""
    timestep = timestep.cpu()  # alpha_bar stays on the CPU, in f64
    ab = torch.where(timestep < 0, torch.ones_like(alpha_bar_t[0]), alpha_bar_t[timestep.clamp(min=0)])
    view = ab.view(-1, 1, 1, 1)
    return view.sqrt().to(like), (1 - view).sqrt().to(like)


def to_x0_eps(prediction: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x_0, eps)` implied by a net's `prediction` of `prediction_type` for `x_t = alpha x_0 + sigma eps`
    (all [B, C, H, W]; alpha, sigma broadcast): epsilon -> x_0 = (x_t - sigma eps) / alpha;
    v_prediction -> x_0 = alpha x_t - sigma v, eps = sigma x_t + alpha v (Salimans & Ho 2022, Sec. 4,
    with alpha^2 + sigma^2 = 1); sample -> eps = (x_t - alpha x_0) / sigma.

    Raises:
        ValueError: unknown prediction type.
    """
    if prediction_type == "epsilon":
        return (x_t - sigma * prediction) / alpha, prediction
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * prediction, sigma * x_t + alpha * prediction
    if prediction_type == "sample":
        return prediction, (x_t - alpha * prediction) / sigma
    raise ValueError(f"prediction_type {prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}")


def ddim_step(x_t: torch.Tensor, x_0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              alpha_prev: torch.Tensor, sigma_prev: torch.Tensor, clip: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Deterministic DDIM update (Song et al. 2021, Eq. 12, eta = 0) from `x_t` to the previous
    timestep given the predicted `x_0`, as the device does it (`src/diffusion/ddim.rs`): x_0 is
    clipped to `clip`, eps re-derived from it, then `x_prev = alpha_prev x_0 + sigma_prev eps`."""
    x_0 = x_0.clamp(*clip)
    eps = (x_t - alpha * x_0) / sigma
    return alpha_prev * x_0 + sigma_prev * eps
