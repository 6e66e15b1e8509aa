//! Deleting a database: removing its file through the primary's mount
//! deletes it there and on every replica (also one that was away), and a
//! later database of the same name starts a fresh chain everywhere. Real
//! litefs processes; needs root and /dev/fuse.

mod common;

use std::time::Duration;

use common::{
    assert_identical, replica_yaml, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node,
};

const GONE: Duration = Duration::from_secs(20);

/// Waits until `db` is gone from `node`'s mount and data directory.
fn wait_gone(node: &Node, db: &str) {
    wait_for(
        &format!("{db} to be deleted on {}", node.dir.display()),
        GONE,
        || {
            !node.db(db).exists()
                && !node.mount.join(format!("{db}-pos")).exists()
                && !node.data_db(db).exists()
        },
    );
}

fn first_ltx_min(node: &Node, db: &str) -> String {
    let files = node.ltx_files(db);
    let first = files.first().expect("an LTX file");
    first.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn deleting_on_the_primary_reaches_replicas_and_the_name_starts_afresh() {
    let dir = temp_dir("delete");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let mut away = Node::start_in(&dir.path().join("away"), &replica_yaml(&primary));
    for n in 0..5 {
        sqlite3_ok(
            &primary.db("gone.db"),
            &format!("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES({n});"),
        );
    }
    sqlite3_ok(
        &primary.db("kept.db"),
        "CREATE TABLE k(x); INSERT INTO k VALUES(1);",
    );
    for r in [&replica, &away] {
        wait_caught_up(&primary, r, "gone.db");
        wait_caught_up(&primary, r, "kept.db");
    }
    away.stop();

    // On a replica the mount is read-only.
    let err = std::fs::remove_file(replica.db("gone.db")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // Deleted while a connection holds it open, as unlink does: the
    // connection reads on (tests/posix.rs says more).
    let conn = rusqlite::Connection::open(primary.db("gone.db")).unwrap();
    std::fs::remove_file(primary.db("gone.db")).unwrap();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 5);
    drop(conn);
    wait_gone(&primary, "gone.db");
    assert!(primary.data.join("deleted/gone.db").exists());
    wait_gone(&replica, "gone.db");
    assert!(replica.log_text().contains("deleted database gone.db"));
    // The other database is untouched.
    assert_eq!(
        sqlite3_ok(&replica.db("kept.db"), "SELECT x FROM k;"),
        "1\n"
    );

    // A replica that was away learns of the deletion when it comes back.
    away.restart();
    wait_gone(&away, "gone.db");
    wait_caught_up(&primary, &away, "kept.db");

    // The same name again: a fresh chain from TXID 1, everywhere.
    sqlite3_ok(
        &primary.db("gone.db"),
        "CREATE TABLE fresh(y); INSERT INTO fresh VALUES('new');",
    );
    assert!(!primary.data.join("deleted/gone.db").exists());
    // Two statements, two transactions: TXIDs 1 and 2 (the old chain was at 5).
    assert!(primary.pos("gone.db").starts_with("0000000000000002/"));
    assert!(first_ltx_min(&primary, "gone.db").starts_with("0000000000000001-"));
    for r in [&replica, &away] {
        wait_caught_up(&primary, r, "gone.db");
        assert_identical(&primary, r, "gone.db");
        assert_eq!(
            sqlite3_ok(&r.db("gone.db"), "SELECT y FROM fresh;"),
            "new\n"
        );
        assert_eq!(
            first_ltx_min(r, "gone.db"),
            first_ltx_min(&primary, "gone.db")
        );
    }
}

#[test]
fn a_replica_that_missed_a_delete_and_a_recreate_gets_the_new_database() {
    let dir = temp_dir("delete-recreate");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let mut replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    for n in 0..3 {
        sqlite3_ok(
            &primary.db("a.db"),
            &format!("CREATE TABLE IF NOT EXISTS old(x); INSERT INTO old VALUES({n});"),
        );
    }
    wait_caught_up(&primary, &replica, "a.db");
    replica.stop();
    std::fs::remove_file(primary.db("a.db")).unwrap();
    wait_gone(&primary, "a.db");
    sqlite3_ok(
        &primary.db("a.db"),
        "CREATE TABLE new(y); INSERT INTO new VALUES(7);",
    );
    replica.restart();
    wait_caught_up(&primary, &replica, "a.db");
    assert_identical(&primary, &replica, "a.db");
    assert_eq!(sqlite3_ok(&replica.db("a.db"), "SELECT y FROM new;"), "7\n");
    let out = common::sqlite3(&replica.db("a.db"), "SELECT count(*) FROM old;");
    assert!(!out.status.success(), "the old table is gone");
}

#[test]
fn a_deletion_cut_short_by_a_crash_is_completed_at_start() {
    // The store writes the tombstone first (see src/store/delete.rs); a
    // crash before the directory is moved leaves both, which start-up must
    // read as "deleted".
    let dir = temp_dir("delete-crash");
    let data = dir.path().join("data");
    {
        let store = litefs::store::Store::open(&data).unwrap();
        store.create_db("x.db").unwrap();
        store.create_db("y.db").unwrap();
    }
    std::fs::create_dir_all(data.join("deleted")).unwrap();
    std::fs::write(data.join("deleted/x.db"), b"").unwrap();
    std::fs::create_dir_all(data.join("trash/z.db.9")).unwrap();
    let store = litefs::store::Store::open(&data).unwrap();
    assert!(store.db("x.db").is_none());
    assert!(store.db("y.db").is_some());
    assert!(!data.join("dbs/x.db").exists());
    assert!(!data.join("trash/z.db.9").exists());
    assert!(store.is_deleted("x.db"));
    // Created again: the tombstone goes first.
    store.create_db("x.db").unwrap();
    assert!(!store.is_deleted("x.db"));
    drop(store);
    let store = litefs::store::Store::open(&data).unwrap();
    assert!(store.db("x.db").is_some());
}
