//! Replication tests: one primary and two replicas, each a real litefs
//! process with its own mount and data directory, on loopback ports with a
//! static lease. Needs root and /dev/fuse.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_identical, assert_replay_identical, count_in_log, http_request, replica_yaml, sqlite3,
    sqlite3_ok, temp_dir, txid, wait_caught_up, wait_for, Node, Rng, CATCH_UP,
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

/// Transfers the primary commits while the replica's readers run.
const TRANSFERS: u64 = 1_000;

/// What a reader on the replica sees in one read transaction: the sum of
/// all balances, which every transfer keeps at 200000, and how many
/// transfers have committed (`xfer.n`).
const READ_SQL: &str = "SELECT (SELECT sum(bal) FROM acct), (SELECT n FROM xfer)";

/// Checks one reader's `(sum, n)` reads, in order: every sum is 200000 and
/// `n` never goes back. Returns how many reads saw a state strictly
/// between the first and the last transfer, i.e. were made while the
/// replica was applying them.
fn check_reads(who: &str, reads: &[(i64, u64)]) -> usize {
    let mut last = 0;
    let mut during = 0;
    for (i, &(sum, n)) in reads.iter().enumerate() {
        assert_eq!(
            sum, 200_000,
            "{who}: read {i} saw a torn transaction (after {n} transfers)"
        );
        assert!(n >= last, "{who}: read {i} saw {n} transfers after {last}");
        assert!(n <= TRANSFERS, "{who}: read {i} saw {n} transfers");
        last = n;
        if n > 0 && n < TRANSFERS {
            during += 1;
        }
    }
    during
}

#[test]
fn readers_on_a_replica_never_see_a_torn_transaction() {
    let (dir, primary, replicas) = cluster("repl-torn", 1);
    let replica = &replicas[0];
    sqlite3_ok(
        &primary.db("bank.db"),
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
         INSERT INTO acct(bal, pad) SELECT 1000, randomblob(500) FROM n;
         CREATE TABLE xfer(n INTEGER); INSERT INTO xfer VALUES(0);",
    );
    wait_caught_up(&primary, replica, "bank.db");

    // One reader connection in this process, and two sqlite3 processes
    // running one-statement read transactions until told to stop.
    // (Several connections in one process share one POSIX lock, which can
    // starve the applier; that is SQLite's process model, not a torn
    // read.)
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
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let read: (i64, u64) = conn
                    .query_row(READ_SQL, [], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap();
                seen.push(read);
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen
        })
    };
    let outs: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("cli-reader-{i}.out")))
        .collect();
    // Each is fed queries until the transfers are applied on the replica
    // (the pipe holds the feeder back when sqlite3 is slower).
    let cli_readers: Vec<_> = outs
        .iter()
        .map(|out| {
            let mut child = Command::new("sqlite3")
                .arg("-bail")
                .arg(replica.db("bank.db"))
                .stdin(Stdio::piped())
                .stdout(std::fs::File::create(out).unwrap())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sqlite3 CLI (install with scripts/setup.sh)");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stdin = child.stdin.take().unwrap();
                let batch = format!("{READ_SQL};\n").repeat(50);
                stdin.write_all(b".timeout 30000\n").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if stdin.write_all(batch.as_bytes()).is_err() {
                        break;
                    }
                }
                drop(stdin);
                child.wait_with_output().unwrap()
            })
        })
        .collect();
    // Every reader has read before the first transfer commits (sqlite3's
    // output reaches its file in blocks).
    wait_for("the first replica reads", CATCH_UP, || {
        reads.load(Ordering::Relaxed) > 0
            && outs
                .iter()
                .all(|out| std::fs::metadata(out).is_ok_and(|m| m.len() > 0))
    });

    // Transfers between random accounts, each one transaction that keeps
    // the sum of the balances and counts itself in xfer.n. With 500-byte
    // rows, two accounts far apart are on different pages.
    let mut rng = Rng::from_clock("torn-read transfers");
    let conn = rusqlite::Connection::open(primary.db("bank.db")).unwrap();
    for _ in 0..TRANSFERS {
        let from = rng.next() % 200 + 1;
        let to = (from + rng.next() % 199) % 200 + 1;
        let amount = rng.next() % 100 + 1;
        conn.execute_batch(&format!(
            "BEGIN;
             UPDATE acct SET bal = bal - {amount} WHERE id = {from};
             UPDATE acct SET bal = bal + {amount} WHERE id = {to};
             UPDATE xfer SET n = n + 1;
             COMMIT;"
        ))
        .unwrap();
    }
    wait_caught_up(&primary, replica, "bank.db");
    stop.store(true, Ordering::Relaxed);

    let reads_during_writes = check_reads("the reader thread", &reader.join().unwrap());
    eprintln!("the reader thread: {reads_during_writes} reads while the transfers were applied");
    assert!(
        reads_during_writes > 100,
        "the reader thread made only {reads_during_writes} reads while the transfers were \
         being applied"
    );
    for (i, (cli, out)) in cli_readers.into_iter().zip(&outs).enumerate() {
        let status = cli.join().unwrap();
        assert!(
            status.status.success(),
            "sqlite3 reader {i}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let text = std::fs::read_to_string(out).unwrap();
        let reads: Vec<(i64, u64)> = text
            .lines()
            .map(|l| {
                let (sum, n) = l
                    .split_once('|')
                    .unwrap_or_else(|| panic!("sqlite3 reader {i}: bad line {l:?}"));
                (sum.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        let during = check_reads(&format!("sqlite3 reader {i}"), &reads);
        eprintln!(
            "sqlite3 reader {i}: {during} of {} reads while the transfers were applied",
            reads.len()
        );
        assert!(
            during > 100,
            "sqlite3 reader {i} made only {during} of {} reads while the transfers were being \
             applied",
            reads.len()
        );
    }
    assert_eq!(
        sqlite3_ok(
            &replica.db("bank.db"),
            "SELECT sum(bal), (SELECT n FROM xfer) FROM acct;"
        ),
        format!("200000|{TRANSFERS}\n")
    );
    assert_identical(&primary, replica, "bank.db");
}

#[test]
fn a_killed_replica_catches_up_from_its_own_position() {
    let (_dir, primary, mut replicas) = cluster("repl-kill", 1);
    let replica = &mut replicas[0];
    let db = primary.db("k.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    wait_caught_up(&primary, replica, "k.db");
    let snapshots_before = count_in_log(&primary, "sending a snapshot");

    let before = txid(replica, "k.db");
    replica.kill9();
    for i in 2..20 {
        sqlite3_ok(&db, &format!("INSERT INTO t VALUES({i});"));
    }
    replica.restart();
    wait_caught_up(&primary, replica, "k.db");
    assert_identical(&primary, replica, "k.db");
    assert_replay_identical(replica, "k.db");
    // What it lacked came as one file, the 18 transactions merged.
    let newest = replica.ltx_files("k.db").pop().unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        litefs::ltx::parse_filename(name),
        Some((before + 1, before + 18)),
        "{name}"
    );
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
            let (status, _, body) = http_request(primary.port, method, path, token);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(!body.contains("secret.db"), "{body}");
        }
    }
    let (status, _, body) = http_request(primary.port, "GET", "/info", Some("s3cret-token"));
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

/// A static-lease replica stops at once: its lease thread, which has
/// nothing to watch, waits where it sees the stop flag (it used to sleep
/// through a 2 s watch, which every stop then waited for).
#[test]
fn a_static_replica_stops_without_waiting_for_its_lease_watch() {
    let (_dir, primary, mut replicas) = cluster("replica-stop", 1);
    sqlite3_ok(&primary.db("a.db"), "CREATE TABLE t(x);");
    wait_caught_up(&primary, &replicas[0], "a.db");
    for _ in 0..3 {
        // Well into the lease thread's watch, whatever its phase.
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        replicas[0].stop();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1000),
            "the replica took {took:?} to stop"
        );
        replicas[0].restart();
    }
}
