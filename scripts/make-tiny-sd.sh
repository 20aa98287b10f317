#!/usr/bin/env bash
# Rebuild the contract-2 fixture models/tiny-sd from nothing (no download): a tiny random
# Stable Diffusion-style pipeline (mcm-train tiny-diffusers), imported at 16 px (export-diffusers),
# and an MCM trained 30 steps on 24 procedural 16 px scenes with captions (mcm-train mcm); small
# sizes throughout, to keep models/ small.
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/mcm-train
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$M" tiny-diffusers --kind sd --out "$work/pipeline"
rm -f "$work/pipeline/tokenizer/tokenizer.json"  # as in real SD folders: vocab.json + merges.txt only
"$M" export-diffusers "$work/pipeline" --out "$work/imported" --size 16
"$M" data scenes --count 24 --size 16 --out "$work/data"
.venv/bin/python - "$work/data" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
stems = sorted(p.stem for p in (root / "images").glob("*.png"))
captions = {s: "a landscape with mountains" if i % 2 else "a lake under a blue sky" for i, s in enumerate(stems[:16])}
(root / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
PY
rm -rf models/tiny-sd
"$M" mcm --base "$work/imported" --data "$work/data" --out models/tiny-sd --run-dir "$work/run" --steps 30 --batch-size 4 \
    --channels 8,8 --res-blocks 1 --attention "" --cond-width 16
