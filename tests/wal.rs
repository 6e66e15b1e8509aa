//! WAL mode on a real mount: every transaction SQLite commits to the WAL
//! gets exactly one TXID (one LTX file each when recorded one at a time,
//! a run of them in one file when they come in a burst), and the chain
//! replays byte-identical to the checkpointed database; rollbacks and checkpoints make no TXID; mode
//! switches are one transaction each; kill -9 loses nothing acknowledged.
//! Needs root and /dev/fuse.

mod common;

use std::path::Path;

use common::{
    assert_replay_identical, kill9_during_writes, newest_ltx_pos, open_wal, sqlite3_ok, temp_dir,
    txid, Node, Rng,
};
use rusqlite::Connection;

fn open(path: &Path, synchronous: &str) -> Connection {
    open_wal(
        path,
        &format!("PRAGMA synchronous={synchronous}; PRAGMA cache_size=20;"),
    )
}

/// Checkpoints everything into the database file and empties the WAL, so
/// the data file is the whole database.
fn checkpoint_truncate(conn: &Connection) {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint was blocked");
}

/// A random WAL workload, step by step; after each step the TXID moved by
/// exactly the number of transactions that changed the database (0 or 1:
/// a step that must commit makes exactly one), and the newest LTX file
/// holds that one transaction alone.
fn random_workload(node: &Node, db: &str, synchronous: &str, rng: &mut Rng, burst: bool) {
    let path = node.db(db);
    let conn = open(&path, synchronous);
    let other = open(&path, synchronous);
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB, n INT);
         CREATE TABLE IF NOT EXISTS u(k INTEGER PRIMARY KEY, x INT);
         INSERT OR IGNORE INTO u VALUES(1, 100);",
    )
    .unwrap();
    let mut total = txid(node, db);
    for step in 0..60 {
        let before = if burst { total } else { txid(node, db) };
        let expected = match rng.next() % 11 {
            0 => {
                // Larger than the page cache (20 pages): spills mid-transaction.
                conn.execute_batch(
                    "BEGIN; WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i<400)
                     INSERT INTO t(v, n) SELECT randomblob(700), i FROM k; COMMIT;",
                )
                .unwrap();
                1
            }
            1 => {
                conn.execute_batch("BEGIN; INSERT INTO t(v) VALUES(randomblob(3000)); ROLLBACK;")
                    .unwrap();
                0
            }
            2 => {
                conn.execute_batch(
                    "BEGIN; INSERT INTO t(v) VALUES(1); SAVEPOINT s; UPDATE t SET n = n + 1;
                     ROLLBACK TO s; RELEASE s; COMMIT;",
                )
                .unwrap();
                1
            }
            3 => {
                let kind = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][(rng.next() % 4) as usize];
                other
                    .query_row(&format!("PRAGMA wal_checkpoint({kind})"), [], |_| Ok(()))
                    .unwrap();
                0
            }
            4 => {
                // A DELETE that matches nothing changes nothing.
                let deleted = conn.execute("DELETE FROM t WHERE id % 4 = 1", []).unwrap();
                u64::from(deleted > 0)
            }
            5 if step % 3 == 0 => {
                conn.execute_batch("VACUUM;").unwrap();
                1
            }
            6 => {
                // From the other connection; an UPDATE that matches
                // nothing changes nothing.
                let updated = other
                    .execute("UPDATE t SET v = randomblob(50) WHERE id % 7 = 0", [])
                    .unwrap();
                u64::from(updated > 0)
            }
            7 => {
                // Writes a page back with what it held: a commit in the
                // WAL that changes nothing gets no TXID.
                // (Values of one size: each UPDATE overwrites the cell in
                // place, so the page ends as it began.)
                conn.execute_batch("BEGIN; UPDATE u SET x = 101; UPDATE u SET x = 100; COMMIT;")
                    .unwrap();
                0
            }
            _ => {
                conn.execute(
                    "INSERT INTO t(v, n) VALUES(randomblob(?1), 1)",
                    [(rng.next() % 5000) as i64],
                )
                .unwrap();
                1
            }
        };
        total = before + expected;
        if burst && step % 15 != 14 {
            // Steps back to back: the mount records what it finds of them
            // at once, several in one LTX file.
            continue;
        }
        let after = txid(node, db);
        assert_eq!(
            after, total,
            "step {step}: TXID {before} -> {after}, expected +{expected}"
        );
        if expected == 1 && !burst {
            let files = node.ltx_files(db);
            let (header, _) = litefs::ltx::read_header_and_trailer(files.last().unwrap()).unwrap();
            assert_eq!(
                (header.min_txid, header.max_txid),
                (after, after),
                "step {step}: the newest LTX file"
            );
        }
        if step % 15 == 14 {
            checkpoint_truncate(&conn);
            assert_replay_identical(node, db);
        }
    }
    assert_eq!(
        conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    checkpoint_truncate(&conn);
    assert_replay_identical(node, db);
}

#[test]
fn wal_transactions_get_one_txid_each_and_replay_identical() {
    let dir = temp_dir("wal-random");
    let node = Node::start_in(dir.path(), "");
    let mut rng = Rng::from_clock("wal workload");
    random_workload(&node, "normal.db", "NORMAL", &mut rng, false);
    random_workload(&node, "full.db", "FULL", &mut rng, false);
    random_workload(&node, "burst.db", "NORMAL", &mut rng, true);
    let files = node.ltx_files("burst.db");
    let shared = files
        .iter()
        .filter_map(|f| litefs::ltx::parse_filename(f.file_name()?.to_str()?))
        .filter(|(min, max)| min < max)
        .count();
    println!(
        "burst.db: {shared} of {} LTX files hold several transactions",
        files.len()
    );
    assert_eq!(node.pos("full.db"), newest_ltx_pos(&node, "full.db"));
    // Nothing failed on the way.
    let log = node.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn switching_journal_modes_is_one_transaction_each_and_keeps_the_chain() {
    let dir = temp_dir("wal-switch");
    let node = Node::start_in(dir.path(), "");
    let path = node.db("s.db");
    sqlite3_ok(
        &path,
        "CREATE TABLE t(x); INSERT INTO t VALUES('delete mode');",
    );
    let mut expected = txid(&node, "s.db");
    for mode in ["WAL", "DELETE", "WAL", "TRUNCATE", "WAL", "PERSIST", "WAL"] {
        let out = sqlite3_ok(
            &path,
            &format!("PRAGMA journal_mode={mode}; INSERT INTO t VALUES('{mode}');"),
        );
        assert_eq!(out.trim().to_ascii_uppercase(), mode);
        // The switch (a header change) and the insert.
        expected += 2;
        assert_eq!(txid(&node, "s.db"), expected, "after switching to {mode}");
    }
    assert_eq!(sqlite3_ok(&path, "SELECT count(*) FROM t;"), "8\n");
    assert_replay_identical(&node, "s.db");
}

#[test]
fn several_processes_write_in_wal_mode() {
    let dir = temp_dir("wal-procs");
    let node = Node::start_in(dir.path(), "");
    let path = node.db("p.db");
    sqlite3_ok(&path, "PRAGMA journal_mode=WAL; CREATE TABLE t(w, i);");
    let before = txid(&node, "p.db");
    let children: Vec<_> = (0..3)
        .map(|w| {
            let sql: String = (0..40)
                .map(|i| format!("INSERT INTO t VALUES({w}, {i});\n"))
                .collect();
            std::process::Command::new("sqlite3")
                .arg("-cmd")
                .arg(".timeout 20000")
                .arg(&path)
                .arg(sql)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(sqlite3_ok(&path, "SELECT count(*) FROM t;"), "120\n");
    assert_eq!(txid(&node, "p.db"), before + 120);
    let conn = open(&path, "NORMAL");
    checkpoint_truncate(&conn);
    drop(conn);
    assert_replay_identical(&node, "p.db");
}

#[test]
fn kill_9_during_wal_writes_loses_nothing_acknowledged() {
    let dir = temp_dir("wal-crash");
    let mut node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("k.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);",
    );
    let mut rng = Rng::from_clock("wal crash test");
    kill9_during_writes(&mut node, "k.db", 12, &mut rng, |round| {
        let synchronous = if round % 2 == 0 { "NORMAL" } else { "FULL" };
        format!("PRAGMA synchronous={synchronous};")
    });
    // The kills left committed frames in the WAL, which start-up moved
    // into the database file (or the test proved nothing).
    let reconciled = node
        .log_text()
        .matches("the WAL was copied into the database file")
        .count();
    assert!(reconciled >= 6, "only {reconciled} start-ups found a WAL");
}

#[test]
fn a_rolled_back_transaction_that_spilled_to_the_wal_records_nothing() {
    let dir = temp_dir("wal-spill-rollback");
    let node = Node::start_in(dir.path(), "");
    let path = node.db("r.db");
    let conn = open(&path, "NORMAL");
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES(1);",
    )
    .unwrap();
    for round in 0..3 {
        let before = txid(&node, "r.db");
        // Larger than the page cache (20 pages): SQLite writes frames to the
        // WAL before COMMIT, then the ROLLBACK leaves them behind.
        conn.execute_batch(
            "BEGIN; WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i<300)
             INSERT INTO t(v) SELECT randomblob(900) FROM k; ROLLBACK;",
        )
        .unwrap();
        assert_eq!(
            txid(&node, "r.db"),
            before,
            "round {round}: the rollback made a TXID"
        );
        // Small transactions now reuse those frame slots.
        for i in 0..3 {
            conn.execute("UPDATE t SET v = ?1 WHERE id = 1", [i + round * 10])
                .unwrap();
        }
        assert_eq!(txid(&node, "r.db"), before + 3, "round {round}");
        checkpoint_truncate(&conn);
        assert_replay_identical(&node, "r.db");
    }
}

/// The config that turns FUSE passthrough of the WAL off.
const NO_PASSTHROUGH: &str = "fuse:\n  passthrough: false\n";

#[test]
fn without_passthrough_wal_transactions_are_recorded_the_same_way() {
    let dir = temp_dir("wal-no-passthrough");
    let mut node = Node::start_in(dir.path(), NO_PASSTHROUGH);
    assert!(node.log_text().contains("fuse.passthrough is false"));
    let mut rng = Rng::from_clock("wal workload without passthrough");
    random_workload(&node, "normal.db", "NORMAL", &mut rng, false);
    random_workload(&node, "full.db", "FULL", &mut rng, false);
    assert!(!node.log_text().contains("ERROR"));
    sqlite3_ok(
        &node.db("k.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);",
    );
    kill9_during_writes(&mut node, "k.db", 6, &mut rng, |round| {
        let synchronous = if round % 2 == 0 { "NORMAL" } else { "FULL" };
        format!("PRAGMA synchronous={synchronous};")
    });
}
