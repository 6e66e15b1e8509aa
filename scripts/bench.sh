#!/usr/bin/env bash
# Benchmarks litefs against a plain directory on the same disk and prints
# the figures (see examples/bench.rs). Needs root (FUSE) and sqlite3-free:
# the workloads use rusqlite. Usage: scripts/bench.sh [bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin litefs --example bench
work=$(mktemp -d "${TMPDIR:-/tmp}/litefs-bench.XXXXXX")
mkdir -p "$work/plain" "$work/mnt"
cat > "$work/litefs.yml" <<YML
mount-dir: "$work/mnt"
data-dir: "$work/data"
http:
  addr: "127.0.0.1:0"
YML

RUST_LOG=${RUST_LOG:-warn} target/release/litefs -config "$work/litefs.yml" 2>"$work/litefs.log" &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if grep -q " $work/mnt " /proc/mounts; then fusermount3 -uz "$work/mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  grep -q " $work/mnt " /proc/mounts && break
  kill -0 "$pid" 2>/dev/null || { echo "litefs exited:"; cat "$work/litefs.log"; exit 1; }
  sleep 0.1
done
grep -q " $work/mnt " /proc/mounts || { echo "litefs did not mount"; cat "$work/litefs.log"; exit 1; }

target/release/examples/bench --mount "$work/mnt" --plain "$work/plain" --pid "$pid" "$@"
