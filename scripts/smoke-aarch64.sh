#!/usr/bin/env bash
# Smoke test of the aarch64 device binary under qemu user emulation (about 150x slower than
# native, so only the tiny 16x16 model and 2 DDIM steps): it links nothing but glibc, validates
# the shipped config, generates one image with tract and one with the onnxruntime backend (the
# aarch64 wheel's library; MCM_SMOKE_ONNXRUNTIME=0 skips it), and runs the whole MQTT loop
# (in-process broker, service, tablet client) once per sample frame.
# Usage: scripts/smoke-aarch64.sh [BINARY]   (default target/aarch64-unknown-linux-gnu/release/mcm-edge)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/mcm-edge}
SYSROOT=/usr/aarch64-linux-gnu
run() { qemu-aarch64 -L "$SYSROOT" "$BIN" "$@"; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# 1. The device binary holds no training or Python dependency: only glibc, libm, libgcc_s.
needed=$(aarch64-linux-gnu-readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
echo "NEEDED: $needed"
for lib in $needed; do
  case "$lib" in
    libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-aarch64.so.1) ;;
    *) echo "unexpected shared library $lib" >&2; exit 1 ;;
  esac
done
if aarch64-linux-gnu-readelf -p .rodata "$BIN" 2>/dev/null | grep -qiE 'libpython|libtorch'; then
  echo "the device binary refers to Python or torch" >&2; exit 1
fi

# 2. It runs, validates config + model, and generates.
run --version
sed 's|^dir = .*|dir = "models/tiny"|' config/edge.toml > "$OUT/edge.toml"
run check --config "$OUT/edge.toml"
run generate --model models/tiny --steps 2 --out "$OUT/out.png" segmentation=config/samples/segmentation/tablet-0.png
[ "$(head -c 8 "$OUT/out.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || { echo "not a PNG" >&2; exit 1; }

# 3. The onnxruntime backend and tract's f16 on ARM, on a Cortex-A76 as qemu shows it
#    (scripts/a76-sysroot.sh: the host's /proc/cpuinfo crashes onnxruntime's CPU probe).
#    onnxruntime: the aarch64 wheel's libonnxruntime (pip download, not built), one image, the same
#    as tract's within 1/255; tract f16 on its native fp16 kernels near f32 (mean pixel difference
#    <= 1/255, 99 % of pixels within 4/255; a few pixels differ more).
if [ "${MCM_SMOKE_ONNXRUNTIME:-1}" = 1 ]; then
  ORT_LIB=$(scripts/onnxruntime-aarch64.sh)
  ROOT_A76="$OUT/sysroot"
  scripts/a76-sysroot.sh "$ROOT_A76"
  a76() { qemu-aarch64 -cpu cortex-a76 -L "$ROOT_A76" "$BIN" "$@"; }
  frame=segmentation=config/samples/segmentation/tablet-0.png
  a76 generate --model models/tiny --steps 2 --threads 1 --out "$OUT/tract.png" "$frame"
  a76 generate --model models/tiny --steps 2 --threads 1 --backend onnxruntime --ort-library "$ORT_LIB" --out "$OUT/ort.png" "$frame"
  a76 generate --model models/tiny --steps 2 --threads 1 --precision f16 --out "$OUT/f16.png" "$frame" 2> "$OUT/f16.log"
  if grep -q "emulates f16" "$OUT/f16.log"; then echo "tract did not find fp16 arithmetic" >&2; exit 1; fi
  .venv/bin/python - "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
img = {name: np.asarray(Image.open(f"{sys.argv[1]}/{name}.png").convert("RGB"), dtype=int) for name in ("tract", "ort", "f16")}
ort = int(np.abs(img["ort"] - img["tract"]).max())
f16 = np.abs(img["f16"] - img["tract"])
print(f"aarch64: onnxruntime vs tract: max pixel difference {ort}/255; tract f16 vs f32: mean {f16.mean():.2f}/255, "
      f"99th percentile {np.percentile(f16, 99):.0f}/255, max {f16.max()}/255")
sys.exit(0 if ort <= 1 and f16.mean() <= 1 and np.percentile(f16, 99) <= 4 else 1)
PY
fi

# 4. The whole loop over MQTT on the ARM binary.
run demo --model models/tiny --steps 2 --out "$OUT/demo" --no-serve
[ -s "$OUT/demo/sheet.png" ] || { echo "no contact sheet" >&2; exit 1; }
echo "aarch64 smoke test passed"
