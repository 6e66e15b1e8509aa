//! Single-node tests: a real litefs process, a real FUSE mount, real SQLite
//! (the sqlite3 CLI and rusqlite) on it. Needs root and /dev/fuse.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{
    assert_replay_identical, kill9_during_writes, newest_ltx_pos, sqlite3, sqlite3_ok, temp_dir,
    Node, Rng,
};

fn count_rows(db: &Path, table: &str) -> i64 {
    sqlite3_ok(db, &format!("SELECT count(*) FROM {table};"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn each_commit_makes_one_ltx_and_reads_and_rollbacks_make_none() {
    let dir = temp_dir("commits");
    let node = Node::start_in(dir.path(), "");
    let db = node.db("app.db");
    assert!(
        !node.mount.join(".primary").exists(),
        ".primary exists on the primary"
    );

    sqlite3_ok(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE);",
    );
    assert_eq!(node.ltx_files("app.db").len(), 1);
    sqlite3_ok(
        &db,
        "INSERT INTO t(v) VALUES('a'); INSERT INTO t(v) VALUES('b');",
    );
    assert_eq!(node.ltx_files("app.db").len(), 3);
    assert_eq!(node.pos("app.db"), newest_ltx_pos(&node, "app.db"));
    assert!(node.pos("app.db").starts_with("0000000000000003/"));

    // Read-only transactions.
    assert_eq!(sqlite3_ok(&db, "SELECT v FROM t ORDER BY id;"), "a\nb\n");
    sqlite3_ok(&db, "BEGIN; SELECT count(*) FROM t; COMMIT;");
    assert_eq!(node.ltx_files("app.db").len(), 3);

    // An explicit ROLLBACK, with a cache small enough that changed pages
    // reach the file before the rollback plays the journal back.
    sqlite3_ok(
        &db,
        "PRAGMA cache_size=2; BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<500)
         INSERT INTO t(v) SELECT hex(randomblob(300)) FROM n;
         ROLLBACK;",
    );
    assert_eq!(node.ltx_files("app.db").len(), 3);
    // A failed statement inside BEGIN (constraint), then the CLI exits
    // without COMMIT: rolled back.
    let out = sqlite3(
        &db,
        "BEGIN; INSERT INTO t(v) VALUES('c'); INSERT INTO t(v) VALUES('a');",
    );
    assert!(!out.status.success());
    assert_eq!(node.ltx_files("app.db").len(), 3);
    assert_eq!(count_rows(&db, "t"), 2);
    assert_eq!(sqlite3_ok(&db, "PRAGMA integrity_check;"), "ok\n");
    assert_eq!(node.pos("app.db"), newest_ltx_pos(&node, "app.db"));
    assert_replay_identical(&node, "app.db");
}

#[test]
fn journal_modes_delete_truncate_persist_are_captured() {
    let dir = temp_dir("modes");
    let node = Node::start_in(dir.path(), "");
    for mode in ["delete", "truncate", "persist"] {
        let name = format!("{mode}.db");
        let db = node.db(&name);
        let out = sqlite3_ok(
            &db,
            &format!(
                "PRAGMA journal_mode={mode};
                 CREATE TABLE t(x);
                 INSERT INTO t VALUES(randomblob(5000));
                 UPDATE t SET x = randomblob(100);
                 DELETE FROM t;
                 INSERT INTO t VALUES(1);"
            ),
        );
        assert_eq!(out, format!("{mode}\n"));
        assert_eq!(node.ltx_files(&name).len(), 5, "journal_mode={mode}");
        assert_eq!(node.pos(&name), newest_ltx_pos(&node, &name));
        assert_replay_identical(&node, &name);
    }
}

#[test]
fn writes_without_a_journal_fail_and_leave_the_database_intact() {
    let dir = temp_dir("nojournal");
    let node = Node::start_in(dir.path(), "");
    let db = node.db("x.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    let before = std::fs::read(node.data_db("x.db")).unwrap();
    for mode in ["off", "memory"] {
        let out = sqlite3(
            &db,
            &format!("PRAGMA journal_mode={mode}; INSERT INTO t VALUES(2);"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "journal_mode={mode} write succeeded");
        assert!(stderr.contains("I/O error"), "unexpected error: {stderr}");
    }
    assert_eq!(std::fs::read(node.data_db("x.db")).unwrap(), before);
    assert_eq!(node.ltx_files("x.db").len(), 2);
    assert_eq!(sqlite3_ok(&db, "PRAGMA integrity_check;"), "ok\n");
    assert_eq!(sqlite3_ok(&db, "SELECT x FROM t;"), "1\n");
    let log = node.log_text();
    assert!(
        log.contains("journal_mode=OFF and MEMORY cannot be replicated"),
        "{log}"
    );
    // And ordinary writes still work afterwards.
    sqlite3_ok(&db, "INSERT INTO t VALUES(4);");
    assert_eq!(node.ltx_files("x.db").len(), 3);
}

#[test]
fn page_sizes_vacuum_and_several_databases() {
    let dir = temp_dir("pagesizes");
    let node = Node::start_in(dir.path(), "");
    let sizes = [512u32, 1024, 2048, 4096, 8192, 16384, 32768, 65536];
    for ps in sizes {
        let name = format!("p{ps}.db");
        sqlite3_ok(
            &node.db(&name),
            &format!(
                "PRAGMA page_size={ps};
                 CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
                 INSERT INTO t(b) SELECT randomblob(abs(random()) % 3000) FROM n;
                 DELETE FROM t WHERE id % 3 = 0;
                 VACUUM;"
            ),
        );
        assert_eq!(
            sqlite3_ok(&node.db(&name), "PRAGMA page_size;").trim(),
            ps.to_string()
        );
    }
    // Change the page size of an existing database.
    sqlite3_ok(&node.db("p4096.db"), "PRAGMA page_size=1024; VACUUM;");
    assert_eq!(
        sqlite3_ok(&node.db("p4096.db"), "PRAGMA page_size;"),
        "1024\n"
    );
    for ps in sizes {
        let name = format!("p{ps}.db");
        assert_eq!(
            sqlite3_ok(&node.db(&name), "PRAGMA integrity_check;"),
            "ok\n"
        );
        assert_eq!(node.pos(&name), newest_ltx_pos(&node, &name));
        assert_replay_identical(&node, &name);
    }
    // The mount lists every database; -pos files open by name only.
    let names: BTreeSet<String> = std::fs::read_dir(&node.mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for ps in sizes {
        assert!(names.contains(&format!("p{ps}.db")), "{names:?}");
        assert!(!names.contains(&format!("p{ps}.db-pos")), "{names:?}");
        assert!(node.mount.join(format!("p{ps}.db-pos")).exists());
    }
}

#[test]
fn a_large_database_of_200_mb() {
    let dir = temp_dir("large");
    let node = Node::start_in(dir.path(), "");
    let conn = rusqlite::Connection::open(node.db("big.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);")
        .unwrap();
    let blob = vec![7u8; 1 << 20];
    for _ in 0..4 {
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..52 {
            conn.execute("INSERT INTO t(b) VALUES(?1)", [&blob])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    let size = std::fs::metadata(node.db("big.db")).unwrap().len();
    assert!(size >= 200 << 20, "database is only {size} bytes");
    conn.execute_batch("UPDATE t SET b = zeroblob(10) WHERE id % 2 = 0; VACUUM;")
        .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    assert_eq!(node.ltx_files("big.db").len(), 7);
    assert_eq!(node.pos("big.db"), newest_ltx_pos(&node, "big.db"));
    assert_replay_identical(&node, "big.db");
}

#[test]
fn readers_run_while_a_writer_commits() {
    let dir = temp_dir("concurrent");
    let node = Node::start_in(dir.path(), "");
    let path = node.db("c.db");
    sqlite3_ok(
        &path,
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<50)
         INSERT INTO acct(bal) SELECT 100 FROM n;",
    );
    let writes = 150;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let path = path.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sum: i64 = conn
                    .query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(sum, 5000, "a reader saw a torn transaction");
                reads += 1;
            }
            reads
        }));
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for i in 0..writes {
        let from = i % 50 + 1;
        let to = (i * 7) % 50 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             UPDATE acct SET bal = bal - 1 WHERE id = {from};
             UPDATE acct SET bal = bal + 1 WHERE id = {to};
             COMMIT;"
        ))
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(node.ltx_files("c.db").len(), 2 + writes as usize);
    assert_replay_identical(&node, "c.db");
}

#[test]
fn bad_input_gets_a_clear_errno_and_loses_nothing() {
    let dir = temp_dir("badinput");
    let node = Node::start_in(dir.path(), "");
    let db = node.db("b.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES('keep');");
    let before = std::fs::read(node.data_db("b.db")).unwrap();

    let err = std::fs::write(node.mount.join("notes.txt"), b"hello, not sqlite").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");

    use std::os::unix::fs::FileExt;
    // Read-write (write-only would be a copy-in): a write in place must
    // stay within the database's two pages (tests/copy_in.rs).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .unwrap();
    let err = f.write_at(&[1u8; 100], 8192 + 3).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    // Cutting into the database outside a transaction would not replicate.
    let err = f.set_len(4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    drop(f);

    let err = std::fs::create_dir(node.mount.join("sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // A database renames as between file systems (see tests/copy_in.rs);
    // a companion does not rename at all.
    let err = std::fs::rename(&db, node.mount.join("c.db")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    let err = std::fs::rename(&db, node.mount.join("c.db-journal")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let err = std::fs::hard_link(&db, node.mount.join("d.db")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let err = std::fs::write(node.mount.join("b.db-pos"), b"x").unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)),
        "{err}"
    );

    // Names with control characters (a newline would break the replication
    // request's lines) are refused, and logged escaped.
    for name in ["bad\nname.db", "tab\there.db", "bell\u{7}.db"] {
        let err = rusqlite::Connection::open(node.mount.join(name))
            .and_then(|c| c.execute_batch("CREATE TABLE t(x);"))
            .unwrap_err();
        assert!(
            err.to_string().contains("unable to open"),
            "{name:?}: {err}"
        );
        let err = std::fs::write(node.mount.join(name), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{name:?}: {err}");
    }
    let log = node.log_text();
    assert!(log.contains("bad\\nname.db"), "{log}");
    assert!(
        !log.contains("bad\nname.db"),
        "a raw newline reached the log"
    );

    assert_eq!(std::fs::read(node.data_db("b.db")).unwrap(), before);
    assert_eq!(sqlite3_ok(&db, "SELECT x FROM t;"), "keep\n");
    assert_eq!(node.ltx_files("b.db").len(), 2);
    let log = node.log_text();
    assert!(log.contains("refused mkdir"), "{log}");
    assert!(log.contains("refused rename"), "{log}");
    assert!(log.contains("refused hard link"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn clean_stop_unmounts_and_a_crash_leaves_a_mount_that_restart_clears() {
    let dir = temp_dir("lifecycle");
    let mut node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("l.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(1);",
    );
    let pos = node.pos("l.db");
    node.stop();
    node.restart();
    assert_eq!(node.pos("l.db"), pos);

    // With a connection open, SIGINT still ends litefs and says why.
    let conn = rusqlite::Connection::open(node.db("l.db")).unwrap();
    let _: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let status = node.signal_and_wait(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(node.log_text().contains("umount -f"));
    drop(conn);
    assert!(!common::is_mounted(&node.mount));

    node.restart();
    node.kill9();
    let err = std::fs::metadata(node.mount.join("l.db")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    node.restart();
    assert!(
        node.log_text().contains("stale mount"),
        "{}",
        node.log_text()
    );
    assert_eq!(node.pos("l.db"), pos);
    assert_eq!(sqlite3_ok(&node.db("l.db"), "SELECT x FROM t;"), "1\n");
}

#[test]
fn kill_9_during_writes_never_loses_a_committed_transaction() {
    let dir = temp_dir("crash");
    let mut node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("k.db"),
        "CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);",
    );
    let mut rng = Rng::from_clock("crash test");
    kill9_during_writes(&mut node, "k.db", 20, &mut rng, |_| String::new());
}

#[test]
fn unsupported_requests_get_their_errno_and_log_once() {
    let dir = temp_dir("unsupported");
    let node = Node::start_in(dir.path(), "");
    let db = node.db("u.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    // Python's open() asks isatty (an ioctl) of every file it opens.
    let script = format!(
        "import os\nfor _ in range(200):\n    f = open({:?}, 'rb'); assert not f.isatty(); f.read(100); f.close()\n",
        db.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each isatty was answered ENOTTY by litefs (the kernel remembers no
    // ioctl refusal).
    let url = format!("http://127.0.0.1:{}/metrics", node.port);
    let metrics = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let enotty: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("litefs_fuse_errors_total{op=\"ioctl\",errno=\"ENOTTY\"} "))
        .map_or(0, |v| v.parse().unwrap());
    assert!(enotty >= 200, "{enotty} ioctls answered ENOTTY: {metrics}");
    let log = node.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
    // Exactly one line for the 200 opens' isatty, at debug level.
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ioctl")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("DEBUG")
            && lines[0].contains(
                "ioctl (0x5401) is not supported on the mount; answered with its errno \
                 (logged once)"
            ),
        "{log}"
    );
}

#[test]
fn litefs_raises_its_open_file_limit_to_the_hard_limit() {
    // Start litefs with a soft limit below the hard one (children inherit
    // this process's limits; no test here needs many descriptors).
    // SAFETY: getrlimit/setrlimit on a plain struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = (limit.rlim_max / 2).min(4096);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let dir = temp_dir("rlimit");
    let node = Node::start_in(dir.path(), "");
    let pid = node.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(fields[3], fields[4], "{line}");
}

/// The sync SQLite makes after a PERSIST or TRUNCATE journal has ended a
/// recorded transaction is answered without a disk flush (see
/// `journal_ended` in src/fuse.rs). What a power loss could then do is
/// bring the journal back as it was before its end: hot, with its header
/// live. This puts the header back by hand after a crash and checks that
/// start-up finds the transaction recorded and deletes the journal rather
/// than rolling the committed transaction back.
#[test]
fn a_journal_whose_end_was_not_synced_is_deleted_not_rolled_back() {
    for mode in ["PERSIST", "TRUNCATE"] {
        let dir = temp_dir("journal-end");
        let mut node = Node::start_in(dir.path(), "");
        let db = node.db("e.db");
        sqlite3_ok(
            &db,
            &format!(
                "PRAGMA journal_mode={mode};
                 CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<300)
                 INSERT INTO t SELECT i, randomblob(1000) FROM n;"
            ),
        );
        let journal = node.data_db("e.db").with_file_name("journal");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL;
             PRAGMA cache_size=10; PRAGMA cache_spill=10;
             BEGIN; UPDATE t SET v = randomblob(1000);"
        ))
        .unwrap();
        // The cache spilled: the journal is live, synced, with its header.
        let live = std::fs::read(&journal).unwrap();
        assert_eq!(
            live[..8],
            litefs::sqlite::JOURNAL_MAGIC,
            "journal_mode={mode}"
        );
        conn.execute_batch("COMMIT").unwrap();
        let rows = "SELECT count(*), sum(length(v)), group_concat(hex(substr(v, 1, 8))) FROM t;";
        let committed = sqlite3_ok(&db, rows);
        let pos = node.pos("e.db");
        drop(conn);
        node.kill9();

        // The power loss: the journal's end never reached the disk.
        let mut back = std::fs::read(&journal).unwrap_or_default();
        if back.len() < live.len() {
            back = live.clone();
        } else {
            back[..512].copy_from_slice(&live[..512]);
        }
        std::fs::write(&journal, &back).unwrap();

        node.restart();
        assert_eq!(node.pos("e.db"), pos, "journal_mode={mode}");
        assert_eq!(sqlite3_ok(&db, rows), committed, "journal_mode={mode}");
        assert!(
            node.log_text().contains("already recorded"),
            "journal_mode={mode}: {}",
            node.log_text()
        );
        assert_eq!(sqlite3_ok(&db, "PRAGMA integrity_check;"), "ok\n");
        assert_replay_identical(&node, "e.db");
        node.stop();
    }
}
