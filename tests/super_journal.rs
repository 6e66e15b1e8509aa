//! Transactions across ATTACHed databases on a real mount: SQLite's
//! super-journal `<main>-mj<hex>` is accepted, the commit becomes one LTX
//! file per database, and at start-up a hot journal whose super-journal is
//! gone counts as committed (SQLite deletes the super-journal to commit),
//! while one whose super-journal is still there is rolled back.
//! Needs root and /dev/fuse.

mod common;

use common::{assert_replay_identical, sqlite3_ok, temp_dir, txid, Node};
use litefs::sqlite::{journal_checksum, JOURNAL_MAGIC};

#[test]
fn a_commit_across_attached_databases_is_one_ltx_file_each() {
    let dir = temp_dir("super-journal-live");
    let node = Node::start_in(dir.path(), "");
    sqlite3_ok(&node.db("a.db"), "CREATE TABLE t(x);");
    sqlite3_ok(&node.db("b.db"), "CREATE TABLE u(y);");
    let (a, b) = (txid(&node, "a.db"), txid(&node, "b.db"));
    for i in 0..5 {
        sqlite3_ok(
            &node.db("a.db"),
            &format!(
                "ATTACH '{}' AS b; BEGIN; INSERT INTO t VALUES({i}); \
                 INSERT INTO b.u VALUES({i}); COMMIT;",
                node.db("b.db").display()
            ),
        );
    }
    assert_eq!(txid(&node, "a.db"), a + 5);
    assert_eq!(txid(&node, "b.db"), b + 5);
    assert_eq!(
        sqlite3_ok(&node.db("b.db"), "SELECT count(*) FROM u;"),
        "5\n"
    );
    // The super-journal is gone, as SQLite leaves it.
    let left: Vec<_> = std::fs::read_dir(node.data.join("dbs/a.db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("super-journal"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_replay_identical(&node, "a.db");
    assert_replay_identical(&node, "b.db");
    assert!(!node.log_text().contains("ERROR"));
}

/// SQLite's super-journal pointer in a child journal: the lock page's
/// number, the name, its length, its checksum (bytes summed as signed
/// chars) and the journal magic.
fn super_journal_record(name: &str, page_size: u32) -> Vec<u8> {
    let lock_pgno = 0x4000_0000 / page_size + 1;
    let sum = name
        .bytes()
        .fold(0u32, |s, b| s.wrapping_add(b as i8 as i32 as u32));
    let mut out = lock_pgno.to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&JOURNAL_MAGIC);
    out
}

/// A hot rollback journal, as SQLite writes it, holding `originals` (page
/// number, content) of a database of `initial_pages` pages, and naming the
/// super-journal `super_journal`.
fn hot_journal(
    originals: &[(u32, Vec<u8>)],
    initial_pages: u32,
    page_size: u32,
    super_journal: &str,
) -> Vec<u8> {
    const SECTOR: usize = 512;
    let nonce = 0x1234_5678u32;
    let mut out = Vec::new();
    out.extend_from_slice(&JOURNAL_MAGIC);
    for field in [
        originals.len() as u32,
        nonce,
        initial_pages,
        SECTOR as u32,
        page_size,
    ] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out.resize(SECTOR, 0);
    for (pgno, page) in originals {
        out.extend_from_slice(&pgno.to_be_bytes());
        out.extend_from_slice(page);
        out.extend_from_slice(&journal_checksum(nonce, page).to_be_bytes());
    }
    out.extend(super_journal_record(super_journal, page_size));
    out
}

/// Leaves `db` on the stopped `node` as a crash inside a transaction across
/// databases would: its file holds the transaction (a row `id` added to
/// `t`), and its hot journal the pages as they were, naming the
/// super-journal `<mount>/<db>-mj<digits>`.
fn crash_inside_commit(node: &Node, db: &str, id: i64, digits: &str) {
    let data = node.data_db(db);
    let before = std::fs::read(&data).unwrap();
    let name = format!("{}/{db}-mj{digits}", node.mount.display());
    let (after, journal) = crash_state(&before, id, &name);
    std::fs::write(data.with_file_name("journal"), journal).unwrap();
    std::fs::write(&data, &after).unwrap();
}

/// The database `before` with a row `id` added to `t`, and the hot journal
/// that takes it back, naming the super-journal `super_journal`.
fn crash_state(before: &[u8], id: i64, super_journal: &str) -> (Vec<u8>, Vec<u8>) {
    let scratch = temp_dir("super-journal-scratch");
    let copy = scratch.path().join("copy.db");
    std::fs::write(&copy, before).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    conn.execute("INSERT INTO t VALUES(?1)", [id]).unwrap();
    drop(conn);
    let after = std::fs::read(&copy).unwrap();
    let ps = page_size as usize;
    let initial_pages = (before.len() / ps) as u32;
    let originals: Vec<(u32, Vec<u8>)> = before
        .chunks(ps)
        .zip(after.chunks(ps))
        .enumerate()
        .filter(|(_, (old, new))| old != new)
        .map(|(i, (old, _))| (i as u32 + 1, old.to_vec()))
        .collect();
    assert!(!originals.is_empty());
    let journal = hot_journal(&originals, initial_pages, page_size, super_journal);
    (after, journal)
}

/// SQLite's own test harness saves a crash state by copying `test.db*` and
/// restores it by copying back: the super-journal is listed with the
/// database's other files, copies like them, and the restored hot journal
/// is rolled back because its super-journal came back with it.
#[test]
fn a_crash_state_saved_and_restored_by_copying_files_rolls_back() {
    let dir = temp_dir("super-journal-copies");
    let node = Node::start_in(dir.path(), "");
    sqlite3_ok(
        &node.db("a.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(1);",
    );
    let before = std::fs::read(node.db("a.db")).unwrap();
    let super_journal = node.db("a.db-mj0000029AB");
    let (after, journal) = crash_state(&before, 2, &super_journal.to_string_lossy());
    let journal_path = node.db("a.db-journal");
    std::fs::write(node.db("a.db"), after).unwrap();
    std::fs::write(&journal_path, journal).unwrap();
    let names = format!("{}\0", journal_path.display());
    std::fs::write(&super_journal, names).unwrap();

    let listed = |prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&node.mount)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    };
    let saved = listed("a.db");
    assert_eq!(saved, ["a.db", "a.db-journal", "a.db-mj0000029AB"]);
    for name in &saved {
        std::fs::copy(node.db(name), node.db(&format!("sv_{name}"))).unwrap();
    }
    // The database last: deleting it deletes its companions too.
    for name in saved.iter().rev() {
        std::fs::remove_file(node.db(name)).unwrap();
    }
    assert_eq!(listed("a.db"), Vec::<String>::new());
    for name in &saved {
        std::fs::copy(node.db(&format!("sv_{name}")), node.db(name)).unwrap();
    }
    assert_eq!(rows(&node, "a.db"), "1\n");
    assert_replay_identical(&node, "a.db");
}

fn rows(node: &Node, db: &str) -> String {
    sqlite3_ok(&node.db(db), "SELECT group_concat(x) FROM t;")
}

#[test]
fn at_start_a_hot_journal_whose_super_journal_is_gone_is_committed() {
    let dir = temp_dir("super-journal-crash");
    let mut node = Node::start_in(dir.path(), "");
    for db in ["a.db", "b.db"] {
        sqlite3_ok(&node.db(db), "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    }
    let (a, b) = (txid(&node, "a.db"), txid(&node, "b.db"));
    node.stop();

    // a.db: the super-journal is gone, so SQLite committed: kept, recorded.
    crash_inside_commit(&node, "a.db", 2, "0000009AB");
    // b.db: the super-journal is still there: rolled back.
    crash_inside_commit(&node, "b.db", 2, "0000019AB");
    let b_super = node.data.join("dbs/b.db/super-journal-0000019AB");
    std::fs::write(&b_super, b"names the child journals\0").unwrap();

    node.restart();
    assert_eq!(rows(&node, "a.db"), "1,2\n");
    assert_eq!(txid(&node, "a.db"), a + 1);
    let journal = node.data.join("dbs/a.db/journal");
    assert!(std::fs::metadata(&journal).map_or(true, |m| m.len() == 0));
    assert_replay_identical(&node, "a.db");
    let log = node.log_text();
    assert!(log.contains("that SQLite committed"), "{log}");
    assert_eq!(rows(&node, "b.db"), "1\n");
    assert_eq!(txid(&node, "b.db"), b);
    assert_replay_identical(&node, "b.db");
}

/// kill -9 of litefs while an application commits across two attached
/// databases, again and again: after each restart every acknowledged
/// transaction is in both databases, the two hold the same transactions
/// (the commit is atomic across them, also when the crash fell between the
/// super-journal's deletion and the journals' ends), and each LTX chain
/// replays to its database.
#[test]
fn kill_9_during_commits_across_databases_keeps_them_atomic() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let dir = temp_dir("super-journal-kill");
    let mut node = Node::start_in(dir.path(), "");
    for db in ["a.db", "b.db"] {
        sqlite3_ok(
            &node.db(db),
            "CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);",
        );
    }
    let mut rng = common::Rng::from_clock("cross-database kill test");
    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next_i = 1i64;
    for round in 0..8 {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (a, b) = (node.db("a.db"), node.db("b.db"));
            let (committed, stop, start) = (committed.clone(), stop.clone(), next_i);
            std::thread::spawn(move || {
                let mut i = start;
                let Ok(conn) = rusqlite::Connection::open(&a) else {
                    return i;
                };
                let attach = format!("ATTACH '{}' AS b;", b.display());
                if conn.busy_timeout(Duration::from_secs(5)).is_err()
                    || conn.execute_batch(&attach).is_err()
                {
                    return i;
                }
                while !stop.load(Ordering::Relaxed) {
                    let txn = format!(
                        "BEGIN; INSERT INTO t VALUES({i}, randomblob({n}));
                         INSERT INTO b.t VALUES({i}, randomblob({n})); COMMIT;",
                        n = 100 + (i % 5) * 1500
                    );
                    if conn.execute_batch(&txn).is_err() {
                        break;
                    }
                    committed.lock().unwrap().insert(i);
                    i += 1;
                }
                i + 1
            })
        };
        let before = committed.lock().unwrap().len();
        common::wait_for("a commit", Duration::from_secs(30), || {
            committed.lock().unwrap().len() > before
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 150));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        next_i = writer.join().unwrap();
        node.restart();

        let ids = |db: &str| -> BTreeSet<i64> {
            sqlite3_ok(&node.db(db), "SELECT i FROM t;")
                .lines()
                .map(|l| l.parse().unwrap())
                .collect()
        };
        let (in_a, in_b) = (ids("a.db"), ids("b.db"));
        assert_eq!(in_a, in_b, "round {round}: the databases disagree");
        let committed = committed.lock().unwrap();
        let lost: Vec<_> = committed.difference(&in_a).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged rows lost: {lost:?}"
        );
        for db in ["a.db", "b.db"] {
            assert_eq!(
                node.pos(db),
                common::newest_ltx_pos(&node, db),
                "round {round}"
            );
        }
    }
    assert_replay_identical(&node, "a.db");
    assert_replay_identical(&node, "b.db");
}
