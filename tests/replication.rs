//! Replication tests: one primary and two replicas, each a real litefs
//! process with its own mount and data directory, on loopback ports with a
//! static lease. Needs root and /dev/fuse.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_identical, replica_yaml, sqlite3, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node,
    CATCH_UP,
};

/// A primary and `n` replicas under one temp dir.
fn cluster(name: &str, n: usize) -> (tempfile::TempDir, Node, Vec<Node>) {
    let dir = temp_dir(name);
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replicas = (0..n)
        .map(|i| {
            Node::start_in(
                &dir.path().join(format!("replica{i}")),
                &replica_yaml(&primary),
            )
        })
        .collect();
    (dir, primary, replicas)
}

#[test]
fn writes_on_the_primary_reach_every_replica_and_replicas_are_read_only() {
    let (_dir, primary, replicas) = cluster("repl-basic", 2);
    sqlite3_ok(
        &primary.db("a.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES('hello');",
    );
    sqlite3_ok(
        &primary.db("b.db"),
        "CREATE TABLE u(y); INSERT INTO u VALUES(42);",
    );
    for r in &replicas {
        wait_caught_up(&primary, r, "a.db");
        wait_caught_up(&primary, r, "b.db");
        assert_eq!(sqlite3_ok(&r.db("a.db"), "SELECT x FROM t;"), "hello\n");
        assert_eq!(sqlite3_ok(&r.db("b.db"), "SELECT y FROM u;"), "42\n");
        assert_identical(&primary, r, "a.db");
        assert_identical(&primary, r, "b.db");
        assert_eq!(
            std::fs::read_to_string(r.mount.join(".primary")).unwrap(),
            "primary-host\n"
        );

        // Writes fail on a replica; reads keep working.
        let out = sqlite3(&r.db("a.db"), "INSERT INTO t VALUES('nope');");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("attempt to write a readonly database"),
            "{err}"
        );
        let out = sqlite3(&r.db("new.db"), "CREATE TABLE z(x);");
        assert!(!out.status.success());
        assert_eq!(sqlite3_ok(&r.db("a.db"), "SELECT count(*) FROM t;"), "1\n");
    }
    assert!(!primary.mount.join(".primary").exists());

    // Further transactions keep flowing, including a VACUUM that shrinks.
    sqlite3_ok(
        &primary.db("a.db"),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300)
         INSERT INTO t SELECT randomblob(1000) FROM n;
         DELETE FROM t WHERE rowid > 10; VACUUM;",
    );
    for r in &replicas {
        wait_caught_up(&primary, r, "a.db");
        assert_identical(&primary, r, "a.db");
        assert_eq!(sqlite3_ok(&r.db("a.db"), "PRAGMA integrity_check;"), "ok\n");
    }
}

#[test]
fn readers_on_a_replica_never_see_a_torn_transaction() {
    let (_dir, primary, replicas) = cluster("repl-torn", 1);
    let replica = &replicas[0];
    sqlite3_ok(
        &primary.db("bank.db"),
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
         INSERT INTO acct(bal, pad) SELECT 1000, randomblob(500) FROM n;",
    );
    wait_caught_up(&primary, replica, "bank.db");

    // One reader connection in this process, and two sqlite3 processes
    // running many one-statement read transactions. (Several connections
    // in one process share one POSIX lock, which can starve the applier;
    // that is SQLite's process model, not a torn read.)
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let path = replica.db("bank.db");
        let stop = stop.clone();
        let reads = reads.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let sum: i64 = conn
                    .query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(sum, 200_000, "a replica reader saw a torn transaction");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The reader is running before the first transfer commits.
    wait_for("the first replica read", CATCH_UP, || {
        reads.load(Ordering::Relaxed) > 0
    });
    let script: String = std::iter::once(".timeout 30000\n".to_string())
        .chain((0..1500).map(|_| "SELECT sum(bal) FROM acct;\n".to_string()))
        .collect();
    let cli_readers: Vec<_> = (0..2)
        .map(|_| {
            let path = replica.db("bank.db");
            let script = script.clone();
            std::thread::spawn(move || sqlite3(&path, &script))
        })
        .collect();
    wait_caught_up(&primary, replica, "bank.db");
    let reads_during_writes = reads.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        reads_during_writes > 1,
        "the reader did not run alongside the writes"
    );
    for r in cli_readers {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1500);
        assert!(
            stdout.lines().all(|l| l == "200000"),
            "a torn read: {stdout}"
        );
    }
    assert_identical(&primary, replica, "bank.db");
}

fn count_in_log(node: &Node, needle: &str) -> usize {
    node.log_text().matches(needle).count()
}

#[test]
fn a_killed_replica_catches_up_from_its_own_position() {
    let (_dir, primary, mut replicas) = cluster("repl-kill", 1);
    let replica = &mut replicas[0];
    let db = primary.db("k.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    wait_caught_up(&primary, replica, "k.db");
    let snapshots_before = count_in_log(&primary, "sending a snapshot");

    replica.kill9();
    for i in 2..20 {
        sqlite3_ok(&db, &format!("INSERT INTO t VALUES({i});"));
    }
    replica.restart();
    wait_caught_up(&primary, replica, "k.db");
    assert_identical(&primary, replica, "k.db");
    assert_eq!(
        sqlite3_ok(&replica.db("k.db"), "SELECT count(*) FROM t;"),
        "19\n"
    );
    assert_eq!(
        count_in_log(&primary, "sending a snapshot"),
        snapshots_before,
        "the replica was sent a snapshot although the primary had its position"
    );
}

#[test]
fn a_diverged_replica_is_detected_by_checksum_and_resnapshotted() {
    let (_dir, primary, mut replicas) = cluster("repl-diverge", 1);
    let replica = &mut replicas[0];
    let db = primary.db("d.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES('original');");
    wait_caught_up(&primary, replica, "d.db");

    replica.stop();
    // Scribble over the last page of the replica's database file.
    let path = replica.data_db("d.db");
    let len = std::fs::metadata(&path).unwrap().len();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAB; 64], len - 100).unwrap();
    drop(f);
    sqlite3_ok(&db, "INSERT INTO t VALUES('more');");

    replica.restart();
    wait_caught_up(&primary, replica, "d.db");
    assert_identical(&primary, replica, "d.db");
    assert!(count_in_log(&primary, "sending a snapshot") >= 1);
    assert_eq!(
        sqlite3_ok(&replica.db("d.db"), "SELECT count(*) FROM t;"),
        "2\n"
    );
}

#[test]
fn a_replica_behind_retention_gets_a_snapshot_and_continues() {
    let dir = temp_dir("repl-retention");
    let primary = Node::start_in(&dir.path().join("primary"), "data:\n  retention: 100ms\n");
    let mut replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let db = primary.db("r.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    wait_caught_up(&primary, &replica, "r.db");
    replica.stop();
    for i in 0..10 {
        sqlite3_ok(&db, &format!("INSERT INTO t VALUES({i});"));
    }
    // Retention leaves only the newest file.
    wait_for("retention to delete old LTX files", CATCH_UP, || {
        primary.ltx_files("r.db").len() == 1
    });
    replica.restart();
    wait_caught_up(&primary, &replica, "r.db");
    assert_identical(&primary, &replica, "r.db");
    sqlite3_ok(&db, "INSERT INTO t VALUES(99);");
    wait_caught_up(&primary, &replica, "r.db");
    assert_eq!(
        sqlite3_ok(&replica.db("r.db"), "SELECT count(*) FROM t;"),
        "12\n"
    );
    // Behind, with nothing of its own: nothing set aside.
    assert!(!replica.data.join("lost").exists());
}

/// Replaces the lease section of `node`'s config with `lease_yaml` (empty:
/// a static primary).
fn set_lease(node: &Node, lease_yaml: &str) {
    let config = std::fs::read_to_string(&node.config).unwrap();
    let base = config.split("lease:").next().unwrap().to_string();
    std::fs::write(&node.config, format!("{base}{lease_yaml}")).unwrap();
}

/// The directories under `lost/<db>/` of a node's data directory.
fn lost_dirs(node: &Node, db: &str) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(node.data.join("lost").join(db)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A former primary that rejoins with transactions the
/// new primary does not have keeps them under `lost/` before it takes the
/// new primary's snapshot: once when it is ahead (x.db), once when the new
/// primary wrote more, so it is behind by TXID but diverged (y.db).
#[test]
fn a_former_primary_keeps_its_diverged_writes_under_lost() {
    let dir = temp_dir("repl-lost");
    let mut a = Node::start_in(&dir.path().join("a"), "");
    let mut b = Node::start_in(&dir.path().join("b"), &replica_yaml(&a));
    for db in ["x.db", "y.db"] {
        sqlite3_ok(
            &a.db(db),
            "CREATE TABLE t(v TEXT); INSERT INTO t VALUES('common');",
        );
        wait_caught_up(&a, &b, db);
    }
    // b goes away; a goes on writing, then stops too.
    b.stop();
    for db in ["x.db", "y.db"] {
        for _ in 0..2 {
            sqlite3_ok(&a.db(db), "INSERT INTO t VALUES('a-only');");
        }
    }
    a.stop();
    // b becomes the primary and writes its own history: one transaction on
    // x.db (a is ahead), four on y.db (a is behind by TXID).
    set_lease(&b, "");
    b.restart();
    sqlite3_ok(&b.db("x.db"), "INSERT INTO t VALUES('b-only');");
    for _ in 0..4 {
        sqlite3_ok(&b.db("y.db"), "INSERT INTO t VALUES('b-only');");
    }
    // a rejoins as b's replica and takes b's snapshots.
    set_lease(&a, &replica_yaml(&b));
    a.restart();
    for db in ["x.db", "y.db"] {
        wait_caught_up(&b, &a, db);
        assert_identical(&b, &a, db);
        assert_eq!(
            sqlite3_ok(&a.db(db), "SELECT count(*) FROM t WHERE v = 'a-only';"),
            "0\n"
        );
        // a's rows are in the copy of its database under lost/.
        let lost = lost_dirs(&a, db);
        assert_eq!(lost.len(), 1, "{db}: {lost:?}");
        let saved = lost[0].join("database");
        assert_eq!(
            sqlite3_ok(&saved, "SELECT v, count(*) FROM t GROUP BY v ORDER BY v;"),
            "a-only|2\ncommon|1\n",
            "{db}"
        );
        // With the LTX files of its own transactions.
        let names: Vec<String> = std::fs::read_dir(&lost[0])
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for txid in [3u64, 4] {
            let name = format!("{txid:016x}-{txid:016x}.ltx");
            assert!(names.contains(&name), "{db}: {name} not in {names:?}");
        }
        let path = lost[0].display().to_string();
        assert!(
            a.log_text()
                .lines()
                .any(|l| l.contains("WARN") && l.contains(&path)),
            "no WARN naming {path}"
        );
    }
    // b, the primary, set nothing aside.
    assert!(!b.data.join("lost").exists());
}

/// Fetches `path` from a node's HTTP server, with `token` when given;
/// returns the status and the body.
fn http_get(port: u16, path: &str, method: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = match (method, token) {
        ("POST", Some(t)) => agent
            .post(&url)
            .header("Authorization", format!("Bearer {t}"))
            .send(""),
        ("POST", None) => agent.post(&url).send(""),
        (_, Some(t)) => agent
            .get(&url)
            .header("Authorization", format!("Bearer {t}"))
            .call(),
        (_, None) => agent.get(&url).call(),
    }
    .unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    (status, body)
}

#[test]
fn with_a_token_only_the_cluster_gets_in() {
    let dir = temp_dir("repl-token");
    let token_yaml = "  token: \"s3cret-token\"\n";
    let primary = Node::start_in(&dir.path().join("primary"), token_yaml);
    sqlite3_ok(
        &primary.db("secret.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES('classified');",
    );
    // A replica with the token replicates.
    let replica = Node::start_in(
        &dir.path().join("replica"),
        &format!("{token_yaml}{}", replica_yaml(&primary)),
    );
    wait_caught_up(&primary, &replica, "secret.db");
    assert_identical(&primary, &replica, "secret.db");

    // Without the token, or with another one, every endpoint says 401 and
    // nothing else, not even a database name.
    for token in [None, Some("wrong"), Some("s3cret-tokenX")] {
        for (method, path) in [("GET", "/info"), ("POST", "/stream"), ("GET", "/nope")] {
            let (status, body) = http_get(primary.port, path, method, token);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(!body.contains("secret.db"), "{body}");
        }
    }
    let (status, body) = http_get(primary.port, "/info", "GET", Some("s3cret-token"));
    assert_eq!(status, 200);
    assert!(body.contains("secret.db"), "{body}");

    // A replica with a wrong token gets nothing and says why.
    let outsider = Node::start_in(
        &dir.path().join("outsider"),
        &format!("  token: \"guess\"\n{}", replica_yaml(&primary)),
    );
    wait_for("the outsider's refusal in its log", CATCH_UP, || {
        outsider.log_text().contains("401")
    });
    assert!(!outsider.data_db("secret.db").exists());
    // Loopback only in these configs: no warning about an open port.
    assert!(!primary.log_text().contains("without http.token"));
}
