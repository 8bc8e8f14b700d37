#!/usr/bin/env bash
# Gateway throughput in one run: `larder gateway` vs webdis (Debian's Redis-over-HTTP server)
# vs Redis directly (redis-benchmark), all against one redis-server, GET of a 1 KB value —
# single commands, and pipelines of 10 GETs (`/pipeline`; webdis has no pipeline endpoint,
# Redis gets `redis-benchmark -P 10`).
#
#   bash scripts/bench-gateway.sh            # 10 s per HTTP run, 50 connections
#   DURATION=5 CONNECTIONS=100 bash scripts/bench-gateway.sh
#
# Needs redis-server, redis-benchmark, webdis and wrk (installed with apt-get when missing).
# Everything listens on free 127.0.0.1 ports and only the processes this script started are
# stopped. Prints one JSON line per measurement (suite "gateway"), appended to
# $LARDER_BENCH_JSON when set (scripts/bench.sh). Numbers are for one machine running the
# load generator, the HTTP server and Redis together: compare them, don't quote them alone.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/bench-lib.sh"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"

bench_need redis-server redis-benchmark webdis wrk
bench_init
build_larder
start_redis
VALUE="$(head -c 1024 /dev/zero | tr '\0' 'v')"
redis-cli -p "$REDIS_PORT" set bench:key "$VALUE" >/dev/null

WEBDIS_PORT="$(free_port)"
cat >"$WORK/webdis.json" <<JSON
{"redis_host": "127.0.0.1", "redis_port": $REDIS_PORT, "http_host": "127.0.0.1",
 "http_port": $WEBDIS_PORT, "threads": 2, "pool_size": 20, "daemonize": false,
 "database": 0, "verbosity": 0, "logfile": "$WORK/webdis.log"}
JSON
webdis "$WORK/webdis.json" &
PIDS+=($!)
start_gateway
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$WEBDIS_PORT/PING" >/dev/null && break; sleep 0.1; done

# Both HTTP servers must answer the same value before we measure them.
test "$(curl -sf "http://127.0.0.1:$WEBDIS_PORT/GET/bench:key" | wc -c)" -gt 1024
test "$(curl -sf -H "Authorization: Bearer $TOKEN" -d '["GET","bench:key"]' "http://$GATEWAY/" | wc -c)" -gt 1024
PIPE='['"$(printf '["GET","bench:key"],%.0s' $(seq 9))"'["GET","bench:key"]]'
test "$(curl -sf -H "Authorization: Bearer $TOKEN" -d "$PIPE" "http://$GATEWAY/pipeline" | grep -o '"result"' | wc -l)" = 10

post_script() { # FILE BODY [extra header line]
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Content-Type"] = "application/json"
${3:-}
LUA
}
post_script "$WORK/single.lua" '["GET","bench:key"]'
post_script "$WORK/single64.lua" '["GET","bench:key"]' 'wrk.headers["Upstash-Encoding"] = "base64"'
post_script "$WORK/pipeline.lua" "$PIPE"

W=(-t2 -c"$CONNECTIONS" -d"${DURATION}s")
common=(suite=gateway connections="$CONNECTIONS" duration_s="$DURATION" value_bytes=1024)
echo "==> larder gateway: POST / [\"GET\",k]" >&2
bench_wrk "${common[@]}" server="larder gateway" mode="single GET" commands_per_request=1 -- "${W[@]}" -s "$WORK/single.lua" "http://$GATEWAY/"
echo "==> larder gateway, base64 replies" >&2
bench_wrk "${common[@]}" server="larder gateway (base64)" mode="single GET" commands_per_request=1 -- "${W[@]}" -s "$WORK/single64.lua" "http://$GATEWAY/"
echo "==> larder gateway: /pipeline of 10 GETs" >&2
bench_wrk "${common[@]}" server="larder gateway" mode="pipeline 10 GET" commands_per_request=10 -- "${W[@]}" -s "$WORK/pipeline.lua" "http://$GATEWAY/pipeline"
echo "==> webdis: GET /GET/k" >&2
bench_wrk "${common[@]}" server="webdis" mode="single GET" commands_per_request=1 -- "${W[@]}" "http://127.0.0.1:$WEBDIS_PORT/GET/bench:key"
echo "==> redis-benchmark (direct RESP)" >&2
for P in 1 10; do
  redis-benchmark -p "$REDIS_PORT" -t get -d 1024 -c "$CONNECTIONS" -P "$P" -n $((100000 * P)) --csv 2>/dev/null |
    python3 "$ROOT/scripts/bench-report.py" redis-benchmark --set suite=gateway \
      --set server="redis direct (redis-benchmark)" --set mode="$([ "$P" = 1 ] && echo 'single GET' || echo 'pipeline 10 GET')" \
      --set commands_per_request="$P" --set connections="$CONNECTIONS" --set value_bytes=1024 | bench_emit
done
