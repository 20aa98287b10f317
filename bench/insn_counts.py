"""Instructions per image and per sampling step of the device binary, a work figure that does not
depend on this shared machine's load: on aarch64 under qemu-aarch64 with our instruction-count
plugin (`bench/qemu/insn_count.c`; Debian's qemu ships none), on x86-64 under valgrind
(`callgrind`, its `Collected` Ir count), for tract (f32, f16) and onnxruntime, one thread each.

Each image is a whole `mcm-edge generate` (load + STEPS steps + PNG); the load alone is
`mcm-edge check` on a config with the same model and `[runtime]` (it loads and plans the same
nets, then stops), and the generation is the difference.

    .venv/bin/python bench/insn_counts.py --model models/default --steps 4 --json docs/insn-default.json

Needs the aarch64 binary (`scripts/build-aarch64.sh`, with the onnxruntime feature), the x86
binary built with `cargo build --release --features onnxruntime`, qemu-user, gcc and valgrind.
The ARM guest sees a Cortex-A76 (scripts/a76-sysroot.sh, qemu `-cpu cortex-a76`: no SVE, which
`-cpu max` would offer): tract picks its A76 kernels and its native fp16 ones. valgrind hides
AVX-512, so x86 counts are of the AVX2 kernels.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
A64 = ROOT / "target/aarch64-unknown-linux-gnu/release/mcm-edge"
X86 = ROOT / "target/release/mcm-edge"
FRAME = "segmentation=config/samples/segmentation/tablet-0.png"


def plugin(out: Path) -> Path:
    """Build the qemu plugin into `out`."""
    so = out / "insn_count.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(ROOT / "bench/qemu/insn_count.c")], check=True)
    return so


def generate_args(model: str, steps: int, backend: str, ort_library: str, png: Path) -> list[str]:
    """`mcm-edge generate` arguments for one of `tract`, `tract-f16`, `onnxruntime`."""
    args = ["generate", "--model", model, "--steps", str(steps), "--threads", "1", "--out", str(png)]
    if backend == "tract-f16":
        args += ["--precision", "f16"]
    elif backend == "onnxruntime":
        args += ["--backend", "onnxruntime", "--ort-library", ort_library]
    return args + [FRAME]


def check_args(model: str, backend: str, ort_library: str, config: Path) -> list[str]:
    """`mcm-edge check` arguments that load `model` as `generate_args` does, and nothing more."""
    runtime = {"tract": 'backend = "tract"', "tract-f16": 'backend = "tract"\nprecision = "f16"',
               "onnxruntime": f'backend = "onnxruntime"\nonnxruntime_library = "{ort_library}"'}[backend]
    config.write_text(f'[mqtt]\ndevice_id = "insn"\n[model]\ndir = "{model}"\n[runtime]\nthreads = 1\n{runtime}\n')
    return ["check", "--config", str(config)]


def count(cmd: list[str], pattern: str, env: dict[str, str]) -> int:
    """Run `cmd` and read the instruction count that `pattern` (one group) finds in its output."""
    run = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    match = re.search(pattern, run.stdout + run.stderr)
    if not match:
        sys.exit(f"no instruction count in the output of {' '.join(cmd)}")
    return int(match.group(1).replace(",", ""))


def resumed_rows(path: Path | None, model: str, steps: int) -> list[dict]:
    """The rows of an earlier report at `path` for the same `model` and `steps` (none otherwise)."""
    if path is None or not path.exists():
        return []
    report = json.loads(path.read_text())
    return report["rows"] if report.get("model") == model and report.get("steps") == steps else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument("--arch", nargs="+", default=["aarch64", "x86_64"])
    p.add_argument("--backends", nargs="+", default=["tract", "tract-f16", "onnxruntime"])
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in --json (same model and steps) and count only the others")
    a = p.parse_args()
    rows = resumed_rows(a.json, a.model, a.steps) if a.resume else []
    out = Path(tempfile.mkdtemp(prefix="insn-"))
    so = plugin(out)
    sysroot = out / "sysroot"  # a Cortex-A76 as the guest sees it (scripts/a76-sysroot.sh)
    subprocess.run([str(ROOT / "scripts/a76-sysroot.sh"), str(sysroot)], check=True)
    ort = {
        "aarch64": subprocess.run([str(ROOT / "scripts/onnxruntime-aarch64.sh")], check=True, capture_output=True, text=True).stdout.strip(),
        "x86_64": glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))[0],
    }
    envs = {arch: dict(os.environ, RUST_LOG="error") for arch in ("aarch64", "x86_64")}
    for arch in a.arch:
        for backend in a.backends:
            if arch == "x86_64" and backend == "tract-f16":
                continue  # emulated f16 on x86 is not what a board runs: accuracy only
            if any(r["arch"] == arch and r["backend"] == backend for r in rows):
                continue
            counts = {}
            for what in ("image", "load"):
                if what == "image":
                    args = generate_args(a.model, a.steps, backend, ort[arch], out / "image.png")
                else:
                    args = check_args(a.model, backend, ort[arch], out / "edge.toml")
                if arch == "aarch64":
                    cmd = ["qemu-aarch64", "-cpu", "cortex-a76", "-L", str(sysroot), "-plugin", str(so), str(A64), *args]
                    counts[what] = count(cmd, r"insn_count: (\d+)", envs[arch])
                else:
                    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(X86), *args]
                    counts[what] = count(cmd, r"Collected : ([\d,]+)", envs[arch])
            generation = counts["image"] - counts["load"]
            row = {"arch": arch, "backend": backend, "steps": a.steps, "instructions_per_image": counts["image"],
                   "instructions_load": counts["load"], "instructions_generation": generation,
                   "instructions_per_step": generation / a.steps}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if a.json:  # after each row: a run cut short keeps what it counted (--resume)
                report = {"model": a.model, "steps": a.steps, "threads": 1, "rows": rows}
                a.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
