//! No reader ever sees part of a transaction, or an older database than it
//! saw before: four reader processes (Python's sqlite3, one persistent
//! read-only connection each, as an application keeps) query a replica, and
//! the primary, in a tight loop while the primary commits 3,000 single-row
//! transactions, in each journal mode. Real litefs processes (static lease)
//! on real mounts. Needs root and /dev/fuse.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{
    assert_identical, fuse_ops, replica_yaml, sqlite3_ok, temp_dir, wait_caught_up, Node,
};

/// Commits per journal mode.
const COMMITS: usize = 3_000;
/// Reader processes on each node.
const READERS: usize = 4;

/// A reader process: one persistent read-only connection (30 s busy
/// timeout, as an application sets) querying `t` until `stop` exists.
/// Every transaction inserts one row of a 100-byte blob, so a whole
/// transaction shows `sum(length(v)) == 100 * count(*)`, and a reader's
/// count never goes down. Any error (`database disk image is malformed`
/// among them) or a failed check is counted, the first one printed. Prints
/// `reads errors first-error` as its last line.
const READER: &str = r#"
import os, sqlite3, struct, sys
path, stop = sys.argv[1], sys.argv[2]
con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
QUERY = "SELECT count(*), coalesce(sum(length(v)), 0) FROM t"
reads = errors = last = 0
first = ""

def what_is_there():
    # The file as a new reader sees it right after, and the same query again.
    try:
        fd = os.open(path, os.O_RDONLY)
        head, size = os.pread(fd, 100, 0), os.fstat(fd).st_size
        os.close(fd)
        seen = (f"header: change counter {struct.unpack('>I', head[24:28])[0]}, "
                f"{struct.unpack('>I', head[28:32])[0]} pages; file {size} bytes")
    except Exception as e:
        seen = f"cannot look: {e!r}"
    try:
        again = con.execute(QUERY).fetchone()
    except Exception as e:
        again = repr(e)
    return f"{seen}; the query again: {again}"

while not os.path.exists(stop):
    try:
        c, s = con.execute(QUERY).fetchone()
        if s != 100 * c:
            raise Exception(f"torn: count {c}, sum(length(v)) {s}")
        if c < last:
            raise Exception(f"stale: count {c} after {last}")
        last = c
    except Exception as e:
        errors += 1
        first = first or f"{e!r} ({what_is_there()})"
    reads += 1
print(reads, errors, first, flush=True)
"#;

/// The writer: `COMMITS` single-row transactions in autocommit, the way an
/// application commits, in journal mode `mode` (synchronous=FULL).
const WRITER: &str = r#"
import sqlite3, sys
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(path, isolation_level=None, timeout=30)
con.execute(f"PRAGMA journal_mode={mode}")
con.execute("PRAGMA synchronous=FULL")
for _ in range(n):
    con.execute("INSERT INTO t(v) VALUES(randomblob(100))")
"#;

fn python(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    cmd
}

/// A reader process, killed if the test ends before it does.
struct Reader(Option<Child>);

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_reader(db: &Path, stop: &Path) -> Reader {
    let child = python(READER, &[&db.to_string_lossy(), &stop.to_string_lossy()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it)");
    Reader(Some(child))
}

/// Waits for a reader and returns how many reads it made; fails the test
/// with the reader's first error if it saw any, and what the node logged
/// above INFO.
fn finish_reader(mut reader: Reader, role: &str, node: &Node) -> u64 {
    let out = reader.0.take().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a reader on the {role} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = text.trim().splitn(3, ' ');
    let reads: u64 = fields.next().unwrap().parse().unwrap();
    let errors: u64 = fields.next().unwrap().parse().unwrap();
    let warnings = || {
        let log = node.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        lines.join("\n")
    };
    assert_eq!(
        errors,
        0,
        "a reader on the {role} saw {errors} errors in {reads} reads, the first: {}\n\
         the {role}'s warnings:\n{}",
        fields.next().unwrap_or(""),
        warnings()
    );
    reads
}

fn readers_see_whole_transactions(mode: &str) {
    let name = format!("torn-{}", mode.to_lowercase());
    let dir = temp_dir(&name);
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let db = "t.db";
    sqlite3_ok(
        &primary.db(db),
        &format!("PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"),
    );
    wait_caught_up(&primary, &replica, db);

    let stop = dir.path().join("stop");
    let readers: Vec<(&str, &Node, Reader)> = [("replica", &replica), ("primary", &primary)]
        .into_iter()
        .flat_map(|(role, node)| {
            let stop = stop.clone();
            (0..READERS).map(move |_| (role, node, start_reader(&node.db(db), &stop)))
        })
        .collect();
    let out = python(
        WRITER,
        &[
            &primary.db(db).to_string_lossy(),
            mode,
            &COMMITS.to_string(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "the writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_caught_up(&primary, &replica, db);
    std::fs::write(&stop, b"").unwrap();
    for (role, node, reader) in readers {
        let reads = finish_reader(reader, role, node);
        assert!(
            reads > 100,
            "a reader on the {role} made only {reads} reads"
        );
    }
    assert_eq!(
        sqlite3_ok(&replica.db(db), "SELECT count(*) FROM t;"),
        format!("{COMMITS}\n")
    );
    if mode == "WAL" {
        // The primary's database file is whole once the WAL is in it.
        sqlite3_ok(&primary.db(db), "PRAGMA wal_checkpoint(TRUNCATE);");
    }
    assert_identical(&primary, &replica, db);
}

#[test]
fn readers_see_whole_transactions_in_delete_mode() {
    readers_see_whole_transactions("DELETE");
}

#[test]
fn readers_see_whole_transactions_in_truncate_mode() {
    readers_see_whole_transactions("TRUNCATE");
}

#[test]
fn readers_see_whole_transactions_in_persist_mode() {
    readers_see_whole_transactions("PERSIST");
}

#[test]
fn readers_see_whole_transactions_in_wal_mode() {
    readers_see_whole_transactions("WAL");
}

/// SQLite sizes the database with fstat at the start of every read
/// transaction, under its SHARED lock; on a replica the file changes behind
/// the kernel, so the kernel may cache none of its attributes: each fstat
/// reaches litefs, which answers what the file holds then. (Cached, a
/// reader under load was once answered a size older than the page 1 it
/// read: "database disk image is malformed".) On the primary, whose writes
/// go through the kernel, they are cached.
#[test]
fn every_fstat_of_a_replicas_database_reaches_litefs() {
    const STATS: u64 = 50;
    let dir = temp_dir("torn-fstat");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    sqlite3_ok(&primary.db("t.db"), "CREATE TABLE t(x);");
    wait_caught_up(&primary, &replica, "t.db");
    let getattrs = |node: &Node| {
        let file = std::fs::File::open(node.db("t.db")).unwrap();
        let before = fuse_ops(node, "getattr");
        for _ in 0..STATS {
            file.metadata().unwrap();
        }
        fuse_ops(node, "getattr") - before
    };
    let on_replica = getattrs(&replica);
    assert!(
        on_replica >= STATS,
        "{STATS} fstats on the replica sent litefs {on_replica} GETATTRs"
    );
    let on_primary = getattrs(&primary);
    assert!(
        on_primary < STATS / 2,
        "{STATS} fstats on the primary sent litefs {on_primary} GETATTRs: cached, they should not"
    );
}
