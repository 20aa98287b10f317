"""The frozen base as a black box for MCM training: eps from PyTorch weights or from `base.onnx`
through onnxruntime. Either way no gradient flows through it (Ham et al. 2023, Sec. 3.2). A
frozen MCM (the teacher's, for `mcm-train mcm --distill-from`) runs the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..nets.unet import UNet, UNetConfig
from .trainers import BaseFn, McmFn


def _session(path: Path, threads: int, what: str) -> ort.InferenceSession:
    """An onnxruntime CPU session of `path` with `threads` intra-op threads.

    Raises:
        FileNotFoundError: `path` does not exist (the message says it is `what`).
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no {what}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_mcm_fn(path: Path, threads: int = 2) -> McmFn:
    """gamma and beta of `mcm.onnx` (inputs `sample`, `eps` [B, C, H, W], `cond` [B, K, H, W],
    `timestep` [B]) via onnxruntime on the CPU, returned on the device of `sample`.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    session = _session(path, threads, "MCM")

    def mcm_fn(x_t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor, timestep: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"sample": x_t, "eps": eps, "cond": cond, "timestep": timestep}
        gamma, beta = session.run(["gamma", "beta"], {k: v.cpu().numpy() for k, v in feed.items()})
        return torch.from_numpy(gamma).to(x_t.device), torch.from_numpy(beta).to(x_t.device)

    return mcm_fn


def onnx_base_fn(path: Path, threads: int = 2, timestep_cond: np.ndarray | None = None) -> BaseFn:
    """The prediction of `base.onnx` (inputs `sample` [B, C, H, W], `timestep` [B], and for a
    text-conditional base `encoder_hidden_states` [B, L, D], the third argument, and with
    `timestep_cond` (LCM's guidance embedding, f32 [Dc]) that input repeated over the batch; its
    one output: eps, v or x_0, converted to eps by the trainer) via onnxruntime on the CPU,
    returned on the device of `sample`.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    session = _session(path, threads, "base model")
    output = session.get_outputs()[0].name  # eps, v or x_0 (`[schedule] prediction_type`)

    def base_fn(x_t: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"sample": x_t.cpu().numpy(), "timestep": timestep.cpu().numpy()}
        if text is not None:
            feed["encoder_hidden_states"] = text.cpu().numpy()
        if timestep_cond is not None:
            feed["timestep_cond"] = np.repeat(timestep_cond[None], x_t.shape[0], axis=0)
        out = session.run([output], feed)[0]
        return torch.from_numpy(out).to(x_t.device)

    return base_fn


def load_base_run(run_dir: Path) -> UNet:
    """The EMA weights of a `pretrain-base` run (`run_dir/base.pt` + `run_dir/config.json`), frozen.

    Raises:
        FileNotFoundError: the checkpoint or its config is missing.
    """
    run_dir = Path(run_dir)
    cfg = UNetConfig.from_dict(json.loads((run_dir / "config.json").read_text())["unet"])
    net = UNet(cfg)
    ema = torch.load(run_dir / "base.pt", map_location="cpu", weights_only=False)["ema"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    net.eval().requires_grad_(False)
    return net


def torch_base_fn(net: UNet, device: str = "cpu") -> BaseFn:
    """eps from a frozen PyTorch base, moved to `device` (run under `torch.no_grad()` by the trainer)."""
    net.to(device)
    return lambda x_t, timestep: net(x_t, timestep)
