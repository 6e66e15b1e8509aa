//! A primary stepping down (its Consul lease lost) while transactions and
//! connections are open on it: an open write transaction is rolled back,
//! connections from before the step-down cannot write after it (WAL and
//! rollback journal in passthrough), WAL read transactions keep their
//! snapshots while the WAL is moved into the database file, and WAL
//! connections from before see what the new primary writes. Real litefs
//! processes, a real Consul agent, SQLite through rusqlite and the sqlite3
//! CLI; the lease is lost by cutting node-a's link to Consul ([`Proxy`]).
//! Needs root (or /dev/fuse access) and Consul installed by
//! scripts/setup.sh.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/consul.rs"]
mod consul;

use std::time::{Duration, Instant};

use cluster::*;
use common::{count_in_log, sqlite3_ok, temp_dir, wait_caught_up, wait_for, CATCH_UP};
use consul::ConsulAgent;
use litefs::store;

/// A write transaction still open on the primary when it loses the lease
/// is abandoned: the pages SQLite already spilled into the database file
/// are rolled back, so the file matches the node's position again, readers
/// see the last commit, and the node can later take the lease back and
/// write normally.
#[test]
fn a_transaction_open_when_the_primary_steps_down_is_rolled_back() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-abandon");
    let db = "t.db";
    let consul_link = Proxy::start(port_of(&agent.url));
    let a = start_consul_node(dir.path(), "node-a", &consul_link.url(), "litefs/abandon");
    write_once_writable(
        &a.db(db),
        "CREATE TABLE t(n INTEGER, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
         INSERT INTO t SELECT i, randomblob(3000) FROM n;",
    );
    let committed = position(&a, db);
    // The backing file's length and checksum (pages up to the header's
    // page count).
    let file_state = || {
        (
            std::fs::metadata(a.data_db(db)).unwrap().len(),
            store::database_checksum(&a.data_db(db)).ok(),
        )
    };
    let file_checksum = || file_state().1;
    let committed_file = file_state();
    assert_eq!(committed_file.1, Some(committed.1));

    // A large transaction with a tiny page cache: SQLite spills changed
    // pages into the database file long before it commits.
    let conn = rusqlite::Connection::open(a.db(db)).unwrap();
    conn.execute_batch(
        "PRAGMA cache_size=10; BEGIN;
         UPDATE t SET pad = randomblob(3000);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300)
         INSERT INTO t SELECT 1000 + i, randomblob(3000) FROM n;",
    )
    .unwrap();
    let spilled = file_state();
    assert!(
        spilled.0 > committed_file.0 && spilled.1 != committed_file.1,
        "the open transaction did not spill into the database file: {committed_file:?} -> \
         {spilled:?}"
    );

    consul_link.cut();
    wait_for("node-a to step down", TTL, || !opens_for_writing(&a, db));
    wait_for(
        "the open transaction to be rolled back in the database file",
        Duration::from_secs(5),
        || file_state() == committed_file,
    );
    assert_eq!(position(&a, db), committed);
    // The application learns that its transaction is gone.
    assert!(conn
        .execute_batch("INSERT INTO t VALUES(0, NULL); COMMIT;")
        .is_err());
    drop(conn);
    assert_eq!(file_state(), committed_file);
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "200\n");
    assert_eq!(sqlite3_ok(&a.db(db), "PRAGMA integrity_check;"), "ok\n");

    // Consul is back: node-a takes the lease again and writes normally.
    consul_link.heal();
    write_once_writable(&a.db(db), "INSERT INTO t VALUES(201, NULL);");
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "201\n");
    assert_eq!(sqlite3_ok(&a.db(db), "PRAGMA integrity_check;"), "ok\n");
    let now = position(&a, db);
    assert_eq!(now.0, committed.0 + 1);
    assert_eq!(file_checksum(), Some(now.1));
}

/// A WAL connection opened while its node was primary writes to the WAL
/// through the kernel's passthrough, which litefs never sees: at step-down
/// the WAL is sealed, so its next write fails instead of committing on a
/// replica, while what it committed before is kept and it still reads.
#[test]
fn a_wal_connection_from_before_a_step_down_cannot_write_after_it() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-wal-seal");
    let db = "w.db";
    let consul_link = Proxy::start(port_of(&agent.url));
    let a = start_consul_node(dir.path(), "node-a", &consul_link.url(), "litefs/seal");
    write_once_writable(
        &a.db(db),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER);",
    );
    let conn = rusqlite::Connection::open(a.db(db)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("PRAGMA synchronous=NORMAL;").unwrap();
    for n in 0..50 {
        conn.execute("INSERT INTO t VALUES(?1)", [n]).unwrap();
    }
    consul_link.cut();
    wait_for("node-a to step down", TTL, || !opens_for_writing(&a, db));
    wait_for("node-a to fold its WAL", Duration::from_secs(5), || {
        count_in_log(&a, "moved the WAL into the database file") >= 1
    });
    // Every acknowledged commit is in the LTX chain.
    let at_step_down = position(&a, db);
    let refused = conn.execute("INSERT INTO t VALUES(1000)", []);
    assert!(refused.is_err(), "a write on a replica was acknowledged");
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&conn), 50);
    drop(conn);
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "50\n");
    assert_eq!(position(&a, db), at_step_down);

    // Back as primary: the WAL is writable again.
    consul_link.heal();
    write_once_writable(&a.db(db), "INSERT INTO t VALUES(51);");
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "51\n");
    assert_eq!(position(&a, db).0, at_step_down.0 + 1);
}

/// The same for a rollback journal in passthrough (`src/fuse/journal.rs`):
/// a connection in exclusive locking mode keeps its journal open; after
/// the step-down the journal is sealed, so the connection's next
/// transaction fails at its first journal write and leaves no live header
/// that would make the journal look hot to the node's readers.
#[test]
fn a_journal_connection_from_before_a_step_down_cannot_write_after_it() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-journal-seal");
    let db = "j.db";
    let consul_link = Proxy::start(port_of(&agent.url));
    let a = start_consul_node(dir.path(), "node-a", &consul_link.url(), "litefs/jseal");
    // The first transaction shows that the database syncs its journal.
    write_once_writable(
        &a.db(db),
        "PRAGMA journal_mode=PERSIST; CREATE TABLE t(n INTEGER);",
    );
    let conn = rusqlite::Connection::open(a.db(db)).unwrap();
    conn.execute_batch("PRAGMA journal_mode=PERSIST; PRAGMA locking_mode=EXCLUSIVE;")
        .unwrap();
    let writes_before = common::fuse_writes(&a);
    for n in 0..20 {
        conn.execute("INSERT INTO t VALUES(?1)", [n]).unwrap();
    }
    let writes = common::fuse_writes(&a) - writes_before;
    assert!(
        writes <= 60,
        "{writes} FUSE writes: the journal did not pass through"
    );
    consul_link.cut();
    wait_for("node-a to step down", TTL, || !opens_for_writing(&a, db));
    let at_step_down = position(&a, db);
    let refused = conn.execute("INSERT INTO t VALUES(1000)", []);
    assert!(refused.is_err(), "a write on a replica was acknowledged");
    drop(conn);
    // No hot journal: the node's readers read.
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "20\n");
    assert_eq!(position(&a, db), at_step_down);

    // Back as primary: the journal is writable again.
    consul_link.heal();
    write_once_writable(
        &a.db(db),
        "PRAGMA journal_mode=PERSIST; INSERT INTO t VALUES(21);",
    );
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "21\n");
    assert_eq!(position(&a, db).0, at_step_down.0 + 1);
}

/// Whether SQLite's WAL write lock (byte 120 of `-shm`, opened as `shm`) is
/// held by an open file description lock: litefs's, as SQLite's own are
/// process locks.
fn litefs_holds_wal_write_lock(shm: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; l_pid must be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 120;
    fl.l_len = 1;
    // SAFETY: the descriptor is open and fl is a valid flock.
    let rc = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid == -1
}

/// WAL read transactions open when their node steps down keep their
/// snapshots: moving the WAL into the database file waits until they end
/// (up to litefs's step-down wait, 5 s), so none reads pages newer than
/// its snapshot (one reading only the database file) or a WAL emptied
/// under it (one reading WAL frames). Once they end, the WAL is moved and
/// every reader sees every commit.
#[test]
fn wal_read_transactions_open_at_step_down_keep_their_snapshots() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("step-down-wal-readers");
    let db = "r.db";
    let consul_link = Proxy::start(port_of(&agent.url));
    let a = start_consul_node(dir.path(), "node-a", &consul_link.url(), "litefs/readers");
    write_once_writable(
        &a.db(db),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER); CREATE TABLE u(n INTEGER, pad BLOB);",
    );
    let open = || {
        let conn = rusqlite::Connection::open(a.db(db)).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    };
    let in_t = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    };
    // `before` reads while the WAL holds no frame: the database file only.
    let before = open();
    before.execute_batch("BEGIN;").unwrap();
    assert_eq!(in_t(&before), 0);
    let writer = open();
    writer
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
             INSERT INTO u SELECT i, randomblob(3000) FROM n;
             INSERT INTO t VALUES(1);",
        )
        .unwrap();
    // `framed` reads u's pages from WAL frames.
    let framed = open();
    framed.execute_batch("BEGIN;").unwrap();
    assert_eq!(in_t(&framed), 1);
    // A later commit rewrites every page of u.
    writer
        .execute_batch("UPDATE u SET pad = zeroblob(3000), n = -n; INSERT INTO t VALUES(2);")
        .unwrap();
    drop(writer);

    // Open until the end: closing any descriptor of -shm would drop this
    // process's POSIX locks on it, the readers' among them.
    let shm = std::fs::File::open(a.mount.join(format!("{db}-shm"))).unwrap();

    consul_link.cut();
    wait_for("node-a to step down", TTL, || !opens_for_writing(&a, db));
    let folded = || count_in_log(&a, "moved the WAL into the database file") >= 1;
    // The step-down reaches the WAL: litefs takes SQLite's WAL write lock,
    // then waits for the read locks, which the readers hold. From the
    // moment it holds the write lock, a fold that did not wait would
    // follow within milliseconds: for a second from then, the lock stays
    // held and neither the database file nor the WAL changes.
    wait_for(
        "node-a to take the WAL write lock at step-down",
        Duration::from_secs(5),
        || folded() || litefs_holds_wal_write_lock(&shm),
    );
    let files = || {
        let dir = a.data.join("dbs").join(db);
        (
            std::fs::read(dir.join("database")).unwrap(),
            std::fs::read(dir.join("wal")).unwrap(),
        )
    };
    let files_at_lock = files();
    let waiting = || litefs_holds_wal_write_lock(&shm) && !folded() && files() == files_at_lock;
    let locked_at = Instant::now();
    while locked_at.elapsed() < Duration::from_secs(1) {
        assert!(
            waiting(),
            "the WAL was moved while read transactions were open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Each reads u for the first time: as its snapshot had it.
    let u = |c: &rusqlite::Connection| -> (i64, i64) {
        c.query_row(
            "SELECT count(*), count(*) FILTER (WHERE n < 0 OR pad = zeroblob(3000)) FROM u",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let integrity = |c: &rusqlite::Connection| -> String {
        c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(u(&before), (0, 0), "a read saw pages past its snapshot");
    assert_eq!(u(&framed), (200, 0), "a read saw pages past its snapshot");
    for reader in [&before, &framed] {
        assert_eq!(integrity(reader), "ok");
    }
    // Those reads were made while the step-down still waited.
    assert!(
        waiting(),
        "the WAL was moved while read transactions were open"
    );
    for reader in [&before, &framed] {
        reader.execute_batch("COMMIT;").unwrap();
    }

    wait_for("node-a to move its WAL", Duration::from_secs(10), folded);
    // With the read locks: it waited for the readers, not its time limit.
    let log = a.log_text();
    assert!(
        !log.contains("step-down without SQLite's WAL reader locks"),
        "the step-down gave up waiting for the readers: {log}"
    );
    drop(shm);
    assert_eq!(in_t(&framed), 2);
    assert_eq!(u(&before), (200, 200));
    drop((before, framed));
    assert_eq!(
        sqlite3_ok(
            &a.db(db),
            "SELECT count(*) FROM t; SELECT count(*) FROM u WHERE n < 0; PRAGMA integrity_check;"
        ),
        "2\n200\nok\n"
    );
}

/// WAL connections opened while their node was primary keep reading after
/// the step-down, and see every transaction the new primary's stream
/// applies there at their next read, none of their pages cached from
/// before. Two of them: the second to read after an apply finds the index
/// the first has already rebuilt, and must still see that it changed.
#[test]
fn wal_connections_from_before_a_step_down_read_what_the_new_primary_writes() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("step-down-wal-follow");
    let db = "f.db";
    let key = "litefs/follow";
    let consul_link = Proxy::start(port_of(&agent.url));
    let a = start_consul_node(&dir.path().join("a"), "node-a", &consul_link.url(), key);
    write_once_writable(
        &a.db(db),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER, pad BLOB);
         INSERT INTO t VALUES(1, randomblob(3000));",
    );
    let b = start_consul_node(&dir.path().join("b"), "node-b", &agent.url, key);
    wait_caught_up(&a, &b, db);
    let open = || {
        let conn = rusqlite::Connection::open(a.db(db)).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    };
    let old = [open(), open()];
    let rows = |c: &rusqlite::Connection| -> (i64, i64) {
        c.query_row("SELECT count(*), sum(n) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    };
    let read_all = |want: (i64, i64), when: &str| {
        for (i, conn) in old.iter().enumerate() {
            assert_eq!(rows(conn), want, "connection {i}, {when}");
        }
    };
    read_all((1, 1), "as primary");

    // node-a loses Consul; node-b takes the lease once node-a's session
    // has expired, and node-a follows it once Consul is back.
    consul_link.cut();
    write_when_writable(
        &b.db(db),
        "INSERT INTO t VALUES(2, randomblob(3000));",
        Instant::now(),
        DEAD_LEASE_MAX + CATCH_UP,
        Duration::from_millis(100),
    );
    read_all((1, 1), "after the step-down");
    consul_link.heal();
    wait_caught_up(&b, &a, db);
    read_all((2, 3), "after the first apply");
    sqlite3_ok(&b.db(db), "INSERT INTO t VALUES(3, randomblob(3000));");
    wait_caught_up(&b, &a, db);
    read_all((3, 6), "after the second apply");
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT sum(n) FROM t;"), "6\n");
}
