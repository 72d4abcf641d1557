#!/usr/bin/env bash
# The benchmark from a fresh machine: nginx and wrk from Debian, the Python peers from PyPI,
# then `python -m bench` (arguments pass through, e.g. --seconds 10 --rounds 5).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -q
  apt-get install -y -q wrk nginx libnginx-mod-http-brotli-static
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --editable '.[bench]'
.venv/bin/python -m bench "$@"
