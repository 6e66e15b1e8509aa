//! Store-level helpers shared by the store test files (tests/store.rs,
//! tests/store_apply.rs, tests/store_recovery.rs): the SQLite page-cache
//! lock, page diffing, a primary whose transactions are committed by hand,
//! writing changes through the way the mount does, and a primary with three
//! committed transactions.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use litefs::store::{self, Db, Position, Store};
use rusqlite::Connection;

/// The bundled SQLite is built with SQLITE_ENABLE_MEMORY_MANAGEMENT: all
/// connections of the process share one page cache, so while other tests
/// hold clean pages, a connection with a tiny cache takes theirs instead of
/// spilling its own dirty pages to the file. Tests that need SQLite to spill
/// (to leave a transaction half in the file) take this lock exclusively;
/// every other test that opens SQLite takes it shared.
static PAGE_CACHE: RwLock<()> = RwLock::new(());

pub fn sqlite_shared() -> RwLockReadGuard<'static, ()> {
    PAGE_CACHE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn sqlite_alone() -> RwLockWriteGuard<'static, ()> {
    PAGE_CACHE.write().unwrap_or_else(|e| e.into_inner())
}

/// Opens a rusqlite connection on `path` in journal_mode=DELETE.
pub fn connect(path: &Path, page_size: u32) -> Connection {
    let conn = Connection::open(path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=DELETE", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    conn.execute_batch(&format!("PRAGMA page_size={page_size}"))
        .unwrap();
    conn
}

/// The page size named in a database file's header.
pub fn header_page_size(file: &[u8]) -> u32 {
    match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

/// Pages of `after` that differ from `before` (every page if the page size changed).
pub fn changed_pages(before: &[u8], after: &[u8]) -> BTreeSet<u32> {
    if after.is_empty() {
        return BTreeSet::new();
    }
    let page_size = header_page_size(after) as usize;
    let same_size = before.len() >= 100 && header_page_size(before) as usize == page_size;
    after
        .chunks(page_size)
        .enumerate()
        .filter(|&(i, page)| {
            !same_size || before.get(i * page_size..(i + 1) * page_size) != Some(page)
        })
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

/// Every page of a database file.
pub fn all_pages(file: &[u8]) -> BTreeSet<u32> {
    if file.is_empty() {
        return BTreeSet::new();
    }
    (1..=(file.len() / header_page_size(file) as usize) as u32).collect()
}

pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

/// A database on a primary: a store, one database and a SQLite connection
/// to its file; every transaction is committed with the pages found by
/// diffing the file.
pub struct Primary {
    pub store: Store,
    pub db: Arc<Db>,
    pub conn: Connection,
    pub file: Vec<u8>,
}

impl Primary {
    pub fn new(data_dir: &Path, page_size: u32) -> Primary {
        let store = Store::open(data_dir).unwrap();
        let db = store.create_db("db").unwrap();
        let conn = connect(db.database_path(), page_size);
        Primary {
            store,
            db,
            conn,
            file: Vec::new(),
        }
    }

    /// Runs `sql` and records the transaction; checks that the position
    /// advanced exactly when the file changed and matches the file.
    pub fn exec(&mut self, sql: &str) -> Option<Position> {
        self.conn.execute_batch(sql).unwrap();
        self.record()
    }

    /// Records whatever changed in the file since the last call.
    pub fn record(&mut self) -> Option<Position> {
        let before = self.db.pos();
        let after = read(self.db.database_path());
        let result = self
            .db
            .commit_pages(&changed_pages(&self.file, &after))
            .unwrap();
        if after == self.file {
            assert_eq!(result, None, "unchanged file must not commit");
            assert_eq!(self.db.pos(), before);
        } else {
            let pos = result.expect("a changed file must commit");
            assert_eq!(pos.txid, before.txid + 1);
            assert_eq!(pos, self.db.pos());
            assert_eq!(
                store::database_checksum(self.db.database_path()).unwrap(),
                pos.checksum
            );
        }
        self.file = after;
        result
    }

    pub fn newest_ltx(&self) -> PathBuf {
        self.db.ltx_files().unwrap().pop().unwrap().2
    }
}

/// A new store in `data_dir` with an empty database "db".
pub fn empty_db(data_dir: &Path) -> (Store, Arc<Db>) {
    let store = Store::open(data_dir).unwrap();
    let db = store.create_db("db").unwrap();
    (store, db)
}

/// Writes the pages that differ between `before` and `after` (two versions
/// of a database file) into `db`'s database file the way the mount passes
/// SQLite's writes through: each through `before_write` first, then the
/// truncation. Does not commit.
pub fn write_through(db: &Db, before: &[u8], after: &[u8]) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db.database_path())
        .unwrap();
    if !after.is_empty() {
        let page_size = header_page_size(after) as usize;
        for pgno in changed_pages(before, after) {
            let offset = (pgno as usize - 1) * page_size;
            let page = &after[offset..offset + page_size];
            db.before_write(offset as u64, page).unwrap();
            file.write_all_at(page, offset as u64).unwrap();
        }
    }
    db.before_truncate(after.len() as u64).unwrap();
    file.set_len(after.len() as u64).unwrap();
    db.before_sync().unwrap();
}

/// Writes through and commits.
pub fn commit_through_writes(db: &Db, before: &[u8], after: &[u8]) -> store::Commit {
    write_through(db, before, after);
    db.commit_detailed(&BTreeSet::new()).unwrap()
}

pub fn integrity_check(path: &Path) -> String {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A primary with three committed transactions and a copy of the database
/// file after each.
pub fn three_transactions(dir: &Path) -> (Primary, Vec<Vec<u8>>) {
    let mut primary = Primary::new(dir, 4096);
    let mut states = Vec::new();
    for sql in [
        "CREATE TABLE t(v); INSERT INTO t SELECT randomblob(2000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20) SELECT x FROM c);",
        "UPDATE t SET v = randomblob(100) WHERE rowid % 3 = 0;",
        "INSERT INTO t SELECT randomblob(5000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x FROM c);",
    ] {
        primary.exec(sql).unwrap();
        states.push(primary.file.clone());
    }
    (primary, states)
}
