//! FUSE passthrough of the primary's WAL on a real mount: SQLite's WAL
//! writes do not reach litefs (the FUSE write counter of `/metrics` stays
//! put), yet every transaction gets its TXID in an LTX file within moments, with
//! nothing reading `-pos` (the watcher), and the chain replays identical.
//! Needs root, /dev/fuse and a kernel with FUSE passthrough (6.9+).

mod common;

use std::time::{Duration, Instant};

use common::{assert_replay_identical, fuse_writes, open_wal, temp_dir, Node};

/// The newest TXID in `db`'s LTX files on `node` (an LTX file may cover
/// several transactions recorded together).
fn recorded_txid(node: &Node, db: &str) -> u64 {
    node.ltx_files(db)
        .iter()
        .filter_map(|f| litefs::ltx::parse_filename(f.file_name()?.to_str()?))
        .map(|(_, max)| max)
        .max()
        .unwrap_or(0)
}

#[test]
fn wal_writes_pass_through_and_every_commit_is_recorded_promptly() {
    let dir = temp_dir("wal-passthrough");
    let node = Node::start_in(dir.path(), "");
    for synchronous in ["NORMAL", "FULL"] {
        let db = format!("{}.db", synchronous.to_lowercase());
        let conn = open_wal(
            &node.db(&db),
            &format!("PRAGMA synchronous={synchronous}; PRAGMA wal_autocheckpoint=0;"),
        );
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let start_txid = {
            let deadline = Instant::now() + Duration::from_secs(10);
            while recorded_txid(&node, &db) < 2 {
                assert!(
                    Instant::now() < deadline,
                    "{db}: the CREATE was not recorded"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            recorded_txid(&node, &db)
        };
        let writes_before = fuse_writes(&node);
        for i in 0..300 {
            conn.execute("INSERT INTO t(v) VALUES(?1)", [format!("row {i}")])
                .unwrap();
        }
        // Each commit has its TXID in an LTX file soon, with nothing
        // asking: the files are looked at in the data directory, as
        // reading `-pos` would make litefs catch up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorded_txid(&node, &db) < start_txid + 300 {
            assert!(
                Instant::now() < deadline,
                "{db}: {} of 300 commits recorded",
                recorded_txid(&node, &db) - start_txid
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(recorded_txid(&node, &db), start_txid + 300);
        // 300 commits are at least 600 WAL writes through litefs without
        // passthrough; what remains is SQLite's `-shm` pages written back.
        let writes = fuse_writes(&node) - writes_before;
        assert!(
            writes < 60,
            "{db}: {writes} FUSE writes for 300 WAL commits"
        );
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        assert_replay_identical(&node, &db);
    }
    let log = node.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("passthrough is unavailable"),
        "{log}"
    );
}

/// Once a writer has the WAL open in passthrough, the kernel refuses any
/// other open of it that does not pass through too: a read-only
/// connection on the primary must still open it.
#[test]
fn read_only_connections_open_a_wal_a_writer_holds() {
    let dir = temp_dir("wal-passthrough-readonly");
    let node = Node::start_in(dir.path(), "");
    let writer = open_wal(&node.db("r.db"), "PRAGMA synchronous=NORMAL;");
    writer
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1), (2);")
        .unwrap();
    let reader = rusqlite::Connection::open_with_flags(
        node.db("r.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 2);
    writer.execute("INSERT INTO t VALUES(3)", []).unwrap();
    let count: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3);
    // The -wal opened read-only through the mount, beside the writer.
    let wal = std::fs::File::open(node.db("r.db-wal"));
    assert!(wal.is_ok(), "{wal:?}");
}
