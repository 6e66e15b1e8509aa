//! Start-up with damaged data: real litefs processes whose data
//! directory was damaged while they were stopped. A damaged database is
//! repaired when litefs can prove what is right, refused alone
//! otherwise (with an ERROR naming the file and what to do, and nothing
//! deleted); the other databases are served either way.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{
    replica_yaml, sqlite3, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node, CATCH_UP,
};

/// Creates `name` on the mount with table `t` and `rows` rows of 1 KiB,
/// inserted in `txns` transactions.
fn fill(node: &Node, name: &str, rows: usize, txns: usize) {
    sqlite3_ok(
        &node.db(name),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    );
    for _ in 0..txns {
        sqlite3_ok(
            &node.db(name),
            &format!(
                "INSERT INTO t(v) SELECT randomblob(1024) FROM \
                 (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) \
                 SELECT x FROM c);",
                rows / txns
            ),
        );
    }
}

fn count(node: &Node, name: &str) -> String {
    sqlite3_ok(&node.db(name), "SELECT count(*) FROM t;")
        .trim()
        .to_string()
}

/// Every file under `dir` with its size.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let md = entry.metadata().unwrap();
            if md.is_dir() {
                todo.push(entry.path());
            } else {
                found.insert(entry.path(), md.len());
            }
        }
    }
    found
}

/// The names the mount lists.
fn listing(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&node.mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The ERROR line refusing database `name`, if the log has one.
fn refusal_line(node: &Node, name: &str) -> Option<String> {
    node.log_text()
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&format!("refusing database \"{name}\"")))
        .map(str::to_string)
}

fn flip_byte(path: &Path, offset: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x55;
    file.write_all_at(&byte, offset).unwrap();
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn damage_that_cannot_be_proven_right_refuses_only_that_database() {
    let dir = temp_dir("damaged-refused");
    let mut node = Node::start_in(dir.path(), "");
    for name in ["ok.db", "gone.db", "short.db", "torn.db"] {
        fill(&node, name, 60, 3);
    }
    node.stop();

    // gone.db: the database file deleted.
    fs::remove_file(node.data_db("gone.db")).unwrap();
    // short.db: cut in half, and the start of its chain gone (as retention
    // would), so the LTX files cannot rebuild it.
    let short = node.data_db("short.db");
    truncate(&short, fs::metadata(&short).unwrap().len() / 2);
    fs::remove_file(&node.ltx_files("short.db")[0]).unwrap();
    // torn.db: a byte of a page in its newest LTX file flipped, no journal.
    let torn_ltx = node.ltx_files("torn.db").pop().unwrap();
    flip_byte(&torn_ltx, 200);
    let before = files_under(&node.data);

    node.restart();

    // The undamaged database is served, readable and writable.
    assert_eq!(count(&node, "ok.db"), "60");
    sqlite3_ok(&node.db("ok.db"), "INSERT INTO t(v) VALUES (1);");
    assert_eq!(count(&node, "ok.db"), "61");
    // The others are shown nowhere on the mount.
    let names = listing(&node);
    for refused in ["gone.db", "short.db", "torn.db"] {
        assert!(
            !names.iter().any(|n| n.starts_with(refused)),
            "{refused} is on the mount: {names:?}"
        );
        assert!(fs::metadata(node.mount.join(format!("{refused}-pos"))).is_err());
    }
    // One ERROR each, naming the file and what to do.
    let gone = refusal_line(&node, "gone.db").expect("an ERROR for gone.db");
    assert!(
        gone.contains(&node.data_db("gone.db").display().to_string()),
        "{gone}"
    );
    assert!(gone.contains("missing") && gone.contains("not served as an empty database"));
    assert!(
        gone.contains("move") && gone.contains("start again"),
        "{gone}"
    );
    let short_line = refusal_line(&node, "short.db").expect("an ERROR for short.db");
    assert!(
        short_line.contains(&short.display().to_string()),
        "{short_line}"
    );
    assert!(short_line.contains("cannot rebuild it"), "{short_line}");
    let torn = refusal_line(&node, "torn.db").expect("an ERROR for torn.db");
    assert!(torn.contains(&torn_ltx.display().to_string()), "{torn}");
    assert!(torn.contains("litefs ltx verify"), "{torn}");
    // A refused name cannot be created over the damaged files.
    let out = sqlite3(&node.db("gone.db"), "CREATE TABLE x(y);");
    assert!(
        !out.status.success(),
        "creating a refused database succeeded"
    );
    assert!(!node.data_db("gone.db").exists());

    // Nothing of the refused databases was deleted or changed.
    node.stop();
    let after = files_under(&node.data);
    for (path, len) in &before {
        if path.starts_with(node.data.join("dbs/ok.db")) {
            continue;
        }
        assert_eq!(after.get(path), Some(len), "{} changed", path.display());
    }
}

#[test]
fn damage_that_can_be_proven_right_is_repaired() {
    let dir = temp_dir("damaged-repaired");
    let mut node = Node::start_in(dir.path(), "");
    fill(&node, "ok.db", 30, 1);
    fill(&node, "hot.db", 60, 2);
    fill(&node, "short.db", 90, 3);
    node.stop();
    let committed = fs::read(node.data_db("hot.db")).unwrap();
    let committed_pos = {
        node.restart();
        let pos = node.pos("hot.db");
        // One more transaction: the one the crash tears.
        fill_more(&node, "hot.db");
        node.stop();
        pos
    };

    // hot.db: the state of a crash (power loss) after litefs renamed the
    // LTX file of a transaction into place but before SQLite deleted its
    // journal: the newest LTX file torn, SQLite's journal still hot, the
    // database file half written. The journal proves the transaction
    // never committed.
    let newest = node.ltx_files("hot.db").pop().unwrap();
    truncate(&newest, fs::metadata(&newest).unwrap().len() / 2);
    let (database, journal) = half_written_transaction(dir.path(), &committed);
    fs::write(node.data_db("hot.db"), database).unwrap();
    fs::write(node.data.join("dbs/hot.db/journal"), journal).unwrap();
    // short.db: cut to one page; every LTX file from TXID 1 is there.
    truncate(&node.data_db("short.db"), 4096);

    node.restart();

    assert_eq!(count(&node, "ok.db"), "30");
    // hot.db is back at the position before the torn file, with its rows.
    assert_eq!(node.pos("hot.db"), committed_pos);
    assert_eq!(count(&node, "hot.db"), "60");
    assert!(fs::read(node.data_db("hot.db")).unwrap() == committed);
    assert!(
        !node.data.join("dbs/hot.db/journal").exists() || {
            fs::metadata(node.data.join("dbs/hot.db/journal"))
                .unwrap()
                .len()
                == 0
        }
    );
    // The torn file was set aside, not deleted.
    assert!(!newest.exists());
    let lost = files_under(&node.data.join("lost"));
    let file_name = newest.file_name().unwrap();
    assert!(
        lost.keys()
            .any(|p| p.starts_with(node.data.join("lost/hot.db"))
                && p.file_name() == Some(file_name)),
        "the torn LTX file is not under lost/: {lost:?}"
    );
    let log = node.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("hot.db")
            && l.contains("never acknowledged")),
        "no WARN about the torn file"
    );
    // Writes go on from there.
    sqlite3_ok(&node.db("hot.db"), "INSERT INTO t(v) VALUES (1);");
    assert_eq!(count(&node, "hot.db"), "61");

    // short.db was rebuilt from its LTX files; the damaged file kept.
    assert_eq!(count(&node, "short.db"), "90");
    assert_eq!(
        sqlite3_ok(&node.db("short.db"), "PRAGMA integrity_check;").trim(),
        "ok"
    );
    assert!(
        lost.iter()
            .any(|(p, len)| p.starts_with(node.data.join("lost/short.db"))
                && p.file_name() == Some("database".as_ref())
                && *len == 4096),
        "the damaged database file is not under lost/: {lost:?}"
    );
    assert!(log
        .lines()
        .any(|l| l.contains("short.db") && l.contains("rebuilt it")));
    assert!(!log.contains("refusing database"), "a database was refused");
}

/// Adds one transaction of 30 rows to `name`.
fn fill_more(node: &Node, name: &str) {
    sqlite3_ok(
        &node.db(name),
        "INSERT INTO t(v) SELECT randomblob(1024) FROM \
         (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30) \
         SELECT x FROM c);",
    );
}

/// A database file and its hot journal as SQLite leaves them in the
/// middle of a transaction on `committed` (a copy of it, with a tiny
/// cache so the transaction writes into the file before it ends).
fn half_written_transaction(dir: &Path, committed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let shadow = dir.join("shadow.db");
    fs::write(&shadow, committed).unwrap();
    let conn = rusqlite::Connection::open(&shadow).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA cache_size=5; PRAGMA cache_spill=ON; BEGIN;
         INSERT INTO t(v) SELECT randomblob(3000) FROM
         (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100)
         SELECT x FROM c);
         UPDATE t SET v = randomblob(10) WHERE id % 3 = 0;",
    )
    .unwrap();
    let database = fs::read(&shadow).unwrap();
    let journal = fs::read(dir.join("shadow.db-journal")).unwrap();
    conn.execute_batch("ROLLBACK").unwrap();
    assert!(
        database != committed,
        "the transaction wrote nothing to the file"
    );
    assert!(!journal.is_empty());
    (database, journal)
}

#[test]
fn a_replica_skips_a_database_it_refused_and_replicates_the_others() {
    let dir = temp_dir("damaged-replica");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    fill(&primary, "a.db", 20, 1);
    fill(&primary, "b.db", 20, 1);
    let mut replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    wait_caught_up(&primary, &replica, "a.db");
    wait_caught_up(&primary, &replica, "b.db");
    replica.stop();
    fs::remove_file(replica.data_db("a.db")).unwrap();
    let a_ltx = replica.ltx_files("a.db");
    let log_start = replica.log_text().len();

    replica.restart();
    // The primary sends a.db whole (the replica does not list it) and then
    // each new commit; the replica skips them, and keeps replicating b.db.
    for _ in 0..3 {
        fill_more(&primary, "a.db");
        fill_more(&primary, "b.db");
    }
    wait_caught_up(&primary, &replica, "b.db");
    wait_for("the skip to be logged", CATCH_UP, || {
        replica.log_text()[log_start..].contains("skipping what the primary sends")
    });
    let log = replica.log_text()[log_start..].to_string();
    assert_eq!(
        log.matches("skipping what the primary sends").count(),
        1,
        "the skip is logged once"
    );
    // One stream: the refused database did not break it.
    let streams = log
        .lines()
        .filter(|l| l.contains("http::client] replicating from"))
        .count();
    assert_eq!(streams, 1, "{log}");
    assert!(!listing(&replica).iter().any(|n| n.starts_with("a.db")));
    assert!(!replica.data_db("a.db").exists());
    assert_eq!(
        replica.ltx_files("a.db"),
        a_ltx,
        "the refused database changed"
    );
    assert_eq!(count(&replica, "b.db"), "110");
}

#[test]
fn the_store_lists_a_refused_database_and_will_not_create_it_again() {
    let dir = temp_dir("damaged-store");
    let data = dir.path().join("data");
    {
        let store = litefs::store::Store::open(&data).unwrap();
        for name in ["kept.db", "gone.db"] {
            let db = store.create_db(name).unwrap();
            let conn = rusqlite::Connection::open(db.database_path()).unwrap();
            conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x);")
                .unwrap();
            drop(conn);
            assert_eq!(db.commit().unwrap().unwrap().txid, 1);
        }
    }
    let gone = data.join("dbs/gone.db/database");
    fs::remove_file(&gone).unwrap();

    let store = litefs::store::Store::open(&data).unwrap();
    assert_eq!(store.db("kept.db").unwrap().pos().txid, 1);
    assert!(store.db("gone.db").is_none());
    let names: Vec<String> = store.dbs().iter().map(|d| d.name().to_string()).collect();
    assert_eq!(names, ["kept.db"]);
    let refused = store.refused();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "gone.db");
    assert!(
        refused[0].1.contains(&gone.display().to_string()),
        "{}",
        refused[0].1
    );
    let err = store.create_db("gone.db").unwrap_err();
    assert!(
        matches!(err, litefs::store::Error::RefusedAtStart { .. }),
        "{err}"
    );
    assert!(!gone.exists());
    assert!(data
        .join("dbs/gone.db/ltx/0000000000000001-0000000000000001.ltx")
        .exists());
}

/// The state a power cut leaves in WAL mode: litefs fsyncs an LTX file
/// of a WAL commit only before its frames can leave the WAL, so the
/// newest files may be torn (any of them: each is a file of its own)
/// while the WAL holds their commits. The first torn one and every one
/// after it are set aside and recorded again from the WAL; nothing is
/// refused or lost. (Found by `scripts/powerloss.sh`.)
#[test]
fn unsynced_ltx_files_of_wal_commits_are_recorded_again_from_the_wal() {
    let dir = temp_dir("damaged-wal-unsynced");
    let mut node = Node::start_in(dir.path(), "");
    // Connections that stay open: closing the last one would checkpoint
    // the WAL (and sync every LTX file first).
    let mut conns = Vec::new();
    for name in ["newest.db", "middle.db"] {
        let conn = common::open_wal(&node.db(name), "PRAGMA synchronous=FULL;");
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
            .unwrap();
        for _ in 0..5 {
            conn.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
                .unwrap();
        }
        conns.push(conn);
    }
    let pos = |node: &Node| (node.pos("newest.db"), node.pos("middle.db"));
    let before = pos(&node);
    node.kill9();
    drop(conns);
    // newest.db: its two newest files emptied; middle.db: the one before
    // its newest cut short, the newest whole.
    let newest = node.ltx_files("newest.db");
    let middle = node.ltx_files("middle.db");
    let mut set_aside = vec![];
    for file in &newest[newest.len() - 2..] {
        truncate(file, 0);
        set_aside.push(("newest.db", file.clone()));
    }
    let torn = &middle[middle.len() - 2];
    truncate(torn, fs::metadata(torn).unwrap().len() / 2);
    set_aside.push(("middle.db", torn.clone()));
    set_aside.push(("middle.db", middle.last().unwrap().clone()));

    node.restart();

    assert_eq!(pos(&node), before);
    let lost = files_under(&node.data.join("lost"));
    for name in ["newest.db", "middle.db"] {
        assert_eq!(refusal_line(&node, name), None);
        assert_eq!(count(&node, name), "5");
        assert_eq!(node.pos(name), common::newest_ltx_pos(&node, name));
        common::assert_replay_identical(&node, name);
    }
    for (name, file) in &set_aside {
        assert!(
            lost.keys()
                .any(|p| p.starts_with(node.data.join("lost").join(name))
                    && p.file_name() == file.file_name()),
            "{} is not under lost/: {lost:?}",
            file.display()
        );
    }
    assert!(
        node.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("not yet durable")),
        "no WARN about the unsynced LTX files"
    );
    // Writes go on from there.
    sqlite3_ok(&node.db("middle.db"), "INSERT INTO t(v) VALUES (1);");
    assert_eq!(count(&node, "middle.db"), "6");
}
