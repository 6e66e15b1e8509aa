//! Failover end to end: real litefs processes electing their primary
//! through a real Consul agent (`consul agent -dev`, see
//! tests/common/consul.rs). The seed's walkthrough (SIGINT hands the lease
//! over at once, the old primary rejoins), a crash (kill -9: the lease
//! moves only after the TTL), a split brain healed by snapshot, and a node
//! whose Consul is down. What a step-down does to transactions and
//! connections open on the old primary is in tests/step_down.rs. Needs
//! root (or /dev/fuse access) and Consul installed by scripts/setup.sh.
//!
//! The split brain needs a network partition between processes on one
//! machine: [`Proxy`] (tests/common/cluster.rs) gives one without network
//! namespaces: node-a reaches Consul, and node-b reaches node-a, only
//! through TCP forwarders that the test cuts and heals.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/consul.rs"]
mod consul;

use std::io::ErrorKind;
use std::thread;
use std::time::{Duration, Instant};

use cluster::*;
use common::{
    assert_identical, count_in_log, free_port, sqlite3_ok, temp_dir, wait_caught_up, wait_for,
    Node, CATCH_UP,
};
use consul::ConsulAgent;

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

/// A rollback-journal connection (rusqlite, as an application's pool
/// keeps one) opened on `node` while it is a replica: its writes are
/// refused as read-only there; the caller checks that it writes once the
/// node is primary.
fn early_connection(node: &Node, db: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(node.db(db)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let refused = conn
        .execute_batch("INSERT INTO t VALUES(0, 'replica');")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("attempt to write a readonly database"),
        "{refused}"
    );
    assert_eq!(
        conn.query_row("SELECT count(*) FROM t WHERE n = 0", [], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        0
    );
    conn
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
    let (took, errors) = write_once_writable(
        &a.db("w.db"),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
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
    // A connection opened while node-b is a replica: read-only there, and
    // writable once node-b is primary.
    let early = early_connection(&b, "w.db");

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
    early
        .execute_batch("INSERT INTO t VALUES(4.5, 'node-b, early connection');")
        .expect("a connection opened on the replica writes once its node is primary");

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
        "1,2,3,4,4.5,5\n"
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
    write_once_writable(
        &a.db("k.db"),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
    );
    let b = start_consul_node(&dir.path().join("b"), "node-b", &agent.url, key);
    wait_primary_file(&b, "node-a");
    wait_caught_up(&a, &b, "k.db");
    let early = early_connection(&b, "k.db");

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
    early
        .execute_batch("INSERT INTO t VALUES(3, 'node-b, early connection');")
        .expect("a connection opened on the replica writes once its node is primary");
    assert_eq!(sqlite3_ok(&b.db("k.db"), "SELECT count(*) FROM t;"), "3\n");

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
    write_once_writable(
        &a.db(db),
        "CREATE TABLE t(n INTEGER, node TEXT); INSERT INTO t VALUES(1, 'node-a');",
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

/// A node whose Consul is down mounts anyway, read-only, says why, and
/// keeps retrying with backoff; once Consul answers it takes the lease.
#[test]
fn a_node_without_consul_stays_read_only_and_takes_the_lease_once_consul_is_up() {
    let dir = temp_dir("failover-consul-down");
    let consul_port = free_port();
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
