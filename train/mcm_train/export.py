"""ONNX export (torch.onnx), `model.toml` and the test vectors the Rust side replays through tract.

Files under a model directory (the model contract, DESIGN.md):
    base.onnx       sample f32 [B, C, H, W], timestep f32 [B] -> eps f32 [B, C, H, W]
    mcm.onnx        sample, eps [B, C, H, W], cond [B, K, H, W], timestep [B] -> gamma, beta [B, C, H, W]
    segmenter.onnx  image f32 [B, 3, H, W] in [-1, 1] -> logits f32 [B, classes, H, W]
    model.toml      schedule, image, modalities, provenance
    test_vectors/   NET.TENSOR.npy: inputs and torch outputs for B = 2
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import tomli_w
import torch
from torch import nn

from .contract import ModalitySpec
from .models import MCM, UNet, UNetConfig

OPSET = 17
FORMAT_VERSION = 1


class ExportError(RuntimeError):
    """Export failed or the exported graph disagrees with PyTorch."""


class _Base(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.net(sample, timestep)


class _Segmenter(nn.Module):
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
    onnx.checker.check_model(onnx.load(str(path)))


def _save_vectors(out_dir: Path, net: str, tensors: dict[str, torch.Tensor]) -> None:
    vec = out_dir / "test_vectors"
    vec.mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        np.save(vec / f"{net}.{name}.npy", t.detach().numpy().astype(np.float32))


def _vector_inputs(channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, size, size, generator=gen), torch.tensor([17.0, 733.0])


def export_base(net: UNet, out_dir: Path) -> None:
    """Write `base.onnx` and its test vectors (`base.sample`, `base.timestep`, `base.eps`)."""
    sample, timestep = _vector_inputs(net.cfg.in_channels, net.cfg.image_size, 1)
    export_onnx(_Base(net), {"sample": sample, "timestep": timestep}, ["eps"], out_dir / "base.onnx")
    with torch.no_grad():
        eps = net(sample, timestep)
    _save_vectors(out_dir, "base", {"sample": sample, "timestep": timestep, "eps": eps})


def export_mcm(mcm: MCM, cond_channels: int, out_dir: Path) -> None:
    """Write `mcm.onnx` and its test vectors (`mcm.sample`, `.eps`, `.cond`, `.timestep`, `.gamma`, `.beta`).
    The vector's cond is a random 0/1 map so that every input channel matters."""
    cfg = mcm.net.cfg
    sample, timestep = _vector_inputs(mcm.image_channels, cfg.image_size, 2)
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn(sample.shape, generator=gen)
    cond = (torch.rand(2, cond_channels, cfg.image_size, cfg.image_size, generator=gen) < 0.3).float()
    inputs = {"sample": sample, "eps": eps, "cond": cond, "timestep": timestep}
    export_onnx(mcm, inputs, ["gamma", "beta"], out_dir / "mcm.onnx")
    with torch.no_grad():
        gamma, beta = mcm(*inputs.values())
    _save_vectors(out_dir, "mcm", {**inputs, "gamma": gamma, "beta": beta})


def export_segmenter(net: UNet, out_dir: Path) -> None:
    """Write `segmenter.onnx` and its test vectors (`segmenter.image`, `segmenter.logits`)."""
    image, _ = _vector_inputs(net.cfg.in_channels, net.cfg.image_size, 4)
    export_onnx(_Segmenter(net), {"image": image}, ["logits"], out_dir / "segmenter.onnx")
    with torch.no_grad():
        logits = net(image)
    _save_vectors(out_dir, "segmenter", {"image": image, "logits": logits})


# --------------------------------------------------------------------------------------------
# model.toml
# --------------------------------------------------------------------------------------------

def read_model_toml(out_dir: Path) -> dict:
    """The model.toml of `out_dir` as a dict, or {} when there is none."""
    path = out_dir / "model.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def update_model_toml(out_dir: Path, **sections: object) -> dict:
    """Replace the given top-level sections of `out_dir/model.toml` (creating it), keep the others."""
    doc = read_model_toml(out_dir)
    doc["format"] = FORMAT_VERSION
    doc.update({k: v for k, v in sections.items() if v is not None})
    (out_dir / "model.toml").write_text(_HEADER + tomli_w.dumps(doc))
    return doc


def modalities_from_toml(doc: dict) -> list[ModalitySpec]:
    """The `[[modalities]]` of a model.toml as `ModalitySpec`s, in `cond` order."""
    return [ModalitySpec.from_toml(m) for m in doc.get("modalities", [])]


_HEADER = """\
# Model contract for the mcm-edge device (written by mcm-train; see README "Model contract").
# base.onnx: sample f32 [B,C,H,W], timestep f32 [B] -> eps f32 [B,C,H,W]
# mcm.onnx: sample, eps [B,C,H,W], cond [B,K,H,W], timestep [B] -> gamma, beta [B,C,H,W]
#   cond stacks, per modality in the order below, `channels` map channels then one presence channel.
# segmenter.onnx: image [B,3,H,W] in [-1,1] -> logits [B,classes,H,W] (evaluation only)

"""


#: Random-weight model sets. `tiny`: the 16x16 RGB fixture committed as models/tiny; `tiny-s2d`:
#: the same with a `space_to_depth = 2` MCM (models/tiny-s2d: the Rust tests replay its folded
#: graph through tract and onnxruntime). `paper`: a paper-scale pair for speed measurements
#: (issue 4): a 64 M-parameter base on a 32x32x4 latent-like input (Stable Diffusion's latent
#: shape at 256 px) and the default's MCM architecture, 1.0 % of it.
PRESETS: dict[str, dict] = {
    "tiny": {
        "size": 16,
        "channels": 3,
        "base": {"channels": (8, 16), "num_res_blocks": 1, "attention_resolutions": (8,), "groups": 4},
        "mcm": {"channels": (8, 16), "num_res_blocks": 1, "attention_resolutions": (8,), "groups": 4},
        "segmenter": True,
    },
    "paper": {
        "size": 32,
        "channels": 4,
        "base": {"channels": (128, 256, 512), "num_res_blocks": 2, "attention_resolutions": (16, 8), "groups": 32},
        # the shipped default's MCM architecture (full resolution), here 1.0 % of the base's parameters
        "mcm": {"channels": (16, 32, 64), "num_res_blocks": 1, "attention_resolutions": (16,), "groups": 8},
        "segmenter": False,
    },
}
PRESETS["tiny-s2d"] = {
    **PRESETS["tiny"],
    "mcm": {**PRESETS["tiny"]["mcm"], "attention_resolutions": (), "space_to_depth": 2},
    "segmenter": False,
}


def write_random_model(out_dir: Path, classes: list[dict], preset: str = "tiny", seed: int = 0) -> dict:
    """A random-weight model directory of a [`PRESETS`] entry: base, segmentation + sketch MCM (output
    layer made non-zero so that the test vectors exercise the MCM path), optional segmenter, test
    vectors and `model.toml`. The images are noise; only shapes, numerics and speed are meaningful.

    Returns the written `model.toml` as a dict.

    Raises:
        KeyError: unknown `preset`.
        ExportError: the exported graph disagrees with PyTorch.
    """
    from .schedule import ScheduleConfig

    p = PRESETS[preset]
    torch.manual_seed(seed)
    size, c = p["size"], p["channels"]
    base = UNet(UNetConfig(in_channels=c, out_channels=c, image_size=size, **p["base"])).eval()
    modalities = [ModalitySpec("segmentation", "segmentation", len(classes), classes), ModalitySpec("sketch", "sketch", 1)]
    k = sum(m.width for m in modalities)
    mcm = MCM(c, k, UNetConfig(image_size=size, **p["mcm"])).eval()
    for conv in (mcm.net.conv_out, mcm.net.conv_local):  # non-zero so that the vectors test the MCM path
        if conv is not None:
            nn.init.normal_(conv.weight, std=0.02)
    export_base(base, out_dir)
    export_mcm(mcm, k, out_dir)
    provenance = {"dataset": "none (random weights)", "steps": 0}
    nets: dict[str, dict] = {
        "base": {"file": "base.onnx", "parameters": sum(q.numel() for q in base.parameters()), **provenance},
        "mcm": {"file": "mcm.onnx", "cond_channels": k, "parameters": sum(q.numel() for q in mcm.parameters()), **provenance},
    }
    if p["segmenter"]:
        seg = UNet(UNetConfig(in_channels=3, out_channels=len(classes), timestep_embedding=False, image_size=size, **p["base"]))
        export_segmenter(seg.eval(), out_dir)
        nets["segmenter"] = {"file": "segmenter.onnx", "parameters": sum(q.numel() for q in seg.parameters()), **provenance}
    return update_model_toml(
        out_dir,
        image={"size": size, "channels": c, "value_range": [-1.0, 1.0]},
        schedule=ScheduleConfig().to_dict(),
        modalities=[m.to_toml() for m in modalities],
        **nets,
    )
