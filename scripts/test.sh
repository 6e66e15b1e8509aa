#!/usr/bin/env bash
# The whole test suite: prepares the machine (scripts/setup.sh: Debian
# packages, Consul under .local/consul, promtool under .local/prometheus),
# then runs every test target with both on PATH. Exits with the tests'
# status.
#
# Arguments, if any, replace `--all-targets --no-fail-fast` in the cargo
# call: `scripts/test.sh --test config` runs only the config tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

export PATH="$ROOT/.local/consul/usr/bin:$ROOT/.local/prometheus/usr/bin:$PATH"
if [ "$#" -eq 0 ]; then
    set -- --all-targets --no-fail-fast
fi
exec cargo test "$@"
