//! What SQLite and applications expect of a POSIX file system holds on the
//! mount as on ext4: files get the mode their creator asked for, less its
//! umask, and SQLite's journal gets its database's mode. A real litefs
//! process (static lease) on a real mount. Needs root and /dev/fuse.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{temp_dir, Node};

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Creates `path` in a process with umask `umask`, asking for `mode`.
fn create_with(path: &Path, mode: u32, umask: u32) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys; os.umask(int(sys.argv[3], 8)); \
             os.close(os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, int(sys.argv[2], 8)))",
        )
        .arg(path)
        .arg(format!("{mode:o}"))
        .arg(format!("{umask:o}"))
        .output()
        .expect("python3 (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "creating {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_files_get_the_mode_asked_for_less_the_umask() {
    let dir = temp_dir("posix-modes");
    let node = Node::start_in(&dir.path().join("node"), "");
    for (name, mode, umask, want) in [
        ("a.db", 0o640, 0o022, 0o640),
        ("b.db", 0o666, 0o077, 0o600),
        ("c.db", 0o666, 0o002, 0o664),
    ] {
        create_with(&node.db(name), mode, umask);
        assert_eq!(
            mode_of(&node.db(name)),
            want,
            "{name} created with mode {mode:o} under umask {umask:o}"
        );
    }
    // An existing file keeps its mode when opened with O_CREAT again.
    create_with(&node.db("a.db"), 0o600, 0o022);
    assert_eq!(mode_of(&node.db("a.db")), 0o640);
}

#[test]
fn the_journal_gets_its_database_s_mode() {
    let dir = temp_dir("posix-journal-mode");
    let node = Node::start_in(&dir.path().join("node"), "");
    let db = node.db("j.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(x);").unwrap();
    // Each database mode in turn: SQLite creates the journal with it
    // (DELETE mode: a new journal each transaction).
    for mode in [0o600, 0o666, 0o640] {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).unwrap();
        conn.execute_batch("BEGIN; INSERT INTO t VALUES(1);")
            .unwrap();
        let journal = node.db("j.db-journal");
        assert_eq!(
            mode_of(&journal),
            mode,
            "the journal of a database of mode {mode:o}"
        );
        conn.execute_batch("COMMIT;").unwrap();
    }
}

#[test]
fn a_journal_written_by_hand_for_a_deleted_database_does_not_stop_sqlite() {
    let dir = temp_dir("posix-orphan-journal");
    let node = Node::start_in(&dir.path().join("node"), "");
    let db = node.db("o.db");
    common::sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    std::fs::remove_file(&db).unwrap();
    // As SQLite's exclusive.test does: a journal with no database.
    std::fs::write(node.db("o.db-journal"), b"x\n").unwrap();
    assert_eq!(std::fs::read(node.db("o.db-journal")).unwrap(), b"x\n");
    // SQLite opens the (new, empty) database and sets the journal aside.
    assert_eq!(
        common::sqlite3_ok(&db, "SELECT count(*) FROM sqlite_master;"),
        "0\n"
    );
    common::sqlite3_ok(&db, "CREATE TABLE u(y); INSERT INTO u VALUES(2);");
    assert_eq!(common::sqlite3_ok(&db, "SELECT y FROM u;"), "2\n");
}

#[test]
fn deleting_an_open_database_works_as_unlink_does() {
    let dir = temp_dir("posix-unlink-open");
    let mut node = Node::start_in(&dir.path().join("node"), "");
    let db = node.db("d.db");
    let old = rusqlite::Connection::open(&db).unwrap();
    old.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1), (2);")
        .unwrap();

    // The name goes at once, though a connection holds the file.
    std::fs::remove_file(&db).expect("deleting a database a connection holds");
    assert!(!db.exists(), "the name is still there after the delete");

    // The connection from before reads on; its writes fail cleanly.
    let count: i64 = old
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 2);
    let err = old
        .execute("INSERT INTO t VALUES(3)", [])
        .expect_err("a write to a deleted database");
    // SQLite sees the link count of 0 and refuses (SQLITE_READONLY_DBMOVED),
    // as on ext4; a write that got past it would fail with EIO.
    assert!(
        err.to_string().contains("readonly database") || err.to_string().contains("disk I/O"),
        "a write to a deleted database failed with: {err}"
    );

    // A new file of that name is a new database.
    common::sqlite3_ok(&db, "CREATE TABLE u(y); INSERT INTO u VALUES(7);");
    assert_eq!(
        common::sqlite3_ok(&db, "SELECT name FROM sqlite_master;"),
        "u\n"
    );
    drop(old);
    assert_eq!(common::sqlite3_ok(&db, "SELECT y FROM u;"), "7\n");
    assert_eq!(common::sqlite3_ok(&db, "PRAGMA integrity_check;"), "ok\n");

    // kill -9 leaves the new database and nothing of the old one.
    node.kill9();
    node.restart();
    assert_eq!(
        common::sqlite3_ok(&db, "SELECT name FROM sqlite_master;"),
        "u\n"
    );
    assert_eq!(common::sqlite3_ok(&db, "SELECT y FROM u;"), "7\n");
    common::assert_replay_identical(&node, "d.db");
}

#[test]
fn a_database_made_again_right_after_a_delete_opens_its_new_wal() {
    let dir = temp_dir("posix-recreate-wal");
    let node = Node::start_in(&dir.path().join("node"), "");
    let db = node.db("w.db");
    let old = rusqlite::Connection::open(&db).unwrap();
    old.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1);")
        .unwrap();
    // The kernel knows the companions' names (as a test harness's
    // `file exists` leaves them).
    assert!(node.db("w.db-wal").exists() && node.db("w.db-shm").exists());
    // The companions go with it, names and all.
    std::fs::remove_file(&db).unwrap();
    common::wait_for("the companions' names to go", common::DEADLINE, || {
        !node.db("w.db-wal").exists() && !node.db("w.db-shm").exists()
    });
    // At once, a new database of the name in WAL mode.
    let new = rusqlite::Connection::open(&db).unwrap();
    new.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE u(y); INSERT INTO u VALUES(2);")
        .expect("a new database of the name, in WAL mode");
    let y: i64 = new.query_row("SELECT y FROM u", [], |r| r.get(0)).unwrap();
    assert_eq!(y, 2);
    drop(old);
}
