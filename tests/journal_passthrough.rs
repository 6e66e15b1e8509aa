//! The rollback journal in FUSE passthrough on the primary (`src/fuse/journal.rs`):
//! once a database's transactions sync their journal (synchronous=NORMAL or
//! FULL), its journal writes stop reaching litefs (the FUSE write counter of
//! `/metrics`), yet every transaction is recorded before COMMIT returns, in
//! every rollback mode and in exclusive locking mode; with synchronous=OFF
//! the journal keeps going through litefs. kill -9 at any moment loses
//! nothing. Needs root, /dev/fuse and a kernel with FUSE passthrough (6.9+).

mod common;

use std::time::Duration;

use common::{
    assert_replay_identical, fuse_writes, kill9_during_writes, sqlite3_ok, temp_dir, txid,
    wait_for, Node, Rng,
};

/// A connection to `db` on the mount in `mode` with `synchronous`, in
/// exclusive locking mode when `exclusive`.
fn open(
    node: &Node,
    db: &str,
    mode: &str,
    synchronous: &str,
    exclusive: bool,
) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(node.db(db)).unwrap();
    let locking = if exclusive { "EXCLUSIVE" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA synchronous={synchronous}; \
         PRAGMA locking_mode={locking};"
    ))
    .unwrap();
    conn
}

/// Commits `n` single-row transactions on `conn`, checking after each
/// that `-pos` already names it; returns the FUSE writes they made.
fn commit_checked(node: &Node, db: &str, conn: &rusqlite::Connection, n: u64) -> u64 {
    let writes_before = fuse_writes(node);
    let first = txid(node, db);
    for i in 1..=n {
        conn.execute("INSERT INTO t(v) VALUES(randomblob(300))", [])
            .unwrap();
        assert_eq!(
            txid(node, db),
            first + i,
            "{db}: commit {i} was not recorded when COMMIT returned"
        );
    }
    fuse_writes(node) - writes_before
}

#[test]
fn a_syncing_database_s_journal_passes_through_and_every_commit_is_recorded_at_once() {
    let dir = temp_dir("journal-passthrough");
    let node = Node::start_in(dir.path(), "");
    let cases = [
        ("delete", "FULL", false),
        ("truncate", "NORMAL", false),
        ("persist", "FULL", false),
        ("persist", "NORMAL", true),
        ("delete", "FULL", true),
        ("truncate", "FULL", true),
    ];
    for (mode, synchronous, exclusive) in cases {
        let db = format!("{mode}-{synchronous}-{exclusive}.db").to_lowercase();
        // The first transaction goes through litefs and shows that this
        // database syncs its journal. (In exclusive locking mode a
        // connection keeps the journal it opened first, so it runs in one
        // of its own.)
        open(&node, &db, mode, synchronous, false)
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
            .unwrap();
        let conn = open(&node, &db, mode, synchronous, exclusive);
        let commits = 20;
        let writes = commit_checked(&node, &db, &conn, commits);
        // Each commit writes one or two database pages through litefs;
        // its journal (header, three writes per record, the end) would
        // add at least five more.
        assert!(
            writes <= commits * 3,
            "{db}: {writes} FUSE writes for {commits} commits: the journal did not pass through"
        );
        drop(conn);
        assert_eq!(sqlite3_ok(&node.db(&db), "PRAGMA integrity_check;"), "ok\n");
        assert_eq!(sqlite3_ok(&node.db(&db), "SELECT count(*) FROM t;"), "20\n");
        assert_replay_identical(&node, &db);
    }
}

#[test]
fn with_synchronous_off_the_journal_goes_through_litefs() {
    let dir = temp_dir("journal-sync-off");
    let node = Node::start_in(dir.path(), "");
    for (mode, exclusive) in [("persist", false), ("persist", true), ("delete", true)] {
        let db = format!("{mode}-off-{exclusive}.db");
        let conn = open(&node, &db, mode, "OFF", exclusive);
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
            .unwrap();
        let commits = 10;
        let writes = commit_checked(&node, &db, &conn, commits);
        assert!(
            writes >= commits * 5,
            "{db}: only {writes} FUSE writes for {commits} commits: the journal passed through"
        );
        drop(conn);
        assert_replay_identical(&node, &db);
    }

    // A connection with synchronous=OFF after others that synced: its first
    // transaction's journal passes through, and in PERSIST mode nothing
    // reaches litefs after the header is zeroed but the journal's close,
    // a moment after COMMIT returns (see src/fuse/journal.rs). It is recorded then,
    // and the next ones at COMMIT again.
    let db = "mixed.db";
    let full = open(&node, db, "persist", "FULL", false);
    full.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    commit_checked(&node, db, &full, 3);
    let off = open(&node, db, "persist", "OFF", false);
    let before = txid(&node, db);
    off.execute("INSERT INTO t(v) VALUES(1)", []).unwrap();
    wait_for(
        "the OFF transaction's LTX file",
        Duration::from_secs(10),
        || txid(&node, db) == before + 1,
    );
    commit_checked(&node, db, &off, 3);
    drop((full, off));
    assert_eq!(sqlite3_ok(&node.db(db), "SELECT count(*) FROM t;"), "7\n");
    assert_replay_identical(&node, db);

    // The same in exclusive locking mode, where the journal stays open: no
    // sync, no close between transactions. Each is recorded at the next
    // one's first database write (its header's nonce has changed), the
    // last when the connection closes; none fails.
    for mode in ["persist", "truncate", "delete"] {
        let db = format!("exclusive-off-{mode}.db");
        open(&node, &db, mode, "FULL", false)
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
            .unwrap();
        let before = txid(&node, &db);
        let off = open(&node, &db, mode, "OFF", true);
        for i in 1..=5u64 {
            off.execute("INSERT INTO t(v) VALUES(randomblob(300))", [])
                .unwrap_or_else(|e| panic!("{db}: insert {i}: {e}"));
            assert!(txid(&node, &db) >= before + i - 1, "{db}: insert {i}");
        }
        drop(off);
        wait_for(
            &format!("{db}: every transaction recorded"),
            Duration::from_secs(10),
            || txid(&node, &db) == before + 5,
        );
        assert_eq!(sqlite3_ok(&node.db(&db), "SELECT count(*) FROM t;"), "5\n");
        assert_replay_identical(&node, &db);
    }
}

#[test]
fn kill_9_with_the_journal_passing_through_never_loses_a_committed_transaction() {
    let dir = temp_dir("journal-passthrough-crash");
    let mut node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("k.db"),
        "CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);",
    );
    // The journal does pass through on this machine (else the rounds below
    // would test the other path only).
    let conn = open(&node, "probe.db", "persist", "FULL", false);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    let writes = commit_checked(&node, "probe.db", &conn, 10);
    assert!(
        writes <= 30,
        "{writes} FUSE writes: the journal did not pass through"
    );
    drop(conn);
    let setups = [
        ("persist", "FULL", "NORMAL"),
        ("truncate", "NORMAL", "NORMAL"),
        ("delete", "FULL", "EXCLUSIVE"),
        ("persist", "NORMAL", "EXCLUSIVE"),
        ("persist", "OFF", "NORMAL"),
        ("delete", "NORMAL", "NORMAL"),
    ];
    let mut rng = Rng::from_clock("journal passthrough crash test");
    kill9_during_writes(&mut node, "k.db", 12, &mut rng, |round| {
        let (mode, synchronous, locking) = setups[round % setups.len()];
        format!(
            "PRAGMA journal_mode={mode}; PRAGMA synchronous={synchronous}; \
             PRAGMA locking_mode={locking};"
        )
    });
}

/// Makes, in `node`'s stopped data directory, the state a kill -9 leaves
/// between SQLite zeroing the header of a journal that passes through and
/// the sync that would have recorded the transaction: one more transaction
/// in the backing database file, and (when `zeroed_journal`) the journal
/// with its header zeroed, as PERSIST mode leaves it.
fn transaction_ended_unseen(node: &Node, db: &str, zeroed_journal: bool) {
    let backing = node.data_db(db);
    sqlite3_ok(
        &backing,
        "PRAGMA journal_mode=persist; INSERT INTO t VALUES(2);",
    );
    let offline_journal = backing.with_file_name("database-journal");
    let journal = backing.with_file_name("journal");
    if zeroed_journal {
        let head = std::fs::read(&offline_journal).unwrap();
        assert!(head.len() >= 28 && head[..28].iter().all(|b| *b == 0));
        std::fs::rename(&offline_journal, &journal).unwrap();
    } else {
        // As litefs leaves a DELETE-mode journal: its magic zeroed, and its
        // mark after it.
        std::fs::remove_file(&offline_journal).unwrap();
        std::fs::write(&journal, litefs::store::hidden_journal_header()).unwrap();
    }
}

#[test]
fn a_transaction_that_ended_in_the_journal_unrecorded_is_recorded_at_start_up() {
    let dir = temp_dir("journal-ended-unrecorded");
    let mut node = Node::start_in(dir.path(), "");
    for db in ["zeroed.db", "none.db"] {
        sqlite3_ok(
            &node.db(db),
            "PRAGMA journal_mode=persist; CREATE TABLE t(v); INSERT INTO t VALUES(1);",
        );
    }
    let before = txid(&node, "zeroed.db");
    node.kill9();
    transaction_ended_unseen(&node, "zeroed.db", true);
    transaction_ended_unseen(&node, "none.db", false);
    node.restart();

    // Recorded as the next TXID: the chain replays to the file.
    assert_eq!(txid(&node, "zeroed.db"), before + 1);
    assert!(node
        .log_text()
        .contains("database zeroed.db: the journal ended a transaction (header zeroed)"));
    assert_eq!(
        sqlite3_ok(&node.db("zeroed.db"), "SELECT group_concat(v) FROM t;"),
        "1,2\n"
    );
    assert_replay_identical(&node, "zeroed.db");
    // With litefs's own emptied journal nothing says SQLite committed it:
    // the change stays a mismatch, as before (same TXID, the file's
    // checksum).
    assert_eq!(txid(&node, "none.db"), before);
    assert!(node
        .log_text()
        .contains("continuing from the file's content"));
}
