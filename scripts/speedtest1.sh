#!/usr/bin/env bash
# Builds SQLite's own benchmark, speedtest1, into .local/speedtest1/speedtest1
# and prints its path. Needs only Debian's archive (not sqlite.org):
#
# 1. Installs gcc and libsqlite3-dev if they are missing (like setup.sh).
# 2. Downloads Debian bookworm's sqlite3 SOURCE package
#    (scripts/sqlite-source.sh: a private apt configuration, cached).
# 3. Extracts test/speedtest1.c from the upstream (orig) tarball and
#    compiles it with gcc against the SYSTEM's libsqlite3 (-lsqlite3), so
#    the benchmark measures the same SQLite library that litefs's users on
#    this machine get. Only if that fails to compile or link, it is
#    compiled with the sqlite3.c amalgamation generated from the same
#    source tree instead (`make sqlite3.c`; installs tcl for that): the
#    binary then carries that SQLite. .local/speedtest1/LINKED_WITH says
#    which one was used. (With bookworm's 3.40.1 it builds against the
#    system library.)
#
# Safe to run again: a working binary is kept, downloads are cached.
# Usage: scripts/speedtest1.sh [--quiet]   (the last stdout line is the path)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
OUT_DIR="$LOCAL/speedtest1"
BIN="$OUT_DIR/speedtest1"

quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || printf 'speedtest1: %s\n' "$*" >&2; }
die() { printf 'speedtest1: error: %s\n' "$*" >&2; exit 1; }

works() { [ -x "$BIN" ] && "$BIN" --help >/dev/null 2>&1; }

if works; then
    say "already built: $BIN ($(cat "$OUT_DIR/LINKED_WITH" 2>/dev/null || echo '?'))"
    echo "$BIN"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script is for Debian (bookworm)"

# --- 1. compiler and the system's SQLite headers ---------------------------

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
missing=()
for pkg in gcc libc6-dev libsqlite3-dev xz-utils; do
    is_installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- 2. the sqlite3 source package, through a private apt configuration ----

tarball="$("$ROOT/scripts/sqlite-source.sh")" || die "no sqlite3 source package"
say "source: $(basename "$tarball")"

# --- 3. speedtest1.c, compiled against the system's libsqlite3 -------------

build="$OUT_DIR/build"
rm -rf "$build"
mkdir -p "$build"
tar -xf "$tarball" -C "$build" --wildcards --no-anchored --strip-components=1 \
    'test/speedtest1.c' 2>/dev/null || true
src="$(find "$build" -path '*/test/speedtest1.c' | head -n 1)"
[ -n "$src" ] || die "no test/speedtest1.c in $tarball"

# SPEEDTEST1_AMALGAMATION=1 forces the fallback (to test it).
if [ "${SPEEDTEST1_AMALGAMATION:-0}" != 1 ] &&
   gcc -O2 -o "$BIN.tmp" "$src" -lsqlite3 -lm 2>"$build/gcc.log"; then
    linked="system libsqlite3 $(dpkg-query -W -f='${Version}' libsqlite3-0 2>/dev/null || true)"
else
    # Fallback: speedtest1 with the SQLite of the same source package
    # compiled in (not the system's library). Debian's orig tarball is the
    # full source tree without a pre-built sqlite3.c, so the amalgamation is
    # generated from it the way upstream does (`make sqlite3.c`, needs tclsh).
    say "not building against the system libsqlite3 (forced, or see $build/gcc.log); using the amalgamation instead"
    is_installed tcl || {
        "${SUDO[@]}" apt-get update >&2
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tcl >&2
    }
    tree="$build/tree"
    mkdir -p "$tree"
    tar -xf "$tarball" -C "$tree" --strip-components=1
    (cd "$tree" && ./configure --quiet >/dev/null && timeout 900 make -s sqlite3.c >/dev/null) >&2 ||
        die "could not generate sqlite3.c in $tree"
    gcc -O2 -I"$tree" -o "$BIN.tmp" "$src" "$tree/sqlite3.c" -lpthread -ldl -lm >&2 \
        || die "speedtest1.c does not build with the amalgamation either"
    linked="SQLite $(sed -n 's/^#define SQLITE_VERSION  *"\(.*\)"/\1/p' "$tree/sqlite3.h") amalgamation from $(basename "$tarball"), compiled in"
fi
mv "$BIN.tmp" "$BIN"
echo "$linked" >"$OUT_DIR/LINKED_WITH"
works || die "built $BIN but '$BIN --help' fails"
say "built $BIN ($linked)"
echo "$BIN"
