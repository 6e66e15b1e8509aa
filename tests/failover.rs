//! Failover end to end: real litefs processes electing their primary
//! through a real Consul agent (`consul agent -dev`, see
//! tests/common/consul.rs). The seed's walkthrough (SIGINT hands the lease
//! over at once, the old primary rejoins), a crash (kill -9: the lease
//! moves only after the TTL), a split brain healed by snapshot, and a node
//! whose Consul is down. Needs root (or /dev/fuse access) and Consul
//! installed by scripts/setup.sh.
//!
//! The split brain needs a network partition between processes on one
//! machine. [`Proxy`] gives one without network namespaces: node-a reaches
//! Consul, and node-b reaches node-a, only through TCP forwarders that the
//! test cuts and heals.

mod common;
#[path = "common/consul.rs"]
mod consul;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{assert_identical, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node, CATCH_UP};
use consul::ConsulAgent;
use litefs::store;

/// The session TTL every node asks for (the smallest Consul accepts).
const TTL: Duration = Duration::from_secs(10);
const LOCK_DELAY: Duration = Duration::from_secs(1);
/// How long a replica may take to catch up, or a first primary to appear.
/// The longest a dead primary's lease can outlive it: Consul invalidates a
/// session between one and two TTLs after its last renewal, then the lock
/// delay holds the key.
const DEAD_LEASE_MAX: Duration = Duration::from_secs(2 * 10 + 1);

/// The Go LiteFS spelling of a Consul lease for one node.
fn consul_lease_yaml(hostname: &str, advertise_url: &str, consul_url: &str, key: &str) -> String {
    format!(
        "lease:\n  type: consul\n  candidate: true\n  hostname: {hostname}\n  \
         advertise-url: \"{advertise_url}\"\n  consul:\n    url: \"{consul_url}\"\n    \
         key: \"{key}\"\n    ttl: {}s\n    lock-delay: {}s\n",
        TTL.as_secs(),
        LOCK_DELAY.as_secs()
    )
}

/// Starts a candidate that advertises its own HTTP address.
fn start_consul_node(dir: &Path, hostname: &str, consul_url: &str, key: &str) -> Node {
    Node::start_with(dir, |port| {
        consul_lease_yaml(
            hostname,
            &format!("http://127.0.0.1:{port}"),
            consul_url,
            key,
        )
    })
}

/// Runs `sql` in a fresh connection (a connection opened on a replica
/// falls back to read-only for good, so each try opens its own).
fn try_write(db: &Path, sql: &str) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    conn.execute_batch(sql).map_err(|e| e.to_string())
}

/// Tries `sql` on `db` every `every` until it succeeds. Returns how long
/// after `since` it first succeeded, and the distinct errors of the tries
/// that failed. Panics after `timeout`.
fn write_when_writable(
    db: &Path,
    sql: &str,
    since: Instant,
    timeout: Duration,
    every: Duration,
) -> (Duration, BTreeSet<String>) {
    let mut errors = BTreeSet::new();
    loop {
        match try_write(db, sql) {
            Ok(()) => return (since.elapsed(), errors),
            Err(e) => {
                errors.insert(e);
            }
        }
        assert!(
            since.elapsed() < timeout,
            "no write on {} succeeded within {timeout:?}; errors: {errors:?}",
            db.display()
        );
        thread::sleep(every);
    }
}

/// Every refused write must have been refused as read-only, not failed in
/// some other way (an I/O error would mean a half-applied role change).
fn assert_refused_as_read_only(errors: &BTreeSet<String>) {
    for e in errors {
        assert!(
            e.contains("readonly"),
            "a write failed with {e:?}, not as a read-only refusal"
        );
    }
}

/// Whether the mount lets `db` be opened for writing: a probe of the role
/// that writes nothing (a replica refuses with EROFS).
fn opens_for_writing(node: &Node, db: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node.db(db))
    {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => false,
        Err(e) => panic!("opening {} failed: {e}", node.db(db).display()),
    }
}

/// What `.primary` says, or `None` when the file is absent.
fn primary_file(node: &Node) -> Option<String> {
    match std::fs::read_to_string(node.mount.join(".primary")) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("reading .primary on {}: {e}", node.mount.display()),
    }
}

fn wait_primary_file(node: &Node, want: &str) {
    let want = format!("{want}\n");
    wait_for(
        &format!("{} to name {want:?} in .primary", node.dir.display()),
        CATCH_UP,
        || primary_file(node).as_deref() == Some(want.as_str()),
    );
}

/// `<db>-pos` as (TXID, checksum).
fn position(node: &Node, db: &str) -> (u64, u64) {
    let text = node.pos(db);
    let (txid, sum) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("bad position {text:?}"));
    (
        u64::from_str_radix(txid, 16).unwrap(),
        u64::from_str_radix(sum, 16).unwrap(),
    )
}

fn count_in_log(node: &Node, needle: &str) -> usize {
    node.log_text().matches(needle).count()
}

/// The seed's walkthrough: the first node is primary, the second follows
/// it; SIGINT moves the lease within a second; the first node comes back
/// as a replica of the second and catches up from its own position.
#[test]
fn sigint_hands_over_at_once_and_the_old_primary_rejoins_as_replica() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-sigint");
    let key = "litefs/sigint";
    let mut a = start_consul_node(&dir.path().join("a"), "node-a", &agent.url, key);
    // The first node to start takes the lease.
    let (took, errors) = write_when_writable(
        &a.db("w.db"),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
    println!("node-a accepted its first write {took:?} after mounting (refusals: {errors:?})");
    assert_eq!(primary_file(&a), None, ".primary exists on the primary");

    let b = start_consul_node(&dir.path().join("b"), "node-b", &agent.url, key);
    wait_primary_file(&b, "node-a");
    sqlite3_ok(
        &a.db("w.db"),
        "INSERT INTO t VALUES(2, 'node-a'); INSERT INTO t VALUES(3, 'node-a');",
    );
    wait_caught_up(&a, &b, "w.db");
    assert_eq!(sqlite3_ok(&b.db("w.db"), "SELECT count(*) FROM t;"), "3\n");
    let refused = try_write(&b.db("w.db"), "INSERT INTO t VALUES(0, 'node-b');").unwrap_err();
    assert!(refused.contains("readonly"), "{refused}");

    // SIGINT to the primary: it gives the lease up, node-b takes it.
    let sigint_at = Instant::now();
    let b_db = b.db("w.db");
    let handoff = thread::spawn(move || {
        write_when_writable(
            &b_db,
            "INSERT INTO t VALUES(4, 'node-b');",
            sigint_at,
            CATCH_UP,
            Duration::from_millis(2),
        )
    });
    let status = a.signal_and_wait(libc::SIGINT);
    let (handoff, errors) = handoff.join().unwrap();
    println!("clean handoff: SIGINT to node-a -> first write on node-b after {handoff:?}");
    assert!(status.success(), "node-a exited with {status} after SIGINT");
    assert_refused_as_read_only(&errors);
    assert!(
        handoff < Duration::from_secs(1),
        "node-b took {handoff:?} to accept writes after node-a was stopped cleanly"
    );
    assert_eq!(primary_file(&b), None, ".primary exists on the new primary");
    assert!(a.log_text().contains("released the lease"));

    // The old primary comes back as a replica of the new one.
    a.restart();
    wait_primary_file(&a, "node-b");
    sqlite3_ok(&b.db("w.db"), "INSERT INTO t VALUES(5, 'node-b');");
    wait_caught_up(&b, &a, "w.db");
    assert_identical(&b, &a, "w.db");
    assert_eq!(
        sqlite3_ok(
            &a.db("w.db"),
            "SELECT group_concat(n) FROM (SELECT n FROM t ORDER BY n);"
        ),
        "1,2,3,4,5\n"
    );
    let refused = try_write(&a.db("w.db"), "INSERT INTO t VALUES(0, 'node-a');").unwrap_err();
    assert!(refused.contains("readonly"), "{refused}");
    assert_eq!(
        count_in_log(&b, "sending a snapshot"),
        0,
        "node-a had every TXID node-b had; it should have resumed, not been snapshotted"
    );
}

/// kill -9 the primary: its session lives on in Consul, so the replica
/// becomes primary only once the TTL (and the lock delay) has passed.
#[test]
fn a_killed_primary_is_replaced_only_after_its_lease_expires() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-kill");
    let key = "litefs/kill";
    let mut a = start_consul_node(&dir.path().join("a"), "node-a", &agent.url, key);
    write_when_writable(
        &a.db("k.db"),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
    let b = start_consul_node(&dir.path().join("b"), "node-b", &agent.url, key);
    wait_primary_file(&b, "node-a");
    wait_caught_up(&a, &b, "k.db");

    let killed_at = Instant::now();
    a.kill9();
    let (failover, errors) = write_when_writable(
        &b.db("k.db"),
        "INSERT INTO t VALUES(2, 'node-b');",
        killed_at,
        DEAD_LEASE_MAX + Duration::from_secs(15),
        Duration::from_millis(20),
    );
    println!("crash failover: kill -9 of node-a -> first write on node-b after {failover:?}");
    assert_refused_as_read_only(&errors);
    assert!(
        failover >= TTL,
        "node-b became primary {failover:?} after node-a died, before the {TTL:?} TTL passed"
    );
    assert!(
        failover <= DEAD_LEASE_MAX + Duration::from_secs(8),
        "node-b took {failover:?} to take over a dead primary's lease"
    );

    // The crashed node restarts (clearing its dead mount) and follows.
    a.restart();
    wait_primary_file(&a, "node-b");
    wait_caught_up(&b, &a, "k.db");
    assert_identical(&b, &a, "k.db");
}

/// A split brain, healed. node-a is primary and node-b follows it through
/// a forwarder. The forwarder is cut, so node-a's next write never reaches
/// node-b; then node-a's link to Consul is cut too. node-a must stop
/// accepting writes before node-b can win the lease; node-b then takes
/// over and writes its own transaction with the same TXID. When the
/// partition heals, node-a follows node-b, the checksums differ at the same
/// TXID, node-b sends a snapshot, and node-a ends byte-identical to node-b.
#[test]
fn a_diverged_old_primary_is_healed_by_a_snapshot() {
    let agent = ConsulAgent::start();
    let dir = temp_dir("failover-split");
    let key = "litefs/split";
    let db = "s.db";
    let consul_port = port_of(&agent.url);
    let a_to_consul = Proxy::start(consul_port);
    let mut b_to_a = None;
    let a = Node::start_with(&dir.path().join("a"), |port| {
        let proxy = Proxy::start(port);
        let yaml = consul_lease_yaml("node-a", &proxy.url(), &a_to_consul.url(), key);
        b_to_a = Some(proxy);
        yaml
    });
    let b_to_a = b_to_a.unwrap();
    write_when_writable(
        &a.db(db),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
    let b = start_consul_node(&dir.path().join("b"), "node-b", &agent.url, key);
    wait_primary_file(&b, "node-a");
    wait_caught_up(&a, &b, db);

    // node-b can no longer reach node-a. node-a still holds the lease and
    // accepts a write that node-b never receives.
    b_to_a.cut();
    sqlite3_ok(&a.db(db), "INSERT INTO t VALUES(2, 'node-a, partitioned');");
    let a_pos = position(&a, db);

    // node-a loses Consul too: it must step down within half the TTL, and
    // long before node-b can take the lease.
    let cut_at = Instant::now();
    a_to_consul.cut();
    let mut a_stepped_down = None;
    let b_took_over = loop {
        let a_writable = opens_for_writing(&a, db);
        let b_writable = opens_for_writing(&b, db);
        let now = cut_at.elapsed();
        assert!(
            !(a_writable && b_writable),
            "node-a and node-b both accept writes {now:?} after node-a lost Consul"
        );
        if !a_writable && a_stepped_down.is_none() {
            a_stepped_down = Some(now);
        }
        if b_writable {
            break now;
        }
        assert!(
            now < DEAD_LEASE_MAX + Duration::from_secs(15),
            "node-b did not take over within {now:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let a_stepped_down = a_stepped_down.expect("node-a never stepped down");
    println!(
        "split brain: node-a stepped down {a_stepped_down:?} after losing Consul; node-b took \
         over after {b_took_over:?}"
    );
    assert!(
        a_stepped_down <= TTL / 2 + Duration::from_millis(500),
        "node-a kept accepting writes for {a_stepped_down:?} without renewing its lease"
    );
    assert!(b_took_over >= TTL, "node-b took over after {b_took_over:?}");

    sqlite3_ok(&b.db(db), "INSERT INTO t VALUES(2, 'node-b, new primary');");
    let b_pos = position(&b, db);
    assert_eq!(
        a_pos.0, b_pos.0,
        "the test needs both nodes at the same TXID with different contents"
    );
    assert_ne!(a_pos.1, b_pos.1, "the two histories should differ");
    assert_eq!(position(&a, db), a_pos, "node-a changed while partitioned");
    let refused = try_write(&a.db(db), "INSERT INTO t VALUES(3, 'node-a');").unwrap_err();
    assert!(refused.contains("readonly"), "{refused}");

    // The partition heals: node-a follows node-b and is resnapshotted.
    a_to_consul.heal();
    b_to_a.heal();
    wait_primary_file(&a, "node-b");
    wait_caught_up(&b, &a, db);
    assert_identical(&b, &a, db);
    let log = b.log_text();
    assert!(
        log.contains("sending a snapshot") && log.contains("the checksums differ at the same TXID"),
        "node-b did not send node-a a snapshot for its diverged position; node-b's log:\n{log}"
    );
    assert_eq!(
        sqlite3_ok(
            &a.db(db),
            "SELECT group_concat(node, '|') FROM (SELECT node FROM t ORDER BY rowid);"
        ),
        "node-a|node-b, new primary\n"
    );
    // And replication goes on from there.
    sqlite3_ok(&b.db(db), "INSERT INTO t VALUES(3, 'node-b');");
    wait_caught_up(&b, &a, db);
    assert_identical(&b, &a, db);
}

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
    write_when_writable(
        &a.db(db),
        "CREATE TABLE t(n INTEGER, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
         INSERT INTO t SELECT i, randomblob(3000) FROM n;",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
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
    write_when_writable(
        &a.db(db),
        "INSERT INTO t VALUES(201, NULL);",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
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
    write_when_writable(
        &a.db(db),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER);",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
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
    write_when_writable(
        &a.db(db),
        "INSERT INTO t VALUES(51);",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
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
    write_when_writable(
        &a.db(db),
        "PRAGMA journal_mode=PERSIST; CREATE TABLE t(n INTEGER);",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
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
    write_when_writable(
        &a.db(db),
        "PRAGMA journal_mode=PERSIST; INSERT INTO t VALUES(21);",
        Instant::now(),
        CATCH_UP,
        Duration::from_millis(20),
    );
    assert_eq!(sqlite3_ok(&a.db(db), "SELECT count(*) FROM t;"), "21\n");
    assert_eq!(position(&a, db).0, at_step_down.0 + 1);
}

/// The port of a `http://127.0.0.1:<port>` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A node whose Consul is down mounts anyway, read-only, says why, and
/// keeps retrying with backoff; once Consul answers it takes the lease.
#[test]
fn a_node_without_consul_stays_read_only_and_takes_the_lease_once_consul_is_up() {
    let dir = temp_dir("failover-consul-down");
    let consul_port = consul::free_port();
    let consul_url = format!("http://127.0.0.1:{consul_port}");

    // A database written earlier, when this node was a static primary.
    let mut node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("d.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES('before');",
    );
    node.stop();
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config.push_str(&consul_lease_yaml(
        "node-a",
        &format!("http://127.0.0.1:{}", node.port),
        &consul_url,
        "litefs/down",
    ));
    std::fs::write(&node.config, config).unwrap();

    node.restart();
    let mounted_at = Instant::now();
    let refused_line = "connection refused (is Consul running there?)";
    wait_for("a log line saying Consul is unreachable", CATCH_UP, || {
        node.log_text().contains(refused_line)
    });
    let log = node.log_text();
    let line = log.lines().find(|l| l.contains(refused_line)).unwrap();
    assert!(line.contains(&consul_url), "{line}");
    assert!(line.contains("WARN"), "{line}");

    // Read-only, but readable.
    let refused = try_write(&node.db("d.db"), "INSERT INTO t VALUES('during');").unwrap_err();
    assert!(refused.contains("readonly"), "{refused}");
    assert_eq!(sqlite3_ok(&node.db("d.db"), "SELECT x FROM t;"), "before\n");
    assert_eq!(primary_file(&node), None);

    // Retries, with backoff (100 ms doubling): six tries take well over a
    // second, where a busy loop would take milliseconds.
    wait_for("six failed tries", CATCH_UP, || {
        count_in_log(&node, refused_line) >= 6
    });
    assert!(
        mounted_at.elapsed() >= Duration::from_secs(1),
        "six tries in {:?}: no backoff",
        mounted_at.elapsed()
    );
    assert!(node.is_running(), "litefs exited while Consul was down");

    // Consul appears at that address: the node takes the lease.
    let agent = ConsulAgent::start();
    let agent_port = port_of(&agent.url);
    let up_at = Instant::now();
    let _consul_at_old_address = Proxy::start_on(consul_port, agent_port);
    let (took, errors) = write_when_writable(
        &node.db("d.db"),
        "INSERT INTO t VALUES('after');",
        up_at,
        CATCH_UP,
        Duration::from_millis(20),
    );
    println!("consul down: the node took the lease {took:?} after Consul came up");
    assert_refused_as_read_only(&errors);
    assert!(
        took < Duration::from_secs(10),
        "{took:?} to notice Consul is back"
    );
    assert!(node.log_text().contains("works again"));
    assert_eq!(
        sqlite3_ok(
            &node.db("d.db"),
            "SELECT group_concat(x) FROM (SELECT x FROM t ORDER BY rowid);"
        ),
        "before,after\n"
    );
    node.stop();
}

/// A TCP forwarder on a loopback port to another loopback port, which the
/// test can cut (every open connection is shut down and new ones are
/// closed at once) and heal: a network partition between two processes.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: u16,
    cut: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every forwarded connection, to shut down on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Forwards a fresh loopback port to `upstream`.
    fn start(upstream: u16) -> Proxy {
        Proxy::serve(TcpListener::bind("127.0.0.1:0").unwrap(), upstream)
    }

    /// Forwards loopback `port` (which must be free) to `upstream`.
    fn start_on(port: u16, upstream: u16) -> Proxy {
        Proxy::serve(TcpListener::bind(("127.0.0.1", port)).unwrap(), upstream)
    }

    fn serve(listener: TcpListener, upstream: u16) -> Proxy {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            upstream,
            cut: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = thread::spawn(move || accept_loop(listener, &accept_shared));
        Proxy {
            port,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Shuts every forwarded connection down; when this returns, no byte
    /// passes until `heal`.
    fn cut(&self) {
        let mut open = self.shared.open.lock().unwrap();
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `closing`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: &ProxyShared) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: closed at once
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
            continue;
        };
        let mut open = shared.open.lock().unwrap();
        if shared.cut.load(Ordering::SeqCst) {
            continue;
        }
        open.push(client.try_clone().unwrap());
        open.push(server.try_clone().unwrap());
        forward(client.try_clone().unwrap(), server.try_clone().unwrap());
        forward(server, client);
    }
}

/// Copies `from` to `to` on a thread until either side ends.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
