#!/usr/bin/env bash
# Downloads Debian bookworm's sqlite3 SOURCE package (cached) and prints the
# path of its upstream (orig) tarball as the last stdout line. Needs only
# Debian's archive (not sqlite.org), through a PRIVATE apt configuration
# under .local/apt-src (its own sources.list with one deb-src line, its own
# lists and caches, an empty dpkg status): the system's sources, lists and
# caches are neither used nor changed. `apt-get source --download-only`
# only fetches the .dsc and tarballs into .local/apt-src/src.
#
# Used by scripts/speedtest1.sh (SQLite's benchmark) and
# scripts/sqlite-tests.sh (SQLite's TCL test suite).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APT_DIR="$ROOT/.local/apt-src"

say() { printf 'sqlite-source: %s\n' "$*" >&2; }
die() { printf 'sqlite-source: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/apt-private.sh
. "$ROOT/scripts/apt-private.sh"

orig() { ls "$APT_DIR"/src/sqlite3_*.orig.tar.* 2>/dev/null | grep -v -- '-www' | head -n 1 || true; }

if [ -z "$(orig)" ]; then
    say "downloading Debian bookworm's sqlite3 source package (private apt config in $APT_DIR)"
    mkdir -p "$APT_DIR/src"
    apt_private_config "$APT_DIR" "deb-src http://deb.debian.org/debian bookworm main"
    # apt's progress goes to stderr: stdout is only the tarball's path.
    timeout 600 apt-get "${apt_private[@]}" update >&2
    (cd "$APT_DIR/src" && timeout 600 apt-get "${apt_private[@]}" source --download-only sqlite3) >&2
    [ -n "$(orig)" ] || die "apt-get source produced no sqlite3_*.orig.tar.* in $APT_DIR/src"
fi
orig
