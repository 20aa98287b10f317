"""Time a model directory's ONNX files through onnxruntime, the reference CPU runtime.

Same inputs and shapes as the device (`mcm-edge bench`): batch 1, `sample` / `eps` `[1, C, H, W]`,
`cond` `[1, K, H, W]`, `timestep` `[1]`, from `model.toml`. Reports the median latency of one call
of `base.onnx` and of `mcm.onnx` in milliseconds, for each requested intra-op thread count, as
JSON; `mcm-edge bench --ort FILE` reads it and prints tract / onnxruntime per net.

    .venv/bin/python bench/ort_bench.py models/default --threads 1 2 --json out/ort-default.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def inputs_for(info: dict[str, Any], net: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of `net` ("base" or "mcm") at batch 1, shapes from `model.toml`.

    `sample`, `eps`: standard normal `[1, C, H, W]`; `cond`: `[1, K, H, W]` in {0, 1}; `timestep`:
    `[1]` float32 500.
    """
    c, size = info["image"]["channels"], info["image"]["size"]
    feeds = {"sample": rng.standard_normal((1, c, size, size), dtype=np.float32), "timestep": np.array([500.0], np.float32)}
    if net == "mcm":
        k = info["mcm"]["cond_channels"]
        feeds["eps"] = rng.standard_normal((1, c, size, size), dtype=np.float32)
        feeds["cond"] = (rng.random((1, k, size, size)) > 0.5).astype(np.float32)
    return feeds


def time_net(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> float:
    """Median wall time of one `session.run` in ms (after 3 warm-up runs), `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(model_dir: Path, threads: list[int], runs: int) -> dict[str, Any]:
    """Time every net of `model_dir` (base, and mcm when present) at each thread count.

    Raises:
        FileNotFoundError: `model.toml` or an ONNX file is missing.
    """
    info = tomllib.loads((model_dir / "model.toml").read_text())
    rng = np.random.default_rng(0)
    nets = ["base"] + (["mcm"] if info.get("mcm") else [])
    report: dict[str, Any] = {
        "model": str(model_dir),
        "runtime": f"onnxruntime {ort.__version__}",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "runs": runs,
        "ms": {},
    }
    for net in nets:
        feeds = inputs_for(info, net, rng)
        path = model_dir / info[net]["file"]
        report["ms"][net] = {str(t): time_net(path, feeds, t, runs) for t in threads}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (tract uses 1)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    report = bench(args.model_dir, args.threads, args.runs)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
