#!/usr/bin/env python3
"""Commits as an application outside litefs sees them: Python 3's sqlite3
(the system's libsqlite3), one connection in autocommit, a table
t(id INTEGER PRIMARY KEY, v BLOB) kept across rounds (the file grows and
ages as an application's does), single-row INSERTs of randomblob(100).

    bench_client.py MOUNT_DIR PLAIN_DIR [--rounds N] [--txns N]

Workloads, each on the mount and on the plain directory of the same disk,
rounds alternating which goes first; prints the medians and the ratio
litefs/plain:
- single-row commits in DELETE, TRUNCATE and PERSIST (synchronous=FULL),
  and in WAL with synchronous NORMAL and FULL: --txns commits per round
  (WAL NORMAL four times as many);
- mixed, WAL NORMAL: each step one single-row commit, then four reads
  (max(id), three point selects of random rows; autocommit), --txns
  steps, as steps/s.
"""

import argparse
import os
import random
import sqlite3
import statistics
import time


def connect(path, journal_mode, synchronous):
    conn = sqlite3.connect(path, isolation_level=None)
    mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    if mode.lower() != journal_mode.lower():
        raise SystemExit(f"{path}: journal_mode is {mode}, not {journal_mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
    return conn


def commits(path, journal_mode, synchronous, txns):
    conn = connect(path, journal_mode, synchronous)
    start = time.perf_counter()
    for _ in range(txns):
        conn.execute("INSERT INTO t(v) VALUES(randomblob(100))")
    rate = txns / (time.perf_counter() - start)
    conn.close()
    return rate


def mixed(path, steps):
    conn = connect(path, "wal", "normal")
    rng = random.Random(1)
    start = time.perf_counter()
    for _ in range(steps):
        conn.execute("INSERT INTO t(v) VALUES(randomblob(100))")
        top = conn.execute("SELECT max(id) FROM t").fetchone()[0]
        for _ in range(3):
            conn.execute("SELECT v FROM t WHERE id = ?", (rng.randint(1, top),)).fetchone()
    rate = steps / (time.perf_counter() - start)
    conn.close()
    return rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mount")
    parser.add_argument("plain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--txns", type=int, default=1000)
    args = parser.parse_args()
    workloads = [
        ("single-row commits/s, DELETE, FULL", "delete", "full", 1),
        ("single-row commits/s, TRUNCATE, FULL", "truncate", "full", 1),
        ("single-row commits/s, PERSIST, FULL", "persist", "full", 1),
        ("single-row commits/s, WAL, NORMAL", "wal", "normal", 4),
        ("single-row commits/s, WAL, FULL", "wal", "full", 1),
        ("mixed steps/s (commit + 4 reads), WAL, NORMAL", "mixed", None, 1),
    ]
    print(f"outside client: Python's sqlite3 (libsqlite3 {sqlite3.sqlite_version}), autocommit, "
          f"randomblob(100) rows, median of {args.rounds} rounds")
    print(f"{'figure':<48} {'litefs':>10} {'plain':>10} {'ratio':>7}")
    for name, mode, sync, times in workloads:
        rates = {"litefs": [], "plain": []}
        for round_ in range(args.rounds):
            sides = ["litefs", "plain"] if round_ % 2 == 0 else ["plain", "litefs"]
            for side in sides:
                base = args.mount if side == "litefs" else args.plain
                path = os.path.join(base, f"client-{mode}-{sync or 'normal'}.db")
                if mode == "mixed":
                    rates[side].append(mixed(path, args.txns))
                else:
                    rates[side].append(commits(path, mode, sync, args.txns * times))
        m = statistics.median(rates["litefs"])
        p = statistics.median(rates["plain"])
        print(f"{name:<48} {m:>10.1f} {p:>10.1f} {m / p:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
