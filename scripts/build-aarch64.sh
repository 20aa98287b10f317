#!/usr/bin/env bash
# Build the device binary for aarch64-unknown-linux-gnu (Jetson and similar 64-bit ARM boards) on an
# x86_64 Debian 12 host with Debian packages only, no toolchain download:
#   - gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: linker and glibc for the target (and the C/asm
#     compiler that ring and tract's NEON kernels are built with),
#   - qemu-user: runs the ARM binary here (smoke test),
#   - rustc-web 1.96 with libstd-rust-web-dev (amd64 for build scripts, arm64 for the target), from
#     bookworm-security, unpacked into $MCM_AARCH64_TOOLCHAIN (apt-get download + dpkg -x) and used
#     through RUSTC=; tract needs Rust >= 1.91, more than the rustc of bookworm itself.
# Usage: scripts/build-aarch64.sh [--smoke] [--package]
#   --smoke    also run the ARM binary under qemu-aarch64 on models/tiny and check it links nothing
#              but glibc (no Python, no training dependency).
#   --package  also write dist/mcm-edge-aarch64.tar.gz: the install layout for the board
#              (stripped bin/mcm-edge, models/default, config/, install.sh; README "Flash and run").
# Output: target/aarch64-unknown-linux-gnu/release/mcm-edge
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
TOOLCHAIN=${MCM_AARCH64_TOOLCHAIN:-$PWD/.toolchain/aarch64}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

install_packages() {
  local missing=()
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing+=(libc6-dev-arm64-cross)
  # libonnxruntime's C++ runtime, for the onnxruntime smoke run under qemu.
  [ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ] || missing+=(libstdc++6-arm64-cross)
  command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Debian's rustc, unpacked (not installed) so that it does not replace the host's toolchain.
unpack_rustc() {
  [ -x "$TOOLCHAIN/rustc" ] && return
  local debs; debs=$(mktemp -d)
  (cd "$debs" && apt-get download -qq rustc-web libstd-rust-web-1.96 libstd-rust-web-dev \
    libstd-rust-web-dev:arm64 libllvm22 2>/dev/null)
  mkdir -p "$TOOLCHAIN"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$TOOLCHAIN/root"; done
  rm -rf "$debs"
  # A wrapper, so that LD_LIBRARY_PATH (libLLVM, librustc_driver) reaches rustc and nothing else.
  cat > "$TOOLCHAIN/rustc" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$TOOLCHAIN/root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$TOOLCHAIN/root/usr/bin/rustc" "\$@"
EOF
  chmod +x "$TOOLCHAIN/rustc"
}

install_packages
unpack_rustc
"$TOOLCHAIN/rustc" --version
export RUSTC="$TOOLCHAIN/rustc"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# With the onnxruntime backend: it loads a libonnxruntime at run time only (dlopen), so the binary
# still links nothing but glibc, and a board can use the aarch64 wheel's library (README "Speed").
cargo build --release --locked --target "$TARGET" --bin mcm-edge --features onnxruntime
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/release/mcm-edge"
file "$BIN" 2>/dev/null || ls -l "$BIN"

for arg in "$@"; do
  case "$arg" in
    --smoke) scripts/smoke-aarch64.sh "$BIN" ;;
    --package)
      stage=$(mktemp -d)/mcm-edge
      mkdir -p "$stage/bin" "$stage/config/deploy" dist
      aarch64-linux-gnu-strip -o "$stage/bin/mcm-edge" "$BIN"
      cp -r models "$stage/models" && rm -rf "$stage"/models/tiny* "$stage"/models/*/test_vectors
      cp config/edge.toml config/classes.toml "$stage/config/"
      cp -r config/samples "$stage/config/"
      cp config/deploy/mcm-edge.service "$stage/config/deploy/"
      cp config/deploy/install.sh README.md "$stage/"
      tar -C "$(dirname "$stage")" -czf dist/mcm-edge-aarch64.tar.gz mcm-edge
      rm -rf "$(dirname "$stage")"
      ls -l dist/mcm-edge-aarch64.tar.gz ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
