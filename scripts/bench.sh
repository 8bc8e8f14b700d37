#!/usr/bin/env bash
# larder's benchmark suite, with the peers side by side, in one run; writes BENCHMARKS.md and
# docs/bench.svg.
#
#   bash scripts/bench.sh                                 # everything (~10 min on 2 cores)
#   LARDER_BENCH_PARTS="memory redis" bash scripts/bench.sh
#   LARDER_BENCH_SECS=3 bash scripts/bench.sh             # seconds per Redis measurement
#
# Parts (each starts its own servers on free 127.0.0.1 ports and stops only those):
#   memory     core/benches/memory.rs: MemoryCache vs lru, moka, quick_cache
#   seal       core/benches/seal.rs: encryption at rest (AES-256-GCM) per KB, keyed hashes
#   redis      native/benches/transport.rs (standalone and Cluster, vs raw redis-rs) and
#              redis-benchmark for context
#   scenarios  native/benches/scenarios.rs: tiered latency, stampede, streams, outage
#   proxy      native/benches/proxy.rs: larder proxy vs LiteLLM's proxy (PyPI litellm[proxy],
#              pinned, installed into a venv under $LARDER_TOOLS_DIR) with its Redis cache
#   gateway    scripts/bench-gateway.sh: larder gateway vs webdis vs Redis directly
#   edge       scripts/bench-edge.sh: the example Worker in workerd, wasm size
#
# Every benchmark appends JSON lines to $LARDER_BENCH_JSON (here
# ${CARGO_TARGET_DIR:-target}/bench/results.jsonl); scripts/bench-report.py turns them into
# the report. Not a test: nothing is asserted about speed, and scripts/test.sh does not run it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. "$ROOT/scripts/bench-lib.sh"
PARTS="${LARDER_BENCH_PARTS:-memory seal redis scenarios proxy gateway edge}"
export LARDER_BENCH_SECS="${LARDER_BENCH_SECS:-1}"
HTTP_SECS="${LARDER_BENCH_HTTP_SECS:-5}"
OUT="${LARDER_BENCH_OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
export LARDER_BENCH_JSON="$RESULTS"
REPORT="${LARDER_BENCH_REPORT:-$ROOT/BENCHMARKS.md}"
CHART="${LARDER_BENCH_CHART:-$ROOT/docs/bench.svg}"
NATIVE_FEATURES=test-util,gateway,proxy

bench_need redis-server redis-cli redis-benchmark webdis wrk
bench_init
python3 scripts/bench-report.py meta --set phase=start --set date="$(date -u +%FT%TZ)" >>"$RESULTS"
# The machine's load while we run (sampled every 5 s; includes the benchmarks themselves).
(while :; do
  echo "{\"suite\":\"load\",\"t\":$(date +%s),\"load1\":$(cut -d' ' -f1 /proc/loadavg)}" >>"$RESULTS"
  sleep 5
done) &
PIDS+=($!)

echo "==> building the benchmarks (not timed)" >&2
cargo bench --quiet --no-run -p larder-core --bench memory --bench seal
cargo bench --quiet --no-run -p larder-native --features "$NATIVE_FEATURES" --bench transport --bench scenarios --bench proxy
build_larder

timed() { # NAME COMMAND…
  local name="$1" start
  shift
  start=$(date +%s)
  echo "==> $name" >&2
  "$@"
  echo "{\"suite\":\"timing\",\"part\":\"$name\",\"seconds\":$(($(date +%s) - start))}" >>"$RESULTS"
}

LITELLM_VERSION="1.108.7"
proxy_part() {
  local venv="${LARDER_TOOLS_DIR:-$ROOT/.larder-tools}/litellm-venv"
  if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null)" != "$LITELLM_VERSION" ]; then
    echo "==> pip install litellm[proxy]==$LITELLM_VERSION (once)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" >&2
  fi
  LITELLM_BIN="$venv/bin/litellm" cargo bench --quiet -p larder-native --features "$NATIVE_FEATURES" --bench proxy
}

redis_part() {
  cargo bench --quiet -p larder-native --features "$NATIVE_FEATURES" --bench transport
  # For context: redis-benchmark against a standalone server of our own.
  start_redis
  local p
  for p in 1 16; do
    echo "==> redis-benchmark -t get,set -d 1024 -c 100 -P $p" >&2
    redis-benchmark -p "$REDIS_PORT" -t set,get -d 1024 -c 100 -P "$p" -n $((100000 * p)) --csv 2>/dev/null |
      python3 scripts/bench-report.py redis-benchmark --set suite=redis-benchmark \
        --set connections=100 --set pipeline="$p" --set value_bytes=1024 | bench_emit
  done
}

for part in $PARTS; do
  case "$part" in
    memory) timed memory cargo bench --quiet -p larder-core --bench memory ;;
    seal) timed seal cargo bench --quiet -p larder-core --bench seal ;;
    redis) timed redis redis_part ;;
    scenarios) timed scenarios cargo bench --quiet -p larder-native --features "$NATIVE_FEATURES" --bench scenarios ;;
    proxy) timed proxy proxy_part ;;
    gateway) timed gateway env DURATION="$HTTP_SECS" CONNECTIONS=50 bash scripts/bench-gateway.sh ;;
    edge) timed edge env DURATION="$HTTP_SECS" bash scripts/bench-edge.sh ;;
    *)
      echo "unknown part $part (memory, redis, scenarios, gateway, edge)" >&2
      exit 2
      ;;
  esac
done

python3 scripts/bench-report.py meta --set phase=end --set date="$(date -u +%FT%TZ)" >>"$RESULTS"
# The raw results are kept beside the chart: the report can be re-rendered and audited.
RAW="${LARDER_BENCH_RAW:-$(dirname "$CHART")/bench-results.jsonl}"
cp "$RESULTS" "$RAW"
python3 scripts/bench-report.py render "$RAW" "$REPORT" "$CHART"
echo "wrote $REPORT, $CHART and $RAW" >&2
