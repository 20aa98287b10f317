"""Warm start: initialise a new MCM from the `mcm.onnx` of an existing model directory, adding
modalities without losing what the old MCM learnt (`mcm-train mcm --init-from DIR`).

The old weights are read back from the ONNX file (parameter names survive the export; GroupNorm
affines, which the exporter folds into anonymous `Mul`/`Add` constants, are found through their
nodes' module scope) and checked against the directory's own test vectors. The first convolution
(and `conv_local` with space-to-depth) reads `concat(x_t, eps, cond)`: its columns for x_t, eps
and every modality the old MCM had (same name, kind and channels) are copied, the columns of a
new modality are zero. So the new MCM starts
as exactly the old one, with the new modality ignored until training teaches it to use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from ..contract.modalities import ModalitySpec
from ..contract.model_toml import modalities_from_toml, read_model_toml
from ..nets.mcm import MCM

#: Largest difference between the test vectors of `mcm.onnx` and the weights read back from it.
READBACK_TOLERANCE = 1e-4


class WarmStartError(ValueError):
    """The model directory given to `--init-from` cannot initialise this MCM (names the file and the reason)."""


def onnx_parameters(path: Path) -> dict[str, np.ndarray]:
    """The trained tensors of an exported torch module, by state-dict name (e.g. `net.conv_in.weight`).

    Named initializers keep their names; an anonymous constant feeding a `Mul` (`Add`) node whose
    scope is `/net/down.0/norm1/...` becomes `net.down.0.norm1.weight` (`.bias`), flattened, also
    where the exporter shares one constant between equal tensors through `Identity` nodes.

    Raises:
        WarmStartError: the file cannot be read.
    """
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises several types for a broken file
        raise WarmStartError(f"{path}: not a readable ONNX file ({e})") from e
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # the exporter shares equal constants through Identity nodes
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    params = {name: v for name, v in values.items() if not name.startswith("onnx::")}
    suffix = {"Mul": "weight", "Add": "bias"}
    for node in graph.node:
        for name in node.input:
            if name.startswith("onnx::") and name in values and node.op_type in suffix:
                scope = node.name.strip("/").split("/")[:-1]
                params[".".join(scope + [suffix[node.op_type]])] = values[name].reshape(-1)
    return params


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


def _check_readback(mcm: MCM, model_dir: Path) -> None:
    """The torch MCM with the weights read back reproduces `mcm.onnx` on the directory's test vectors.

    Raises:
        WarmStartError: no test vectors, or a difference above `READBACK_TOLERANCE`.
    """
    vec = model_dir / "test_vectors"
    names = ("sample", "eps", "cond", "timestep")
    try:
        inputs = {n: np.load(vec / f"mcm.{n}.npy") for n in names}
    except OSError as e:
        raise WarmStartError(f"{vec}: the mcm test vectors are needed to check the weights read back ({e})") from e
    want = ort.InferenceSession(str(model_dir / "mcm.onnx"), providers=["CPUExecutionProvider"]).run(None, inputs)
    with torch.no_grad():
        got = mcm(*(torch.from_numpy(inputs[n]) for n in names))
    diff = max(float(np.abs(g.numpy() - w).max()) for g, w in zip(got, want, strict=True))
    if diff > READBACK_TOLERANCE:
        raise WarmStartError(f"{model_dir}/mcm.onnx: the weights read back differ from the file by {diff:.2e} "
                             f"(> {READBACK_TOLERANCE:g}): another architecture (GroupNorm groups?) or mcm-train version")


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
    old_mcm = MCM(mcm.image_channels, sum(m.width for m in old_modalities), mcm.net.cfg)
    params = onnx_parameters(model_dir / section.get("file", "mcm.onnx"))
    state = old_mcm.state_dict()
    for name, tensor in state.items():
        if name not in params:
            raise WarmStartError(f"{model_dir}/mcm.onnx: no tensor for {name} (another MCM architecture?)")
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise WarmStartError(f"{model_dir}/mcm.onnx: {name} is {list(params[name].shape)}, this MCM's is "
                                 f"{list(tensor.shape)} (give the same --channels, --res-blocks, --attention, "
                                 f"--space-to-depth)")
        state[name] = torch.from_numpy(params[name].copy())
    old_mcm.load_state_dict(state)
    _check_readback(old_mcm, model_dir)
    runs, kept, added = _column_map(modalities, old_modalities, mcm.image_channels)
    cfg = mcm.net.cfg
    # the convolutions reading concat(x_t, eps, cond): conv_in (folded by space_to_depth) and conv_local
    inputs = {"net.conv_in.weight": cfg.space_to_depth, "net.conv_local.weight": 1}
    mcm.load_state_dict({name: _widen_input_conv(params[name], runs, cfg.in_channels, inputs[name])
                         if name in inputs else tensor for name, tensor in state.items()})
    return kept, added
