#!/usr/bin/env bash
# Benchmarks litefs and prints the figures. Needs root (FUSE).
#
#   scripts/bench.sh [--writes N] [--rows N] [--rounds N] [--txns N] [--size N]
#       One primary (static lease): the SQLite workloads on its mount and on
#       a plain directory of the same disk (examples/bench/, mode
#       `single`), then the same commits as an outside application makes
#       them (scripts/bench_client.py: Python's sqlite3, randomblob(100)
#       rows into a file kept across rounds, and a mixed WAL load of a
#       commit and four reads per step) and what a disk flush costs
#       (scripts/fsync_yardstick.py: one, two in sequence, two at once);
#       then SQLite's speedtest1 (below; on a primary of its
#       own, stopped afterwards); then a replica of the first primary is
#       started and, once it has caught up, reads on it are set against the
#       plain directory (mode `replica-reads`: the bulk table `single` left,
#       opened read-only, full scans for 2 s and 17,500 point selects by
#       random rowid, median of --rounds rounds); then the replication lag
#       over --txns single-row transactions is measured (mode `lag`), first
#       with the replica idle, then from a WAL database (NORMAL) on the
#       primary, then with 4 reader processes querying it in a tight loop,
#       then (mode `writer-under-readers`) SQLite's own writer committing on
#       the plain directory while 4 such readers query its database: the
#       yardstick for the lag with readers. About 3 minutes.
#   scripts/bench.sh --speedtest [--rounds N] [--size N]
#       Only SQLite's own benchmark, speedtest1 (built by
#       scripts/speedtest1.sh from Debian's sqlite3 source package, against
#       the system's libsqlite3), on the mount of one primary (no replica)
#       and on a plain directory of the same disk:
#       `speedtest1 --size N --journal delete` (N default 25) on
#       a fresh database file, --rounds rounds (default 3) alternating which
#       goes first. Prints each numbered test's median time on both and the
#       speed ratio litefs/plain = plain_time/litefs_time (below 1: litefs
#       is slower), and the TOTAL. `--journal wal` is run too if the mount
#       takes journal_mode=WAL (probed first), else skipped with a note.
#       About 30 s.
#   scripts/bench.sh --lag [--readers N] [--txns N]
#       Only the replication lag: a primary and a replica, then mode `lag`
#       with N reader processes on the replica (default 4). About 30 s.
#   scripts/bench.sh --catch-up
#       Only whether a replica keeps up: a primary and a replica, then mode
#       `catch-up` (one client committing single-row transactions as fast
#       as it can): 10,000 in WAL (NORMAL), 3,000 in DELETE (FULL), and
#       10,000 in WAL with 4 reader processes on the replica. Prints each
#       run's commit rate and how long after the last COMMIT the replica
#       reached it (the target: under 2 s). Also part of the default run.
#       About a minute.
#   scripts/bench.sh --sync [--txns N]
#       What synchronous replication costs: a primary with
#       `replication.sync: 1` and one without, each with a replica that
#       reaches it through a TCP forwarder of the bench's own that delays
#       every chunk by 0 or 5 ms in each direction (examples/bench/sync.rs);
#       N single-row commits (default 1000) in DELETE (FULL) and in WAL
#       (NORMAL), one client. Prints commits/s and COMMIT p50/p99 for each.
#       About a minute.
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
speedtest_only=false
lag_only=false
catch_up_only=false
sync_only=false
lag_readers=4
rounds=3        # speedtest1 rounds (--rounds also goes to bench single, replica-reads)
st_size=25      # speedtest1 --size
single_args=()
lag_args=()
failover_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --failover) failover=true; shift ;;
    --speedtest) speedtest_only=true; shift ;;
    --lag) lag_only=true; shift ;;
    --catch-up) catch_up_only=true; shift ;;
    --sync) sync_only=true; shift ;;
    --readers) lag_readers=${2:?$1 needs a value}; shift 2 ;;
    --rounds) rounds=${2:?$1 needs a value}; single_args+=("$1" "$2"); shift 2 ;;
    --size) st_size=${2:?$1 needs a value}; shift 2 ;;
    --writes|--rows) single_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --txns) lag_args+=("$1" "${2:?$1 needs a value}"); sync_txns=$2; shift 2 ;;
    --runs) failover_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: scripts/bench.sh [--writes N] [--rows N] [--rounds N] [--txns N] [--size N]" \
         "| --speedtest [--rounds N] [--size N] | --lag [--readers N] [--txns N] | --catch-up" \
         "| --sync [--txns N]" \
         "| --failover [--runs N]" >&2
       exit 2 ;;
  esac
done
case "$rounds$st_size$lag_readers" in *[!0-9]*) echo "bench: --rounds and --size take a number" >&2; exit 2 ;; esac
[ "$rounds" -ge 1 ] && [ "$st_size" -ge 1 ] || { echo "bench: --rounds and --size must be at least 1" >&2; exit 2; }

# The build may wait for other builds' lock on the shared target dir.
timeout 1800 cargo build --release --quiet --bin litefs --example bench --example bench_failover
# speedtest1, built once into .local (downloads Debian's sqlite3 source the
# first time). Without it the default run goes on without that section.
speedtest1=""
if ! $failover && ! $lag_only && ! $catch_up_only && ! $sync_only; then
  if speedtest1=$(timeout 1800 scripts/speedtest1.sh --quiet | tail -n 1) && [ -x "$speedtest1" ]; then :
  elif $speedtest_only; then
    echo "bench: scripts/speedtest1.sh failed; cannot run speedtest1" >&2; exit 1
  else
    echo "bench: scripts/speedtest1.sh failed; the speedtest1 section is skipped" >&2
    speedtest1=""
  fi
fi
# LITEFS=<binary> runs another build of litefs (a trial), the default is this tree's.
litefs="${LITEFS:-$root/target/release/litefs}"
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

# --- speedtest1 -------------------------------------------------------------

# Runs speedtest1 once: <label> <output file> <database> <journal mode>.
# On failure prints which side failed, the end of speedtest1's output and,
# for the mount, the end of the daemon's log.
speedtest_once() {
  local label=$1 out=$2 db=$3 journal=$4 status=0
  bounded 300 "$speedtest1" --size "$st_size" --journal "$journal" "$db" >"$out" 2>&1 || status=$?
  [ "$status" -eq 0 ] && grep -q 'TOTAL' "$out" && return 0
  echo "bench: speedtest1 --journal $journal FAILED on the $label ($db), exit status $status; its output ends:" >&2
  tail -n 5 "$out" | sed 's/^/    /' >&2
  if [ "$label" = "litefs mount" ]; then
    if ! alive "$st_node_pid" child; then
      echo "  the litefs daemon (pid $st_node_pid) is no longer running" >&2
    fi
    echo "  the litefs daemon's log ends:" >&2
    tail -n 10 "$st_dir/litefs.log" | sed 's/^/    /' >&2
  fi
  return 1
}

# Prints the medians of the rounds' outputs <dir>/{litefs,plain}.<round>.out
# side by side: one row per numbered test, then TOTAL.
speedtest_table() {
  local dir=$1
  awk -v rounds="$rounds" '
    function median(list,   v, n, i, j, t) {
      n = split(list, v, " ")
      for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return v[int(n / 2) + 1] + 0   # the upper of the middle two
    }
    FNR == 1 { side = (FILENAME ~ /\/litefs\.[0-9]+\.out$/) ? "litefs" : "plain" }
    /^ *[0-9]+ - .*[0-9.]+s$/ {
      id = $1; time = $NF; sub(/s$/, "", time)
      desc = $0; sub(/^ *[0-9]+ - /, "", desc); sub(/\.\.+ *[0-9.]+s$/, "", desc)
      if (!(id in name)) { order[++count] = id; name[id] = desc }
      times[side, id] = times[side, id] " " time
    }
    /^ *TOTAL\.+ *[0-9.]+s$/ { time = $NF; sub(/s$/, "", time); times[side, "TOTAL"] = times[side, "TOTAL"] " " time }
    END {
      order[++count] = "TOTAL"; name["TOTAL"] = ""
      printf "%-5s %-48s %9s %9s %12s\n", "test", "", "litefs s", "plain s", "speed ratio"
      printf "%-5s %-48s %9s %9s %12s\n", "", "", "", "", "litefs/plain"
      for (i = 1; i <= count; i++) {
        id = order[i]
        l = median(times["litefs", id]); p = median(times["plain", id])
        ratio = (l > 0) ? sprintf("%.2f", p / l) : "-"
        printf "%-5s %-48s %9.3f %9.3f %12s\n", id, substr(name[id], 1, 48), l, p, ratio
      }
      printf "(seconds, median of %d rounds; speed ratio litefs/plain = plain_time/litefs_time: below 1 means litefs is slower)\n", rounds
    }' "$dir"/litefs.*.out "$dir"/plain.*.out
}

# speedtest1 --journal <mode> on the mount and on the plain dir, $rounds
# rounds alternating which goes first, then the table. Fresh database
# files each run.
speedtest_mode() {
  local journal=$1 dir="$work/speedtest/$1" round side
  mkdir -p "$dir"
  local load_before
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  echo
  echo "speedtest1 --size $st_size --journal $journal ($(head -n 1 "$work/speedtest/version" | sed 's/^-- //'); $(cat "$root/.local/speedtest1/LINKED_WITH" 2>/dev/null || echo '?'))"
  for round in $(seq 1 "$rounds"); do
    for side in $( [ $((round % 2)) -eq 1 ] && echo litefs plain || echo plain litefs ); do
      if [ "$side" = litefs ]; then
        speedtest_once "litefs mount" "$dir/litefs.$round.out" \
          "$st_dir/mnt/speedtest1-$journal-$round.db" "$journal" || return 1
      else
        speedtest_once "plain dir" "$dir/plain.$round.out" \
          "$work/speedtest/plain/speedtest1-$journal-$round.db" "$journal" || return 1
      fi
    done
  done
  speedtest_table "$dir"
  echo "(1-min load average before/after: $load_before / $(cut -d' ' -f1 /proc/loadavg); other work on the machine skews both columns)"
}

# How this machine's idle CPUs wake, which sets what a FUSE round trip
# costs: on a VM whose cpuidle driver is haltpoll with guest_halt_poll_ns=0,
# every request wakes a halted virtual CPU (see the module doc of src/cpu_wake.rs).
cpu_idle_setting() {
  local driver poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
  driver=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
  if [ "$driver" = haltpoll ] && [ -r "$poll" ]; then
    echo "cpuidle driver haltpoll, guest_halt_poll_ns=$(cat "$poll")"
  else
    echo "cpuidle driver $driver"
  fi
}

# The whole section, on the primary in $st_dir (pid st_node_pid). Returns
# non-zero when a run failed (after printing why).
speedtest_section() {
  mkdir -p "$work/speedtest/plain"
  "$speedtest1" --help 2>&1 | head -n 1 >"$work/speedtest/version" || true
  # Which litefs: the build above is of the working tree, which may differ
  # from the commit.
  echo "litefs: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(
    [ -n "$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] &&
      echo ' + uncommitted changes in src/')"
  echo "cpu idle: $(cpu_idle_setting)"
  local failed=0
  if ! speedtest_mode delete; then
    echo
    echo "speedtest1 --journal wal: not tried, the --journal delete run failed"
    return 1
  fi
  # WAL only where the mount takes it: a tiny run, then the header's
  # read/write version bytes (18, 19) must say 2 (WAL).
  local probe="$st_dir/mnt/speedtest1-walprobe.db" status=0
  bounded 60 "$speedtest1" --size 1 --journal wal "$probe" >"$work/speedtest/walprobe.out" 2>&1 || status=$?
  if [ "$status" -eq 0 ] && [ "$(od -An -tu1 -j18 -N2 "$probe" 2>/dev/null | tr -s ' ')" = " 2 2" ]; then
    speedtest_mode wal || failed=1
  else
    echo
    echo "speedtest1 --journal wal: skipped, the litefs mount does not take journal_mode=WAL" \
      "(probe: exit $status, $(grep -v -m1 '^--' "$work/speedtest/walprobe.out" || echo 'mode not applied'))"
  fi
  return "$failed"
}

# Starts a primary of its own for speedtest1 (started like the others; its
# own so that its databases, and the empty one the WAL probe leaves, do
# not reach the replica of the lag run), runs the section, stops it.
speedtest_run() {
  local status=0
  st_dir="$work/speedtest-node"
  write_config "$st_dir" "$(free_port)" ""
  start_node "$st_dir" || return 1
  st_node_pid=$node_pid
  speedtest_section || status=$?
  stop_pid "$st_node_pid" child
  fusermount3 -u "$st_dir/mnt" 2>/dev/null || true
  return "$status"
}

if $speedtest_only; then
  speedtest_run
  exit
fi

# The primary (static lease); sets primary_port, primary_pid.
start_primary() {
  primary_port=$(free_port)
  write_config "$work/primary" "$primary_port" ""
  start_node "$work/primary"
  primary_pid=$node_pid
}

# A replica of the primary; sets replica_port, replica_pid.
start_replica() {
  replica_port=$(free_port)
  write_config "$work/replica" "$replica_port" "lease:
  type: static
  candidate: false
  hostname: bench-primary
  advertise-url: \"http://127.0.0.1:$primary_port\""
  start_node "$work/replica"
  replica_pid=$node_pid
}

# The catch-up runs (mode `catch-up`), on the primary and replica running.
catch_up_runs() {
  local run
  for run in "wal 10000 0" "delete 3000 0" "wal 10000 4"; do
    set -- $run
    bounded 600 target/release/examples/bench catch-up \
      --primary "$work/primary/mnt" --primary-port "$primary_port" \
      --replica "$work/replica/mnt" --replica-port "$replica_port" \
      --pid "$primary_pid" --replica-pid "$replica_pid" \
      --journal "$1" --txns "$2" --readers "$3"
    echo
  done
}

if $catch_up_only; then
  start_primary
  start_replica
  catch_up_runs
  exit
fi

# What synchronous replication costs a commit (mode `sync`): a primary
# with `replication.sync: 1` and one without, each with a replica that
# reaches it through the bench's delaying forwarder, with no delay and
# with 5 ms in each direction; --txns single-row commits per journal mode.
sync_runs() {
  local delay label extra proxy_port txns=${sync_txns:-1000}
  for delay in 0 5; do
    for label in async sync; do
      extra=""
      if [ "$label" = sync ]; then
        extra="replication:
  sync: 1
  sync-timeout: 30s"
      fi
      rm -rf "$work/primary" "$work/replica"
      primary_port=$(free_port)
      write_config "$work/primary" "$primary_port" "$extra"
      start_node "$work/primary"
      primary_pid=$node_pid
      proxy_port=$(free_port)
      replica_port=$(free_port)
      write_config "$work/replica" "$replica_port" "lease:
  type: static
  candidate: false
  hostname: bench-primary
  advertise-url: \"http://127.0.0.1:$proxy_port\""
      start_node "$work/replica"
      replica_pid=$node_pid
      bounded 600 target/release/examples/bench sync \
        --primary "$work/primary/mnt" --primary-port "$primary_port" \
        --replica "$work/replica/mnt" --replica-port "$replica_port" \
        --proxy-port "$proxy_port" --delay-ms "$delay" --txns "$txns" --label "$label" \
        --journal delete
      bounded 600 target/release/examples/bench sync \
        --primary "$work/primary/mnt" --primary-port "$primary_port" \
        --replica "$work/replica/mnt" --replica-port "$replica_port" \
        --proxy-port "$proxy_port" --delay-ms "$delay" --txns "$txns" --label "$label" \
        --journal wal
      stop_pid "$replica_pid" child
      stop_pid "$primary_pid" child
      fusermount3 -u "$work/replica/mnt" 2>/dev/null || true
      fusermount3 -u "$work/primary/mnt" 2>/dev/null || true
    done
  done
}

if $sync_only; then
  sync_runs
  exit
fi

if $lag_only; then
  start_primary
  start_replica
  bounded 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --pid "$primary_pid" --replica-pid "$replica_pid" --readers "$lag_readers" "${lag_args[@]}"
  if [ "$lag_readers" -gt 0 ]; then
    echo
    mkdir -p "$work/plain"
    bounded 900 target/release/examples/bench writer-under-readers \
      --plain "$work/plain" --readers "$lag_readers" "${lag_args[@]}"
  fi
  # What the nodes warned of during the run (a reader holding applies off).
  for node in primary replica; do
    grep -E " (WARN|ERROR) " "$work/$node/litefs.log" | sed "s/^/$node: /" | tail -n 60 || true
  done
  exit
fi

if ! $failover; then
  mkdir -p "$work/plain"
  start_primary
  bounded 900 target/release/examples/bench single \
    --mount "$work/primary/mnt" --plain "$work/plain" --pid "$primary_pid" "${single_args[@]}"
  # The same commits as an outside application makes them.
  echo
  bounded 900 python3 scripts/bench_client.py "$work/primary/mnt" "$work/plain" --rounds "$rounds"
  bounded 60 python3 scripts/fsync_yardstick.py "$work/plain"

  # speedtest1, on a single primary of its own (no replica attached).
  speedtest_failed=false
  if [ -n "$speedtest1" ]; then speedtest_run || speedtest_failed=true; echo; fi

  start_replica
  # Reads on the replica against the plain dir; a failure is reported at
  # the end, after the lag runs.
  replica_reads_failed=false
  bounded 300 target/release/examples/bench replica-reads \
    --replica "$work/replica/mnt" --plain "$work/plain" \
    --primary-port "$primary_port" --replica-port "$replica_port" --rounds "$rounds" ||
    replica_reads_failed=true
  echo
  bounded 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --pid "$primary_pid" --replica-pid "$replica_pid" "${lag_args[@]}"
  echo
  # The same from a WAL database (synchronous=NORMAL) on the primary.
  bounded 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --journal wal "${lag_args[@]}"
  echo
  # The same with 4 reader processes on the replica, each one persistent
  # connection querying in a tight loop.
  bounded 900 target/release/examples/bench lag \
    --primary "$work/primary/mnt" --primary-port "$primary_port" \
    --replica "$work/replica/mnt" --replica-port "$replica_port" \
    --readers 4 "${lag_args[@]}"
  echo
  # The yardstick: what the same 4 readers do to SQLite's own writer on the
  # plain directory.
  bounded 900 target/release/examples/bench writer-under-readers \
    --plain "$work/plain" --readers 4 "${lag_args[@]}"
  echo
  catch_up_runs
  status=0
  if $speedtest_failed; then echo "bench: speedtest1 failed (see above)" >&2; status=1; fi
  if $replica_reads_failed; then echo "bench: bench replica-reads failed (see above)" >&2; status=1; fi
  exit "$status"
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
