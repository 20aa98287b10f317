"""Shared fixtures: a tiny scenes dataset written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcm_train.data.classes import load_classes
from mcm_train.data.scenes import write_scenes

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 scenes of 16x16 pixels."""
    out = tmp_path_factory.mktemp("scenes")
    write_scenes(out, 12, 16, 0, load_classes())
    return out
