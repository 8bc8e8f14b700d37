#!/usr/bin/env bash
# The npm package (js/): builds it (scripts/build-js.sh), installs its pinned dev
# dependencies (the `ai` SDK, @ai-sdk/provider, fast-check, TypeScript), type-checks its
# declarations and the TypeScript test Worker, bundles that Worker with esbuild as wrangler
# would (conditions workerd, worker, browser; the .wasm as a module), then runs the tests
# that drive both through the gateway to a real Redis (native/tests/gateway/js.rs): the
# Node suite and the Worker in workerd beside the Rust crates and the Rust Worker.
#
#   bash scripts/js-tests.sh      (after scripts/edge-e2e.sh, which builds the Rust Worker)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-edge-tools.sh)"
bash scripts/build-js.sh

echo "==> npm ci (js)"
if ! (cd js && npm ls --depth=0 >/dev/null 2>&1); then
  (cd js && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> rustfmt and clippy (js, wasm32)"
(cd js && cargo fmt --check && cargo clippy --release --target wasm32-unknown-unknown --locked -- -D warnings)

echo "==> tsc --strict: the package's types, the TypeScript Worker, the README's examples"
rm -rf js/test/readme/blocks && mkdir -p js/test/readme/blocks
python3 - <<'PY'
import re
text = open("js/README.md").read()
for i, block in enumerate(re.findall(r"```ts\n(.*?)```", text, re.S)):
    open(f"js/test/readme/blocks/block{i}.ts", "w").write(block)
PY
(cd js && npx tsc -p tsconfig.json && npx tsc -p test/worker/tsconfig.json && npx tsc -p test/readme/tsconfig.json)

echo "==> esbuild: the TypeScript Worker"
rm -rf js/test/worker/build
"$ESBUILD_BIN" js/test/worker/worker.ts --bundle --format=esm --platform=neutral \
  --conditions=workerd,worker,browser --main-fields=browser,module,main \
  --loader:.wasm=copy --asset-names=index_bg --outfile=js/test/worker/build/index.js --log-level=warning

echo "==> the Node suite and the Worker in workerd, through the gateway"
LARDER_JS_TESTS=require cargo test --workspace --all-features --test gateway js_package -- \
  --nocapture --test-threads 1
