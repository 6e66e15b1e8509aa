#!/usr/bin/env bash
# Benchmarks litefs and prints the figures. Needs root (FUSE).
#
#   scripts/bench.sh [--writes N] [--rows N] [--txns N]
#       One primary (static lease): the SQLite workloads on its mount and on
#       a plain directory of the same disk (examples/bench.rs, mode
#       `single`); then a replica is started and the replication lag over
#       --txns single-row transactions is measured (mode `lag`).
#   scripts/bench.sh --failover [--runs N]
#       A Consul dev agent (.local/consul, from scripts/setup.sh) and two
#       Consul-leased nodes; clean handoff and crash failover times, median
#       over --runs runs each (examples/bench_failover.rs). Takes minutes:
#       each crash run waits for the lease to expire in Consul.
#
# Everything runs under a temp dir with loopback ports, and is bounded in
# time; on exit, error or Ctrl-C the processes started here are stopped by
# pid, the mounts removed and the temp dir deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)

failover=false
single_args=()
lag_args=()
failover_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --failover) failover=true; shift ;;
    --writes|--rows) single_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --txns) lag_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --runs) failover_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    *) echo "usage: scripts/bench.sh [--writes N] [--rows N] [--txns N] | --failover [--runs N]" >&2
       exit 2 ;;
  esac
done

# The build may wait for other builds' lock on the shared target dir.
timeout 1800 cargo build --release --quiet --bin litefs --example bench --example bench_failover
litefs="$root/target/release/litefs"
consul="$root/.local/consul/usr/bin/consul"

work=$(mktemp -d "${TMPDIR:-/tmp}/litefs-bench.XXXXXX")
pids=()        # processes this script started: "pid:binary"
consul_pid=""

# True while <pid> runs <exe> (false once it exited, also as a zombie).
runs() { [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$2" ]; }

# Stops one process we started, if it is still that process: SIGTERM,
# then SIGKILL after 10 s.
stop_pid() {
  local pid=$1 exe=$2
  runs "$pid" "$exe" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    runs "$pid" "$exe" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local entry
  for entry in "${pids[@]}"; do stop_pid "${entry%%:*}" "${entry#*:}"; done
  # Nodes started by bench_failover leave their pids in <node>/litefs.pid.
  local pidfile
  for pidfile in "$work"/*/litefs.pid; do
    [ -f "$pidfile" ] && stop_pid "$(cat "$pidfile")" "$litefs"
  done
  [ -n "$consul_pid" ] && stop_pid "$consul_pid" "$consul"
  local mnt left=false
  for mnt in "$work"/*/mnt; do
    if grep -q " $mnt " /proc/mounts; then
      fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" || true
    fi
    grep -q " $mnt " /proc/mounts && left=true
  done
  if $left; then
    echo "bench: a mount under $work is still present; not deleting it" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback port nobody listens on now (below the ephemeral range).
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Hltn "sport = :$port")" ]; then echo "$port"; return; fi
  done
}

# Writes <dir>/litefs.yml: mount, data dir, HTTP port, then extra YAML.
write_config() {
  local dir=$1 port=$2 extra=$3
  mkdir -p "$dir"
  cat > "$dir/litefs.yml" <<YML
mount-dir: "$dir/mnt"
data-dir: "$dir/data"
http:
  addr: "127.0.0.1:$port"
$extra
YML
}

# Starts litefs for <dir> in the background, sets node_pid and waits for
# the mount.
start_node() {
  local dir=$1
  RUST_LOG=${RUST_LOG:-warn} "$litefs" -config "$dir/litefs.yml" >"$dir/litefs.log" 2>&1 &
  node_pid=$!
  pids+=("$node_pid:$litefs")
  for _ in $(seq 1 300); do
    if grep -q " $dir/mnt " /proc/mounts; then return; fi
    runs "$node_pid" "$litefs" || break
    sleep 0.1
  done
  echo "bench: litefs for $dir did not mount; its log:" >&2
  cat "$dir/litefs.log" >&2
  return 1
}

if ! $failover; then
  mkdir -p "$work/plain"
  primary_port=$(free_port)
  write_config "$work/primary" "$primary_port" ""
  start_node "$work/primary"
  primary_pid=$node_pid
  timeout 900 target/release/examples/bench single \
    --mount "$work/primary/mnt" --plain "$work/plain" --pid "$primary_pid" "${single_args[@]}"

  replica_port=$(free_port)
  write_config "$work/replica" "$replica_port" "lease:
  type: static
  candidate: false
  hostname: bench-primary
  advertise-url: \"http://127.0.0.1:$primary_port\""
  start_node "$work/replica"
  replica_pid=$node_pid
  timeout 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --pid "$primary_pid" --replica-pid "$replica_pid" "${lag_args[@]}"
  exit 0
fi

# --failover
[ -x "$consul" ] || { echo "bench: $consul missing; run scripts/setup.sh" >&2; exit 1; }
cport=$(free_port)
mkdir -p "$work/consul"
"$consul" agent -dev -client 127.0.0.1 -bind 127.0.0.1 -node "litefs-bench-$cport" \
  -http-port "$cport" -server-port "$(free_port)" -serf-lan-port "$(free_port)" \
  -serf-wan-port -1 -dns-port -1 -grpc-port -1 >"$work/consul/consul.log" 2>&1 &
consul_pid=$!
curl_c() { curl -sS --max-time 2 "$@"; }
# Ready when it has a leader and creates sessions (the node is registered).
ready=false
for _ in $(seq 1 300); do
  kill -0 "$consul_pid" 2>/dev/null || break
  if [ "$(curl_c "http://127.0.0.1:$cport/v1/status/leader" 2>/dev/null || true)" != '""' ] &&
     id=$(curl_c -f -X PUT -d '{"TTL":"10s"}' "http://127.0.0.1:$cport/v1/session/create" 2>/dev/null |
          sed -n 's/.*"ID": *"\([^"]*\)".*/\1/p') && [ -n "$id" ]; then
    curl_c -X PUT "http://127.0.0.1:$cport/v1/session/destroy/$id" >/dev/null || true
    ready=true
    break
  fi
  sleep 0.1
done
$ready || { echo "bench: Consul did not become ready; its log:" >&2; cat "$work/consul/consul.log" >&2; exit 1; }

node_args=()
for name in node-a node-b; do
  port=$(free_port)
  write_config "$work/$name" "$port" "lease:
  type: consul
  candidate: true
  hostname: $name
  advertise-url: \"http://127.0.0.1:$port\"
  consul:
    url: \"http://127.0.0.1:$cport\"
    key: \"litefs/bench\"
    ttl: 10s
    lock-delay: 1s"
  node_args+=(--node "$port:$work/$name")
done
timeout --kill-after=10 1500 target/release/examples/bench_failover \
  --litefs "$litefs" "${node_args[@]}" "${failover_args[@]}"
