#!/usr/bin/env bash
# Benchmarks litefs and prints the figures. Needs root (FUSE).
#
#   scripts/bench.sh [--writes N] [--rows N] [--rounds N] [--txns N]
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
    --writes|--rows|--rounds) single_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --txns) lag_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --runs) failover_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: scripts/bench.sh [--writes N] [--rows N] [--rounds N] [--txns N] | --failover [--runs N]" >&2
       exit 2 ;;
  esac
done

# The build may wait for other builds' lock on the shared target dir.
timeout 1800 cargo build --release --quiet --bin litefs --example bench --example bench_failover
litefs="$root/target/release/litefs"
consul="$root/.local/consul/usr/bin/consul"

work=$(mktemp -d "${TMPDIR:-/tmp}/litefs-bench.XXXXXX")
pids=()        # background processes of this script (litefs nodes)
consul_pid=""
bounded_pid="" # the `timeout` running a bench binary, while one runs

# True while <pid> is still the process we mean: `child` for a background
# child of this script (until it exits and turns zombie; the parent check
# keeps a reused pid from matching), else the path of the binary it runs.
alive() {
  local pid=$1 what=$2
  [ -r "/proc/$pid/status" ] || return 1
  if [ "$what" = child ]; then
    awk -v me="$$" '/^State:/ { zombie = ($2 == "Z") } /^PPid:/ { parent = $2 }
      END { exit !(parent == me && !zombie) }' "/proc/$pid/status"
  else
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$what" ]
  fi
}

# Stops one process we started, if it is still that process: SIGTERM,
# then SIGKILL after 10 s.
stop_pid() {
  local pid=$1 what=$2
  alive "$pid" "$what" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    alive "$pid" "$what" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The mount points listed in /proc/mounts under <dir>.
mounts_under() { awk -v dir="$1/" 'index($2, dir) == 1 { print $2 }' /proc/mounts; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # timeout passes the SIGTERM on to the bench binary.
  if [ -n "$bounded_pid" ]; then stop_pid "$bounded_pid" child; fi
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid" child; done
  # Nodes started by bench_failover leave their pids in <node>/litefs.pid.
  local pidfile
  for pidfile in "$work"/*/litefs.pid; do
    if [ -f "$pidfile" ]; then stop_pid "$(cat "$pidfile")" "$litefs"; fi
  done
  if [ -n "$consul_pid" ]; then stop_pid "$consul_pid" child; fi
  # From /proc/mounts, not a glob: a dead mount (a node killed with -9)
  # fails stat, so a glob would not list it.
  local mnt
  for mnt in $(mounts_under "$work"); do
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" || true
  done
  if [ -n "$(mounts_under "$work")" ]; then
    echo "bench: still mounted, not deleting $work:" $(mounts_under "$work") >&2
  else
    rm -rf "$work" || echo "bench: could not delete all of $work" >&2
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

# Runs a command with a time limit; says so when the limit was hit. It
# runs in the background and is waited for, so that a signal to this
# script runs the cleanup at once rather than after the command.
bounded() {
  local seconds=$1; shift
  local status=0
  timeout --kill-after=10 "$seconds" "$@" &
  bounded_pid=$!
  wait "$bounded_pid" || status=$?
  bounded_pid=""
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "bench: $1 $2 did not finish within $seconds s; stopped" >&2
  fi
  return "$status"
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
  pids+=("$node_pid")
  for _ in $(seq 1 300); do
    if grep -q " $dir/mnt " /proc/mounts; then return; fi
    alive "$node_pid" child || break
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
  bounded 900 target/release/examples/bench single \
    --mount "$work/primary/mnt" --plain "$work/plain" --pid "$primary_pid" "${single_args[@]}"

  replica_port=$(free_port)
  write_config "$work/replica" "$replica_port" "lease:
  type: static
  candidate: false
  hostname: bench-primary
  advertise-url: \"http://127.0.0.1:$primary_port\""
  start_node "$work/replica"
  replica_pid=$node_pid
  bounded 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --pid "$primary_pid" --replica-pid "$replica_pid" "${lag_args[@]}"
  exit 0
fi

# --failover
[ -x "$consul" ] || { echo "bench: $consul missing; run scripts/setup.sh" >&2; exit 1; }
cport=$(free_port)
server_port=$(free_port)
serf_port=$(free_port)
mkdir -p "$work/consul"
"$consul" agent -dev -client 127.0.0.1 -bind 127.0.0.1 -node "litefs-bench-$cport" \
  -http-port "$cport" -server-port "$server_port" -serf-lan-port "$serf_port" \
  -serf-wan-port -1 -dns-port -1 -grpc-port -1 >"$work/consul/consul.log" 2>&1 &
consul_pid=$!
curl_c() { curl -sS --max-time 2 "$@"; }
# Ready when it has a leader and creates sessions (the node is registered).
ready=false
for _ in $(seq 1 300); do
  alive "$consul_pid" child || break
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
bounded 1500 target/release/examples/bench_failover \
  --litefs "$litefs" "${node_args[@]}" "${failover_args[@]}"
