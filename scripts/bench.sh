#!/usr/bin/env bash
# Benchmarks larder's redis-rs transport and cache against raw redis-rs, on real servers the
# harness starts (a standalone redis-server and a 3-master Cluster on free 127.0.0.1 ports).
#
#   bash scripts/bench.sh            # 1 s per measurement
#   LARDER_BENCH_SECS=3 bash scripts/bench.sh
#
# Prints a Markdown table: ops/s and p50/p99 latency per client, and the ratios to raw
# redis-rs. Not a test: nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
fi

cargo bench -p larder-native --features test-util --bench transport
