#!/usr/bin/env bash
# The aarch64 libonnxruntime for the device's optional onnxruntime backend, taken from the
# aarch64 wheel of PyPI (downloaded by pip for that platform, never built), unpacked once into
# .toolchain/onnxruntime-aarch64/; prints the library's path. The version is the one of the venv
# (train/pyproject.toml), so that both backends and both architectures run the same onnxruntime.
# Usage: scripts/onnxruntime-aarch64.sh   (needs .venv: scripts/setup-python.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')
DIR=.toolchain/onnxruntime-aarch64/$VERSION
LIB="$DIR/libonnxruntime.so.$VERSION"
if [ ! -f "$LIB" ]; then
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  # manylinux_2_28: glibc 2.28 or newer (Debian 12's arm64 cross glibc is 2.36; Jetson L4T 36: 2.35).
  PIP_NO_CACHE_DIR=1 .venv/bin/pip download -q "onnxruntime==$VERSION" --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 -d "$wheels" >&2
  mkdir -p "$DIR"
  .venv/bin/python - "$wheels" "$DIR" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if pathlib.PurePosixPath(name).name.startswith("libonnxruntime.so"):
            (pathlib.Path(sys.argv[2]) / pathlib.PurePosixPath(name).name).write_bytes(z.read(name))
PY
fi
[ -f "$LIB" ] || { echo "no $LIB in the aarch64 wheel" >&2; exit 1; }
echo "$LIB"
