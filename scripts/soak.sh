#!/usr/bin/env bash
# Soak test of the MQTT service against a real mosquitto (examples/soak.rs): a few thousand stream
# frames and about a thousand requests (good and bad) to `mcm-edge run` on models/tiny, every
# request answered exactly once, the service's RSS sampled from /proc. Writes docs/soak.json.
#
#   scripts/soak.sh                                  # full size (3000 frames, 1000 requests, ~3 min)
#   scripts/soak.sh --frames 300 --requests 100      # quick
#   SOAK_JSON=out/soak.json scripts/soak.sh          # report elsewhere
#
# Needs mosquitto (apt-get install mosquitto; /usr/sbin/mosquitto, or pass --mosquitto PATH).
# Extra arguments go to the soak client (target/release/examples/soak --help). Exit status is
# non-zero when a request went unanswered, an answer was wrong, the RSS grew by more than 20 %
# from the warm-up sample to the end, or the service did not stop cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin mcm-edge --example soak
json="${SOAK_JSON:-docs/soak.json}"
t="${CARGO_TARGET_DIR:-target}/release"
exec "$t/examples/soak" --binary "$t/mcm-edge" --json "$json" "$@"
