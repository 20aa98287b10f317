"""The FLOP figures of `model.toml` (`flops` of each net: floating-point operations of one run at
batch 1, 2 per multiply-add), as tract on the device estimates them: `mcm-edge info --json` is run
on the exported directory when the binary can be found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..contract.model_toml import read_model_toml, update_model_toml

_REPO = Path(__file__).resolve().parents[3]


def find_mcm_edge() -> Path | None:
    """The device binary: `$MCM_EDGE`, `mcm-edge` on the PATH, or this checkout's release build."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", _REPO / "target")) / "release" / "mcm-edge"
    for cand in (os.environ.get("MCM_EDGE"), shutil.which("mcm-edge"), str(target)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def record_flops(model_dir: Path, binary: Path | None = None, timeout_s: float = 1800) -> dict | None:
    """Write each net's `flops` (one run) and `[base] flops_per_step` (one sampling step: the base's
    passes at the model's guidance scale, and the MCM) into `model_dir/model.toml` from
    `mcm-edge info --json`; returns that report, or None when no binary is found or it fails
    (the figures are then left out, and `mcm-edge info` shows them later)."""
    binary = binary or find_mcm_edge()
    if binary is None:
        return None
    run = subprocess.run([str(binary), "info", str(model_dir), "--json"], capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0:
        print(f"note: mcm-edge info failed, no FLOP figures recorded: {run.stderr.strip()}")
        return None
    report = json.loads(run.stdout)
    doc = read_model_toml(model_dir)
    flops = {n["net"]: int(n["flops"]) for n in report["nets"]}
    sections = {}
    for net, section in (("base", doc.get("base")), ("mcm", doc.get("mcm")), ("text", doc.get("text"))):
        if section is not None and net in flops:
            sections[net] = {**section, "flops": flops[net]}
    if "base" in sections:
        sections["base"]["flops_per_step"] = int(report["flops_per_step"])
    if "decoder" in flops and "latent" in doc:
        sections["latent"] = {**doc["latent"], "decoder": {**doc["latent"]["decoder"], "flops": flops["decoder"]}}
    update_model_toml(model_dir, **sections)
    return report
