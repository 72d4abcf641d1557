#!/usr/bin/env bash
# The demo: the example Node app on 127.0.0.1:3000, offload in front of it on :8080.
# Open http://localhost:8080/ ; Ctrl+C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --editable .
node examples/node-app/server.js &
app=$!
trap 'kill "$app" 2>/dev/null || true' EXIT
.venv/bin/offload --upstream 127.0.0.1:3000 --static examples/node-app/public "$@"
