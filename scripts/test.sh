#!/usr/bin/env bash
# Runs every check and test of larder. Installs what is missing on a fresh machine first.
#
#   bash scripts/test.sh
#
# Steps: tool setup, cargo fmt --check, clippy -D warnings, the public API snapshot, cargo deny, all tests (unit, doc,
# conformance on every topology, fault tests against real redis-server processes, the rig adapter:
# `--all-features` turns on larder-tests' `rig` feature and its `rig` test binary), the edge
# (pinned tools; the official @upstash/redis client against the gateway; the Worker built for
# wasm32 and served by workerd), the npm package (Node, a TypeScript Worker in workerd, the AI
# SDK middleware), the memory tier under AddressSanitizer, the fuzz regressions, the core
# built for wasm32-unknown-unknown, every example.
# A fresh machine spends ~10 minutes once installing worker-build and wasm-bindgen-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh run builds every test binary once: no incremental cache, and line tables instead of full
# debug info (full info made the target directory ~30 GB, more than a CI disk may have).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

step() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "setup"
if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null \
  || ! command -v redis-cli >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-sentinel redis-tools >/dev/null
fi
# libfuzzer-sys (the fuzz regressions) builds libFuzzer from C++.
if ! command -v c++ >/dev/null; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq g++ >/dev/null
fi
# The Debian package starts a redis-server on 6379; our tests start their own servers on
# free ports and never rely on it.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
for comp in rustfmt clippy; do
  rustup component list --installed | grep -q "^$comp" || rustup component add "$comp"
done
redis-server --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "public API snapshot (api/*.txt; python3 scripts/public-api.py --bless after a reviewed change)"
python3 scripts/public-api.py

step "cargo deny (licenses, bans, sources; offline)"
bash scripts/install-deny.sh
# --offline reads crates from the local cache: fetch every target's (wasm32, Windows) first.
cargo fetch --locked --quiet
"${LARDER_TOOLS_DIR:-$PWD/.larder-tools}/bin/cargo-deny" --offline check licenses bans sources

step "cargo test"
cargo test --workspace --all-features

step "the memory tier's tests under AddressSanitizer (its index entry is larder-core's one unsafe type)"
# Stable rustc accepts -Zsanitizer only with RUSTC_BOOTSTRAP=1; the ASan runtime ships with
# stable's rust-std for this target. A separate target directory keeps these flags apart.
# ASan finds double frees, uses after free and (LeakSanitizer) leaks; a free naming the wrong
# size is what core/tests/memory_allocations.rs checks, in the plain test run above.
if [ "$(uname -sm)" = "Linux x86_64" ]; then
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS=detect_leaks=1 \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/asan" \
    cargo test -p larder-core --lib --target x86_64-unknown-linux-gnu -- memory::
else
  echo "skipped: AddressSanitizer runs here only on Linux x86_64 (this is $(uname -sm))"
fi

step "fuzz regressions (every saved input under fuzz/regressions, replayed by cargo test)"
cargo test --manifest-path fuzz/Cargo.toml --locked

step "edge: pinned tools, @upstash/redis against the gateway, the Worker in workerd"
bash scripts/install-edge-tools.sh >/dev/null
bash scripts/edge-compat.sh
bash scripts/edge-e2e.sh

step "proxy: the official SDKs (openai and anthropic from PyPI, openai from npm) against larder proxy and the proxy Worker in workerd"
bash scripts/install-proxy-sdks.sh
LARDER_SDK_TESTS=require LARDER_EDGE_TESTS=require cargo test --workspace --all-features --test proxy -- \
  official_sdks worker::

step "js: the npm package (larder-core through wasm-bindgen) under Node and in workerd, with the AI SDK middleware"
bash scripts/js-tests.sh

step "larder-core for wasm32-unknown-unknown"
cargo build -p larder-core --target wasm32-unknown-unknown
cargo build -p larder-core --features test-util --target wasm32-unknown-unknown

step "quickstart (README command 1)"
cargo run --quiet --example quickstart

step "examples: agent_tools (memory), cache_redis, cache_comparison (servers started on free ports)"
cargo run --quiet --example agent_tools
cargo run --quiet -p larder-tests --example cache_redis
cargo run --quiet -p larder-tests --example cache_comparison

step "all checks passed"
