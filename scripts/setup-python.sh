#!/usr/bin/env bash
# Create .venv with mcm-train and its test extras (PyTorch 2.13 CPU-capable build, ONNX tools).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e "train[test]"
