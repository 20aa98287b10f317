"""Warm start: initialise a new net from the same net of an existing model directory.

`mcm-train mcm --init-from DIR` adds modalities to an MCM without losing what the old MCM learnt;
`mcm-train segmenter --init-from DIR` continues a reference segmenter (or, with `--steps 0`,
writes it again in the current contract, e.g. with the `features` output an older file lacks).

The old weights are read back from the ONNX file (`onnx_weights`) and checked against the
directory's own test vectors. The first convolution (and `conv_local` with space-to-depth) reads
`concat(x_t, eps, cond)`: its columns for x_t, eps and every modality the old MCM had (same name,
kind and channels) are copied, the columns of a new modality are zero. So the new MCM starts as
exactly the old one, with the new modality ignored until training teaches it to use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..contract.modalities import ModalitySpec
from ..contract.model_toml import modalities_from_toml, read_model_toml
from ..nets.mcm import MCM
from ..nets.unet import UNet, UNetConfig, UNetWithFeatures
from .onnx_weights import WeightsError, check_readback, load_onnx_weights, load_vectors

#: The model directory given to `--init-from` cannot initialise this MCM (names the file and the reason).
WarmStartError = WeightsError


def _column_map(new: list[ModalitySpec], old: list[ModalitySpec], image_channels: int) -> tuple[
        list[tuple[int, int, int]], list[str], list[str]]:
    """(new_start, old_start, width) runs of input channels to copy, the modalities kept and those added."""
    runs = [(0, 0, 2 * image_channels)]
    old_start, pos = {}, 2 * image_channels
    for m in old:
        old_start[m.name] = (pos, m)
        pos += m.width
    kept, added, pos = [], [], 2 * image_channels
    for m in new:
        hit = old_start.get(m.name)
        if hit and (hit[1].kind, hit[1].channels) == (m.kind, m.channels):
            runs.append((pos, hit[0], m.width))
            kept.append(m.name)
        else:
            added.append(m.name)
        pos += m.width
    return runs, kept, added


def _widen_input_conv(weight: np.ndarray, runs: list[tuple[int, int, int]], in_channels: int,
                   fold: int) -> torch.Tensor:
    """An input convolution's old weight [O, I_old * f*f, kh, kw] laid out for `in_channels` inputs (f = space_to_depth;
    `pixel_unshuffle` keeps each input channel's f*f planes together), zero where nothing is copied."""
    out = np.zeros((weight.shape[0], in_channels * fold * fold, *weight.shape[2:]), dtype=np.float32)
    f2 = fold * fold
    for new, old, width in runs:
        out[:, new * f2:(new + width) * f2] = weight[:, old * f2:(old + width) * f2]
    return torch.from_numpy(out)


def warm_start(mcm: MCM, modalities: list[ModalitySpec], model_dir: Path) -> tuple[list[str], list[str]]:
    """Initialise `mcm` (for `modalities`, in `cond` order) from `model_dir/mcm.onnx` in place.

    Returns:
        (kept, added): the modalities whose weights were copied and those that start at zero.

    Raises:
        WarmStartError: `model_dir` holds no MCM of method `mcm`, its architecture differs from
            `mcm`'s (the message names the tensor and both shapes), or the weights read back do not
            reproduce its test vectors.
    """
    doc = read_model_toml(model_dir)
    section = doc.get("mcm", {})
    if section.get("method", "mcm") != "mcm" or not (model_dir / section.get("file", "mcm.onnx")).exists():
        raise WarmStartError(f"{model_dir}: --init-from needs a model directory with an MCM (method \"mcm\")")
    old_modalities = modalities_from_toml(doc)
    path = model_dir / section.get("file", "mcm.onnx")
    old_mcm = MCM(mcm.image_channels, sum(m.width for m in old_modalities), mcm.net.cfg)
    params = load_onnx_weights(old_mcm, path)
    check_readback(old_mcm, path, load_vectors(model_dir, "mcm", ("sample", "eps", "cond", "timestep")))
    runs, kept, added = _column_map(modalities, old_modalities, mcm.image_channels)
    cfg = mcm.net.cfg
    # the convolutions reading concat(x_t, eps, cond): conv_in (folded by space_to_depth) and conv_local
    inputs = {"net.conv_in.weight": cfg.space_to_depth, "net.conv_local.weight": 1}
    widened = {name: _widen_input_conv(params[name], runs, cfg.in_channels, fold) for name, fold in inputs.items()
               if name in params}
    load_onnx_weights(mcm, path, replace=widened)
    return kept, added


def reference_net_from(model_dir: Path, modality: str | None = None) -> tuple[UNet, dict]:
    """A reference net of `model_dir` (the segmenter, or with `modality` the estimator of that
    dense modality, `[estimators.NAME]`): its architecture and weights read back from its ONNX
    file, checked against its test vectors, and its model.toml section.

    Raises:
        WarmStartError: no such section with an architecture, the weights do not fit it, or they
            do not reproduce the test vectors.
    """
    doc = read_model_toml(model_dir)
    name, section = ("segmenter", doc.get("segmenter", {})) if modality is None else (
        f"estimators.{modality}", doc.get("estimators", {}).get(modality, {}))
    if "architecture" not in section or not (model_dir / section.get("file", "-")).exists():
        raise WarmStartError(f"{model_dir}: --init-from needs a model directory with [{name}] and its architecture")
    path = model_dir / section["file"]
    net = UNet(UNetConfig.from_dict(section["architecture"])).eval()
    load_onnx_weights(net, path, prefix="net.")
    vectors = load_vectors(model_dir, path.stem, ("image",))
    check_readback(UNetWithFeatures(net) if "features" in section else net, path, vectors)
    return net, section
