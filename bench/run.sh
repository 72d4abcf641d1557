#!/usr/bin/env bash
# The benchmark from a fresh machine: nginx and wrk from Debian, the Python peers from PyPI,
# then `python -m bench` (arguments pass through, e.g. --seconds 10 --rounds 5, or --smoke).
# nginx runs with the harness's own configs and ports: a system nginx on port 80 is not used.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    wrk nginx libnginx-mod-http-brotli-static >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --editable '.[bench]'
.venv/bin/python -m bench "$@"
