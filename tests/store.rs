//! Tests of the store without FUSE: real SQLite transactions (rusqlite on
//! plain files in a data directory) committed to LTX files, replayed onto
//! other stores, refused when they do not fit, snapshotted, recovered after
//! crashes, and expired by retention.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use litefs::ltx::{self, LtxDecoder, LtxEncoder};
use litefs::store::{self, Db, Error, Position, Store};
use rusqlite::{params, Connection};

/// The bundled SQLite is built with SQLITE_ENABLE_MEMORY_MANAGEMENT: all
/// connections of the process share one page cache, so while other tests
/// hold clean pages, a connection with a tiny cache takes theirs instead of
/// spilling its own dirty pages to the file. Tests that need SQLite to spill
/// (to leave a transaction half in the file) take this lock exclusively;
/// every other test that opens SQLite takes it shared.
static PAGE_CACHE: RwLock<()> = RwLock::new(());

fn sqlite_shared() -> RwLockReadGuard<'static, ()> {
    PAGE_CACHE.read().unwrap_or_else(|e| e.into_inner())
}

fn sqlite_alone() -> RwLockWriteGuard<'static, ()> {
    PAGE_CACHE.write().unwrap_or_else(|e| e.into_inner())
}

/// A small seeded PRNG (xorshift64*), so failures can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Opens a rusqlite connection on `path` in journal_mode=DELETE.
fn connect(path: &Path, page_size: u32) -> Connection {
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
fn header_page_size(file: &[u8]) -> u32 {
    match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

/// Pages of `after` that differ from `before` (every page if the page size changed).
fn changed_pages(before: &[u8], after: &[u8]) -> BTreeSet<u32> {
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
fn all_pages(file: &[u8]) -> BTreeSet<u32> {
    if file.is_empty() {
        return BTreeSet::new();
    }
    (1..=(file.len() / header_page_size(file) as usize) as u32).collect()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

/// A database on a primary: a store, one database and a SQLite connection
/// to its file; every transaction is committed with the pages found by
/// diffing the file.
struct Primary {
    store: Store,
    db: Arc<Db>,
    conn: Connection,
    file: Vec<u8>,
}

impl Primary {
    fn new(data_dir: &Path, page_size: u32) -> Primary {
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
    fn exec(&mut self, sql: &str) -> Option<Position> {
        self.conn.execute_batch(sql).unwrap();
        self.record()
    }

    /// Records whatever changed in the file since the last call.
    fn record(&mut self) -> Option<Position> {
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

    fn newest_ltx(&self) -> PathBuf {
        self.db.ltx_files().unwrap().pop().unwrap().2
    }
}

/// A new store in `data_dir` with an empty database "db".
fn empty_db(data_dir: &Path) -> (Store, Arc<Db>) {
    let store = Store::open(data_dir).unwrap();
    let db = store.create_db("db").unwrap();
    (store, db)
}

/// Writes the pages that differ between `before` and `after` (two versions
/// of a database file) into `db`'s database file the way the mount passes
/// SQLite's writes through: each through `before_write` first, then the
/// truncation. Does not commit.
fn write_through(db: &Db, before: &[u8], after: &[u8]) {
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
fn commit_through_writes(db: &Db, before: &[u8], after: &[u8]) -> store::Commit {
    write_through(db, before, after);
    db.commit_detailed(&BTreeSet::new()).unwrap()
}

/// A database on a primary as the mount sees it: SQLite works on a shadow
/// file, and each transaction's changes reach the store's database file
/// through `before_write`, then a commit.
struct Mirrored {
    store: Store,
    db: Arc<Db>,
    conn: Connection,
    shadow: PathBuf,
    /// The shadow file as of the last mirror.
    shadow_file: Vec<u8>,
}

impl Mirrored {
    fn new(dir: &Path, page_size: u32) -> Mirrored {
        fs::create_dir_all(dir).unwrap();
        let store = Store::open(&dir.join("data")).unwrap();
        let db = store.create_db("db").unwrap();
        let shadow = dir.join("shadow.db");
        let conn = connect(&shadow, page_size);
        Mirrored {
            store,
            db,
            conn,
            shadow,
            shadow_file: Vec::new(),
        }
    }

    /// Runs `sql` on the shadow and mirrors what changed.
    fn exec(&mut self, sql: &str) -> store::Commit {
        self.conn.execute_batch(sql).unwrap();
        self.mirror()
    }

    /// Mirrors what changed in the shadow since the last call, and commits.
    fn mirror(&mut self) -> store::Commit {
        let after = read(&self.shadow);
        let commit = commit_through_writes(&self.db, &self.shadow_file, &after);
        if let Some(pos) = commit.position {
            assert_eq!(
                store::database_checksum(self.db.database_path()).unwrap(),
                pos.checksum
            );
        }
        self.shadow_file = after;
        commit
    }

    /// SQLite's rollback journal of the shadow file.
    fn shadow_journal(&self) -> PathBuf {
        let mut path = self.shadow.clone().into_os_string();
        path.push("-journal");
        PathBuf::from(path)
    }
}

fn integrity_check(path: &Path) -> String {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// One random statement inside a transaction.
fn random_statement(conn: &Connection, rng: &mut Rng, tables: &mut u32, page_size: u32) {
    let max_blob = (2 * page_size as u64).min(150_000);
    let table = if *tables == 0 {
        0
    } else {
        rng.below(u64::from(*tables))
    };
    let choice = if *tables == 0 { 0 } else { rng.below(10) };
    match choice {
        0 if *tables < 4 => {
            conn.execute_batch(&format!(
                "CREATE TABLE t{n}(id INTEGER PRIMARY KEY, v BLOB);
                 CREATE INDEX t{n}_len ON t{n}(length(v));",
                n = *tables
            ))
            .unwrap();
            *tables += 1;
        }
        0..=4 => {
            for _ in 0..=rng.below(8) {
                let len = rng.below(max_blob) as usize;
                let blob = rng.bytes(len);
                conn.execute(
                    &format!("INSERT INTO t{table}(v) VALUES (?1)"),
                    params![blob],
                )
                .unwrap();
            }
        }
        5 | 6 => {
            let len = rng.below(max_blob / 2) as usize;
            let blob = rng.bytes(len);
            let modulus = rng.below(5) + 2;
            conn.execute(
                &format!("UPDATE t{table} SET v = ?1 WHERE id % ?2 = ?3"),
                params![blob, modulus, rng.below(modulus)],
            )
            .unwrap();
        }
        7 | 8 => {
            let modulus = rng.below(4) + 1;
            conn.execute(
                &format!("DELETE FROM t{table} WHERE id % ?1 = ?2"),
                params![modulus, rng.below(modulus)],
            )
            .unwrap();
        }
        _ => {
            conn.execute_batch(&format!("DELETE FROM t{table}"))
                .unwrap();
        }
    }
}

/// The property test. Random SQL workloads run on a primary whose dirty
/// pages are found by diffing the file (`commit_pages`); after every
/// transaction its new LTX file is applied to a replica (byte-identical file,
/// same position). The same changes also reach a second store the way the
/// mount delivers them (`before_write` + `commit`), with its own replica. At
/// the end every LTX file of both is replayed in order onto empty stores.
fn random_workload(seed: u64, page_size: u32, transactions: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), page_size);
    let (_replica_store, replica) = empty_db(&tmp.path().join("replica"));
    let (_mirrored_store, mirrored) = empty_db(&tmp.path().join("mirrored"));
    let (_mirrored_replica_store, mirrored_replica) =
        empty_db(&tmp.path().join("mirrored-replica"));
    let mut rng = Rng::new(seed);
    let mut tables = 0;
    let mut commits = 0;
    let (mut vacuums, mut rollbacks, mut restored) = (0, 0, 0);
    for step in 0..transactions {
        let context = format!("seed {seed} page size {page_size} step {step}");
        let before = primary.file.clone();
        let roll = rng.below(100);
        let rolled_back = (6..14).contains(&roll) && tables > 0;
        if roll < 6 && tables > 0 {
            if rng.below(3) == 0 {
                let new_size = [512, 1024, 4096, 8192, 65536][rng.below(5) as usize];
                primary
                    .conn
                    .execute_batch(&format!("PRAGMA page_size={new_size}"))
                    .unwrap();
            }
            primary.conn.execute_batch("VACUUM").unwrap();
            vacuums += 1;
        } else if rolled_back {
            rollbacks += 1;
            // A small cache makes SQLite write pages before the end, so
            // ROLLBACK has to put them back.
            let tables_before = tables;
            primary
                .conn
                .execute_batch("PRAGMA cache_size=10; BEGIN")
                .unwrap();
            for _ in 0..=rng.below(3) {
                random_statement(&primary.conn, &mut rng, &mut tables, page_size);
            }
            primary
                .conn
                .execute_batch("ROLLBACK; PRAGMA cache_size=-2000")
                .unwrap();
            tables = tables_before;
        } else {
            primary.conn.execute_batch("BEGIN").unwrap();
            for _ in 0..=rng.below(3) {
                random_statement(&primary.conn, &mut rng, &mut tables, page_size);
            }
            primary.conn.execute_batch("COMMIT").unwrap();
        }

        // Diffing the file. A rollback may leave reused free-list pages
        // changed (SQLite does not journal them): those are recorded.
        let position = primary.record();
        if rolled_back && position.is_none() {
            let pos = primary.db.pos();
            assert_eq!(primary.db.commit_pages(&all_pages(&before)).unwrap(), None);
            assert_eq!(primary.db.pos(), pos);
        }
        if let Some(pos) = position {
            commits += 1;
            let applied = replica.apply_ltx(&primary.newest_ltx()).unwrap();
            assert_eq!(applied, pos, "{context}");
            assert!(
                read(replica.database_path()) == primary.file,
                "{context}: replica differs"
            );
        }

        // As the mount would: a rolled-back transaction never gets a TXID,
        // the free-list pages it reused come back from the undo log.
        let commit = commit_through_writes(&mirrored, &before, &primary.file);
        if rolled_back {
            assert_eq!(commit.position, None, "{context}");
            let changed: Vec<u32> = changed_pages(&before, &primary.file).into_iter().collect();
            assert_eq!(commit.restored_pages, changed, "{context}");
            restored += changed.len();
        } else {
            assert_eq!(commit.position.is_some(), position.is_some(), "{context}");
        }
        assert!(fs::metadata(mirrored.undo_path()).map_or(true, |m| m.len() == 0));
        if let Some(pos) = commit.position {
            let newest = mirrored.ltx_files().unwrap().pop().unwrap().2;
            assert_eq!(
                mirrored_replica.apply_ltx(&newest).unwrap(),
                pos,
                "{context}"
            );
            let file = read(mirrored.database_path());
            assert!(read(mirrored_replica.database_path()) == file, "{context}");
            assert_eq!(
                store::database_checksum(mirrored.database_path()).unwrap(),
                pos.checksum,
                "{context}"
            );
        }
    }
    assert!(
        commits > transactions / 2,
        "seed {seed}: only {commits} commits"
    );
    eprintln!(
        "seed {seed} page size {page_size}: {commits} commits, {vacuums} vacuums, \
         {rollbacks} rollbacks, {restored} free-list pages restored"
    );

    for (k, db) in [&primary.db, &mirrored].into_iter().enumerate() {
        let (_fresh_store, fresh) = empty_db(&tmp.path().join(format!("fresh-{k}")));
        let files = db.ltx_files().unwrap();
        assert_eq!(files.len() as u64, db.pos().txid);
        for (i, (min, max, path)) in files.iter().enumerate() {
            assert_eq!((*min, *max), (i as u64 + 1, i as u64 + 1));
            fresh.apply_ltx(path).unwrap();
        }
        assert_eq!(fresh.pos(), db.pos());
        assert!(
            read(fresh.database_path()) == read(db.database_path()),
            "seed {seed}: replay differs"
        );
        assert_eq!(
            store::database_checksum(fresh.database_path()).unwrap(),
            db.pos().checksum
        );
    }
    assert_eq!(integrity_check(mirrored.database_path()), "ok");
    drop(primary.conn);
    // Everything recorded survives a restart.
    let reopened = Store::open(&tmp.path().join("primary")).unwrap();
    assert_eq!(reopened.db("db").unwrap().pos(), primary.db.pos());
    let reopened = Store::open(&tmp.path().join("mirrored")).unwrap();
    assert_eq!(reopened.db("db").unwrap().pos(), mirrored.pos());
    drop(primary.store);
}

fn seeds() -> Vec<u64> {
    let count = std::env::var("LITEFS_STORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    (1..=count).collect()
}

#[test]
fn random_workloads_page_size_512() {
    let _page_cache = sqlite_shared();
    for seed in seeds() {
        random_workload(seed, 512, 40);
    }
}

#[test]
fn random_workloads_page_size_4096() {
    let _page_cache = sqlite_shared();
    for seed in seeds() {
        random_workload(seed * 1000, 4096, 40);
    }
}

#[test]
fn random_workloads_page_size_65536() {
    let _page_cache = sqlite_shared();
    for seed in seeds() {
        random_workload(seed * 1_000_000, 65536, 25);
    }
}

#[test]
fn page_size_change_by_vacuum_is_replicated() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), 4096);
    let (_s, replica) = empty_db(&tmp.path().join("replica"));
    let (_w, written) = empty_db(&tmp.path().join("written"));
    let mut before = Vec::new();
    for sql in [
        "CREATE TABLE t(v); INSERT INTO t VALUES (zeroblob(50000)), (randomblob(9000));",
        "PRAGMA page_size=1024; VACUUM;",
        "INSERT INTO t VALUES (randomblob(3000));",
        "PRAGMA page_size=16384; VACUUM;",
        "DELETE FROM t WHERE rowid = 1; VACUUM;",
    ] {
        let pos = primary.exec(sql).unwrap();
        assert_eq!(
            replica.apply_ltx(&primary.newest_ltx()).unwrap(),
            pos,
            "{sql}"
        );
        assert!(read(replica.database_path()) == primary.file, "{sql}");
        assert_eq!(
            commit_through_writes(&written, &before, &primary.file).position,
            Some(pos),
            "{sql}"
        );
        before = primary.file.clone();
    }
    assert_eq!(replica.page_size(), Some(16384));
    assert_eq!(written.page_size(), Some(16384));
}

#[test]
fn rolled_back_transaction_records_nothing() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), 4096);
    primary
        .exec("CREATE TABLE t(v); INSERT INTO t SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT x FROM c);")
        .unwrap();
    let pos = primary.db.pos();
    let files = primary.db.ltx_files().unwrap();

    // The cache is too small to hold the transaction, so pages reach the
    // file and are restored from the journal by ROLLBACK.
    primary
        .exec("PRAGMA cache_size=10; BEGIN; UPDATE t SET v = randomblob(4000); INSERT INTO t SELECT v FROM t; ROLLBACK;");
    assert_eq!(
        primary.db.commit_pages(&all_pages(&primary.file)).unwrap(),
        None
    );

    // The same through before_write: every page rewritten with its old content.
    let page_size = 4096;
    for (i, page) in primary.file.chunks(page_size).enumerate() {
        primary
            .db
            .before_write((i * page_size) as u64, page)
            .unwrap();
    }
    assert_eq!(primary.db.commit().unwrap(), None);
    assert_eq!(primary.db.pos(), pos);
    assert_eq!(primary.db.ltx_files().unwrap(), files);
    assert!(fs::read_dir(primary.db.ltx_dir()).unwrap().count() == files.len());
}

#[test]
fn before_write_checks_pages() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), 4096);
    let db = primary.db.clone();

    // A new database: page 1 must carry the SQLite header.
    let err = db.before_write(0, &[0u8; 4096]).unwrap_err();
    assert!(matches!(err, Error::InvalidWrite { .. }), "{err}");
    assert!(err.to_string().contains("SQLite"), "{err}");
    // Not a page: refused before any page size is known.
    assert!(db.before_write(100, &[0u8; 300]).is_err());

    primary.exec("CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(10000));");
    let page1 = primary.file[..4096].to_vec();
    let err = db.before_write(4096 + 512, &[0u8; 4096]).unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
    assert!(db.before_write(4096, &[0u8; 1000]).is_err());
    // The header says 4096 but the write is half a page.
    assert!(db.before_write(0, &page1[..2048]).is_err());
    // Garbage at offset 0.
    let mut garbage = page1.clone();
    garbage[..16].copy_from_slice(b"not a database!!");
    let err = db.before_write(0, &garbage).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
    // Whole pages are fine, also several at once.
    db.before_write(8192, &[0u8; 8192]).unwrap();
    db.before_write(0, &primary.file[..8192]).unwrap();
    // A header announcing 1024-byte pages allows 1024-byte writes until commit.
    let mut smaller = page1.clone();
    smaller[16..18].copy_from_slice(&1024u16.to_be_bytes());
    db.before_write(0, &smaller[..1024]).unwrap();
    db.before_write(3072, &[0u8; 1024]).unwrap();
    assert!(db.before_truncate(5120).is_ok());
    assert!(db.before_truncate(5000).is_err());
    // Nothing was actually written: commit finds no change.
    assert_eq!(db.commit().unwrap(), None);
    assert!(db.before_write(3072, &[0u8; 1024]).is_err());

    // A new database may see other pages before page 1 (cache spill).
    let (_s, fresh) = empty_db(&tmp.path().join("fresh"));
    fresh.before_write(8192, &[0u8; 4096]).unwrap();
    assert!(fresh.before_write(8192, &[0u8; 3000]).is_err());
}

/// A primary with three committed transactions and a copy of the database
/// file after each.
fn three_transactions(dir: &Path) -> (Primary, Vec<Vec<u8>>) {
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

/// Re-encodes an LTX file with a changed header and/or post-apply checksum.
fn reencode(src: &Path, dst: &Path, edit: impl Fn(&mut ltx::Header), post_apply_xor: u64) {
    let mut decoder = LtxDecoder::new(BufReader::new(File::open(src).unwrap())).unwrap();
    let mut header = *decoder.header();
    let original = header;
    edit(&mut header);
    let mut encoder = LtxEncoder::new(File::create(dst).unwrap(), &header).unwrap();
    let mut page = vec![0u8; original.page_size as usize];
    while let Some(pgno) = decoder.next_page(&mut page).unwrap() {
        encoder.encode_page(pgno, &page).unwrap();
    }
    let trailer = decoder.finish().unwrap();
    encoder
        .finish(trailer.post_apply_checksum ^ post_apply_xor)
        .unwrap();
}

#[test]
fn apply_refuses_files_that_do_not_fit() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (primary, states) = three_transactions(&tmp.path().join("primary"));
    let files: Vec<PathBuf> = primary
        .db
        .ltx_files()
        .unwrap()
        .into_iter()
        .map(|f| f.2)
        .collect();
    let (_s, replica) = empty_db(&tmp.path().join("replica"));
    let first = replica.apply_ltx(&files[0]).unwrap();
    assert_eq!(first.txid, 1);

    let unchanged = |replica: &Db| {
        assert_eq!(replica.pos(), first);
        assert!(read(replica.database_path()) == states[0]);
        let names: Vec<u64> = replica.ltx_files().unwrap().iter().map(|f| f.1).collect();
        assert_eq!(names, vec![1]);
    };

    // A gap: TXID 3 after TXID 1.
    let err = replica.apply_ltx(&files[2]).unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("0000000000000002"), "{err}");
    unchanged(&replica);

    // TXID 1 again (a snapshot replaces everything, so use a non-snapshot):
    // TXID 2 re-labelled as TXID 5.
    let relabelled = tmp.path().join("relabelled.ltx");
    reencode(
        &files[1],
        &relabelled,
        |h| {
            h.min_txid = 5;
            h.max_txid = 5;
        },
        0,
    );
    assert!(matches!(
        replica.apply_ltx(&relabelled).unwrap_err(),
        Error::Refused { .. }
    ));
    unchanged(&replica);

    // Right TXID, wrong pre-apply checksum (another history).
    let wrong_pre = tmp.path().join("wrong-pre.ltx");
    reencode(&files[1], &wrong_pre, |h| h.pre_apply_checksum ^= 0x10, 0);
    let err = replica.apply_ltx(&wrong_pre).unwrap_err();
    assert!(err.to_string().contains("pre-apply checksum"), "{err}");
    unchanged(&replica);

    // Right TXID and pre-apply checksum, but the pages do not lead to the
    // post-apply checksum: refused before anything is written.
    let wrong_post = tmp.path().join("wrong-post.ltx");
    reencode(&files[1], &wrong_post, |_| {}, 0x20);
    let err = replica.apply_ltx(&wrong_post).unwrap_err();
    assert!(err.to_string().contains("post-apply checksum"), "{err}");
    unchanged(&replica);

    // Corrupted: one flipped bit in the page data, then a truncated file.
    let bytes = fs::read(&files[1]).unwrap();
    let corrupt = tmp.path().join("corrupt.ltx");
    let mut flipped = bytes.clone();
    flipped[ltx::HEADER_SIZE + 4 + 1000] ^= 0x04;
    fs::write(&corrupt, &flipped).unwrap();
    let err = replica.apply_ltx(&corrupt).unwrap_err();
    assert!(matches!(err, Error::Ltx { .. }), "{err}");
    unchanged(&replica);
    fs::write(&corrupt, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(
        replica.apply_ltx(&corrupt).unwrap_err(),
        Error::Ltx { .. }
    ));
    unchanged(&replica);

    // The real files still apply, and the replica ends identical.
    assert_eq!(replica.apply_ltx(&files[1]).unwrap().txid, 2);
    assert!(read(replica.database_path()) == states[1]);
    assert_eq!(replica.apply_ltx(&files[2]).unwrap(), primary.db.pos());
    assert!(read(replica.database_path()) == states[2]);
    // The files the replica keeps are its own copies; the primary's remain.
    assert_eq!(replica.ltx_files().unwrap().len(), 3);
    assert!(files.iter().all(|f| f.exists()));
}

#[test]
fn snapshot_reproduces_the_database() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (mut primary, _) = three_transactions(&tmp.path().join("primary"));
    let snapshot = tmp.path().join("snapshot.ltx");
    let header = primary
        .db
        .write_snapshot(File::create(&snapshot).unwrap())
        .unwrap();
    assert_eq!((header.min_txid, header.max_txid), (1, 3));
    assert_eq!(header.pre_apply_checksum, 0);
    let (h, trailer) = ltx::verify_file(&snapshot).unwrap();
    assert_eq!(h, header);
    assert_eq!(trailer.post_apply_checksum, primary.db.pos().checksum);

    // Onto an empty database.
    let (_s, empty) = empty_db(&tmp.path().join("empty"));
    assert_eq!(empty.apply_ltx(&snapshot).unwrap(), primary.db.pos());
    assert!(read(empty.database_path()) == primary.file);

    // Onto a database with another history (split brain): replaced, and
    // its old LTX files are gone.
    let mut other = Primary::new(&tmp.path().join("other"), 1024);
    for i in 0..5 {
        other.exec(&format!(
            "CREATE TABLE x{i}(v); INSERT INTO x{i} VALUES (randomblob(3000));"
        ));
    }
    drop(other.conn);
    assert_eq!(other.db.apply_ltx(&snapshot).unwrap(), primary.db.pos());
    assert!(read(other.db.database_path()) == primary.file);
    let kept: Vec<(u64, u64)> = other
        .db
        .ltx_files()
        .unwrap()
        .iter()
        .map(|f| (f.0, f.1))
        .collect();
    assert_eq!(kept, vec![(1, 3)]);

    // Both continue with the primary's next transaction, and survive a restart.
    let pos = primary.exec("DELETE FROM t WHERE rowid > 10;").unwrap();
    assert_eq!(empty.apply_ltx(&primary.newest_ltx()).unwrap(), pos);
    assert_eq!(other.db.apply_ltx(&primary.newest_ltx()).unwrap(), pos);
    assert!(read(other.db.database_path()) == primary.file);
    let reopened = Store::open(&tmp.path().join("other")).unwrap();
    assert_eq!(reopened.db("db").unwrap().pos(), pos);

    // A snapshot of a database with no transaction is an error.
    let (_s, nothing) = empty_db(&tmp.path().join("nothing"));
    assert!(matches!(
        nothing.write_snapshot(Vec::new()).unwrap_err(),
        Error::NoTransactions { .. }
    ));
}

#[test]
fn snapshot_refuses_a_file_changed_outside_a_transaction() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (primary, _) = three_transactions(&tmp.path().join("primary"));
    let file = OpenOptions::new()
        .write(true)
        .open(primary.db.database_path())
        .unwrap();
    file.write_all_at(&[0xAA; 16], 4096 + 2000).unwrap();
    let err = primary.db.write_snapshot(Vec::new()).unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert!(err.to_string().contains("page 2"), "{err}");
}

#[test]
fn reopen_recovers_every_position() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (primary, _) = three_transactions(&data);
    let b = primary.store.create_db("b").unwrap();
    assert!(Arc::ptr_eq(&b, &primary.store.create_db("b").unwrap()));
    let node_id = primary.store.node_id();
    let pos = primary.db.pos();
    assert_eq!(
        format!("{pos}"),
        format!("{:016x}/{:016x}", pos.txid, pos.checksum)
    );
    drop(primary);

    // A crash while writing an LTX file leaves a temporary file behind.
    let tmp_file = data.join("dbs/db/ltx/0000000000000004-0000000000000004.ltx.tmp");
    fs::write(&tmp_file, b"partial").unwrap();

    let store = Store::open(&data).unwrap();
    assert_eq!(store.node_id(), node_id);
    let names: Vec<String> = store.dbs().iter().map(|d| d.name().to_string()).collect();
    assert_eq!(names, vec!["b", "db"]);
    assert_eq!(store.db("db").unwrap().pos(), pos);
    assert_eq!(store.db("b").unwrap().pos(), Position::default());
    assert!(!tmp_file.exists());
}

#[test]
fn database_names_are_validated() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    for bad in [
        "",
        "a/b",
        ".",
        "..",
        ".primary",
        "x-journal",
        "x-wal",
        "x-shm",
        "x-pos",
    ] {
        let err = store.create_db(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad}: {err}");
    }
    store.create_db("my.db").unwrap();
    assert!(store.db("my.db").is_some());
    assert!(store.db("other").is_none());
}

#[test]
fn tampered_database_opens_at_its_own_checksum() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (primary, _) = three_transactions(&data);
    let path = primary.db.database_path().to_path_buf();
    let pos = primary.db.pos();
    drop(primary);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"tampered", 4096 + 100).unwrap();
    drop(file);
    let tampered = read(&path);

    // Nothing is thrown away; the position keeps the TXID with the file's
    // own checksum, so no other node will take it for the recorded state.
    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos().txid, pos.txid);
    assert_ne!(db.pos().checksum, pos.checksum);
    assert_eq!(db.pos().checksum, store::database_checksum(&path).unwrap());
    assert!(read(&path) == tampered);
}

/// A mirrored primary whose database has many free-list pages: 300 rows
/// inserted, most of them deleted.
fn with_free_pages(dir: &Path) -> Mirrored {
    let mut m = Mirrored::new(dir, 4096);
    m.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
            INSERT INTO t(v) SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300) SELECT x FROM c);");
    m.exec("DELETE FROM t WHERE id % 5 != 0;");
    let header = &m.shadow_file[..100];
    let free = u32::from_be_bytes([header[36], header[37], header[38], header[39]]);
    assert!(free > 100, "only {free} free pages");
    m
}

/// A transaction that reuses free-list pages and, with a tiny cache, writes
/// pages to the file before it ends.
const REUSING_TRANSACTION: &str = "PRAGMA cache_size=10; BEGIN;
    INSERT INTO t(v) SELECT randomblob(3500) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 150) SELECT x FROM c);
    UPDATE t SET v = randomblob(100) WHERE id % 10 = 0;";

/// Runs `sql` on the shadow and returns copies of the shadow file and its
/// (hot) journal taken before `finish` ends the transaction.
fn hot_shadow(m: &Mirrored, sql: &str, finish: &str) -> (Vec<u8>, Vec<u8>) {
    m.conn.execute_batch(sql).unwrap();
    let database = read(&m.shadow);
    let journal = read(&m.shadow_journal());
    assert!(!journal.is_empty());
    m.conn.execute_batch(finish).unwrap();
    (database, journal)
}

#[test]
fn rollback_of_reused_free_pages_records_nothing() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let mut m = with_free_pages(tmp.path());
    let pos = m.db.pos();
    let committed = read(m.db.database_path());
    let files = m.db.ltx_files().unwrap();

    let commit = m.exec(&format!("{REUSING_TRANSACTION} ROLLBACK;"));
    // SQLite left the reused pages changed in its own file...
    assert!(
        m.shadow_file != committed,
        "the rollback must leave changed free pages"
    );
    // ...but litefs put them back: nothing recorded, the file as committed.
    assert_eq!(commit.position, None);
    assert!(!commit.restored_pages.is_empty());
    assert_eq!(commit.page_size, 4096);
    assert_eq!(m.db.pos(), pos);
    assert_eq!(m.db.ltx_files().unwrap(), files);
    assert!(read(m.db.database_path()) == committed);
    assert_eq!(fs::metadata(m.db.undo_path()).unwrap().len(), 0);

    // A committed transaction reusing the same pages is recorded as usual.
    let commit = m.exec(&format!("{REUSING_TRANSACTION} COMMIT;"));
    assert_eq!(commit.position.unwrap().txid, pos.txid + 1);
    assert!(commit.restored_pages.is_empty());
    assert_eq!(integrity_check(m.db.database_path()), "ok");
}

/// Leaves the state a crash of litefs in the middle of a transaction that
/// reuses free pages leaves: the transaction's writes passed through to the
/// database file, SQLite's hot journal in place. Returns the data directory,
/// the position and the committed database file.
fn crash_in_reusing_transaction(dir: &Path) -> (PathBuf, Position, Vec<u8>) {
    let m = with_free_pages(dir);
    let pos = m.db.pos();
    let committed = read(m.db.database_path());
    let (hot, journal) = hot_shadow(&m, REUSING_TRANSACTION, "ROLLBACK");
    write_through(&m.db, &m.shadow_file, &hot);
    fs::write(m.db.journal_path(), &journal).unwrap();
    assert!(read(m.db.database_path()) != committed);
    assert!(fs::metadata(m.db.undo_path()).unwrap().len() > 0);
    (m.store.data_dir().to_path_buf(), pos, committed)
}

#[test]
fn hot_journal_is_rolled_back_at_open() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, pos, committed) = crash_in_reusing_transaction(tmp.path());

    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos);
    assert!(!db.journal_path().exists());
    assert!(read(db.database_path()) == committed);
    assert_eq!(
        store::database_checksum(db.database_path()).unwrap(),
        pos.checksum
    );
    assert_eq!(integrity_check(db.database_path()), "ok");
    assert_eq!(fs::metadata(db.undo_path()).unwrap().len(), 0);
}

#[test]
fn hot_journal_rollback_without_the_undo_log_is_a_checksum_mismatch() {
    let _page_cache = sqlite_alone();
    // Proves the free pages matter: SQLite's journal alone does not restore
    // the database: recovery then carries on at a checksum no one else has.
    let tmp = tempfile::tempdir().unwrap();
    let (data, pos, _) = crash_in_reusing_transaction(tmp.path());
    fs::remove_file(data.join("dbs/db/undo")).unwrap();
    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos().txid, pos.txid);
    assert_ne!(
        db.pos().checksum,
        pos.checksum,
        "the journal alone restored the file"
    );
}

#[test]
fn hot_journal_of_a_recorded_transaction_is_deleted() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let mut m = with_free_pages(tmp.path());
    // The crash happens after the LTX file is written, before the journal
    // is deleted: the transaction is committed and recorded.
    let (_, journal) = hot_shadow(&m, REUSING_TRANSACTION, "COMMIT");
    let pos = m.mirror().position.unwrap();
    let committed = read(m.db.database_path());
    fs::write(m.db.journal_path(), &journal).unwrap();
    let data = m.store.data_dir().to_path_buf();
    drop(m);

    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos);
    assert!(!db.journal_path().exists());
    assert!(read(db.database_path()) == committed);
}

#[test]
fn interrupted_apply_is_completed_at_open() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (primary, states) = three_transactions(&tmp.path().join("primary"));
    let files = primary.db.ltx_files().unwrap();
    let replica_dir = tmp.path().join("replica");
    let (store, replica) = empty_db(&replica_dir);
    replica.apply_ltx(&files[0].2).unwrap();
    let ltx_dir = replica.ltx_dir().to_path_buf();
    let db_path = replica.database_path().to_path_buf();
    drop((store, replica));

    // The crash: TXID 2 is pending, and only its first page was written.
    let pending = ltx_dir.join(format!("{}.pending", ltx::filename(2, 2)));
    fs::copy(&files[1].2, &pending).unwrap();
    let mut decoder = LtxDecoder::new(BufReader::new(File::open(&pending).unwrap())).unwrap();
    let mut page = vec![0u8; 4096];
    let pgno = decoder.next_page(&mut page).unwrap().unwrap();
    let file = OpenOptions::new().write(true).open(&db_path).unwrap();
    file.write_all_at(&page, u64::from(pgno - 1) * 4096)
        .unwrap();
    drop(file);

    let store = Store::open(&replica_dir).unwrap();
    let replica = store.db("db").unwrap();
    assert_eq!(replica.pos().txid, 2);
    assert!(read(&db_path) == states[1]);
    assert!(!pending.exists());
    assert!(ltx_dir.join(ltx::filename(2, 2)).exists());
    drop(store);

    // A pending file cut short by the crash never had pages written: it is
    // dropped and the database stays where it was.
    let bytes = fs::read(&files[2].2).unwrap();
    let pending = ltx_dir.join(format!("{}.pending", ltx::filename(3, 3)));
    fs::write(&pending, &bytes[..bytes.len() / 2]).unwrap();
    let store = Store::open(&replica_dir).unwrap();
    let replica = store.db("db").unwrap();
    assert_eq!(replica.pos().txid, 2);
    assert!(!pending.exists());
    assert_eq!(replica.apply_ltx(&files[2].2).unwrap(), primary.db.pos());
    assert!(read(&db_path) == states[2]);
}

#[test]
fn copied_in_database_is_recorded_as_txid_1() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source.db");
    let conn = Connection::open(&source).unwrap();
    conn.execute_batch("CREATE TABLE t(v); INSERT INTO t SELECT randomblob(700) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30) SELECT x FROM c);")
        .unwrap();
    drop(conn);
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("dbs/copied")).unwrap();
    fs::copy(&source, data.join("dbs/copied/database")).unwrap();

    let store = Store::open(&data).unwrap();
    let db = store.db("copied").unwrap();
    let checksum = store::database_checksum(&source).unwrap();
    assert_eq!(db.pos(), Position { txid: 1, checksum });
    let files = db.ltx_files().unwrap();
    assert_eq!(files.len(), 1);
    let (header, _) = ltx::verify_file(&files[0].2).unwrap();
    assert!(header.is_snapshot());

    let (_s, replica) = empty_db(&tmp.path().join("replica"));
    assert_eq!(replica.apply_ltx(&files[0].2).unwrap(), db.pos());
    assert!(read(replica.database_path()) == read(&source));
}

#[test]
fn database_checksum_of_raw_files() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::write(&empty, b"").unwrap();
    assert_eq!(
        store::database_checksum(&empty).unwrap(),
        ltx::CHECKSUM_FLAG
    );
    let not_db = tmp.path().join("not-db");
    fs::write(&not_db, vec![7u8; 4096]).unwrap();
    let err = store::database_checksum(&not_db).unwrap_err();
    assert!(matches!(err, Error::InvalidDatabase { .. }), "{err}");
    assert!(store::database_checksum(&tmp.path().join("missing")).is_err());

    let db = tmp.path().join("db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA page_size=1024; CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(5000));",
    )
    .unwrap();
    drop(conn);
    let bytes = fs::read(&db).unwrap();
    let expected = bytes.chunks(1024).enumerate().fold(0, |sum, (i, page)| {
        sum ^ ltx::page_checksum(i as u32 + 1, page)
    }) | ltx::CHECKSUM_FLAG;
    assert_eq!(store::database_checksum(&db).unwrap(), expected);
}

#[test]
fn retention_deletes_old_files_and_keeps_the_newest() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), 4096);
    for i in 0..5 {
        primary.exec(&format!(
            "CREATE TABLE t{i}(v); INSERT INTO t{i} VALUES (randomblob(100));"
        ));
    }
    let files = primary.db.ltx_files().unwrap();
    assert_eq!(files.len(), 5);
    // Fresh files are all kept.
    assert_eq!(
        primary
            .db
            .enforce_retention(Duration::from_secs(60))
            .unwrap(),
        0
    );

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let age = |files: &[(u64, u64, std::path::PathBuf)]| {
        for (_, _, path) in files {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
    };
    let left = || -> Vec<u64> {
        primary
            .db
            .ltx_files()
            .unwrap()
            .iter()
            .map(|f| f.0)
            .collect()
    };
    let retention = Duration::from_secs(60);

    age(&files[..3]);
    assert_eq!(primary.db.enforce_retention(retention).unwrap(), 3);
    assert_eq!(left(), vec![4, 5]);

    // Even when every file is old, the newest stays.
    age(&files[3..]);
    assert_eq!(primary.db.enforce_retention(retention).unwrap(), 1);
    assert_eq!(left(), vec![5]);
    assert_eq!(primary.db.enforce_retention(Duration::ZERO).unwrap(), 0);

    // The position does not depend on the deleted files.
    let pos = primary.db.pos();
    drop(primary.conn);
    let store = Store::open(&tmp.path().join("primary")).unwrap();
    assert_eq!(store.db("db").unwrap().pos(), pos);
}

#[test]
fn store_and_db_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Store>();
    shared::<Db>();
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.create_db(&format!("db{}", i % 2)).unwrap())
        })
        .collect();
    let dbs: Vec<Arc<Db>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(Arc::ptr_eq(&dbs[0], &dbs[2]));
    assert!(Arc::ptr_eq(&dbs[1], &dbs[3]));
    assert_eq!(store.dbs().len(), 2);
}
