"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Alg. 2): a student, initialised from its teacher, learns to do in one DDIM step
what two DDIM steps of the teacher do; the student becomes the next stage's teacher, halving the
step count each stage down to the target (and on to later stages, e.g. 2 and 1).

Choices that matter at few steps (Sec. 4 of the paper): the student predicts v or x_0, not eps
(eps-prediction is unstable at low SNR: at t = 999 of the linear schedule x_0 = (x_t - sigma eps)
/ alpha amplifies eps errors about 150x); the loss is on x_0 with truncated-SNR weighting
`max(alpha^2 / sigma^2, 1)`; and the timesteps are a fixed grid (`contract.schedule.timestep_grid`,
quadratic by default) that the stages share by halving and that the device samples with.

`distill_mcm` applies the same idea to the conditioning: an MCM for a distilled student learns, in
one conditioned student step, what two conditioned teacher steps (the teacher's base with the
teacher's MCM) do. Only the student's MCM is trained; both bases are black boxes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..contract.modalities import ModalitySpec
from ..contract.schedule import ScheduleConfig, alpha_bar, alpha_sigma, ddim_step, timestep_grid, to_x0_eps
from ..data.folder import Dataset
from ..nets.mcm import MCM, modulate
from .batches import Batches, conditioned_batch, to_device
from .loop import TrainConfig, TrainResult, train_loop
from .trainers import BaseFn, McmFn

#: x_0 [B, C, H, W] predicted from (x_t [B, C, H, W], timestep int64 [B]) by a frozen sampler step.
X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def truncated_snr_loss(x_0_hat: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of `max(alpha^2 / sigma^2, 1) * (x_0_hat - target)^2` (truncated-SNR weighting,
    Salimans & Ho 2022, Sec. 4); images [B, C, H, W], alpha and sigma [B, 1, 1, 1]."""
    weight = (alpha**2 / sigma**2).clamp(min=1.0)
    return (weight * (x_0_hat - target) ** 2).mean()


@dataclass
class Teacher:
    """A frozen denoiser and what it predicts: `net(x_t [B, C, H, W], timestep f32 [B])` -> a
    prediction of `prediction_type` (`contract.schedule.PREDICTION_TYPES`)."""

    net: nn.Module
    prediction_type: str


def stage_steps(start_steps: int, target_steps: int, later: tuple[int, ...] = ()) -> list[int]:
    """The student step counts of a run, one per stage: start/2, start/4, ..., target, then `later`.

    Raises:
        ValueError: a count is not half of the one before it (progressive distillation halves).
    """
    counts, n = [], start_steps
    while n > target_steps:
        if n % 2:
            raise ValueError(f"--from-steps {start_steps} does not halve down to --steps {target_steps}")
        n //= 2
        counts.append(n)
    if n != target_steps:
        raise ValueError(f"--from-steps {start_steps} does not halve down to --steps {target_steps}")
    for m in later:
        if m * 2 != counts[-1]:
            raise ValueError(f"--then {m}: each later stage halves the one before ({counts[-1]} -> {counts[-1] // 2})")
        counts.append(m)
    return counts


def teacher_x0(teacher: Teacher, ab: torch.Tensor) -> X0Fn:
    """The x_0 a teacher predicts (its prediction converted by `to_x0_eps`)."""
    def x_0(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = alpha_sigma(ab, t, z)
        return to_x0_eps(teacher.net(z, t.to(z.device).float()), z, alpha, sigma, teacher.prediction_type)[0]
    return x_0


def two_step_target(x0_fn: X0Fn, x_t: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor, t_next: torch.Tensor,
                    ab: torch.Tensor) -> torch.Tensor:
    """The x_0 that takes one DDIM step from `x_t` (timestep `t`) to where two DDIM steps of the
    teacher (`x0_fn`; `t` -> `t_mid` -> `t_next`, -1 meaning x_0) land (Salimans & Ho 2022, Alg. 2):
    `x~ = (z'' - (sigma''/sigma) z) / (alpha'' - (sigma''/sigma) alpha)`, clipped to [-1, 1] as the
    device clips x_0. All images [B, C, H, W]; timesteps int64 [B]."""
    with torch.no_grad():
        z = x_t
        for a, b in ((t, t_mid), (t_mid, t_next)):
            alpha, sigma = alpha_sigma(ab, a, z)
            alpha_b, sigma_b = alpha_sigma(ab, b, z)
            z = ddim_step(z, x0_fn(z, a), alpha, sigma, alpha_b, sigma_b)
        alpha, sigma = alpha_sigma(ab, t, x_t)
        alpha_n, sigma_n = alpha_sigma(ab, t_next, x_t)
        ratio = sigma_n / sigma
        return ((z - ratio * x_t) / (alpha_n - ratio * alpha)).clamp(-1, 1)


def distill_stage(data: Dataset, teacher: Teacher, student_steps: int, prediction_type: str, sched: ScheduleConfig,
                  tc: TrainConfig, run_dir: Path, spacing: str = "quadratic") -> TrainResult:
    """One stage: a copy of the teacher learns `student_steps` steps of `prediction_type` from the
    teacher's `2 * student_steps`-step grid, with `tc.steps` optimiser steps (checkpoint
    `run_dir/studentN.pt`, resumed like every trainer). Returns the student's EMA weights.

    Raises:
        ValueError: bad step count or spacing (`timestep_grid`).
    """
    teacher.net.eval().requires_grad_(False).to(tc.device)
    batches, ab = Batches(data), alpha_bar(sched)
    grid = torch.tensor([*timestep_grid(2 * student_steps, sched.num_train_timesteps, spacing), -1])

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        x_0, _ = batches.sample(gen, tc.batch_size)
        i = torch.randint(0, student_steps, (x_0.shape[0],), generator=gen)
        t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        noise = torch.randn(x_0.shape, generator=gen)
        alpha, sigma = alpha_sigma(ab, t, x_0)
        (x_t,) = to_device(tc.device, alpha * x_0 + sigma * noise)
        target = two_step_target(teacher_x0(teacher, ab), x_t, t, t_mid, t_next, ab)
        alpha, sigma = alpha_sigma(ab, t, x_t)
        x_0_hat = to_x0_eps(net(x_t, t.to(x_t.device).float()), x_t, alpha, sigma, prediction_type)[0]
        return truncated_snr_loss(x_0_hat, target, alpha, sigma)

    student = copy.deepcopy(teacher.net).requires_grad_(True).train()
    return train_loop(f"student{student_steps}", student, loss_fn, tc, run_dir)


@dataclass
class McmTeacher:
    """A frozen base with its MCM, the target of `distill_mcm`: `base_fn` predicts
    `prediction_type` and `mcm_fn` modulates its eps (`modulate`, strength 1)."""

    base_fn: BaseFn
    prediction_type: str
    mcm_fn: McmFn

    def x0_fn(self, cond: torch.Tensor, ab: torch.Tensor) -> X0Fn:
        """The x_0 of one conditioned step with `cond` [B, K, H, W] (the device's sampler step)."""
        def x_0(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha, sigma = alpha_sigma(ab, t, z)
            timestep = t.to(z.device).float()
            eps = to_x0_eps(self.base_fn(z, timestep), z, alpha, sigma, self.prediction_type)[1]
            eps_hat = modulate(eps, *self.mcm_fn(z, eps, cond, timestep))
            return to_x0_eps(eps_hat, z, alpha, sigma, "epsilon")[0]
        return x_0


def distill_mcm(data: Dataset, mcm: MCM, base_fn: BaseFn, modalities: list[ModalitySpec], sched: ScheduleConfig,
                teacher: McmTeacher, teacher_grid: list[int], tc: TrainConfig, run_dir: Path, drop_prob: float = 0.3,
                l1_weight: float = 1e-4) -> TrainResult:
    """Train `mcm` for the distilled base `base_fn` (its grid: every other timestep of
    `teacher_grid`, the teacher's 2N timesteps, noisiest first) so that one conditioned student
    step does what two conditioned teacher steps do: the target x_0 is `two_step_target` of the
    teacher with its MCM, for the same x_t and the same `cond` (each modality dropped with
    probability `drop_prob`, as in `train_mcm`); the loss is on the student's x_0, from its eps
    modulated by `mcm`, with truncated-SNR weighting, plus `l1_weight * (|gamma| + |beta|)`. No
    gradient flows through either base or the teacher's MCM.

    Raises:
        ValueError: `teacher_grid` has an odd length.
    """
    if len(teacher_grid) % 2:
        raise ValueError(f"the teacher's grid {teacher_grid} has an odd number of steps")
    batches, ab = Batches(data), alpha_bar(sched)
    grid = torch.tensor([*teacher_grid, -1])
    student_steps = len(teacher_grid) // 2

    def loss_fn(net: nn.Module, gen: torch.Generator) -> torch.Tensor:
        i = torch.randint(0, student_steps, (tc.batch_size,), generator=gen)
        x_t, t, _, cond, _ = conditioned_batch(batches, ab, sched.num_train_timesteps, modalities, tc.batch_size,
                                            drop_prob, gen, tc.device, timesteps=grid[2 * i])
        target = two_step_target(teacher.x0_fn(cond, ab), x_t, t, grid[2 * i + 1], grid[2 * i + 2], ab)
        alpha, sigma = alpha_sigma(ab, t, x_t)
        with torch.no_grad():
            eps = to_x0_eps(base_fn(x_t, t.float()), x_t, alpha, sigma, sched.prediction_type)[1]
        gamma, beta = net(x_t, eps, cond, t.float())
        x_0_hat = to_x0_eps(modulate(eps, gamma, beta), x_t, alpha, sigma, "epsilon")[0]
        l1 = gamma.abs().mean() + beta.abs().mean()
        return truncated_snr_loss(x_0_hat, target, alpha, sigma) + l1_weight * l1

    return train_loop("mcm", mcm, loss_fn, tc, run_dir)
