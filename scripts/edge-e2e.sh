#!/usr/bin/env bash
# End to end in workerd: builds examples/edge-worker (and examples/proxy-worker, whose
# tests run with the official SDKs in scripts/test.sh) for wasm32 with worker-build (offline:
# pinned wasm-bindgen, wasm-opt and esbuild), serves it with workerd, and runs the tests that
# drive it through the gateway to a real Redis (standalone and Cluster), cross-reading with
# native caches and checking the golden key vectors inside the Worker. Prints the Worker's
# size and the E2E latency.
#
#   bash scripts/edge-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-edge-tools.sh)"

# build DIR BUDGET_BYTES: worker-build --release in DIR, then its wasm's gzip -9 size against
# the budget.
build() {
  echo "==> worker-build --release ($1)"
  (cd "$1" && worker-build --release)
  local wasm="$1/build/index_bg.wasm" raw gz
  raw=$(wc -c <"$wasm")
  gz=$(gzip -9 -c "$wasm" | wc -c)
  echo "$1 wasm: $raw bytes raw, $gz bytes gzip -9 (budget: $2 bytes gzip)"
  if [ "$gz" -gt "$2" ]; then
    echo "$1 is over its gzip budget" >&2
    exit 1
  fi
}
build examples/edge-worker 256000
build examples/proxy-worker 1000000

echo "==> the Worker in workerd, through the gateway"
# Same features as `cargo test --workspace --all-features` (scripts/test.sh): nothing rebuilds.
LARDER_EDGE_TESTS=require cargo test --workspace --all-features --test gateway \
  worker -- --nocapture --test-threads 1
