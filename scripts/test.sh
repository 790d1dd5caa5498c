#!/usr/bin/env bash
# Run every test: Python (unit, loopback WebRTC, headless Chromium) and the JavaScript client's.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
if [ -d client/test ]; then
  (cd client && node --test test/)
fi
