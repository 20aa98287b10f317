#!/usr/bin/env bash
# The project's test command: Rust (unit, vectors, service end-to-end), the optional onnxruntime
# backend, Python tests, and the tablet page in a real browser. Needs .venv
# (scripts/setup-python.sh), node with npm, and Debian's chromium (apt-get install chromium).
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
# The tablet page (web/) in headless chromium against `mcm-edge demo` (built by cargo test above).
command -v "${CHROMIUM:-chromium}" >/dev/null || { echo "test.sh: chromium is missing (apt-get install chromium)" >&2; exit 1; }
[ -d node_modules/playwright-core ] && [ -d node_modules/mqtt ] || npm ci --no-audit --no-fund --silent
node tests/web/tablet.mjs
