//! A replica under read load: readers in other processes neither stall
//! replication nor ever see half a transaction, and a long read
//! transaction delays only the apply, never the stream. Real litefs
//! processes (static lease) on real mounts, Python's sqlite3 as the
//! readers. Needs root and /dev/fuse.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_identical, assert_replay_identical, replica_yaml, sqlite3_ok, temp_dir, wait_caught_up,
    wait_for, Node, Rng, CATCH_UP,
};

fn replica_of(dir: &Path, primary: &Node) -> Node {
    Node::start_in(dir, &replica_yaml(primary))
}

/// A reader process: one persistent read-only connection (30 s busy
/// timeout, as an application on a replica sets) querying in a tight loop
/// until `stop` exists. Every transaction on the primary inserts row `i`
/// with value `i` and sets `meta.n = i`, so a whole transaction shows
/// `n == count == max(id)` and `sum == n(n+1)/2`. Prints the number of
/// reads; exits 1 on a torn read or an error.
const READER: &str = r#"
import os, sqlite3, sys
path, stop = sys.argv[1], sys.argv[2]
con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
reads = 0
while not os.path.exists(stop):
    n, c, s, m = con.execute(
        "SELECT (SELECT n FROM meta), count(*), coalesce(sum(v), 0), coalesce(max(id), 0) FROM t"
    ).fetchone()
    if not (n == c == m and s == c * (c + 1) // 2):
        print(f"TORN n={n} count={c} sum={s} max={m}", flush=True)
        sys.exit(1)
    reads += 1
print(reads, flush=True)
"#;

fn start_reader(db: &Path, stop: &Path) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(READER)
        .arg(db)
        .arg(stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it)")
}

/// How many received files wait in `db`'s queue on `node`.
fn queued_files(node: &Node, db: &str) -> usize {
    std::fs::read_dir(node.data.join("dbs").join(db).join("ltx"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ltx.queued"))
                .count()
        })
        .unwrap_or(0)
}

/// The newest TXID in `db`'s queue on `node` (0 when nothing is queued).
fn queued_through(node: &Node, db: &str) -> u64 {
    std::fs::read_dir(node.data.join("dbs").join(db).join("ltx"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let ltx_name = name.strip_suffix(".queued")?;
                    litefs::ltx::parse_filename(ltx_name).map(|(_, max)| max)
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A primary and a replica with the `t`/`meta` schema the readers check,
/// replicated.
fn cluster_with_schema(name: &str, db: &str) -> (tempfile::TempDir, Node, Node) {
    let dir = temp_dir(name);
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = replica_of(&dir.path().join("replica"), &primary);
    sqlite3_ok(
        &primary.db(db),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
         CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES(0);",
    );
    wait_caught_up(&primary, &replica, db);
    (dir, primary, replica)
}

fn pos_txid(pos: &str) -> u64 {
    u64::from_str_radix(pos.split('/').next().unwrap_or(""), 16).unwrap_or(0)
}

fn read_pos(node: &Node, db: &str) -> String {
    std::fs::read_to_string(node.mount.join(format!("{db}-pos"))).unwrap_or_default()
}

/// The positions `node`'s log says were received more than once. A
/// position is logged as received only once its file is durable in the
/// queue, so a replica that resumes from an older position than it had
/// received gets it again.
fn received_twice(node: &Node) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    node.log_text()
        .lines()
        .filter_map(|l| {
            l.split_once("received an LTX file up to ")
                .map(|(_, pos)| pos)
        })
        .filter(|pos| !seen.insert(pos.to_string()))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_replica_keeps_up_while_four_readers_query_in_a_tight_loop() {
    let db = "load.db";
    let (dir, primary, replica) = cluster_with_schema("load-readers", db);

    let stop: PathBuf = dir.path().join("stop-readers");
    let mut readers: Vec<Child> = (0..4)
        .map(|_| start_reader(&replica.db(db), &stop))
        .collect();

    let conn = rusqlite::Connection::open(primary.db(db)).unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL;").unwrap();
    let base = pos_txid(&read_pos(&primary, db));
    let mut lags = Vec::with_capacity(1000);
    for i in 1..=1000i64 {
        conn.execute_batch(&format!(
            "BEGIN; INSERT INTO t(id, v) VALUES({i}, {i}); UPDATE meta SET n = {i}; COMMIT;"
        ))
        .unwrap();
        let committed = Instant::now();
        let want = base + i as u64;
        // Polled finely (the harness's wait_for sleeps 10 ms a round).
        while pos_txid(&read_pos(&replica, db)) < want {
            assert!(
                committed.elapsed() < CATCH_UP,
                "TXID {want} did not reach the replica"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        lags.push(committed.elapsed());
    }
    std::fs::write(&stop, b"").unwrap();
    for mut r in readers.drain(..) {
        let out = std::mem::take(&mut r.stdout);
        let status = r.wait().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out.unwrap(), &mut text).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut r.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "a reader failed: {text} {err}");
        let reads: u64 = text.trim().parse().unwrap();
        assert!(
            reads > 100,
            "a reader ran only {reads} reads alongside the writes"
        );
    }
    lags.sort();
    let p50 = lags[lags.len() / 2];
    let p99 = lags[lags.len() * 99 / 100];
    let max = lags[lags.len() - 1];
    eprintln!("replication lag with 4 readers: p50 {p50:?} p99 {p99:?} max {max:?}");
    // Generous bounds for a loaded 2-core test machine and a debug build;
    // scripts/bench.sh measures the real figures.
    assert!(p99 < Duration::from_millis(200), "lag p99 {p99:?}");
    assert!(max < Duration::from_secs(2), "lag max {max:?}");
    assert_eq!(
        sqlite3_ok(
            &replica.db(db),
            "SELECT count(*), (SELECT n FROM meta) FROM t;"
        ),
        "1000|1000\n"
    );
    assert_identical(&primary, &replica, db);
}

#[test]
fn a_long_read_on_a_replica_delays_applies_but_not_the_stream() {
    let db = "long.db";
    let (_dir, primary, replica) = cluster_with_schema("load-long-read", db);
    let held_pos = read_pos(&replica, db);

    // A read transaction held open on the replica.
    let reader = rusqlite::Connection::open_with_flags(
        replica.db(db),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.execute_batch("BEGIN;").unwrap();
    let count: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0);

    let conn = rusqlite::Connection::open(primary.db(db)).unwrap();
    for i in 1..=50i64 {
        conn.execute_batch(&format!(
            "BEGIN; INSERT INTO t(id, v) VALUES({i}, {i}); UPDATE meta SET n = {i}; COMMIT;"
        ))
        .unwrap();
    }
    let primary_pos = primary.pos(db);

    // Everything arrives and is stored durably, though none is applied:
    // the queue reaches the primary's TXID (in as many files as the
    // stream sent: runs that were ready at once come merged).
    let queued = || queued_files(&replica, db);
    let primary_txid = pos_txid(&primary_pos);
    wait_for(
        "the primary's last TXID queued on the replica",
        CATCH_UP,
        || queued_through(&replica, db) == primary_txid,
    );
    // The apply thread holds the first one while it waits for the reader.
    assert_eq!(read_pos(&replica, db), held_pos, "applied under a reader");

    // One WARN names the database once the reader has held it a while.
    let warning = format!("db {db}: readers have held the database");
    wait_for("the stalled-apply warning", Duration::from_secs(20), || {
        replica.log_text().contains(&warning)
    });
    // The reader still sees its snapshot; the stream is still up
    // (heartbeats: no reconnect was logged).
    let count: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0, "the reader's transaction changed under it");
    reader.execute_batch("COMMIT;").unwrap();
    drop(reader);

    wait_caught_up(&primary, &replica, db);
    assert_eq!(read_pos(&replica, db), primary_pos);
    assert_eq!(queued(), 0, "files left queued after the reader ended");
    assert_identical(&primary, &replica, db);
    assert_eq!(
        sqlite3_ok(
            &replica.db(db),
            "SELECT count(*), (SELECT n FROM meta) FROM t;"
        ),
        "50|50\n"
    );
    let log = replica.log_text();
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    assert!(
        !log.contains("replication from"),
        "the stream was interrupted while the reader held the database: {log}"
    );
    assert!(
        !primary.log_text().contains("snapshot"),
        "the primary sent a snapshot: {}",
        primary.log_text()
    );
}

#[test]
fn kill_9_of_a_replica_at_any_moment_loses_nothing_and_replays_identically() {
    let dir = temp_dir("load-replica-crash");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let mut replica = replica_of(&dir.path().join("replica"), &primary);
    let db = "crash.db";
    sqlite3_ok(
        &primary.db(db),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, b BLOB);",
    );
    wait_caught_up(&primary, &replica, db);
    let mut rng = Rng::from_clock("replica crash test");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let path = primary.db(db);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                conn.execute(
                    "INSERT INTO t(id, v, b) VALUES(?1, ?1, randomblob(?2))",
                    rusqlite::params![i, 100 + (i % 5) * 1500],
                )
                .unwrap();
            }
            i
        })
    };
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 300));
        replica.kill9();
        replica.restart();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rows = writer.join().unwrap();
    assert!(rows > 8, "the writer committed only {rows} rows");
    wait_caught_up(&primary, &replica, db);
    assert_identical(&primary, &replica, db);
    assert_eq!(
        sqlite3_ok(&replica.db(db), "PRAGMA integrity_check;"),
        "ok\n"
    );
    for file in replica.ltx_files(db) {
        litefs::ltx::verify_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    // Each restart resumed from the replica's own position: no snapshot,
    // and no file received twice.
    assert!(
        !primary.log_text().contains("snapshot"),
        "the primary sent a snapshot: {}",
        primary.log_text()
    );
    let twice = received_twice(&replica);
    assert!(
        twice.is_empty(),
        "the replica received the files up to these positions twice: {twice:?}"
    );
    // Its LTX files hold the primary's history: each ends where one of the
    // primary's ends, with the same checksum, and one that covers a single
    // transaction is the primary's file byte for byte (what a replica
    // lacked after a restart came merged, `ltx::merge`).
    let primary_files: std::collections::BTreeMap<u64, PathBuf> = primary
        .ltx_files(db)
        .into_iter()
        .map(|f| {
            (
                litefs::ltx::read_header_and_trailer(&f).unwrap().0.max_txid,
                f,
            )
        })
        .collect();
    let mut merged = 0;
    for mine in replica.ltx_files(db) {
        let (header, trailer) = litefs::ltx::read_header_and_trailer(&mine).unwrap();
        let theirs = &primary_files[&header.max_txid];
        let (their_header, their_trailer) = litefs::ltx::read_header_and_trailer(theirs).unwrap();
        assert_eq!(
            trailer.post_apply_checksum,
            their_trailer.post_apply_checksum,
            "{}",
            mine.display()
        );
        if header.min_txid == their_header.min_txid {
            assert!(
                std::fs::read(&mine).unwrap() == std::fs::read(theirs).unwrap(),
                "{} differs from the primary's",
                mine.display()
            );
        } else {
            merged += 1;
        }
    }
    println!("{merged} of the replica's LTX files were merged runs");
    assert_replay_identical(&replica, db);
}

#[test]
fn files_left_queued_by_a_crash_are_applied_at_the_next_start() {
    let dir = temp_dir("load-queue-crash");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let mut replica = replica_of(&dir.path().join("replica"), &primary);
    let db = "queued.db";
    sqlite3_ok(&primary.db(db), "CREATE TABLE t(id INTEGER PRIMARY KEY);");
    wait_caught_up(&primary, &replica, db);
    let held_pos = read_pos(&replica, db);

    // A reader holds the database, so what arrives stays queued.
    let reader = rusqlite::Connection::open_with_flags(
        replica.db(db),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    let conn = rusqlite::Connection::open(primary.db(db)).unwrap();
    for i in 1..=20i64 {
        conn.execute("INSERT INTO t(id) VALUES(?1)", [i]).unwrap();
    }
    let primary_pos = primary.pos(db);
    // All 20 queued (in up to 20 files: runs ready at once come merged).
    wait_for(
        "the 20 transactions queued on the replica",
        CATCH_UP,
        || queued_through(&replica, db) == pos_txid(&primary_pos),
    );
    let files = queued_files(&replica, db);
    assert_eq!(read_pos(&replica, db), held_pos, "applied under a reader");
    replica.kill9();
    drop(reader);
    replica.restart();

    // Start-up applied them all, before the mount was up, which put the
    // replica at the primary's position...
    let log = replica.log_text();
    let applied = format!(
        "database {db}: applied {files} of {files} received LTX files left queued; position {}",
        primary_pos.trim()
    );
    assert_eq!(log.matches(&applied).count(), 1, "no {applied:?} in: {log}");
    assert!(
        !log.contains("deleting a received LTX file left queued"),
        "{log}"
    );
    assert_eq!(queued_files(&replica, db), 0);
    assert_eq!(read_pos(&replica, db), primary_pos);
    // ...from which it resumed: nothing was sent again, no snapshot.
    let twice = received_twice(&replica);
    assert!(
        twice.is_empty(),
        "the replica received the files up to these positions twice: {twice:?}"
    );
    assert!(
        !primary.log_text().contains("snapshot"),
        "the primary sent a snapshot: {}",
        primary.log_text()
    );
    wait_caught_up(&primary, &replica, db);
    assert_identical(&primary, &replica, db);
    assert_replay_identical(&replica, db);
    assert_eq!(
        sqlite3_ok(&replica.db(db), "SELECT count(*) FROM t;"),
        "20\n"
    );
}

/// Sends `signal` to `node`'s process.
fn signal(node: &Node, signal: i32) {
    let pid = node.pid().expect("the node runs") as libc::pid_t;
    // SAFETY: kill takes no pointers.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill({pid}, {signal})"
    );
}

#[test]
fn replicas_hit_by_faults_during_a_wal_write_load_converge() {
    let dir = temp_dir("load-faults");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let mut replicas = [
        replica_of(&dir.path().join("replica0"), &primary),
        replica_of(&dir.path().join("replica1"), &primary),
    ];
    let db = "faults.db";
    let conn = common::open_wal(&primary.db(db), "PRAGMA synchronous=NORMAL;");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    for replica in &replicas {
        wait_caught_up(&primary, replica, db);
    }
    let mut rng = Rng::from_clock("replica faults test");

    // One client committing single-row transactions as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                conn.execute("INSERT INTO t(id, v) VALUES(?1, randomblob(100))", [i])
                    .unwrap();
            }
            i
        })
    };
    // Twenty faults, each on one replica: kill -9 and restart (three in
    // four: a kill that lands while a request litefs made to its own
    // mount is in flight must not hang, see `fuse/mount_helper.rs`), or a
    // pause (SIGSTOP) of up to half a second.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 250));
        let replica = &mut replicas[(rng.next() % 2) as usize];
        if rng.next() % 4 != 0 {
            replica.kill9();
            replica.restart();
        } else {
            signal(replica, libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(rng.next() % 500));
            signal(replica, libc::SIGCONT);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rows = writer.join().unwrap();
    let stopped = Instant::now();
    let last = read_pos(&primary, db);
    for (i, replica) in replicas.iter().enumerate() {
        wait_for(&format!("replica {i} to converge"), CATCH_UP, || {
            read_pos(replica, db) == last
        });
    }
    println!(
        "{rows} commits; both replicas at the primary's position {:.3} s after the writer stopped",
        stopped.elapsed().as_secs_f64()
    );
    for replica in &replicas {
        assert_identical(&primary, replica, db);
        assert_eq!(
            sqlite3_ok(&replica.db(db), "SELECT count(*) FROM t;"),
            format!("{rows}\n")
        );
        assert_replay_identical(replica, db);
    }
}
