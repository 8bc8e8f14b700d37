#!/usr/bin/env bash
# Builds the npm package in js/: larder-core compiled to wasm32 (js/src), its JavaScript glue
# from wasm-bindgen (the exact version of js/Cargo.lock, installed from crates.io), shrunk
# with wasm-opt (binaryen, from npm), into js/dist/wasm/. Checks the wasm's gzip size
# against its budget. Offline: only the pinned tools of scripts/install-edge-tools.sh.
#
#   bash scripts/build-js.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-edge-tools.sh)"
BUDGET=307200 # 300 KiB gzip -9

lock_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' js/Cargo.lock
}
have=$("$WASM_BINDGEN_BIN" --version | awk '{print $2}')
if [ "$have" != "$(lock_version)" ]; then
  echo "wasm-bindgen $have is installed, js/Cargo.lock has $(lock_version)" >&2
  exit 1
fi

echo "==> cargo build --release --target wasm32-unknown-unknown (js)"
(cd js && cargo build --release --target wasm32-unknown-unknown --locked)
target="${CARGO_TARGET_DIR:-js/target}"
case "$target" in /*) ;; *) [ -n "${CARGO_TARGET_DIR:-}" ] || target="$PWD/js/target" ;; esac
rm -rf js/dist/wasm
"$WASM_BINDGEN_BIN" --target web --weak-refs --out-dir js/dist/wasm --out-name larder \
  "$target/wasm32-unknown-unknown/release/larder_js.wasm"
"$WASM_OPT_BIN" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue --strip-debug --strip-producers \
  js/dist/wasm/larder_bg.wasm -o js/dist/wasm/larder_bg.wasm
raw=$(wc -c <js/dist/wasm/larder_bg.wasm)
gz=$(gzip -9 -c js/dist/wasm/larder_bg.wasm | wc -c)
echo "js/dist/wasm/larder_bg.wasm: $raw bytes raw, $gz bytes gzip -9 (budget: $BUDGET bytes gzip)"
if [ "$gz" -gt "$BUDGET" ]; then
  echo "the package's wasm is over its gzip budget" >&2
  exit 1
fi
