#!/usr/bin/env bash
# The power-loss harness: each workload runs on litefs whose data directory
# is on ext4 (its journal, default mount options) on a loop device over a
# file served by a recording FUSE file system of the harness; every write
# the device completed and every flush is logged. Then, for N crash states
# spread over the log (a flush boundary plus a subset of the writes not yet
# flushed), the disk image is rebuilt, mounted (ext4 replays its journal)
# and litefs started on it; each must start, serve every database, hold
# every transaction whose COMMIT returned, whole, pass integrity_check,
# and have an LTX chain that replays byte-identical with `-pos` at its end
# (examples/powerloss/).
#
#   scripts/powerloss.sh [--states N] [--workload NAME] [--seed S] [--keep-failed]
#
# --states is the total (default 300), shared by the workloads. Prints one
# line per failed state, a table per workload, and `N crash states, M
# failed` as its last line; exits non-zero when M > 0. Needs root (FUSE,
# loop devices, mount). Uses the debug build (`cargo build`): the checks,
# not litefs's speed, take the time. About 1 s per 15 states here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

[ "$(id -u)" -eq 0 ] || { echo "powerloss: needs root (FUSE, loop devices, mount)" >&2; exit 2; }
for tool in mkfs.ext4 losetup mount umount; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "powerloss: $tool is missing; run scripts/setup.sh" >&2
        exit 2
    }
done

cargo build --quiet --bin litefs --example powerloss

WORK="$(mktemp -d "${TMPDIR:-/dev/shm}/litefs-powerloss.XXXXXX" 2>/dev/null \
    || mktemp -d /tmp/litefs-powerloss.XXXXXX)"
cleanup() {
    # What an interrupted run left, in the order it was stacked: the loop
    # devices over files of the work directory are noted first (their
    # backing paths vanish once the recorder is unmounted), then every
    # mount but the recorders' is detached (litefs, ext4), then the loop
    # devices, then the recorders. Best effort: nothing here may stop it.
    set +e +o pipefail
    local loops
    loops=$(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 {print $1}')
    awk -v w="$WORK" '$2 ~ "^"w && $1 != "powerloss-recorder" {print $2}' /proc/self/mounts \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    for dev in $loops; do losetup -d "$dev" 2>/dev/null || true; done
    awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/self/mounts \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    # A step-down leaves a WAL immutable (chattr +i).
    chattr -R -i "$WORK" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# In a process group of its own (set -m), so that an interrupt ends it
# with every process it started (litefs, the recorder, Consul).
set -m
target/debug/examples/powerloss --litefs target/debug/litefs --work "$WORK/run" "$@" &
harness=$!
set +m
trap 'kill -TERM -- -"$harness" 2>/dev/null; sleep 1; kill -KILL -- -"$harness" 2>/dev/null; exit 130' INT TERM
wait "$harness"
