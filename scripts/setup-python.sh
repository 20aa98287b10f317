#!/usr/bin/env bash
# Create .venv with mcm-train and its test extras (PyTorch 2.13 CPU-capable build, ONNX tools).
set -euo pipefail
cd "$(dirname "$0")/.."
# No wheel cache: the CUDA-capable torch wheels and their unpacked copies would need the disk twice
# (a CI run once failed with "No space left on device" in this step).
export PIP_NO_CACHE_DIR=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e "train[test]"
