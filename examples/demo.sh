#!/usr/bin/env bash
# The demo: offload on :8080 in front of the example Node app, which it runs as its child on
# 127.0.0.1:3000 (shared fate: Ctrl+C stops both). Open http://localhost:8080/
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --editable .
exec .venv/bin/offload --upstream 127.0.0.1:3000 --static examples/node-app/public "$@" \
  -- node examples/node-app/server.js
