#!/usr/bin/env bash
# Installs the pinned cargo-deny into the project (nothing global):
#
#   .larder-tools/bin/cargo-deny    cargo install cargo-deny =0.20.2 --locked
#
# Idempotent: a cargo-deny already at that version is reused (a second run takes well under
# a second). Prints the PATH to use (`eval "$(bash scripts/install-deny.sh --print-env)"`).
# LARDER_TOOLS_DIR moves it elsewhere, as for scripts/install-edge-tools.sh.
#
# Only crates.io is used. Default features stay off: they only add native TLS roots for
# fetching the advisory database, which `cargo deny check advisories` does with its own
# (rustls) client anyway; licenses, bans and sources need no network (`--offline`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${LARDER_TOOLS_DIR:-$ROOT/.larder-tools}"
DENY_VERSION="0.20.2"

if [ "${1:-}" = "--print-env" ]; then
  echo "export PATH=\"$TOOLS/bin:\$PATH\""
  exit 0
fi

log() { printf '[install-deny] %s\n' "$*" >&2; }
mkdir -p "$TOOLS/bin"
if [ "$("$TOOLS/bin/cargo-deny" --version 2>/dev/null | awk '{print $2}')" != "$DENY_VERSION" ]; then
  log "cargo install cargo-deny $DENY_VERSION (a few minutes, once)"
  cargo install --quiet --root "$TOOLS" --locked cargo-deny --version "=$DENY_VERSION" \
    --no-default-features >&2
else
  log "cargo-deny $DENY_VERSION present"
fi
