#!/usr/bin/env python3
"""Summarise a `scripts/train-budget.sh` output folder as JSON on stdout: per method the steps
reached in the budget, seconds per step, trainable parameters (from each model.toml's [mcm]) and
the `mcm-edge eval` figures.

    scripts/budget-summary.py OUT MINUTES > OUT/summary.json
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path


def summary(out: Path, minutes: float) -> dict:
    """The summary of `out` (layout written by train-budget.sh)."""
    methods = {}
    for method in ("mcm", "controlnet"):
        mcm = tomllib.loads((out / method / "model.toml").read_text())["mcm"]
        evals = {p.stem.removeprefix(f"{method}-eval-"): json.loads(p.read_text())
                 for p in sorted(out.glob(f"{method}-eval-s*.json"))}
        methods[method] = {"steps": mcm["steps"], "seconds_per_step": mcm["seconds_per_step"],
                           "trainable_parameters": mcm["parameters"], "final_loss": mcm["final_loss"],
                           "architecture": mcm.get("architecture", {"hint_channels": mcm.get("hint_channels")}),
                           "eval": evals}
    return {"what": "equal wall-clock budget, MCM vs ControlNet-style baseline, trained side by side "
                    "(scripts/train-budget.sh), scored by mcm-edge eval", "budget_minutes": minutes,
            "methods": methods}


if __name__ == "__main__":
    print(json.dumps(summary(Path(sys.argv[1]), float(sys.argv[2])), indent=2))
