#!/usr/bin/env bash
# The project's test command: Rust (unit, vectors, service end-to-end) and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
.venv/bin/python -m pytest -q train/tests
