//! A database written without SQLite (`cp`, `cat >`, a write-only or
//! O_TRUNC open) becomes one transaction when its writer closes it, and
//! replicates like any commit; a file that is not a whole database is
//! refused (at its first write, or at close) and changes nothing; a crash in the middle of a copy
//! leaves the old database; a program that writes a database in place
//! (read-write, not SQLite) makes each write a transaction. Real litefs processes (static lease) on real
//! mounts, real `cp`, `sh`, `sqlite3` and Python. Needs root and /dev/fuse.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    assert_identical, assert_replay_identical, replica_yaml, sqlite3_ok, temp_dir, txid,
    wait_caught_up, Node,
};

/// A SQLite database of `rows` rows at `path`, outside the mount.
fn source_db(path: &Path, rows: usize, tag: &str) {
    sqlite3_ok(
        path,
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<{rows}) \
             INSERT INTO t(v) SELECT '{tag}' || i || randomblob(200) FROM n;"
        ),
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// `cp FROM TO`, which must succeed.
fn cp_ok(from: &Path, to: &Path) {
    let out = run("cp", &[&from.to_string_lossy(), &to.to_string_lossy()]);
    assert!(
        out.status.success(),
        "cp {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn summary(db: &Path) -> String {
    sqlite3_ok(db, "SELECT count(*), min(substr(v, 1, 4)) FROM t;")
}

#[test]
fn cp_into_the_mount_is_one_transaction_that_replicates() {
    let dir = temp_dir("copy-in-cp");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let src = dir.path().join("src.db");
    source_db(&src, 2000, "aaaa");

    // A new database, copied in with cp.
    cp_ok(&src, &primary.db("a.db"));
    assert_eq!(summary(&primary.db("a.db")), "2000|aaaa\n");
    assert_eq!(txid(&primary, "a.db"), 1, "one copy, one transaction");

    // Over an existing database: cat through the shell (O_TRUNC), then a
    // copy inside the mount, then Python's open('wb').
    let src2 = dir.path().join("src2.db");
    source_db(&src2, 500, "bbbb");
    let cat = format!("cat {} > {}", src2.display(), primary.db("a.db").display());
    let out = run("sh", &["-c", &cat]);
    assert!(
        out.status.success(),
        "{cat}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&primary.db("a.db")), "500|bbbb\n");
    assert_eq!(txid(&primary, "a.db"), 2);

    cp_ok(&primary.db("a.db"), &primary.db("b.db"));
    assert_eq!(summary(&primary.db("b.db")), "500|bbbb\n");

    let py = "import sys; open(sys.argv[2], 'wb').write(open(sys.argv[1], 'rb').read())";
    let out = run(
        "python3",
        &[
            "-c",
            py,
            &src.to_string_lossy(),
            &primary.db("b.db").to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&primary.db("b.db")), "2000|aaaa\n");

    // SQLite writes on as usual after a copy.
    sqlite3_ok(&primary.db("a.db"), "INSERT INTO t(v) VALUES('cccc');");
    for db in ["a.db", "b.db"] {
        assert_eq!(
            sqlite3_ok(&primary.db(db), "PRAGMA integrity_check;"),
            "ok\n"
        );
        wait_caught_up(&primary, &replica, db);
        assert_identical(&primary, &replica, db);
        assert_eq!(summary(&replica.db(db)), summary(&primary.db(db)));
        assert_replay_identical(&primary, db);
    }
    assert_eq!(txid(&primary, "a.db"), 3);
}

#[test]
fn a_file_that_is_not_a_whole_database_is_refused_and_changes_nothing() {
    let dir = temp_dir("copy-in-refused");
    let node = Node::start_in(&dir.path().join("node"), "");
    let src = dir.path().join("src.db");
    source_db(&src, 2000, "aaaa");
    let out = run(
        "cp",
        &[&src.to_string_lossy(), &node.db("a.db").to_string_lossy()],
    );
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(node.data_db("a.db")).unwrap();

    // Not a database at all; then a database cut short (its header says
    // more pages than the file holds).
    let text = dir.path().join("text");
    std::fs::write(&text, "hello\n").unwrap();
    let half = dir.path().join("half.db");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&half, &bytes[..bytes.len() / 2 / 4096 * 4096]).unwrap();
    for bad in [&text, &half] {
        let out = run(
            "cp",
            &[&bad.to_string_lossy(), &node.db("a.db").to_string_lossy()],
        );
        assert!(
            !out.status.success(),
            "cp of {} over a database succeeded",
            bad.display()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
            "cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(txid(&node, "a.db"), 1);
        assert!(std::fs::read(node.data_db("a.db")).unwrap() == before);
        assert_eq!(summary(&node.db("a.db")), "2000|aaaa\n");
    }
    // Text is refused at its first write, the cut database at close: one
    // line each.
    let log = node.log_text();
    assert_eq!(
        log.matches("the file is not a SQLite database").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("was not committed and nothing was replicated")
            .count(),
        1,
        "{log}"
    );
    // A writer killed in the middle of its copy still closes the file.
    let py = "import os, sys\n\
              f = os.open(sys.argv[2], os.O_WRONLY | os.O_TRUNC)\n\
              data = open(sys.argv[1], 'rb').read()\n\
              os.write(f, data[:len(data) // 2])\n\
              os.kill(os.getpid(), 9)\n";
    let out = run(
        "python3",
        &[
            "-c",
            py,
            &src.to_string_lossy(),
            &node.db("a.db").to_string_lossy(),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(txid(&node, "a.db"), 1);
    assert_eq!(summary(&node.db("a.db")), "2000|aaaa\n");
}

#[test]
fn a_copy_over_a_wal_mode_database_is_refused_at_open() {
    let dir = temp_dir("copy-in-wal");
    let node = Node::start_in(&dir.path().join("node"), "");
    sqlite3_ok(
        &node.db("w.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); \
         INSERT INTO t(v) VALUES('wwww');",
    );
    let src = dir.path().join("src.db");
    source_db(&src, 10, "aaaa");
    let out = run(
        "cp",
        &[&src.to_string_lossy(), &node.db("w.db").to_string_lossy()],
    );
    assert!(
        !out.status.success(),
        "cp over a WAL-mode database succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&node.db("w.db")), "1|wwww\n");
    assert!(node.log_text().contains("it is in WAL mode"));
}

#[test]
fn a_copy_survives_kill_9_once_closed_and_a_cut_copy_leaves_the_old_database() {
    let dir = temp_dir("copy-in-kill9");
    let mut node = Node::start_in(&dir.path().join("node"), "");
    let src = dir.path().join("src.db");
    source_db(&src, 2000, "aaaa");
    let src2 = dir.path().join("src2.db");
    source_db(&src2, 700, "bbbb");

    // Durable when close returns: kill -9 right after cp.
    let out = run(
        "cp",
        &[&src.to_string_lossy(), &node.db("a.db").to_string_lossy()],
    );
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.kill9();
    node.restart();
    assert_eq!(summary(&node.db("a.db")), "2000|aaaa\n");
    assert_eq!(txid(&node, "a.db"), 1);

    // Cut in the middle: a writer holds the copy open, half written, when
    // litefs is killed; the old database is what comes back, and the
    // staging file is gone.
    let py = "import os, sys\n\
              f = os.open(sys.argv[2], os.O_WRONLY | os.O_TRUNC)\n\
              data = open(sys.argv[1], 'rb').read()\n\
              os.write(f, data[:len(data) // 2])\n\
              print('half', flush=True)\n\
              sys.stdin.read()\n";
    let mut writer = Command::new("python3")
        .args([
            "-c",
            py,
            &src2.to_string_lossy(),
            &node.db("a.db").to_string_lossy(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "half\n");
    let staged = |node: &Node| {
        std::fs::read_dir(node.data_db("a.db").parent().unwrap().join("ltx"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("copy-in-")
            })
            .count()
    };
    assert_eq!(staged(&node), 1, "the copy is staged beside the database");
    node.kill9();
    let _ = writer.kill();
    let _ = writer.wait();
    node.restart();
    assert_eq!(summary(&node.db("a.db")), "2000|aaaa\n");
    assert_eq!(txid(&node, "a.db"), 1);
    assert_eq!(staged(&node), 0, "the staging file is deleted at start-up");
    assert_replay_identical(&node, "a.db");
}

#[test]
fn mv_renames_a_database_as_a_copy_and_a_delete_that_replicate() {
    let dir = temp_dir("copy-in-mv");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    sqlite3_ok(
        &primary.db("a.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES('aaaa');",
    );
    wait_caught_up(&primary, &replica, "a.db");
    let out = run(
        "mv",
        &[
            &primary.db("a.db").to_string_lossy(),
            &primary.db("b.db").to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "mv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!primary.db("a.db").exists());
    assert_eq!(summary(&primary.db("b.db")), "1|aaaa\n");
    wait_caught_up(&primary, &replica, "b.db");
    assert_identical(&primary, &replica, "b.db");
    common::wait_for(
        "the deletion to replicate",
        std::time::Duration::from_secs(10),
        || !replica.db("a.db").exists(),
    );
}

#[test]
fn a_wal_mode_database_copies_in_and_goes_on_in_wal_mode() {
    let dir = temp_dir("copy-in-walfile");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    // A database left in WAL mode (its header says so), its WAL folded
    // back at close.
    let src = dir.path().join("src.db");
    sqlite3_ok(&src, "PRAGMA journal_mode=WAL;");
    source_db(&src, 300, "aaaa");
    cp_ok(&src, &primary.db("a.db"));
    // As on any file system, the copy made no WAL: a WAL copied next is
    // the application's.
    assert!(!primary.db("a.db-wal").exists());
    assert_eq!(summary(&primary.db("a.db")), "300|aaaa\n");
    assert_eq!(
        sqlite3_ok(
            &primary.db("a.db"),
            "PRAGMA journal_mode; INSERT INTO t(v) VALUES('bbbb'); PRAGMA wal_checkpoint(TRUNCATE);"
        )
        .lines()
        .next(),
        Some("wal")
    );
    wait_caught_up(&primary, &replica, "a.db");
    assert_eq!(summary(&replica.db("a.db")), "301|aaaa\n");
    assert_identical(&primary, &replica, "a.db");
}

/// Python opening a database `r+b` (read-write, no O_NOFOLLOW: not
/// SQLite) and writing to it in place: part of the header, then a whole
/// page, then past the end.
const EDIT_IN_PLACE: &str = r#"
import os, sys
path, version = sys.argv[1], int(sys.argv[2])
with open(path, "r+b", buffering=0) as f:
    head = bytearray(f.read(100))
    counter = int.from_bytes(head[24:28], "big") + 1
    # Change counter, user_version and the counter the size is valid for
    # (offsets 24, 60, 92): one write of part of page 1.
    head[24:28] = counter.to_bytes(4, "big")
    head[60:64] = version.to_bytes(4, "big")
    head[92:96] = counter.to_bytes(4, "big")
    f.seek(24)
    f.write(head[24:96])
    # The same again, as a write of the whole of page 1.
    page_size = int.from_bytes(head[16:18], "big")
    f.seek(0)
    page = bytearray(f.read(page_size))
    page[24:28] = (counter + 1).to_bytes(4, "big")
    page[60:64] = (version + 1).to_bytes(4, "big")
    page[92:96] = (counter + 1).to_bytes(4, "big")
    f.seek(0)
    f.write(page)
    # Past the end of the database: refused.
    f.seek(os.fstat(f.fileno()).st_size)
    try:
        f.write(b"x" * 10)
        print("past the end: written")
    except OSError as e:
        print("past the end:", e.strerror)
"#;

#[test]
fn a_program_writing_in_place_commits_each_write_and_replicates() {
    let dir = temp_dir("edit-in-place");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let db = primary.db("a.db");
    source_db(&db, 300, "aaaa");
    let before = txid(&primary, "a.db");
    let out = run(
        "python3",
        &["-c", EDIT_IN_PLACE, &db.to_string_lossy(), "7"],
    );
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "past the end: Invalid argument\n"
    );
    assert_eq!(
        txid(&primary, "a.db"),
        before + 2,
        "each write in place is a transaction; the refused one is none"
    );
    assert!(
        primary
            .log_text()
            .contains("written in place without SQLite, recorded as TXID"),
        "{}",
        primary.log_text()
    );
    // SQLite sees the edits (the change counter moved), writes on, and
    // the replica has it all.
    assert_eq!(
        sqlite3_ok(
            &db,
            "PRAGMA user_version; INSERT INTO t(v) VALUES('bbbb'); PRAGMA integrity_check;"
        ),
        "8\nok\n"
    );
    wait_caught_up(&primary, &replica, "a.db");
    assert_eq!(
        sqlite3_ok(&replica.db("a.db"), "PRAGMA user_version;"),
        "8\n"
    );
    assert_eq!(summary(&replica.db("a.db")), "301|aaaa\n");
    assert_identical(&primary, &replica, "a.db");
    assert_replay_identical(&primary, "a.db");
}

#[test]
fn a_copy_keeps_pages_past_the_headers_page_count() {
    // As a copy taken in the middle of a transaction has them: `cp`
    // leaves the whole file, SQLite reads the database its header
    // describes, and that database is what replicates.
    let dir = temp_dir("copy-in-long");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let src = dir.path().join("src.db");
    source_db(&src, 100, "aaaa");
    let len = std::fs::metadata(&src).unwrap().len();
    let grow = format!("import sys; open(sys.argv[1], 'ab').write(b'\\x01' * {len})");
    let out = run("python3", &["-c", &grow, &src.to_string_lossy()]);
    assert!(out.status.success());
    cp_ok(&src, &primary.db("a.db"));
    let copied = std::fs::read(primary.db("a.db")).unwrap();
    assert_eq!(
        copied.len() as u64,
        2 * len,
        "the copy keeps the file's length"
    );
    assert!(copied[len as usize..].iter().all(|b| *b == 1));
    assert_eq!(summary(&primary.db("a.db")), "100|aaaa\n");
    assert_eq!(
        sqlite3_ok(&primary.db("a.db"), "PRAGMA integrity_check;"),
        "ok\n"
    );
    wait_caught_up(&primary, &replica, "a.db");
    let replicated = std::fs::read(replica.db("a.db")).unwrap();
    assert_eq!(
        replicated[..],
        copied[..len as usize],
        "the database replicates"
    );
    // SQLite writes on; the primary's file keeps its length.
    sqlite3_ok(&primary.db("a.db"), "INSERT INTO t(v) VALUES('bbbb');");
    wait_caught_up(&primary, &replica, "a.db");
    assert_eq!(summary(&replica.db("a.db")), "101|aaaa\n");
    assert_eq!(
        std::fs::metadata(primary.db("a.db")).unwrap().len(),
        2 * len
    );
}

/// Python writing `user_version` = N, N+1, ... into the database at
/// argv[1] in place (bytes 24..96 of page 1, the change counter moved on),
/// printing each number once its write returned.
const EDIT_LOOP: &str = r#"
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "r+b", buffering=0) as f:
    while True:
        f.seek(24)
        head = bytearray(f.read(72))
        counter = int.from_bytes(head[0:4], "big") + 1
        head[0:4] = counter.to_bytes(4, "big")
        head[36:40] = n.to_bytes(4, "big")
        head[68:72] = counter.to_bytes(4, "big")
        f.seek(24)
        f.write(head)
        print(n, flush=True)
        n += 1
"#;

#[test]
fn kill_9_during_writes_in_place_loses_no_acknowledged_one() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let dir = temp_dir("edit-in-place-kill9");
    let mut node = Node::start_in(dir.path(), "");
    let db = node.db("a.db");
    source_db(&db, 50, "aaaa");
    let mut rng = common::Rng::from_clock("kill_9_during_writes_in_place");
    let mut next = 1u64;
    for round in 0..5 {
        let mut editor = std::process::Command::new("python3")
            .args(["-c", EDIT_LOOP, &db.to_string_lossy(), &next.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
        let reader = {
            let stdout = editor.stdout.take().unwrap();
            let acknowledged = acknowledged.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(line.trim().parse().unwrap());
                }
            })
        };
        let wanted = 1 + rng.next() % 30;
        common::wait_for("edits in place", std::time::Duration::from_secs(30), || {
            acknowledged.lock().unwrap().len() as u64 >= wanted
        });
        node.kill9();
        let _ = editor.kill();
        let _ = editor.wait();
        reader.join().unwrap();
        let last = *acknowledged.lock().unwrap().last().unwrap();
        node.restart();
        let version: u64 = sqlite3_ok(&db, "PRAGMA user_version;")
            .trim()
            .parse()
            .unwrap();
        assert!(
            version == last || version == last + 1,
            "round {round}: user_version {version} after the edit of {last} was acknowledged"
        );
        assert_eq!(sqlite3_ok(&db, "PRAGMA integrity_check;"), "ok\n");
        assert_eq!(summary(&db), "50|aaaa\n");
        assert_replay_identical(&node, "a.db");
        next = version + 1;
    }
}
