//! Synchronous replication (`replication.sync`): a commit returns only
//! once a replica holds it; one no replica acknowledges in time fails and
//! is not kept (`sync-fallback: fail`), or returns and degrades the
//! primary to asynchronous replication until a replica catches up
//! (`async`). Real litefs processes, a replica paused with SIGSTOP, each
//! rollback-journal mode and WAL. Needs root and /dev/fuse.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    assert_identical, count_in_log, http_request, replica_yaml, temp_dir, txid, wait_caught_up,
    wait_for, Node, Paused, CATCH_UP,
};

/// The journal modes synchronous replication supports, and a database
/// name for each.
const MODES: [(&str, &str); 4] = [
    ("DELETE", "delete.db"),
    ("TRUNCATE", "truncate.db"),
    ("PERSIST", "persist.db"),
    ("WAL", "wal.db"),
];

/// A primary with `replication:` as given and one replica.
fn cluster(name: &str, replication: &str) -> (tempfile::TempDir, Node, Node) {
    let dir = temp_dir(name);
    let primary = Node::start_in(
        &dir.path().join("primary"),
        &format!("replication:\n{replication}"),
    );
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    (dir, primary, replica)
}

fn open(path: &Path, mode: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let set: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(set.to_uppercase(), mode);
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS t(x)")
        .unwrap();
    conn
}

fn rows(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// `assert_identical` once the primary's WAL (if any) is checkpointed
/// into its database file.
fn assert_same(primary: &Node, replica: &Node, name: &str, conn: &rusqlite::Connection) {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    wait_caught_up(primary, replica, name);
    assert_identical(primary, replica, name);
}

fn metric(node: &Node, name: &str) -> f64 {
    let (status, _, body) = http_request(node.port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

#[test]
fn a_commit_returns_only_once_the_replica_holds_it() {
    let (_dir, primary, replica) = cluster("sync-wait", "  sync: 1\n  sync-timeout: 60s\n");
    for (mode, name) in MODES {
        let conn = open(&primary.db(name), mode);
        wait_caught_up(&primary, &replica, name);

        let paused = Paused::pause(&replica);
        let before = txid(&primary, name);
        let writer =
            std::thread::spawn(move || conn.execute("INSERT INTO t VALUES(1)", []).map(|_| conn));
        // The commit is recorded, and waits: the replica cannot hold it.
        wait_for("the commit to be recorded", CATCH_UP, || {
            txid(&primary, name) > before
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "{mode}: the commit returned while the only replica was stopped"
        );
        drop(paused);
        let conn = writer.join().unwrap();
        let conn = conn.unwrap_or_else(|e| panic!("{mode}: {e}"));
        wait_caught_up(&primary, &replica, name);
        assert_eq!(rows(&replica.db(name)), vec![1], "{mode}");
        assert_same(&primary, &replica, name, &conn);
    }
    assert!(metric(&primary, "litefs_sync_wait_seconds_count") >= 4.0);
    assert_eq!(metric(&primary, "litefs_sync_timeouts_total"), 0.0);
    let (_, _, info) = http_request(primary.port, "GET", "/info", None);
    assert!(
        info.contains("\"sync\":{\"replicas\":1,\"degraded\":false,\"in_sync_set\":null}"),
        "{info}"
    );
    assert_eq!(metric(&primary, "litefs_replicas_in_sync"), 1.0);
}

#[test]
fn a_commit_no_replica_holds_in_time_fails_and_is_not_kept() {
    let (_dir, primary, replica) = cluster(
        "sync-fail",
        "  sync: 1\n  sync-timeout: 500ms\n  sync-fallback: fail\n",
    );
    for (mode, name) in MODES {
        let conn = open(&primary.db(name), mode);
        conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        let before = primary.pos(name);

        let paused = Paused::pause(&replica);
        let started = Instant::now();
        let err = conn.execute("INSERT INTO t VALUES(2)", []).unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{mode}: failed after {:?}, before the timeout",
            started.elapsed()
        );
        assert!(err.to_string().contains("disk I/O error"), "{mode}: {err}");
        // Not in the database, here or on a new connection, and not
        // recorded.
        assert_eq!(rows(&primary.db(name)), vec![1], "{mode}");
        assert_eq!(primary.pos(name), before, "{mode}");
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1, "{mode}");
        drop(paused);

        // The replica, which may have received the transaction taken
        // back, ends up with the primary's history.
        conn.execute("INSERT INTO t VALUES(3)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        assert_eq!(rows(&replica.db(name)), vec![1, 3], "{mode}");
        assert_same(&primary, &replica, name, &conn);
    }
    assert_eq!(metric(&primary, "litefs_sync_timeouts_total"), 4.0);
    assert_eq!(count_in_log(&primary, "it is taken back"), 4);
}

#[test]
fn async_fallback_degrades_and_resumes_when_the_replica_catches_up() {
    let (_dir, primary, replica) = cluster(
        "sync-async",
        "  sync: 1\n  sync-timeout: 400ms\n  sync-fallback: async\n",
    );
    let name = "degrade.db";
    let conn = open(&primary.db(name), "DELETE");
    wait_caught_up(&primary, &replica, name);

    let paused = Paused::pause(&replica);
    let started = Instant::now();
    conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(metric(&primary, "litefs_sync_degraded"), 1.0);
    assert_eq!(metric(&primary, "litefs_sync_degradations_total"), 1.0);
    // Degraded: commits do not wait (many in less than one timeout).
    let started = Instant::now();
    for x in 2..=5 {
        conn.execute("INSERT INTO t VALUES(?1)", [x]).unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "degraded commits waited: {:?}",
        started.elapsed()
    );
    drop(paused);

    // Back to synchronous once the replica holds everything.
    wait_for("synchronous replication to resume", CATCH_UP, || {
        metric(&primary, "litefs_sync_degraded") == 0.0
    });
    assert_eq!(count_in_log(&primary, "synchronous replication resumed"), 1);
    let paused = Paused::pause(&replica);
    let started = Instant::now();
    conn.execute("INSERT INTO t VALUES(6)", []).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the commit after resuming did not wait: {:?}",
        started.elapsed()
    );
    drop(paused);
    wait_caught_up(&primary, &replica, name);
    assert_eq!(rows(&replica.db(name)), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn asynchronous_replication_never_waits() {
    let dir = temp_dir("sync-off");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let conn = open(&primary.db("off.db"), "WAL");
    wait_caught_up(&primary, &replica, "off.db");
    let _paused = Paused::pause(&replica);
    let started = Instant::now();
    conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(metric(&primary, "litefs_sync_wait_seconds_count"), 0.0);
}

#[test]
fn a_commit_taken_back_stays_out_after_kill_9_of_the_primary() {
    let dir = temp_dir("sync-kill");
    let mut primary = Node::start_in(
        &dir.path().join("primary"),
        "replication:\n  sync: 1\n  sync-timeout: 300ms\n",
    );
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    for (mode, name) in MODES {
        let conn = open(&primary.db(name), mode);
        conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        let before = primary.pos(name);
        let paused = Paused::pause(&replica);
        assert!(
            conn.execute("INSERT INTO t VALUES(2)", []).is_err(),
            "{mode}"
        );
        // litefs dies before SQLite has rolled the database file back
        // (it does so at the connection's next statement).
        primary.kill9();
        drop(conn);
        drop(paused);
        primary.restart();
        assert_eq!(primary.pos(name), before, "{mode}");
        assert_eq!(rows(&primary.db(name)), vec![1], "{mode}");
        // The replica reconnects (after its backoff) and holds everything
        // again before the next commit's 300 ms run out.
        wait_for("the replica back in sync", CATCH_UP, || {
            metric(&primary, "litefs_replicas_in_sync") == 1.0
        });
        let conn = open(&primary.db(name), mode);
        conn.execute("INSERT INTO t VALUES(3)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        assert_eq!(rows(&replica.db(name)), vec![1, 3], "{mode}");
        assert_same(&primary, &replica, name, &conn);
    }
}

#[test]
fn max_lag_refuses_commits_while_no_replica_holds_older_transactions() {
    let (_dir, primary, replica) = cluster("max-lag", "  max-lag: 400ms\n  max-lag-wait: 0s\n");
    for (mode, name) in [MODES[0], MODES[3]] {
        let conn = open(&primary.db(name), mode);
        conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        wait_for("every transaction acknowledged", CATCH_UP, || {
            metric(&primary, "litefs_unacknowledged_seconds") == 0.0
        });

        let paused = Paused::pause(&replica);
        // Within the bound: accepted, though no replica holds it.
        conn.execute("INSERT INTO t VALUES(2)", []).unwrap();
        wait_for("the bound to pass", CATCH_UP, || {
            metric(&primary, "litefs_unacknowledged_seconds") > 0.4
        });
        let err = conn.execute("INSERT INTO t VALUES(3)", []).unwrap_err();
        assert!(err.to_string().contains("disk I/O error"), "{mode}: {err}");
        assert_eq!(rows(&primary.db(name)), vec![1, 2], "{mode}");
        drop(paused);

        wait_for("the replica to acknowledge", CATCH_UP, || {
            metric(&primary, "litefs_unacknowledged_seconds") == 0.0
        });
        conn.execute("INSERT INTO t VALUES(4)", []).unwrap();
        wait_caught_up(&primary, &replica, name);
        assert_eq!(rows(&replica.db(name)), vec![1, 2, 4], "{mode}");
    }
    assert!(metric(&primary, "litefs_max_lag_refusals_total") >= 2.0);
    assert_eq!(count_in_log(&primary, "refusing commits"), 2);
    assert_eq!(count_in_log(&primary, "commits admitted again"), 2);
}

#[test]
fn max_lag_wait_holds_a_write_until_the_replica_catches_up() {
    let (_dir, primary, replica) =
        cluster("max-lag-wait", "  max-lag: 200ms\n  max-lag-wait: 30s\n");
    let name = "wait.db";
    let conn = open(&primary.db(name), "DELETE");
    wait_caught_up(&primary, &replica, name);
    let paused = Paused::pause(&replica);
    conn.execute("INSERT INTO t VALUES(1)", []).unwrap();
    wait_for("the bound to pass", CATCH_UP, || {
        metric(&primary, "litefs_unacknowledged_seconds") > 0.2
    });
    let writer =
        std::thread::spawn(move || conn.execute("INSERT INTO t VALUES(2)", []).map(|_| ()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "the write did not wait for the replica"
    );
    drop(paused);
    assert!(writer.join().unwrap().is_ok());
    assert_eq!(metric(&primary, "litefs_max_lag_refusals_total"), 0.0);
    wait_caught_up(&primary, &replica, name);
    assert_eq!(rows(&replica.db(name)), vec![1, 2]);
}
