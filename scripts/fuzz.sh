#!/usr/bin/env bash
# Runs larder's cargo-fuzz targets (fuzz/, docs/FUZZING.md) on stable Rust.
#
#   bash scripts/fuzz.sh                 every target, 60 s each
#   bash scripts/fuzz.sh 600             every target, 10 minutes each
#   bash scripts/fuzz.sh 600 rest_codec  one target (or several, space-separated)
#
# Installs the pinned cargo-fuzz into .larder-tools/ (gitignored; LARDER_TOOLS_DIR moves it)
# once. No nightly toolchain is needed: without a sanitizer (`-s none`, the default) cargo-fuzz
# passes only flags stable rustc accepts. FUZZ_SANITIZER=address builds with AddressSanitizer
# instead (its runtime ships with stable's rust-std; `-Zsanitizer` needs the RUSTC_BOOTSTRAP=1
# set below). The targets reach no `unsafe` code (larder's one `unsafe` type, the memory tier's
# index entry, has its tests run under ASan by scripts/test.sh), so panics, overflows (debug
# assertions are on), hangs and runaway memory are what these targets look for.
#
# Targets run one after another, one job each (the machine has 2 cores). A finding stops
# the script with libFuzzer's report; the input is in fuzz/artifacts/<target>/. Save it
# under fuzz/regressions/<target>/ so that `cargo test` in fuzz/ replays it from then on.
# The growing corpus stays in fuzz/corpus/<target>/ (gitignored); fuzz/seeds/<target>/ are
# the hand-written starting inputs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${LARDER_TOOLS_DIR:-$ROOT/.larder-tools}"
FUZZ_VERSION="0.13.2"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
  TARGETS=(envelope_decode sealed_open rest_codec keys_canonical resp_values gateway_request gateway_policy)
fi

log() { printf '[fuzz] %s\n' "$*" >&2; }
mkdir -p "$TOOLS/bin"
if [ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}')" != "$FUZZ_VERSION" ]; then
  log "cargo install cargo-fuzz $FUZZ_VERSION (a minute or two, once)"
  cargo install --quiet --root "$TOOLS" --locked cargo-fuzz --version "=$FUZZ_VERSION" >&2
fi
command -v c++ >/dev/null || {
  log "libfuzzer-sys needs a C++ compiler: apt-get install g++"
  exit 1
}
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1
SANITIZER="${FUZZ_SANITIZER:-none}"
FUZZ_TARGET_DIR="$TOOLS/fuzz-target"
[ "$SANITIZER" = none ] || FUZZ_TARGET_DIR="$TOOLS/fuzz-target-$SANITIZER"

cd "$ROOT"
cargo fuzz build -s "$SANITIZER" --target-dir "$FUZZ_TARGET_DIR"
for t in "${TARGETS[@]}"; do
  log "$t: ${SECONDS_EACH}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run -s "$SANITIZER" --target-dir "$FUZZ_TARGET_DIR" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
log "no findings in ${TARGETS[*]}"
