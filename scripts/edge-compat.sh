#!/usr/bin/env bash
# The official @upstash/redis npm client (auto-pipelining on, base64 on) against
# `larder gateway` in front of a real redis-server: tests/edge/upstash-compat.test.mjs.
#
#   bash scripts/edge-compat.sh
#
# Installs the pinned npm packages (tests/edge/package-lock.json) when missing, then runs the
# gateway test that drives `node --test` (it starts its own redis-server and gateway on free
# ports and stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-edge-tools.sh npm >/dev/null
# Same features as `cargo test --workspace --all-features` (scripts/test.sh): nothing rebuilds.
LARDER_EDGE_TESTS=require cargo test --workspace --all-features --test gateway \
  upstash -- --nocapture
