#!/usr/bin/env bash
# Equal wall-clock budget, MCM vs the ControlNet-style baseline (README "Training cost"):
# both trained side by side (one thread each, same base, data, batch and seed) for MINUTES, exported
# when the budget is spent, then scored by `mcm-edge eval` on the first LIMIT held-out scenes.
#
#   scripts/train-budget.sh [MINUTES=20] [LIMIT=24] [OUT=out/budget]  -> OUT/summary.json
#
# Needs models/default, runs/base (the base's PyTorch run), data/scenes-train and data/scenes-val.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-20}; LIMIT=${2:-24}; OUT=${3:-out/budget}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
common=(--base models/default --base-run runs/base --data data/scenes-train --steps 1000000
        --minutes "$MINUTES" --budget-final --threads 1)
for method in mcm controlnet; do
  rm -rf "$OUT/$method" "$OUT/run-$method"
  .venv/bin/mcm-train "$method" "${common[@]}" --out "$OUT/$method" --run-dir "$OUT/run-$method" \
    > "$OUT/$method.log" 2>&1 &
done
wait
cargo build --release --quiet
eval_at() {  # METHOD STRENGTH
  target/release/mcm-edge eval --model "$OUT/$1" --data data/scenes-val --limit "$LIMIT" --steps 20 \
    --strength "$2" --json "$OUT/$1-eval-s$2.json"
}
eval_at mcm 1.0; eval_at controlnet 1.0; eval_at mcm 1.5
scripts/budget-summary.py "$OUT" "$MINUTES" > "$OUT/summary.json"
cat "$OUT/summary.json"
