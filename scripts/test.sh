#!/usr/bin/env bash
# Run every check: lint (ruff) and types (mypy) as configured in pyproject.toml, then every test:
# Python (unit, loopback WebRTC, headless Chromium) and the JavaScript client's.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
if [ -d client/test ]; then
  (cd client && node --test test/)
fi
