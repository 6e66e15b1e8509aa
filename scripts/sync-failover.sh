#!/usr/bin/env bash
# Crash failover under synchronous replication, against asynchronous:
# three litefs candidates on a real Consul agent, a writer committing as
# fast as it can on the primary (a database in each journal mode), one replica
# stopped with SIGSTOP, the primary killed with SIGKILL at a random moment
# each round (tests/sync_failover.rs).
#
#   scripts/sync-failover.sh [ROUNDS]     (default 20)
#
# Prints one line per round (acknowledged commits, who took over, after
# how long, acknowledged rows missing there) for `replication.sync: 1`,
# then the same rounds with asynchronous replication. Fails when a
# synchronous round loses an acknowledged row. About 25 s per round
# (the killed primary's Consul session must expire).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
rounds="${1:-20}"
export PATH="$ROOT/.local/consul/usr/bin:$PATH"
cargo build --quiet --tests
for mode in sync async; do
    echo "== replication: $mode, $rounds rounds"
    SYNC_FAILOVER_MODE="$mode" SYNC_FAILOVER_ROUNDS="$rounds" \
        cargo test --quiet --test sync_failover -- --nocapture 2>&1 |
        grep -E '^(round|[0-9]+ rounds|candidates|test result)|panicked'
done
