#!/usr/bin/env bash
# Runs SQLite's own TCL test files (test/*.test of Debian bookworm's sqlite3
# source package, with its `testfixture`) in a litefs mount, and on a plain
# directory of the same disk for comparison (--plain).
#
#   scripts/sqlite-tests.sh [--short | --rollback | --wal | --all] [--plain]
#                           [--release] [--keep] [TEST ...]
#
# --short (the default) is the list .ci/run runs; --rollback and --wal the
# full lists of test files about journals, locking, paging and vacuum in
# each journal family (the README has their results and the files left out,
# each with its reason); TEST names (e.g. `pager1`) run just those.
#
# 1. Installs what building testfixture needs (gcc, make, tcl-dev,
#    zlib1g-dev, xz-utils) if missing, downloads the source package
#    (scripts/sqlite-source.sh) and builds testfixture into
#    .local/sqlite-tests/testfixture once (cached), without SQLITE_NO_SYNC
#    so that SQLite's fsyncs reach the mount.
# 2. Starts one litefs node (static lease; the debug build from `cargo
#    build`, or with --release the release build, as users run it: the
#    fault-injection files restore a saved database of up to 8 MiB by
#    copying it in, thousands of times) on a fresh mount under
#    .local/sqlite-tests/run, then runs each test file in the mount's
#    directory, one at a time, removing what each left. A test file passes when testfixture exits 0 within 300 s.
#
# Prints `<file>: ok` or `<file>: FAILED (<last line>)` for each, then
# `N passed, M failed` as its last line; exits non-zero when M > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/.local/sqlite-tests"
FIXTURE="$WORK/testfixture"
# Seconds per test file; SQLITE_TESTS_TIMEOUT overrides (a loaded machine).
PER_FILE_TIMEOUT="${SQLITE_TESTS_TIMEOUT:-300}"

say() { printf 'sqlite-tests: %s\n' "$*" >&2; }
die() { printf 'sqlite-tests: error: %s\n' "$*" >&2; exit 1; }

# The short list: quick files across rollback journals, WAL, locking,
# paging and vacuum that pass in the mount (scripts/test.sh runs it).
SHORT=(
    pager3 pageropt pagesize journal3 lock7 rollback2 sync sync2 vacuum
    vacuum2 vacuum4 mjournal jrnlmode2 wal7 wal8 wal9 walbig walhook
    walshared walprotocol2 walpersist e_wal
)
# Every file of the families that passes on a plain directory and neither
# uses journal_mode=OFF/MEMORY nor leaves a non-database file in the test
# directory (the README names those left out).
ROLLBACK=(
    pager1 pager3 pager4 pagerfault3 pageropt pagesize journal1 journal2
    journal3 lock lock2 lock3 lock4 lock5 lock6 lock7 exclusive
    exclusive2 rollback rollback2 rollbackfault sync sync2 vacuum vacuum2
    vacuum3 vacuum4 vacuum5 vacuum6 vacuum-into mjournal io pagerfault pagerfault2
    jrnlmode2
)
WAL=(
    wal wal2 wal3 wal4 wal5 wal6 wal7 wal8 wal9 walbig walbak walcksum
    walcrash walcrash2 walcrash3 walcrash4 walhook walmode walnoshm
    walpersist walprotocol walprotocol2 walro walshared walslow walthread
    e_wal e_walauto e_walckpt e_walhook waloverwrite wal64k walro2 walsetlk
    walblock walvfs walfault walfault2 walrofault
)

list=("${SHORT[@]}")
plain=false
keep=false
profile=debug
named=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --short) list=("${SHORT[@]}") ;;
        --rollback) list=("${ROLLBACK[@]}") ;;
        --wal) list=("${WAL[@]}") ;;
        --all) list=("${ROLLBACK[@]}" "${WAL[@]}") ;;
        --plain) plain=true ;;
        --keep) keep=true ;;
        --release) profile=release ;;
        -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) named+=("$1") ;;
    esac
    shift
done
[ "${#named[@]}" -gt 0 ] && list=("${named[@]}")

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

# --- 1. testfixture ---------------------------------------------------------

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if [ ! -x "$FIXTURE" ]; then
    missing=()
    for pkg in gcc make tcl-dev zlib1g-dev xz-utils; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing: ${missing[*]}"
        "${SUDO[@]}" apt-get update >&2
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
    tarball="$("$ROOT/scripts/sqlite-source.sh")"
    say "building testfixture from $(basename "$tarball") (about a minute)"
    rm -rf "$WORK/tree"
    mkdir -p "$WORK/tree"
    tar -xf "$tarball" -C "$WORK/tree" --strip-components=1
    (
        cd "$WORK/tree"
        ./configure --with-tcl=/usr/lib/tcl8.6 >"$WORK/configure.log" 2>&1
        # The rule defines SQLITE_NO_SYNC before TEMP_STORE: undone there.
        make -j2 testfixture TEMP_STORE="-DSQLITE_TEMP_STORE=1 -USQLITE_NO_SYNC" \
            >"$WORK/make.log" 2>&1
    ) || die "building testfixture failed: see $WORK/configure.log and $WORK/make.log"
    cp "$WORK/tree/testfixture" "$FIXTURE"
fi
TESTS="$WORK/tree/test"
[ -d "$TESTS" ] || die "no $TESTS: remove $FIXTURE to build again"

# --- 2. the directory under test --------------------------------------------

RUN="$WORK/run"
node_pid=""
cleanup() {
    if [ -n "$node_pid" ]; then
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    if mountpoint -q "$RUN/mnt" 2>/dev/null; then
        umount "$RUN/mnt" 2>/dev/null || umount -l "$RUN/mnt" 2>/dev/null || true
    fi
    $keep || rm -rf "$RUN"
}
trap cleanup EXIT

if mountpoint -q "$RUN/mnt" 2>/dev/null; then
    umount "$RUN/mnt" || die "$RUN/mnt is still mounted from an earlier run"
fi
rm -rf "$RUN"
mkdir -p "$RUN/mnt"
if $plain; then
    dir="$RUN/mnt"
else
    if [ "$profile" = release ]; then
        (cd "$ROOT" && cargo build --quiet --release --bin litefs) || die "cargo build failed"
    else
        (cd "$ROOT" && cargo build --quiet --bin litefs) || die "cargo build failed"
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    printf 'mount-dir: "%s"\ndata-dir: "%s"\nhttp:\n  addr: "127.0.0.1:%s"\n' \
        "$RUN/mnt" "$RUN/data" "$port" >"$RUN/litefs.yml"
    "$ROOT/target/$profile/litefs" -config "$RUN/litefs.yml" >"$RUN/litefs.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 300); do
        mountpoint -q "$RUN/mnt" && break
        kill -0 "$node_pid" 2>/dev/null || die "litefs exited: $(tail -n 5 "$RUN/litefs.log")"
        sleep 0.1
    done
    mountpoint -q "$RUN/mnt" || die "the mount did not come up: $(tail -n 5 "$RUN/litefs.log")"
    dir="$RUN/mnt"
fi

# Removes what a test file left: every file of the directory under test
# (on the mount, deleting a database deletes its companions).
clear_dir() {
    find "$dir" -mindepth 1 -maxdepth 1 ! -name '.lag' ! -name '.primary' \
        ! -name '*-pos' -exec rm -rf {} + 2>/dev/null || true
}

passed=0
failed=0
for name in "${list[@]}"; do
    file="$TESTS/$name.test"
    [ -f "$file" ] || die "no test file $file"
    clear_dir
    out="$RUN/$name.out"
    if (cd "$dir" && timeout "$PER_FILE_TIMEOUT" "$FIXTURE" "$file" --testdir= >"$out" 2>&1); then
        echo "$name: ok"
        passed=$((passed + 1))
    else
        why="$( (grep -E 'errors? out of|^!Failures' "$out" || true) | tr '\n' ' ' | cut -c1-160)"
        [ -n "$why" ] || why="$( (grep -v '^$' "$out" || true) | tail -n 1 | cut -c1-160)"
        echo "$name: FAILED ($why)"
        failed=$((failed + 1))
    fi
done
clear_dir
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
