//! A full data directory: the application gets SQLITE_FULL ("database or
//! disk is full"), nothing acknowledged is lost, the LTX chain stays
//! whole, one WARN per episode, and the node recovers without a restart
//! once space returns; a replica whose data directory fills stops
//! advancing and catches up afterwards. The data directory is a small
//! tmpfs, unmounted by a guard also when a test fails. Needs root and
//! /dev/fuse.

mod common;

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    assert_identical, assert_replay_identical, replica_yaml, temp_dir, wait_caught_up, wait_for,
    Node, DEADLINE,
};
use rusqlite::{Connection, ErrorCode};

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system holding `filler` completely, then frees `free`
/// bytes (rounded to 4 KiB pages) by shortening the filler file.
fn fill_leaving(filler: &Path, free: u64) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut size = chunk.len();
    loop {
        match file.write(&chunk[..size]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if size == 4096 {
                    break;
                }
                size = 4096;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    let len = file.metadata().unwrap().len() / 4096 * 4096;
    file.set_len(len.saturating_sub(free)).unwrap();
}

fn open(path: &Path, wal: bool) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mode = if wal { "wal" } else { "delete" };
    let got: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, mode);
    conn.execute_batch("PRAGMA synchronous=FULL;").unwrap();
    conn
}

fn insert(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO t(id, v) VALUES(?1, randomblob(6000))", [id])
        .map(|_| ())
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}

/// A WAL commit's fsync refused (SQLITE_IOERR_FSYNC): with FUSE passthrough
/// the WAL's writes never reach litefs, so a commit whose LTX file finds
/// no room can only fail at the fsync, which SQLite reports as an I/O
/// error whatever the errno.
fn is_refused_fsync(e: &rusqlite::Error) -> bool {
    const SQLITE_IOERR_FSYNC: i32 = 1034;
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == SQLITE_IOERR_FSYNC)
}

/// Every acknowledged id is in the table, and nothing else.
fn assert_rows(conn: &Connection, acked: &[i64]) {
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
    let ids: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        ids, acked,
        "the table does not hold exactly the acknowledged rows"
    );
}

fn count_warns(node: &Node) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("is full"))
        .count()
}

/// No temporary or half-written LTX file in `db`'s LTX directory (the
/// next LTX file made ahead, `next`, is empty until a commit fills and
/// renames it).
fn assert_no_stray_files(node: &Node, db: &str) {
    let dir = node.data.join("dbs").join(db).join("ltx");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let empty_next = name == "next" && entry.metadata().unwrap().len() == 0;
        assert!(
            name.ends_with(".ltx") || empty_next,
            "stray file {name} in {}",
            dir.display()
        );
    }
}

/// One episode: fills the disk while committing until a commit fails,
/// then sweeps the free space up 4 KiB at a time, each commit either
/// acknowledged or refused with SQLITE_FULL, until one succeeds; every
/// failure leaves the rows and the position as they were.
/// `fsync_refusals`: a refused fsync counts as SQLITE_FULL (WAL with
/// passthrough, see `is_refused_fsync`).
fn episode(
    node: &Node,
    conn: &Connection,
    db: &str,
    fsync_refusals: bool,
    acked: &mut Vec<i64>,
) -> usize {
    let filler = node.data.join("filler");
    let mut failures = 0;
    let mut free = 0u64;
    loop {
        fill_leaving(&filler, free);
        let id = acked.last().copied().unwrap_or(0) + 1;
        let before = node.pos(db);
        match insert(conn, id) {
            Ok(()) => {
                acked.push(id);
                assert_ne!(node.pos(db), before, "a commit made no TXID");
                if failures > 0 {
                    break;
                }
            }
            Err(e) => {
                assert!(
                    is_disk_full(&e) || (fsync_refusals && is_refused_fsync(&e)),
                    "a commit with {free} bytes free failed with {e:?}, not SQLITE_FULL"
                );
                failures += 1;
                assert_eq!(node.pos(db), before, "a failed commit moved the position");
                assert_no_stray_files(node, db);
                assert_rows(conn, acked);
                free += 4096;
            }
        }
        assert!(free < 2 << 20, "commits never succeeded again");
    }
    std::fs::remove_file(&filler).unwrap();
    failures
}

/// `passthrough`: the WAL's writes pass through the kernel (the default)
/// rather than litefs (`fuse.passthrough: false`).
fn full_disk(wal: bool, passthrough: bool) {
    let name = if wal { "full-wal" } else { "full-journal" };
    let tmp = temp_dir(name);
    let _tmpfs = Tmpfs::mount(&tmp.path().join("data"), "6m");
    let extra = if passthrough {
        ""
    } else {
        "fuse:\n  passthrough: false\n"
    };
    let mut node = Node::start_in(tmp.path(), extra);
    let db = "t.db";
    let mut acked = Vec::new();
    {
        let conn = open(&node.db(db), wal);
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        for _ in 0..5 {
            let id = acked.len() as i64 + 1;
            insert(&conn, id).unwrap();
            acked.push(id);
        }
        // Two episodes on one connection, litefs never restarted.
        for round in 1..=2 {
            let failures = episode(&node, &conn, db, wal && passthrough, &mut acked);
            assert!(failures > 0);
            // Space is back: commits work again at once.
            for _ in 0..5 {
                let id = acked.last().unwrap() + 1;
                insert(&conn, id).unwrap_or_else(|e| panic!("commit after freeing space: {e}"));
                acked.push(id);
            }
            assert_rows(&conn, &acked);
            assert_eq!(count_warns(&node), round, "one WARN per episode");
        }
        let log = node.log_text();
        assert!(
            log.contains(&node.data.display().to_string())
                && log.contains("Free space on that file system"),
            "the WARN names the data directory and what to do"
        );
        // Full again, a commit refused, then kill -9 and a restart while full.
        fill_leaving(&node.data.join("filler"), 0);
        let err = insert(&conn, acked.last().unwrap() + 1).unwrap_err();
        assert!(is_disk_full(&err), "{err:?}");
    }
    node.kill9();
    node.restart();
    if wal {
        // Start-up copies the WAL into the database file, which needs
        // room: the database waits, and says so, until there is some.
        assert!(node.log_text().contains("\"t.db\" is not served yet"));
        assert!(Connection::open(node.db(db))
            .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
            .is_err());
    } else {
        let conn = open(&node.db(db), wal);
        assert_rows(&conn, &acked);
    }
    std::fs::remove_file(node.data.join("filler")).unwrap();
    let conn = open(&node.db(db), wal);
    for _ in 0..3 {
        let id = acked.last().unwrap() + 1;
        insert(&conn, id).unwrap();
        acked.push(id);
    }
    assert_rows(&conn, &acked);
    if wal {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
    }
    assert_no_stray_files(&node, db);
    assert_replay_identical(&node, db);
    drop(conn);
    node.stop();
}

#[test]
fn full_disk_rollback_journal() {
    full_disk(false, true);
}

#[test]
fn full_disk_wal() {
    full_disk(true, true);
}

#[test]
fn full_disk_wal_without_passthrough() {
    full_disk(true, false);
}

#[test]
fn replica_with_full_disk_pauses_and_catches_up() {
    let tmp = temp_dir("full-replica");
    let primary = Node::start_in(&tmp.path().join("p"), "");
    let replica_dir = tmp.path().join("r");
    let _tmpfs = Tmpfs::mount(&replica_dir.join("data"), "4m");
    let replica = Node::start_in(&replica_dir, &replica_yaml(&primary));
    let db = "r.db";
    let conn = Connection::open(primary.db(db)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    insert(&conn, 1).unwrap();
    wait_caught_up(&primary, &replica, db);
    let before = replica.pos(db);

    let filler = replica.data.join("filler");
    fill_leaving(&filler, 0);
    for id in 2..=40 {
        insert(&conn, id).unwrap();
    }
    wait_for("the replica's WARN about its full disk", DEADLINE, || {
        count_warns(&replica) >= 1
    });
    // It keeps retrying (logged at debug), and warns only once.
    wait_for("three retries on the full disk", DEADLINE, || {
        replica.log_text().matches("still full").count() >= 3
    });
    assert_eq!(count_warns(&replica), 1, "one WARN per episode");
    assert_eq!(replica.pos(db), before, "a full replica advanced");
    let log = replica.log_text();
    assert!(log.contains(&replica.data.display().to_string()));

    std::fs::remove_file(&filler).unwrap();
    wait_caught_up(&primary, &replica, db);
    assert_identical(&primary, &replica, db);
    let rconn = Connection::open(replica.db(db)).unwrap();
    let n: i64 = rconn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 40);
    assert_eq!(count_warns(&replica), 1);
}
