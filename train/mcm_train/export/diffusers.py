"""Import of a user's pretrained diffusers model: a `UNet2DModel` (pixel space, epsilon prediction)
and its scheduler config become `base.onnx` + `model.toml` per the model contract.

Only local folders are read (these machines have no model hub): either a pipeline folder
(`unet/` + `scheduler/scheduler_config.json`) or a bare `UNet2DModel` folder, optionally with a
`scheduler_config.json` beside it (DDPM defaults otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..contract.model_toml import update_model_toml
from ..contract.schedule import PREDICTION_OUTPUTS, ScheduleConfig, betas
from .onnx import export_denoiser


class DiffusersBase(nn.Module):
    """`(sample [B, C, H, W], timestep f32 [B]) -> eps`, diffusers' `UNet2DModel(...).sample`."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep).sample


def _schedule_from(folder: Path) -> ScheduleConfig:
    for cand in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if cand.exists():
            cfg = json.loads(cand.read_text())
            sched = ScheduleConfig(
                beta_schedule=cfg.get("beta_schedule", "linear"),
                beta_start=float(cfg.get("beta_start", 1e-4)),
                beta_end=float(cfg.get("beta_end", 0.02)),
                num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                prediction_type=cfg.get("prediction_type", "epsilon"),
            )
            betas(sched)  # raises on a schedule the device cannot run
            return sched
    return ScheduleConfig()


def load_diffusers_unet(source: Path) -> tuple[nn.Module, int]:
    """`(UNet2DModel, image size)` of a local diffusers folder (a pipeline's `unet/` or a bare UNet).

    Raises:
        FileNotFoundError: `source` is not a local folder.
        ValueError: the model is not square, or its input and output channels differ.
    """
    from diffusers import UNet2DModel

    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a local folder (no model hub on this machine)")
    unet_dir = source / "unet" if (source / "unet" / "config.json").exists() else source
    unet = UNet2DModel.from_pretrained(str(unet_dir)).eval()
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"{unet_dir}: sample_size {size}: only square images are supported")
        size = size[0]
    if unet.config.in_channels != unet.config.out_channels:
        raise ValueError(f"{unet_dir}: in_channels {unet.config.in_channels} != out_channels {unet.config.out_channels}")
    return unet, int(size)


def export_diffusers(source: Path, out_dir: Path) -> None:
    """Export the `UNet2DModel` in `source` to `out_dir/base.onnx` + `model.toml` + test vectors.

    Raises:
        FileNotFoundError: `source` is not a local folder.
        ValueError: the model is not square pixel-space, or its scheduler has a prediction type or
            beta schedule the device cannot run.
    """
    source = Path(source)
    unet, size = load_diffusers_unet(source)
    sched = _schedule_from(source)
    export_denoiser(DiffusersBase(unet), unet.config.in_channels, size, out_dir, PREDICTION_OUTPUTS[sched.prediction_type])
    update_model_toml(
        out_dir,
        image={"size": int(size), "channels": int(unet.config.in_channels), "value_range": [-1.0, 1.0]},
        schedule=sched.to_dict(),
        base={"file": "base.onnx", "dataset": f"diffusers import of {source}",
              "parameters": sum(p.numel() for p in unet.parameters())},
    )
