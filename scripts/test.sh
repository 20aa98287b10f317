#!/usr/bin/env bash
# The project's test command: Rust (unit, vectors, service end-to-end), the optional onnxruntime
# backend, and Python tests. Needs .venv (scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
# The onnxruntime backend (cargo feature `onnxruntime`) against the venv's libonnxruntime: only
# its own test target, so the rest of the suite does not run twice. Its tests fail without the
# library, so a missing onnxruntime wheel fails here instead of skipping.
ORT_DYLIB_PATH="$(.venv/bin/python -c 'import onnxruntime, pathlib; print(next((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*")))')"
export ORT_DYLIB_PATH
cargo test --release --features onnxruntime --test onnxruntime
.venv/bin/python -m pytest -q train/tests
