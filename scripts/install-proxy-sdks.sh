#!/usr/bin/env bash
# Installs the official SDKs the proxy's client tests use, pinned, into the project (nothing
# global):
#
#   tests/proxy-sdk/.venv          a Python venv with `openai` and `anthropic` (PyPI), at the
#                                  versions of tests/proxy-sdk/requirements.txt
#   tests/proxy-sdk/node_modules   `npm ci`: `openai` (npm) at tests/proxy-sdk/package-lock.json
#
# Idempotent: reinstalls only when a pin file changed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/tests/proxy-sdk"
log() { printf '[install-proxy-sdks] %s\n' "$*" >&2; }

LOCK_SUM="$(sha256sum "$DIR/package-lock.json" | awk '{print $1}')"
STAMP="$DIR/node_modules/.larder-lock-sha256"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$LOCK_SUM" ]; then
  log "npm ci in tests/proxy-sdk"
  (cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  echo "$LOCK_SUM" >"$STAMP"
else
  log "tests/proxy-sdk/node_modules up to date"
fi

REQ_SUM="$(sha256sum "$DIR/requirements.txt" | awk '{print $1}')"
PY_STAMP="$DIR/.venv/.larder-requirements-sha256"
if [ ! -f "$PY_STAMP" ] || [ "$(cat "$PY_STAMP")" != "$REQ_SUM" ]; then
  log "python venv in tests/proxy-sdk/.venv (openai, anthropic)"
  rm -rf "$DIR/.venv"
  python3 -m venv "$DIR/.venv" >&2
  "$DIR/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$DIR/requirements.txt" >&2
  echo "$REQ_SUM" >"$PY_STAMP"
else
  log "tests/proxy-sdk/.venv up to date"
fi
