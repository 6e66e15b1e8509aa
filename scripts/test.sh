#!/usr/bin/env bash
# The whole test suite: prepares the machine (scripts/setup.sh: Debian
# packages, Consul under .local/consul, promtool under .local/prometheus),
# then runs every test target with both on PATH, then the short list of
# SQLite's own test files in a mount (scripts/sqlite-tests.sh --short),
# then a short run of the power-loss harness (scripts/powerloss.sh) and
# a 30 s run of each fuzz target (scripts/fuzz.sh).
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
# Power loss: a short run of the harness (the full run is by hand).
scripts/powerloss.sh --states 48 || status=$?
# Fuzzing: a 30 s smoke run of each target (long runs are by hand).
scripts/fuzz.sh 30 || status=$?
exit "$status"
