#!/usr/bin/env bash
# The example Worker (examples/edge-worker, Rust → wasm32) in workerd, through `larder
# gateway` to a redis-server: its size (raw and gzip -9; also the npm package's wasm, js/) and
# the latency of `GET /get` and `POST /set` (1 KB values) as a client sees it (client →
# workerd → gateway → Redis), one request at a time.
#
#   bash scripts/bench-edge.sh            # 5 s per run
#   DURATION=10 bash scripts/bench-edge.sh
#
# Uses the pinned tools of scripts/install-edge-tools.sh (worker-build, wasm-bindgen, workerd,
# wasm-opt, esbuild; installed when missing). Prints one JSON line per figure (suite "edge"),
# appended to $LARDER_BENCH_JSON when set (scripts/bench.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/bench-lib.sh"
DURATION="${DURATION:-5}"

bench_need redis-server wrk
eval "$(bash "$ROOT/scripts/install-edge-tools.sh")"
echo "==> worker-build --release (examples/edge-worker)" >&2
(cd "$ROOT/examples/edge-worker" && worker-build --release >&2)
BUILD="$ROOT/examples/edge-worker/build"
raw=$(wc -c <"$BUILD/index_bg.wasm")
gz=$(gzip -9 -c "$BUILD/index_bg.wasm" | wc -c)
echo "{\"suite\":\"edge\",\"kind\":\"wasm_size\",\"raw_bytes\":$raw,\"gzip_bytes\":$gz}" | bench_emit
# The npm package's wasm (js/), built the same way as for its tests.
bash "$ROOT/scripts/build-js.sh" >&2
raw=$(wc -c <"$ROOT/js/dist/wasm/larder_bg.wasm")
gz=$(gzip -9 -c "$ROOT/js/dist/wasm/larder_bg.wasm" | wc -c)
echo "{\"suite\":\"edge\",\"kind\":\"js_wasm_size\",\"raw_bytes\":$raw,\"gzip_bytes\":$gz}" | bench_emit

bench_init
build_larder
start_redis
start_gateway

WORKERD_PORT="$(free_port)"
cp "$BUILD/index.js" "$BUILD/index_bg.wasm" "$WORK/"
cat >"$WORK/config.capnp" <<CAPNP
using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:$WORKERD_PORT", http = (), service = "main") ],
);
const worker :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "UPSTASH_REDIS_REST_URL", text = "http://$GATEWAY"),
    (name = "UPSTASH_REDIS_REST_TOKEN", text = "$TOKEN"),
    (name = "LARDER_REST_BASE64_ARGS", text = "1"),
    (name = "LARDER_PREFIX", text = "bench"),
  ],
  globalOutbound = "internet",
);
CAPNP
(cd "$WORK" && exec "$WORKERD_BIN" serve config.capnp >"$WORK/workerd.log" 2>&1) &
PIDS+=($!)
URL="http://127.0.0.1:$WORKERD_PORT"
for _ in $(seq 300); do curl -sf "$URL/vectors" >/dev/null 2>&1 && break; sleep 0.1; done

VALUE="$(head -c 1024 /dev/zero | tr '\0' 'v')"
curl -sf -X POST --data-binary "$VALUE" "$URL/set?key=edge-hot&ttl_ms=600000" | grep -q '"ok":true'
curl -sf "$URL/get?key=edge-hot" | grep -q '"hit":true'
cat >"$WORK/set.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("v", 1024)
LUA

W=(-t1 -c1 -d"${DURATION}s")
common=(suite=edge connections=1 duration_s="$DURATION" value_bytes=1024 path="client → workerd → gateway → Redis")
echo "==> Worker GET /get (hit)" >&2
bench_wrk "${common[@]}" op=get -- "${W[@]}" "$URL/get?key=edge-hot"
echo "==> Worker POST /set" >&2
bench_wrk "${common[@]}" op=set -- "${W[@]}" -s "$WORK/set.lua" "$URL/set?key=edge-set&ttl_ms=600000"
echo "==> gateway alone: POST / [\"GET\",k] (the hop inside the above)" >&2
cat >"$WORK/gw.lua" <<LUA
wrk.method = "POST"
wrk.body = '["GET","bench:cache:edge-hot"]'
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
bench_wrk "${common[@]}" op="gateway GET only" path="client → gateway → Redis" -- "${W[@]}" -s "$WORK/gw.lua" "http://$GATEWAY/"
