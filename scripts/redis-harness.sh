#!/usr/bin/env bash
# Start throwaway Redis setups on free 127.0.0.1 ports, for humans and benchmarks.
# (Rust tests use larder_native::testing instead, which also kills servers on drop.)
#
#   scripts/redis-harness.sh standalone
#   scripts/redis-harness.sh cluster [MASTERS [REPLICAS_PER_MASTER]]   (default 3 1)
#   scripts/redis-harness.sh sentinel          (master + 1 replica + 3 sentinels, "mymaster")
#   scripts/redis-harness.sh stop DIR          (kills exactly the pids recorded in DIR/pids)
#
# Each setup runs daemonized in a new temp dir (logs redis-PORT.log, configs, DIR/pids).
# Stdout gets KEY=value lines only, so this works:
#   set -a; eval "$(scripts/redis-harness.sh cluster)"; set +a
#   ... use $REDIS_CLUSTER_URLS ...
#   scripts/redis-harness.sh stop "$REDIS_HARNESS_DIR"
# Lines: REDIS_URL (standalone), REDIS_CLUSTER_URLS (comma-separated), REDIS_SENTINEL_URLS
# (comma-separated) and REDIS_SENTINEL_MASTER (sentinel), then REDIS_HARNESS_DIR and
# REDIS_HARNESS_PIDS (the pid file). Progress and errors go to stderr.
#
# No port is assumed free: ports are picked at random, checked, and a server that fails to
# bind is retried on another port. Servers: --save "" --appendonly no; cluster nodes use
# --cluster-node-timeout 2000 (fast failover); sentinels use down-after 1000 ms.
set -euo pipefail

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
MARKER=.larder-redis-harness
READY_TIMEOUT=${REDIS_HARNESS_TIMEOUT:-60} # seconds, for a whole setup to become healthy

log() { echo "redis-harness: $*" >&2; }
die() {
  log "$*"
  exit 1
}

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

DIR=""
PIDS=""
USED_PORTS=" "
OK=0

# On failure, kill what this run started and remove its dir.
cleanup() {
  if [[ $OK -eq 0 && -n $DIR ]]; then
    log "setup failed; stopping what was started (logs were in $DIR)"
    stop_dir "$DIR" || true
  fi
}

# Whether something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets PORT to a port that looks free (and, with $1 = bus, whose port+10000 is free too).
pick_port() {
  local bus=${1:-} p i
  for ((i = 0; i < 200; i++)); do
    # 20000..32767 (below Linux's ephemeral range), bus ports then land on 30000..42767.
    p=$((20000 + (RANDOM % 12768)))
    [[ $USED_PORTS == *" $p "* || $USED_PORTS == *" $((p + 10000)) "* ]] && continue
    listening "$p" && continue
    if [[ -n $bus ]]; then
      [[ $USED_PORTS == *" $((p + 10000)) "* ]] && continue
      listening $((p + 10000)) && continue
    fi
    PORT=$p
    return 0
  done
  die "no free port found"
}

# Whether the pid is alive and is a redis-server (guards against pid reuse).
is_redis_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -r /proc/$pid/cmdline ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'redis-\(server\|sentinel\)'
}

# Waits until 127.0.0.1:$1 answers PING and INFO shows pid $2. Fails early if $2 died.
wait_ping() {
  local port=$1 pid=$2 deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ $("$REDIS_CLI" -p "$port" ping 2>/dev/null) == PONG ]] &&
      "$REDIS_CLI" -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$pid"; then
      return 0
    fi
    sleep 0.02
  done
  return 1
}

# Starts one daemonized server; $1 = kind (data|cluster|sentinel), $2.. = extra args.
# Retries on a new port when the picked one was taken. Sets PORT.
start_node() {
  local kind=$1 attempt pid pidfile conf
  shift
  for attempt in 1 2 3 4 5; do
    if [[ $kind == cluster ]]; then pick_port bus; else pick_port; fi
    USED_PORTS+="$PORT $((PORT + 10000)) "
    pidfile=$DIR/redis-$PORT.pid
    if [[ $kind == sentinel ]]; then
      conf=$DIR/sentinel-$PORT.conf
      {
        echo "port $PORT"
        echo "bind 127.0.0.1"
        echo "daemonize yes"
        echo "pidfile \"$pidfile\""
        echo "dir \"$DIR\""
        echo "logfile \"$DIR/redis-$PORT.log\""
        echo "sentinel resolve-hostnames no"
        echo "sentinel monitor mymaster 127.0.0.1 $MASTER_PORT 2"
        echo "sentinel down-after-milliseconds mymaster 1000"
        echo "sentinel failover-timeout mymaster 5000"
        echo "sentinel parallel-syncs mymaster 1"
      } >"$conf"
      "$REDIS_SERVER" "$conf" --sentinel >>"$DIR/redis-$PORT.out" 2>&1 || true
    else
      local args=(--bind 127.0.0.1 --port "$PORT" --save "" --appendonly no
        --daemonize yes --pidfile "$pidfile" --dir "$DIR" --logfile "$DIR/redis-$PORT.log"
        --dbfilename "dump-$PORT.rdb"
        --repl-diskless-sync yes --repl-diskless-sync-delay 0 --repl-ping-replica-period 1)
      if [[ $kind == cluster ]]; then
        args+=(--cluster-enabled yes --cluster-config-file "nodes-$PORT.conf"
          --cluster-node-timeout 2000)
      fi
      "$REDIS_SERVER" "${args[@]}" "$@" >>"$DIR/redis-$PORT.out" 2>&1 || true
    fi
    # The daemon writes its pid file right after forking.
    pid=""
    for _ in $(seq 1 100); do
      [[ -s $pidfile ]] && pid=$(<"$pidfile") && break
      sleep 0.02
    done
    if [[ -n $pid ]]; then
      echo "$pid" >>"$PIDS"
      wait_ping "$PORT" "$pid" && return 0
      is_redis_pid "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    if grep -qs 'Address already in use' "$DIR/redis-$PORT.log" "$DIR/redis-$PORT.out"; then
      log "port $PORT was taken; retrying on another port (attempt $attempt)"
      continue
    fi
    tail -n 20 "$DIR/redis-$PORT.log" "$DIR/redis-$PORT.out" >&2 2>/dev/null || true
    die "redis on port $PORT did not start"
  done
  die "could not find a free port after 5 attempts"
}

# Polls "$@" (a command) every 50 ms until it succeeds or READY_TIMEOUT passes.
wait_until() {
  local what=$1 deadline=$((SECONDS + READY_TIMEOUT))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || die "timed out waiting for: $what"
    sleep 0.05
  done
}

info_field() { # port section field
  "$REDIS_CLI" -p "$1" info "$2" 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"
}

replica_linked() { # port master_port
  [[ $(info_field "$1" replication role) == slave &&
    $(info_field "$1" replication master_port) == "$2" &&
    $(info_field "$1" replication master_link_status) == up ]]
}

new_dir() {
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/larder-redis.XXXXXX")
  PIDS=$DIR/pids
  : >"$PIDS"
  touch "$DIR/$MARKER"
  trap cleanup EXIT
}

finish() {
  echo "REDIS_HARNESS_DIR=$DIR"
  echo "REDIS_HARNESS_PIDS=$PIDS"
  OK=1
  log "up in ${SECONDS}s; stop with: $0 stop $DIR"
}

cmd_standalone() {
  new_dir
  start_node data
  echo "REDIS_URL=redis://127.0.0.1:$PORT/"
  finish
}

cluster_ok() { # expects CLUSTER_PORTS, MASTERS
  local p n info
  for p in $CLUSTER_PORTS; do
    info=$("$REDIS_CLI" -p "$p" cluster info 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    grep -qx "cluster_size:$MASTERS" <<<"$info" || return 1
    if [[ $(info_field "$p" replication role) == slave ]]; then
      [[ $(info_field "$p" replication master_link_status) == up ]] || return 1
    fi
  done
  # Every node lists every node (masters and replicas, by their 40-hex ids) in CLUSTER SLOTS
  # (a replica whose replication offset is still 0 is left out).
  for p in $CLUSTER_PORTS; do
    n=$("$REDIS_CLI" -p "$p" cluster slots 2>/dev/null | grep -cx '[0-9a-f]\{40\}' || true)
    [[ $n -eq $((MASTERS * (1 + REPLICAS))) ]] || return 1
  done
}

cmd_cluster() {
  MASTERS=${1:-3}
  REPLICAS=${2:-1}
  ((MASTERS >= 3)) || die "a cluster needs at least 3 masters"
  new_dir
  local addrs=() urls=() i
  CLUSTER_PORTS=""
  for ((i = 0; i < MASTERS * (1 + REPLICAS); i++)); do
    start_node cluster
    addrs+=("127.0.0.1:$PORT")
    urls+=("redis://127.0.0.1:$PORT/")
    CLUSTER_PORTS+="$PORT "
  done
  CLUSTER_PORTS=${CLUSTER_PORTS% }
  "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas "$REPLICAS" --cluster-yes \
    >"$DIR/cluster-create.out" 2>&1 || {
    cat "$DIR/cluster-create.out" >&2
    die "redis-cli --cluster create failed"
  }
  wait_until "cluster_state:ok on every node, all slots, replicas linked" cluster_ok
  (
    IFS=,
    echo "REDIS_CLUSTER_URLS=${urls[*]}"
  )
  finish
}

sentinel_ok() { # expects SENTINEL_PORTS, MASTER_PORT, REPLICA_PORT
  local s
  for s in $SENTINEL_PORTS; do
    [[ $("$REDIS_CLI" -p "$s" sentinel get-master-addr-by-name mymaster 2>/dev/null | paste -sd:) == "127.0.0.1:$MASTER_PORT" ]] || return 1
    [[ $("$REDIS_CLI" -p "$s" sentinel sentinels mymaster 2>/dev/null | grep -cx 'name') -ge 2 ]] || return 1
    "$REDIS_CLI" -p "$s" sentinel replicas mymaster 2>/dev/null | paste -sd' ' |
      grep -q "port $REPLICA_PORT .*master-link-status ok" || return 1
  done
}

cmd_sentinel() {
  new_dir
  start_node data
  MASTER_PORT=$PORT
  start_node data --replicaof 127.0.0.1 "$MASTER_PORT"
  REPLICA_PORT=$PORT
  wait_until "replica linked" replica_linked "$REPLICA_PORT" "$MASTER_PORT"
  local urls=() i
  SENTINEL_PORTS=""
  for i in 1 2 3; do
    start_node sentinel
    urls+=("redis://127.0.0.1:$PORT/")
    SENTINEL_PORTS+="$PORT "
  done
  wait_until "sentinels agree, see each other and the replica" sentinel_ok
  (
    IFS=,
    echo "REDIS_SENTINEL_URLS=${urls[*]}"
  )
  echo "REDIS_SENTINEL_MASTER=mymaster"
  finish
}

# Kills exactly the pids in $1/pids (if still redis processes), then removes $1.
stop_dir() {
  local dir=$1 pid n=0
  [[ -f $dir/pids ]] || die "$dir/pids not found"
  while read -r pid; do
    [[ $pid =~ ^[0-9]+$ ]] || continue
    if is_redis_pid "$pid"; then
      kill -9 "$pid" 2>/dev/null && n=$((n + 1)) || true
    fi
  done <"$dir/pids"
  # Not our children: poll until they are gone.
  while read -r pid; do
    [[ $pid =~ ^[0-9]+$ ]] || continue
    for _ in $(seq 1 250); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.02
    done
  done <"$dir/pids"
  log "killed $n process(es) from $dir"
  if [[ -f $dir/$MARKER ]]; then
    rm -rf -- "$dir"
  fi
}

case ${1:-} in
standalone) cmd_standalone ;;
cluster)
  shift
  cmd_cluster "$@"
  ;;
sentinel) cmd_sentinel ;;
stop)
  [[ $# -eq 2 ]] || usage
  OK=1
  stop_dir "$2"
  ;;
*) usage ;;
esac
