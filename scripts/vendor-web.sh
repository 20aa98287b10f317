#!/usr/bin/env bash
# Copy MQTT.js's browser bundle from node_modules into web/vendor/ (the page loads no CDN).
# Run after `npm ci` at the repository root; the version is the one pinned in package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
src=node_modules/mqtt/dist/mqtt.min.js
if [ ! -f "$src" ]; then
  echo "vendor-web: $src is missing: run 'npm ci' first" >&2
  exit 1
fi
version=$(node -p 'require("./node_modules/mqtt/package.json").version')
pinned=$(node -p 'require("./package.json").devDependencies.mqtt')
if [ "$version" != "$pinned" ]; then
  echo "vendor-web: node_modules has mqtt $version, package.json pins $pinned: run 'npm ci'" >&2
  exit 1
fi
cp "$src" web/vendor/mqtt.min.js
echo "web/vendor/mqtt.min.js: mqtt $version ($(wc -c < web/vendor/mqtt.min.js) bytes, sha256 $(sha256sum web/vendor/mqtt.min.js | cut -d' ' -f1))"
