#!/usr/bin/env bash
# The whole test suite: prepares the machine (scripts/setup.sh: Debian
# packages, Consul under .local/consul, promtool under .local/prometheus),
# then runs every test target with both on PATH, then the short list of
# SQLite's own test files in a mount (scripts/sqlite-tests.sh --short).
# Exits non-zero when any failed.
#
# Arguments, if any, run `cargo test ARGS` alone: `scripts/test.sh --test
# config` runs only the config tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

export PATH="$ROOT/.local/consul/usr/bin:$ROOT/.local/prometheus/usr/bin:$PATH"
if [ "$#" -gt 0 ]; then
    exec cargo test "$@"
fi
status=0
cargo test --all-targets --no-fail-fast || status=$?
# SQLite's own test files, the short list, in a mount.
scripts/sqlite-tests.sh --short || status=$?
exit "$status"
