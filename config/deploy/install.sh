#!/bin/sh
# Install mcm-edge on the board from an unpacked bundle (scripts/build-aarch64.sh --package):
#   sudo ./install.sh [DEVICE_ID]        (default: the host name)
# Creates the mcm-edge user, copies bin/ and models/ to /opt/mcm-edge, the config to
# /etc/mcm-edge/edge.toml (kept when it exists), validates it with `mcm-edge check`, and
# enables the systemd unit.
set -eu
cd "$(dirname "$0")"
DEVICE_ID=${1:-$(hostname)}
id mcm-edge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/mcm-edge --shell /usr/sbin/nologin mcm-edge
install -d /opt/mcm-edge/bin /etc/mcm-edge
install -m 0755 bin/mcm-edge /opt/mcm-edge/bin/mcm-edge
rm -rf /opt/mcm-edge/models && cp -r models /opt/mcm-edge/models
cp README.md /opt/mcm-edge/ 2>/dev/null || true
if [ ! -e /etc/mcm-edge/edge.toml ]; then
  # The unit makes /opt read-only: the status preview goes to the state directory.
  sed -e "s/^device_id = .*/device_id = \"$DEVICE_ID\"/" \
      -e 's|^preview_png = .*|preview_png = "/var/lib/mcm-edge/status.png"|' config/edge.toml > /etc/mcm-edge/edge.toml
  chmod 0644 /etc/mcm-edge/edge.toml
fi
(cd /opt/mcm-edge && ./bin/mcm-edge check --config /etc/mcm-edge/edge.toml)
install -m 0644 config/deploy/mcm-edge.service /etc/systemd/system/mcm-edge.service
systemctl daemon-reload
systemctl enable --now mcm-edge
systemctl --no-pager status mcm-edge | head -5
