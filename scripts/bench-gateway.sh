#!/usr/bin/env bash
# Gateway throughput in one run: `larder gateway` vs webdis (Debian's Redis-over-HTTP server)
# vs Redis directly (redis-benchmark), all against one redis-server, GET of a 1 KB value.
#
#   bash scripts/bench-gateway.sh            # 10 s per HTTP run, 50 connections
#   DURATION=5 CONNECTIONS=100 bash scripts/bench-gateway.sh
#
# Needs redis-server, redis-benchmark, webdis and wrk (apt-get install redis-server webdis
# wrk; installed here when missing). Everything listens on free 127.0.0.1 ports and only the
# processes this script started are stopped. Numbers are for one 2-core machine running the
# load generator, the HTTP server and Redis together: compare them, don't quote them alone.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
for tool in redis-server redis-benchmark webdis wrk; do
  if ! command -v "$tool" >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools webdis wrk >/dev/null
    break
  fi
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> cargo build --release (larder gateway)"
cargo build --quiet --release -p larder-native --features cli --bin larder

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
VALUE="$(head -c 1024 /dev/zero | tr '\0' 'v')"
redis-cli -p "$REDIS_PORT" set bench:key "$VALUE" >/dev/null

WEBDIS_PORT="$(free_port)"
cat >"$WORK/webdis.json" <<EOF
{"redis_host": "127.0.0.1", "redis_port": $REDIS_PORT, "http_host": "127.0.0.1",
 "http_port": $WEBDIS_PORT, "threads": 2, "pool_size": 20, "daemonize": false,
 "database": 0, "verbosity": 0, "logfile": "$WORK/webdis.log"}
EOF
webdis "$WORK/webdis.json" &
PIDS+=($!)

TOKEN="bench-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
LARDER_GATEWAY_TOKEN="$TOKEN" LARDER_LOG=warn target/release/larder gateway \
  --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$REDIS_PORT" >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$WORK/gateway.out" 2>/dev/null && break; sleep 0.05; done
GATEWAY="$(awk '/^listening on/ {print $3}' "$WORK/gateway.out")"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$WEBDIS_PORT/PING" >/dev/null && break; sleep 0.1; done

# Both HTTP servers must answer the same value before we measure them.
test "$(curl -sf "http://127.0.0.1:$WEBDIS_PORT/GET/bench:key" | wc -c)" -gt 1024
test "$(curl -sf -H "Authorization: Bearer $TOKEN" -d '["GET","bench:key"]' "http://$GATEWAY/" | wc -c)" -gt 1024

cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '["GET","bench:key"]'
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Content-Type"] = "application/json"
EOF

rps() { awk '/Requests\/sec/ {print $2}'; }
lat() { awk '/^ *Latency +[0-9]/ {avg = $2} /^ *50% / {p50 = $2} /^ *99% / {p99 = $2} END {print "p50 " p50 ", p99 " p99 ", avg " avg}'; }
run_wrk() { wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" 2>&1; }

echo "==> larder gateway (POST / [\"GET\",k])"
G="$(run_wrk -s "$WORK/post.lua" "http://$GATEWAY/")"
echo "==> larder gateway, base64 replies"
echo 'wrk.headers["Upstash-Encoding"] = "base64"' >>"$WORK/post.lua"
G64="$(run_wrk -s "$WORK/post.lua" "http://$GATEWAY/")"
echo "==> webdis (GET /GET/k)"
W="$(run_wrk "http://127.0.0.1:$WEBDIS_PORT/GET/bench:key")"
echo "==> redis-benchmark (direct RESP)"
D="$(redis-benchmark -p "$REDIS_PORT" -t get -d 1024 -c "$CONNECTIONS" -n 300000 -q 2>&1 | tr '\r' '\n' | awk '/GET:/ {print $2}' | tail -1)"

printf '\nGET of a 1 KB value, %s connections, one 2-core machine:\n' "$CONNECTIONS"
printf '  %-34s %12s req/s   latency %s\n' "larder gateway (JSON)" "$(rps <<<"$G")" "$(lat <<<"$G")"
printf '  %-34s %12s req/s   latency %s\n' "larder gateway (base64)" "$(rps <<<"$G64")" "$(lat <<<"$G64")"
printf '  %-34s %12s req/s   latency %s\n' "webdis" "$(rps <<<"$W")" "$(lat <<<"$W")"
printf '  %-34s %12s req/s\n' "redis direct (redis-benchmark)" "$D"
