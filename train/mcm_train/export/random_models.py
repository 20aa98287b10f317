"""Random-weight model directories: the test fixtures and the paper-scale pair for benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..contract.modalities import ModalitySpec
from ..contract.model_toml import update_model_toml
from ..contract.schedule import PREDICTION_OUTPUTS, ScheduleConfig, timestep_grid
from ..nets.mcm import MCM
from ..nets.unet import UNet, UNetConfig
from .onnx import export_base, export_estimator, export_mcm, export_segmenter
from .parity import write_parity_vectors

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
        "eval_nets": True,  # segmenter + depth estimator (`mcm-edge eval`)
    },
    "paper": {
        "size": 32,
        "channels": 4,
        "base": {"channels": (128, 256, 512), "num_res_blocks": 2, "attention_resolutions": (16, 8), "groups": 32},
        # the shipped default's MCM architecture (full resolution), here 1.0 % of the base's parameters
        "mcm": {"channels": (16, 32, 64), "num_res_blocks": 1, "attention_resolutions": (16,), "groups": 8},
        "eval_nets": False,
    },
}


PRESETS["tiny-s2d"] = {
    **PRESETS["tiny"],
    "mcm": {**PRESETS["tiny"]["mcm"], "attention_resolutions": (), "space_to_depth": 2},
    "eval_nets": False,
}
#: `tiny` without the eval nets (`models/tiny-x0`: the base read as an x_0-predicting student).
PRESETS["tiny-bare"] = {**PRESETS["tiny"], "eval_nets": False}


def write_random_model(out_dir: Path, classes: list[dict], preset: str = "tiny", seed: int = 0,
                       distilled: str | None = None) -> dict:
    """A random-weight model directory of a [`PRESETS`] entry: base, segmentation + sketch + depth MCM
    (output layer made non-zero so that the test vectors exercise the MCM path), optional segmenter
    and depth estimator (`[estimators.depth]`),
    test vectors, parity vectors (`export.parity`) and `model.toml`. The images are noise; only
    shapes, numerics and speed are meaningful. `distilled` ("v_prediction" or "sample") makes the
    base stand in for a 4-step student of `mcm-train distill`: that prediction type and its
    quadratic grid in `[schedule] timesteps`.

    Returns the written `model.toml` as a dict.

    Raises:
        KeyError: unknown `preset`.
        ExportError: the exported graph disagrees with PyTorch.
    """
    p = PRESETS[preset]
    torch.manual_seed(seed)
    size, c = p["size"], p["channels"]
    base = UNet(UNetConfig(in_channels=c, out_channels=c, image_size=size, **p["base"])).eval()
    modalities = [ModalitySpec("segmentation", "segmentation", len(classes), classes), ModalitySpec("sketch", "sketch", 1),
                  ModalitySpec("depth", "dense", 1)]
    k = sum(m.width for m in modalities)
    mcm = MCM(c, k, UNetConfig(image_size=size, **p["mcm"])).eval()
    for conv in (mcm.net.conv_out, mcm.net.conv_local):  # non-zero so that the vectors test the MCM path
        if conv is not None:
            nn.init.normal_(conv.weight, std=0.02)
    schedule = ScheduleConfig(prediction_type=distilled or "epsilon").to_dict()
    if distilled:
        schedule["timesteps"] = timestep_grid(4, schedule["num_train_timesteps"], "quadratic")
    export_base(base, out_dir, PREDICTION_OUTPUTS[schedule["prediction_type"]])
    export_mcm(mcm, k, out_dir)
    provenance = {"dataset": "none (random weights)", "steps": 0}
    nets: dict[str, dict] = {
        "base": {"file": "base.onnx", "architecture": base.cfg.to_dict(),
                 "parameters": sum(q.numel() for q in base.parameters()), **provenance},
        "mcm": {"file": "mcm.onnx", "cond_channels": k, "parameters": sum(q.numel() for q in mcm.parameters()), **provenance},
    }
    if p["eval_nets"]:
        seg = UNet(UNetConfig(in_channels=3, out_channels=len(classes), timestep_embedding=False, image_size=size, **p["base"]))
        features = export_segmenter(seg.eval(), out_dir)
        nets["segmenter"] = {"file": "segmenter.onnx", "features": features, "architecture": seg.cfg.to_dict(),
                             "parameters": sum(q.numel() for q in seg.parameters()), **provenance}
        est = UNet(UNetConfig(in_channels=3, out_channels=1, timestep_embedding=False, image_size=size, **p["base"]))
        nets["estimators"] = {"depth": {"file": export_estimator(est.eval(), "depth", out_dir), "architecture": est.cfg.to_dict(),
                                        "parameters": sum(q.numel() for q in est.parameters()), **provenance}}
    doc = update_model_toml(
        out_dir,
        image={"size": size, "channels": c, "value_range": [-1.0, 1.0]},
        schedule=schedule,
        modalities=[m.to_toml() for m in modalities],
        **nets,
    )
    write_parity_vectors(out_dir)
    return doc


