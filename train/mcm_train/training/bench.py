"""Training speed on this machine: seconds per optimiser step of the base and of the MCM at the
default sizes (README "Speed"). Run with `python -m mcm_train.training.bench [--size 64 --batch-size 16]`.

The MCM step includes the frozen base's forward through onnxruntime when a `base.onnx` is given,
as `mcm-train mcm` runs it, else through PyTorch under `no_grad`."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..nets.mcm import MCM, modulate
from ..nets.unet import UNet, UNetConfig, count_parameters
from .frozen import onnx_base_fn, torch_base_fn


def _median_seconds(step: Callable[[], None], runs: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base-onnx", type=Path, help="time the MCM step with this base through onnxruntime")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    b, s = a.batch_size, a.size
    base = UNet(UNetConfig(channels=(16, 32, 64, 128), num_res_blocks=1, image_size=s))
    mcm = MCM(3, 11, UNetConfig(channels=(16, 32, 64), num_res_blocks=1, image_size=s))
    x, t, cond = torch.randn(b, 3, s, s), torch.rand(b) * 999, torch.rand(b, 11, s, s)
    opt_base, opt_mcm = torch.optim.AdamW(base.parameters()), torch.optim.AdamW(mcm.parameters())

    def base_step() -> None:
        loss = F.mse_loss(base(x, t), x)
        opt_base.zero_grad()
        loss.backward()
        opt_base.step()

    base_fn = onnx_base_fn(a.base_onnx, a.threads) if a.base_onnx else torch_base_fn(base.eval())

    def mcm_step() -> None:
        with torch.no_grad():
            eps = base_fn(x, t)
        gamma, beta = mcm(x, eps, cond, t)
        loss = F.mse_loss(modulate(eps, gamma, beta), x)
        opt_mcm.zero_grad()
        loss.backward()
        opt_mcm.step()

    report = {
        "size": s, "batch_size": b, "threads": a.threads,
        "base_parameters": count_parameters(base), "mcm_parameters": count_parameters(mcm),
        "base_train_step_s": round(_median_seconds(base_step, a.runs), 3),
        "mcm_train_step_s": round(_median_seconds(mcm_step, a.runs), 3),
        "mcm_base_forward": "onnxruntime" if a.base_onnx else "pytorch",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
