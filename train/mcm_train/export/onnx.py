"""ONNX export (torch.onnx), `model.toml` and the test vectors the Rust side replays through tract.

Files under a model directory (the model contract, DESIGN.md):
    base.onnx       sample f32 [B, C, H, W], timestep f32 [B] -> eps f32 [B, C, H, W]
    mcm.onnx        sample, eps [B, C, H, W], cond [B, K, H, W], timestep [B] -> gamma, beta [B, C, H, W]
    segmenter.onnx  image f32 [B, 3, H, W] in [-1, 1] -> logits f32 [B, classes, H, W],
                    features f32 [B, F, 1, 1] (pooled bottleneck, the realism metric's embedding)
    NAME_estimator.onnx  image -> map f32 [B, C, H, W] (reference estimator of dense modality NAME)
    model.toml      schedule, image, modalities, provenance
    test_vectors/   NET.TENSOR.npy: inputs and torch outputs for B = 2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..nets.controlnet import ControlNet, ControlNetMCM
from ..nets.mcm import MCM
from ..nets.unet import UNet, UNetConfig, UNetWithFeatures

OPSET = 17


class ExportError(RuntimeError):
    """Export failed or the exported graph disagrees with PyTorch."""


class _Base(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.net(sample, timestep)


class _ImageNet(nn.Module):
    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def export_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path) -> None:
    """Export `module(*inputs.values())` to a self-contained ONNX file (weights embedded, opset 17,
    dynamic batch axis on every input and output) and check it with `onnx.checker`."""
    module = module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {name: {0: "batch"} for name in [*inputs, *outputs]}
    with torch.no_grad():
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    _one_data_file(path)
    onnx.checker.check_model(str(path))  # by path: also above 2 GB (weights in external data)


def _one_data_file(path: Path) -> None:
    """A graph above protobuf's 2 GB limit is written by torch with every weight in its own file
    beside it; gather them into one `NAME.onnx.data` (what the device and `mcm-edge info` expect
    beside NAME.onnx) and delete the loose files. Nothing happens to a self-contained file."""
    locations = {entry.value for init in onnx.load(str(path), load_external_data=False).graph.initializer
                 for entry in init.external_data if entry.key == "location"}
    if not locations or locations == {f"{path.name}.data"}:
        return
    model = onnx.load(str(path))  # with the weights
    data = path.with_name(f"{path.name}.data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    data.chmod(0o644)  # readable like the .onnx file beside it (the service runs as its own user)
    for loose in locations - {data.name}:
        (path.parent / loose).unlink(missing_ok=True)


def save_vectors(out_dir: Path, net: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write `out_dir/test_vectors/NET.NAME.npy` for each tensor: floats as f32, integers (token
    ids) as int64."""
    vec = out_dir / "test_vectors"
    vec.mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        a = t.detach().numpy()
        np.save(vec / f"{net}.{name}.npy", a.astype(np.int64 if np.issubdtype(a.dtype, np.integer) else np.float32))


def _vector_inputs(channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, size, size, generator=gen), torch.tensor([17.0, 733.0])


def export_base(net: UNet, out_dir: Path, output: str = "eps") -> None:
    """Write `base.onnx` and its test vectors (`base.sample`, `base.timestep`, `base.OUTPUT`);
    `output` names what the net predicts (`contract.schedule.PREDICTION_OUTPUTS`: eps, v or x_0)."""
    export_denoiser(_Base(net), net.cfg.in_channels, net.cfg.image_size, out_dir, output)


def export_denoiser(module: nn.Module, channels: int, size: int, out_dir: Path, output: str = "eps") -> None:
    """Write any denoiser `module(sample [B, C, H, W], timestep f32 [B]) -> [B, C, H, W]` as
    `base.onnx` with its test vectors (`export_base` for ours, diffusers' UNet2DModel through a wrapper)."""
    sample, timestep = _vector_inputs(channels, size, 1)
    export_onnx(module, {"sample": sample, "timestep": timestep}, [output], out_dir / "base.onnx")
    with torch.no_grad():
        prediction = module(sample, timestep)
    save_vectors(out_dir, "base", {"sample": sample, "timestep": timestep, output: prediction})


def export_mcm(mcm: MCM, cond_channels: int, out_dir: Path) -> None:
    """Write `mcm.onnx` and its test vectors (`mcm.sample`, `.eps`, `.cond`, `.timestep`, `.gamma`, `.beta`).
    The vector's cond is a random 0/1 map so that every input channel matters; at image size, which
    for a latent MCM is `cond_fold` times its grid."""
    cfg = mcm.net.cfg
    sample, timestep = _vector_inputs(mcm.image_channels, cfg.image_size, 2)
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn(sample.shape, generator=gen)
    s = cfg.image_size * getattr(mcm, "cond_fold", 1)  # maps at image size (a latent MCM folds them)
    cond = (torch.rand(2, cond_channels, s, s, generator=gen) < 0.3).float()
    inputs = {"sample": sample, "eps": eps, "cond": cond, "timestep": timestep}
    export_onnx(mcm, inputs, ["gamma", "beta"], out_dir / "mcm.onnx")
    with torch.no_grad():
        gamma, beta = mcm(*inputs.values())
    save_vectors(out_dir, "mcm", {**inputs, "gamma": gamma, "beta": beta})


def export_image_net(net: UNet, stem: str, output: str, out_dir: Path) -> None:
    """Write an image-reading net (`image` f32 [B, 3, H, W] in [-1, 1] -> `output` [B, C, H, W]) to
    `STEM.onnx` with its test vectors (`STEM.image`, `STEM.OUTPUT`)."""
    _export_image_module(_ImageNet(net), net.cfg, stem, [output], out_dir)


def _export_image_module(module: nn.Module, cfg: UNetConfig, stem: str, outputs: list[str],
                         out_dir: Path) -> dict[str, torch.Tensor]:
    """Export `module(image)` (one tensor per name in `outputs`) to `STEM.onnx` with its test
    vectors (`STEM.image`, `STEM.OUTPUT`...); returns the vectors' outputs by name."""
    image, _ = _vector_inputs(cfg.in_channels, cfg.image_size, 4)
    export_onnx(module, {"image": image}, outputs, out_dir / f"{stem}.onnx")
    with torch.no_grad():
        result = module(image)
    results = dict(zip(outputs, result if isinstance(result, tuple) else (result,), strict=True))
    save_vectors(out_dir, stem, {"image": image, **results})
    return results


def export_segmenter(net: UNet, out_dir: Path) -> int:
    """Write `segmenter.onnx` (`image` f32 [B, 3, H, W] in [-1, 1] -> `logits` [B, classes, H, W]
    and `features` [B, F, 1, 1], F = channels[-1]: the bottleneck averaged over positions, 4-D as
    every contract output) and its test vectors (`segmenter.image`, `.logits`, `.features`);
    returns F (`[segmenter] features`)."""
    results = _export_image_module(UNetWithFeatures(net), net.cfg, "segmenter", ["logits", "features"], out_dir)
    return int(results["features"].shape[1])


def export_estimator(net: UNet, modality: str, out_dir: Path) -> str:
    """Write `MODALITY_estimator.onnx` (`image` -> `map` [B, C, H, W] in the modality's value range)
    and its test vectors; returns the file name."""
    export_image_net(net, f"{modality}_estimator", "map", out_dir)
    return f"{modality}_estimator.onnx"


def export_controlnet(net: ControlNet, out_dir: Path) -> None:
    """Write `out_dir/mcm.onnx` (the `ControlNetMCM` wrapper, through `export.export_mcm`) and its
    `mcm.*` test vectors (B = 2, random 0/1 `cond`)."""
    export_mcm(ControlNetMCM(net).eval(), net.cond_channels, out_dir)  # type: ignore[arg-type]


