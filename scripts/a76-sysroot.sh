#!/usr/bin/env bash
# A qemu-user sysroot (-L DIR) that shows ARM guests a Raspberry Pi 5's CPU: qemu-user 7.2 gives
# an aarch64 guest the host's /proc/cpuinfo, on which onnxruntime's CPU probe (pytorch/cpuinfo)
# crashes and tract finds no fp16 arithmetic and no CPU part. DIR/lib is Debian's arm64 cross
# glibc; DIR/proc/cpuinfo lists four Cortex-A76 cores (part 0xd0b, `asimdhp`). qemu-user resolves
# absolute paths under -L first; run with `-cpu cortex-a76`, so that the fp16 and dot-product
# instructions it advertises exist and nothing more (`-cpu max` adds SVE, SME and more, and
# onnxruntime then picks other kernels: 40 % fewer instructions per image on the default).
# Usage: scripts/a76-sysroot.sh DIR
set -euo pipefail
DIR=${1:?usage: scripts/a76-sysroot.sh DIR}
mkdir -p "$DIR/proc"
ln -sfn /usr/aarch64-linux-gnu/lib "$DIR/lib"
for cpu in 0 1 2 3; do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$cpu"
done > "$DIR/proc/cpuinfo"
