//! Replicas of a WAL-mode database: readers there open it in WAL mode (as
//! SQLite does whenever the header says so), never see a torn transaction,
//! and see each applied transaction at their next read transaction.
//! Real litefs processes; needs root and /dev/fuse.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_identical, replica_yaml, sqlite3, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node,
    CATCH_UP,
};

#[test]
fn a_replica_reads_a_wal_database_without_torn_transactions() {
    let dir = temp_dir("wal-replica");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let writer = rusqlite::Connection::open(primary.db("bank.db")).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
             INSERT INTO acct(bal, pad) SELECT 1000, randomblob(500) FROM n;",
        )
        .unwrap();
    wait_caught_up(&primary, &replica, "bank.db");
    // Readers on the replica are in WAL mode, as the header says.
    assert_eq!(
        sqlite3_ok(&replica.db("bank.db"), "PRAGMA journal_mode;"),
        "wal\n"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let path = replica.db("bank.db");
        let (stop, reads, last_seen) = (stop.clone(), reads.clone(), last_seen.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let (sum, transfers): (i64, i64) = conn
                    .query_row(
                        "SELECT sum(bal), (SELECT count(*) FROM acct WHERE bal != 1000) FROM acct",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                assert_eq!(sum, 200_000, "a replica reader saw a torn transaction");
                last_seen.store(transfers as u64, Ordering::Relaxed);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_for("the first replica read", CATCH_UP, || {
        reads.load(Ordering::Relaxed) > 0
    });
    let script: String = std::iter::once(".timeout 30000\n".to_string())
        .chain((0..1000).map(|_| "SELECT sum(bal) FROM acct;\n".to_string()))
        .collect();
    let cli_readers: Vec<_> = (0..2)
        .map(|_| {
            let path = replica.db("bank.db");
            let script = script.clone();
            std::thread::spawn(move || sqlite3(&path, &script))
        })
        .collect();
    for i in 0..1000i64 {
        let (from, to) = (1 + i % 200, 1 + (i * 7 + 3) % 200);
        writer
            .execute_batch(&format!(
                "BEGIN; UPDATE acct SET bal = bal - 1 WHERE id = {from};
                 UPDATE acct SET bal = bal + 1 WHERE id = {to}; COMMIT;"
            ))
            .unwrap();
    }
    wait_caught_up(&primary, &replica, "bank.db");
    // The persistent connection sees the last transaction too.
    let final_transfers: u64 = sqlite3_ok(
        &primary.db("bank.db"),
        "SELECT count(*) FROM acct WHERE bal != 1000;",
    )
    .trim()
    .parse()
    .unwrap();
    wait_for("the reader to see the last transfer", CATCH_UP, || {
        last_seen.load(Ordering::Relaxed) == final_transfers
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    for r in cli_readers {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1000);
        assert!(
            stdout.lines().all(|l| l == "200000"),
            "a torn read: {stdout}"
        );
    }
    // Same bytes once the primary has checkpointed.
    writer
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert_identical(&primary, &replica, "bank.db");
    // Writes on the replica are refused, also in WAL mode.
    let out = sqlite3(&replica.db("bank.db"), "UPDATE acct SET bal = 0;");
    assert!(!out.status.success());
    assert_eq!(
        sqlite3_ok(&replica.db("bank.db"), "SELECT sum(bal) FROM acct;"),
        "200000\n"
    );
}

#[test]
fn journal_mode_switches_replicate_and_replica_readers_follow() {
    let dir = temp_dir("wal-switch-replica");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let db = "sw.db";
    sqlite3_ok(
        &primary.db(db),
        "CREATE TABLE t(x); INSERT INTO t VALUES('delete');",
    );
    // A reader on the replica that stays connected through every switch,
    // opened once the database is there (a replica cannot create it).
    wait_caught_up(&primary, &replica, db);
    let reader = rusqlite::Connection::open(replica.db(db)).unwrap();
    reader.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut rows = 1;
    for mode in ["WAL", "DELETE", "WAL", "TRUNCATE", "WAL", "PERSIST"] {
        sqlite3_ok(
            &primary.db(db),
            &format!("PRAGMA journal_mode={mode}; INSERT INTO t VALUES('{mode}');"),
        );
        rows += 1;
        wait_caught_up(&primary, &replica, db);
        let on_replica = sqlite3_ok(&replica.db(db), "SELECT count(*) FROM t;");
        assert_eq!(on_replica, format!("{rows}\n"), "after switching to {mode}");
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, rows, "the connected reader after switching to {mode}");
        // The replica gives readers -wal/-shm once the database was in WAL
        // mode (and keeps them: see `Applier::sync_wal_companions`).
        assert!(
            replica.mount.join(format!("{db}-wal")).exists(),
            "after {mode}"
        );
    }
    assert_identical(&primary, &replica, db);
}

#[test]
fn wal_commits_wake_the_replication_stream() {
    // Each recorded WAL commit must wake the stream at once, not at its
    // periodic check (1 s): the median over 20 commits is far below that.
    // (Reading the primary's `-pos` in `wait_caught_up` records the commit
    // if the watcher has not yet; tests/wal_passthrough.rs checks the
    // watcher on its own.)
    let dir = temp_dir("wal-wake");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let writer = rusqlite::Connection::open(primary.db("w.db")).unwrap();
    writer
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
        .unwrap();
    wait_caught_up(&primary, &replica, "w.db");
    let mut times = Vec::new();
    for i in 0..20 {
        writer.execute("INSERT INTO t VALUES(?1)", [i]).unwrap();
        let committed = std::time::Instant::now();
        wait_caught_up(&primary, &replica, "w.db");
        times.push(committed.elapsed());
    }
    times.sort();
    assert!(
        times[times.len() / 2] < Duration::from_millis(300),
        "median time to the replica {:?} (all: {times:?})",
        times[times.len() / 2]
    );
}
