"""Weights of an exported net read back from its ONNX file into the PyTorch module it came from
(`mcm-train mcm --init-from`, `mcm-train distill --teacher DIR`).

Parameter names survive the export; GroupNorm affines, which the exporter folds into anonymous
`Mul`/`Add` constants, are found through their nodes' module scope, and constants the exporter
shares between equal tensors through `Identity` nodes. The caller checks the read-back module
against the directory's test vectors (`check_readback`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

#: Largest difference between an ONNX file's outputs and the module with its weights read back.
READBACK_TOLERANCE = 1e-4


class WeightsError(ValueError):
    """An ONNX file's weights do not fit a module (names the file and the tensor or the difference)."""


def onnx_parameters(path: Path) -> dict[str, np.ndarray]:
    """The trained tensors of an exported torch module, by state-dict name (e.g. `net.conv_in.weight`).

    Named initializers keep their names; an anonymous constant feeding a `Mul` (`Add`) node whose
    scope is `/net/down.0/norm1/...` becomes `net.down.0.norm1.weight` (`.bias`), flattened, also
    where the exporter shares one constant between equal tensors through `Identity` nodes.

    Raises:
        WeightsError: the file cannot be read.
    """
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises several types for a broken file
        raise WeightsError(f"{path}: not a readable ONNX file ({e})") from e
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


def load_onnx_weights(module: nn.Module, path: Path, prefix: str = "",
                      replace: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Load the weights of `path` into `module` in place: state-dict key `k` is the file's tensor
    `prefix + k` (`net.` for a `base.onnx`, whose exporter wraps the U-Net as `net`). `replace`
    gives tensors to use instead (e.g. a widened first convolution). Returns the file's tensors.

    Raises:
        WeightsError: a tensor is missing or has another shape (another architecture).
    """
    params = onnx_parameters(path)
    state = module.state_dict()
    for name, tensor in state.items():
        key = prefix + name
        if key not in params:
            raise WeightsError(f"{path}: no tensor for {key} (another architecture?)")
        if tuple(params[key].shape) != tuple(tensor.shape) and not (replace and name in replace):
            raise WeightsError(f"{path}: {key} is {list(params[key].shape)}, this net's is {list(tensor.shape)} "
                               f"(give the same --channels, --res-blocks, --attention, --space-to-depth)")
        state[name] = (replace or {}).get(name, torch.from_numpy(params[key].copy()))
    module.load_state_dict(state)
    return params


def check_readback(module: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], path: Path,
                   inputs: dict[str, np.ndarray]) -> None:
    """`module(*inputs)` (a module or one of its methods, inputs in the file's order) reproduces
    every output of `path` under onnxruntime.

    Raises:
        WeightsError: a difference above `READBACK_TOLERANCE`.
    """
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    with torch.no_grad():
        got = module(*(torch.from_numpy(v) for v in inputs.values()))
    got = got if isinstance(got, tuple) else (got,)
    diff = max(float(np.abs(g.numpy() - w).max()) for g, w in zip(got, want, strict=True))
    if diff > READBACK_TOLERANCE:
        raise WeightsError(f"{path}: the weights read back differ from the file by {diff:.2e} "
                           f"(> {READBACK_TOLERANCE:g}): another architecture (GroupNorm groups?) or mcm-train version")


def load_vectors(model_dir: Path, net: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The test vectors `model_dir/test_vectors/NET.NAME.npy` for `names`, in order.

    Raises:
        WeightsError: one is missing (they are needed to check weights read back).
    """
    vec = model_dir / "test_vectors"
    try:
        return {n: np.load(vec / f"{net}.{n}.npy") for n in names}
    except OSError as e:
        raise WeightsError(f"{vec}: the {net} test vectors are needed to check the weights read back ({e})") from e
