#!/usr/bin/env bash
# Installs the pinned tools larder's edge tests need, into the project (nothing global):
#
#   .larder-tools/bin/worker-build    cargo install worker-build =0.8.7 --locked
#   .larder-tools/bin/wasm-bindgen    cargo install wasm-bindgen-cli =<the version in
#                                     examples/edge-worker/Cargo.lock>
#   tests/edge/node_modules           npm ci: @upstash/redis, workerd, binaryen (wasm-opt),
#                                     esbuild, at the versions of tests/edge/package-lock.json
#   tests/edge/.venv                  a Python venv with the official upstash-redis client, at
#                                     the versions of tests/edge/requirements.txt (PyPI)
#   the wasm32-unknown-unknown target (rustup), if missing
#
# Idempotent: whatever is already installed at the right version is reused, so a second run
# takes about a second. Prints the environment the edge scripts use (`--print-env` prints
# only that, for `eval "$(bash scripts/install-edge-tools.sh --print-env)"`).
#
#   bash scripts/install-edge-tools.sh          everything (the Worker build and workerd)
#   bash scripts/install-edge-tools.sh npm      only the npm and PyPI packages (the official
#                                               client tests)
#
# LARDER_TOOLS_DIR moves the cargo-installed tools elsewhere (for example a directory a CI
# machine keeps between runs); the default is .larder-tools/ in the checkout (gitignored).
#
# Only the registries are used (crates.io, npm): worker-build is pointed at these binaries
# through WASM_BINDGEN_BIN / WASM_OPT_BIN / ESBUILD_BIN so it never downloads anything.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${LARDER_TOOLS_DIR:-$ROOT/.larder-tools}"
NODE_DIR="$ROOT/tests/edge"
WORKER_BUILD_VERSION="0.8.7"

wasm_bindgen_version() {
  # The wasm-bindgen-cli must match the wasm-bindgen library the Worker links exactly.
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' \
    "$ROOT/examples/edge-worker/Cargo.lock"
}

# The platform binary itself, not the npm wrapper script (a wrapper killed by PID would leave
# workerd running).
workerd_platform_bin() {
  case "$(uname -m)" in
    aarch64 | arm64) echo "$NODE_DIR/node_modules/@cloudflare/workerd-linux-arm64/bin/workerd" ;;
    *) echo "$NODE_DIR/node_modules/@cloudflare/workerd-linux-64/bin/workerd" ;;
  esac
}

print_env() {
  cat <<EOF
export LARDER_TOOLS="$TOOLS"
export PATH="$TOOLS/bin:$NODE_DIR/node_modules/.bin:\$PATH"
export WASM_BINDGEN_BIN="$TOOLS/bin/wasm-bindgen"
export WASM_OPT_BIN="$NODE_DIR/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$NODE_DIR/node_modules/.bin/esbuild"
export WORKERD_BIN="$(workerd_platform_bin)"
EOF
}

if [ "${1:-}" = "--print-env" ]; then
  print_env
  exit 0
fi

MODE="${1:-all}"
case "$MODE" in
  all | npm) ;;
  *)
    echo "usage: $0 [all|npm|--print-env]" >&2
    exit 2
    ;;
esac

log() { printf '[install-edge-tools] %s\n' "$*" >&2; }
mkdir -p "$TOOLS/bin"

install_wasm_tools() {
  # 1. The wasm32 target.
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown >&2
  fi

  # 2. worker-build.
  if [ "$("$TOOLS/bin/worker-build" --version 2>/dev/null | awk '{print $NF}')" != "$WORKER_BUILD_VERSION" ]; then
    log "cargo install worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
    cargo install --quiet --root "$TOOLS" --locked worker-build --version "=$WORKER_BUILD_VERSION" >&2
  else
    log "worker-build $WORKER_BUILD_VERSION present"
  fi

  # 3. wasm-bindgen-cli at exactly the Worker's wasm-bindgen version (without --locked, as in
  #    the recipe seen working here; default features off: they only add TLS for downloads).
  WB_VERSION="$(wasm_bindgen_version)"
  if [ -z "$WB_VERSION" ]; then
    log "no wasm-bindgen in examples/edge-worker/Cargo.lock"
    exit 1
  fi
  if [ "$("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
    log "cargo install wasm-bindgen-cli $WB_VERSION (a few minutes, once)"
    cargo install --quiet --root "$TOOLS" --force wasm-bindgen-cli --version "=$WB_VERSION" \
      --no-default-features >&2
  else
    log "wasm-bindgen $WB_VERSION present"
  fi
}

if [ "$MODE" = all ]; then
  install_wasm_tools
fi

# 4. npm packages, reinstalled only when the lock file changed.
LOCK_SUM="$(sha256sum "$NODE_DIR/package-lock.json" | awk '{print $1}')"
STAMP="$NODE_DIR/node_modules/.larder-lock-sha256"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$LOCK_SUM" ]; then
  log "npm ci in tests/edge"
  # Install scripts stay off: workerd and esbuild find their platform binaries through
  # their optional dependencies without them.
  (cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  echo "$LOCK_SUM" >"$STAMP"
else
  log "tests/edge/node_modules up to date"
fi

# 5. The Python client, in a venv, reinstalled only when requirements.txt changed.
PY_DIR="$NODE_DIR/.venv"
REQ_SUM="$(sha256sum "$NODE_DIR/requirements.txt" | awk '{print $1}')"
PY_STAMP="$PY_DIR/.larder-requirements-sha256"
if [ ! -f "$PY_STAMP" ] || [ "$(cat "$PY_STAMP")" != "$REQ_SUM" ]; then
  log "python venv in tests/edge/.venv (upstash-redis)"
  rm -rf "$PY_DIR"
  python3 -m venv "$PY_DIR" >&2
  "$PY_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$NODE_DIR/requirements.txt" >&2
  echo "$REQ_SUM" >"$PY_STAMP"
else
  log "tests/edge/.venv up to date"
fi

eval "$(print_env)"
"$WORKERD_BIN" --version >&2
print_env
