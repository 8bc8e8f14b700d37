# Shared pieces of the benchmark scripts (sourced, not run): tools, free ports, a
# redis-server and a `larder gateway` of our own, and cleanup of only the processes we
# started.
#
# A script sourcing this sets ROOT and calls `bench_init` first. Results go to
# $LARDER_BENCH_JSON (one JSON object per line) when it is set.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages behind any missing tool.
bench_need() {
  local missing=0 tool
  for tool in "$@"; do command -v "$tool" >/dev/null || missing=1; done
  if [ "$missing" = 1 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools webdis wrk >/dev/null
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

bench_init() {
  WORK="$(mktemp -d)"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# Starts redis-server on a free port; sets REDIS_PORT.
start_redis() {
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server did not start" >&2
  return 1
}

# The release `larder` binary (builds it when needed); sets LARDER_BIN.
build_larder() {
  echo "==> cargo build --release (larder gateway)" >&2
  (cd "$ROOT" && cargo build --quiet --release -p larder-native --features cli --bin larder)
  LARDER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/larder"
}

# Starts `larder gateway` in front of REDIS_PORT with a random token; sets GATEWAY (host:port)
# and TOKEN.
start_gateway() {
  TOKEN="bench-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  LARDER_GATEWAY_TOKEN="$TOKEN" LARDER_LOG=warn "$LARDER_BIN" gateway \
    --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$REDIS_PORT" >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^listening on' "$WORK/gateway.out" 2>/dev/null && break; sleep 0.05; done
  GATEWAY="$(awk '/^listening on/ {print $3}' "$WORK/gateway.out")"
  test -n "$GATEWAY" || { echo "the gateway did not start" >&2; cat "$WORK/gateway.err" >&2; return 1; }
}

# Appends the JSON lines on stdin to $LARDER_BENCH_JSON (and echoes them).
bench_emit() {
  if [ -n "${LARDER_BENCH_JSON:-}" ]; then tee -a "$LARDER_BENCH_JSON"; else cat; fi
}

# `bench_wrk KEY=VALUE… -- WRK-ARGS…`: runs wrk with latency percentiles and emits one JSON
# line with ops/s, p50 and p99 (ms) and the given fields.
bench_wrk() {
  local fields=()
  while [ "$1" != "--" ]; do fields+=(--set "$1"); shift; done
  shift
  wrk --latency "$@" 2>&1 | python3 "$ROOT/scripts/bench-report.py" wrk "${fields[@]}" | bench_emit
}
