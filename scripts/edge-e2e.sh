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

echo "==> worker-build --release (examples/edge-worker)"
(cd examples/edge-worker && worker-build --release)
wasm=examples/edge-worker/build/index_bg.wasm
raw=$(wc -c <"$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "Worker wasm: $raw bytes raw, $gz bytes gzip -9 (target: 250 KB gzip)"
if [ "$gz" -gt 256000 ]; then
  echo "the Worker is over the 250 KB gzip budget" >&2
  exit 1
fi

echo "==> worker-build --release (examples/proxy-worker)"
(cd examples/proxy-worker && worker-build --release)
wasm=examples/proxy-worker/build/index_bg.wasm
raw=$(wc -c <"$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "proxy Worker wasm: $raw bytes raw, $gz bytes gzip -9 (budget: 1 MB gzip)"
if [ "$gz" -gt 1000000 ]; then
  echo "the proxy Worker is over the 1 MB gzip budget" >&2
  exit 1
fi

echo "==> the Worker in workerd, through the gateway"
# Same features as `cargo test --workspace --all-features` (scripts/test.sh): nothing rebuilds.
LARDER_EDGE_TESTS=require cargo test --workspace --all-features --test gateway \
  worker -- --nocapture --test-threads 1
