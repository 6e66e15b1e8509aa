//! Tests of the store without FUSE: real SQLite transactions (rusqlite on
//! plain files in a data directory) committed to LTX files, replayed onto
//! other stores, refused when they do not fit, snapshotted, recovered after
//! crashes, and expired by retention.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use litefs::ltx::{self, LtxDecoder, LtxEncoder};
use litefs::store::{self, Db, Error, Position, Store};
use rusqlite::{params, Connection};

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

/// Writes `after` over the database file of `db` the way the mount would:
/// the changed pages through `before_write`, then the truncation, then commit.
fn commit_through_writes(db: &Db, before: &[u8], after: &[u8]) -> Option<Position> {
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
    db.commit().unwrap()
}

/// One random statement inside a transaction.
fn random_statement(conn: &Connection, rng: &mut Rng, tables: &mut u32, page_size: u32) {
    let max_blob = (2 * page_size as u64).min(150_000);
    let table = if *tables == 0 {
        0
    } else {
        rng.below(u64::from(*tables))
    };
    match rng.below(10) {
        0 if *tables < 4 => {
            conn.execute_batch(&format!(
                "CREATE TABLE t{n}(id INTEGER PRIMARY KEY, v BLOB);
                 CREATE INDEX t{n}_len ON t{n}(length(v));",
                n = *tables
            ))
            .unwrap();
            *tables += 1;
        }
        _ if *tables == 0 => {}
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

/// The property test: random SQL workloads are committed on a primary; after
/// every transaction the new LTX file is applied to a replica (byte-identical
/// file, same position), the same change is fed through `before_write` +
/// `commit` into a third store (same position); at the end every LTX file is
/// replayed in order onto an empty store.
fn random_workload(seed: u64, page_size: u32, transactions: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = Primary::new(&tmp.path().join("primary"), page_size);
    let (_replica_store, replica) = empty_db(&tmp.path().join("replica"));
    let (_written_store, written) = empty_db(&tmp.path().join("written"));
    let mut rng = Rng::new(seed);
    let mut tables = 0;
    let mut commits = 0;
    for step in 0..transactions {
        let before = primary.file.clone();
        let roll = rng.below(100);
        if roll < 6 && tables > 0 {
            if rng.below(3) == 0 {
                let new_size = [512, 1024, 4096, 8192, 65536][rng.below(5) as usize];
                primary
                    .conn
                    .execute_batch(&format!("PRAGMA page_size={new_size}"))
                    .unwrap();
            }
            primary.conn.execute_batch("VACUUM").unwrap();
        } else if roll < 14 && tables > 0 {
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
            let now = read(primary.db.database_path());
            if now != before {
                let differing: Vec<u32> = changed_pages(&before, &now).into_iter().collect();
                for &p in &differing {
                    let r = (p as usize - 1) * 4096..p as usize * 4096;
                    let nz_before = before[r.clone()].iter().filter(|b| **b != 0).count();
                    let nz_now = now[r.clone()].iter().filter(|b| **b != 0).count();
                    let first_diff = (0..4096).find(|i| before[r.start + i] != now[r.start + i]);
                    eprintln!("page {p}: nonzero before {nz_before} now {nz_now} first diff {first_diff:?} before head {:?} now head {:?}", &before[r.start..r.start+16], &now[r.start..r.start+16]);
                }
                panic!(
                    "seed {seed} step {step}: rollback left {} bytes (was {}), pages {differing:?}",
                    now.len(),
                    before.len()
                );
            }
            // Even with every page marked dirty, nothing changed: no TXID.
            let pos = primary.db.pos();
            assert_eq!(primary.db.commit_pages(&all_pages(&before)).unwrap(), None);
            assert_eq!(primary.db.pos(), pos);
            continue;
        } else {
            primary.conn.execute_batch("BEGIN").unwrap();
            for _ in 0..=rng.below(3) {
                random_statement(&primary.conn, &mut rng, &mut tables, page_size);
            }
            primary.conn.execute_batch("COMMIT").unwrap();
        }
        let Some(pos) = primary.record() else {
            continue;
        };
        commits += 1;
        let after = primary.file.clone();
        let context = format!(
            "seed {seed} page size {page_size} step {step} TXID {}",
            pos.txid
        );

        assert_eq!(
            replica.apply_ltx(&primary.newest_ltx()).unwrap(),
            pos,
            "{context}"
        );
        assert!(
            read(replica.database_path()) == after,
            "{context}: replica differs"
        );

        assert_eq!(
            commit_through_writes(&written, &before, &after),
            Some(pos),
            "{context}"
        );
        assert!(read(written.database_path()) == after, "{context}");
    }
    assert!(
        commits > transactions / 2,
        "seed {seed}: only {commits} commits"
    );

    let (_fresh_store, fresh) = empty_db(&tmp.path().join("fresh"));
    let files = primary.db.ltx_files().unwrap();
    assert_eq!(files.len(), commits);
    for (i, (min, max, path)) in files.iter().enumerate() {
        assert_eq!((*min, *max), (i as u64 + 1, i as u64 + 1));
        ltx::verify_file(path).unwrap();
        fresh.apply_ltx(path).unwrap();
    }
    assert_eq!(fresh.pos(), primary.db.pos());
    assert!(
        read(fresh.database_path()) == primary.file,
        "seed {seed}: replay differs"
    );
    assert_eq!(
        store::database_checksum(fresh.database_path()).unwrap(),
        primary.db.pos().checksum
    );
    drop(primary.conn);
    // Everything recorded survives a restart.
    let reopened = Store::open(&tmp.path().join("primary")).unwrap();
    assert_eq!(reopened.db("db").unwrap().pos(), primary.db.pos());
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
    for seed in seeds() {
        random_workload(seed, 512, 40);
    }
}

#[test]
fn random_workloads_page_size_4096() {
    for seed in seeds() {
        random_workload(seed * 1000, 4096, 40);
    }
}

#[test]
fn random_workloads_page_size_65536() {
    for seed in seeds() {
        random_workload(seed * 1_000_000, 65536, 25);
    }
}

#[test]
fn page_size_change_by_vacuum_is_replicated() {
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
            commit_through_writes(&written, &before, &primary.file),
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
fn tampered_database_fails_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (primary, _) = three_transactions(&data);
    let path = primary.db.database_path().to_path_buf();
    let pos = primary.db.pos();
    drop(primary);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"tampered", 4096 + 100).unwrap();
    drop(file);

    let err = Store::open(&data).err().expect("open must fail");
    let message = err.to_string();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{message}");
    assert!(message.contains("database db"), "{message}");
    assert!(message.contains(&format!("{:016x}", pos.txid)), "{message}");
    assert!(
        message.contains(&format!("{:016x}", pos.checksum)),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{:016x}",
            store::database_checksum(&path).unwrap()
        )),
        "{message}"
    );
}

/// Runs a big write transaction with a tiny cache so that pages reach the
/// database file, and returns copies of the database and the (hot) journal
/// taken while it is open; `finish` ends the transaction.
fn hot_files(primary: &Primary, finish: &str) -> (Vec<u8>, Vec<u8>) {
    primary
        .conn
        .execute_batch(
            "PRAGMA cache_size=10; BEGIN;
             UPDATE t SET v = randomblob(2500);
             INSERT INTO t SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) SELECT x FROM c);",
        )
        .unwrap();
    let database = read(primary.db.database_path());
    let journal = read(primary.db.journal_path());
    assert!(!journal.is_empty());
    primary.conn.execute_batch(finish).unwrap();
    (database, journal)
}

#[test]
fn hot_journal_is_rolled_back_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (primary, states) = three_transactions(&data);
    let pos = primary.db.pos();
    let (database, journal) = hot_files(&primary, "ROLLBACK");
    assert!(
        database != states[2],
        "the transaction must have reached the file"
    );
    let db_path = primary.db.database_path().to_path_buf();
    let journal_path = primary.db.journal_path().to_path_buf();
    drop(primary);

    // The crash: the half-written database and its hot journal.
    fs::write(&db_path, &database).unwrap();
    fs::write(&journal_path, &journal).unwrap();
    assert_ne!(store::database_checksum(&db_path).ok(), Some(pos.checksum));

    let store = Store::open(&data).unwrap();
    assert_eq!(store.db("db").unwrap().pos(), pos);
    assert!(!journal_path.exists());
    assert!(read(&db_path) == states[2]);
    assert_eq!(store::database_checksum(&db_path).unwrap(), pos.checksum);
    let conn = Connection::open(&db_path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn hot_journal_of_a_recorded_transaction_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut primary, _) = three_transactions(&data);
    // The crash happens after the LTX file is written, before the journal
    // is deleted: the transaction is committed and recorded.
    let (_, journal) = hot_files(&primary, "COMMIT");
    let pos = primary.record().unwrap();
    let committed = primary.file.clone();
    let journal_path = primary.db.journal_path().to_path_buf();
    drop(primary);
    fs::write(&journal_path, &journal).unwrap();

    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos);
    assert!(!journal_path.exists());
    assert!(read(db.database_path()) == committed);
}

#[test]
fn interrupted_apply_is_rolled_forward_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary, states) = three_transactions(&tmp.path().join("primary"));
    let files = primary.db.ltx_files().unwrap();
    let replica_dir = tmp.path().join("replica");
    let (store, replica) = empty_db(&replica_dir);
    replica.apply_ltx(&files[0].2).unwrap();
    let ltx_dir = replica.ltx_dir().to_path_buf();
    let db_path = replica.database_path().to_path_buf();
    drop((store, replica));

    // The crash: TXID 2 is in place, but only its first page was written.
    let in_place = ltx_dir.join(ltx::filename(2, 2));
    fs::copy(&files[1].2, &in_place).unwrap();
    let mut decoder = LtxDecoder::new(BufReader::new(File::open(&in_place).unwrap())).unwrap();
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
    assert_eq!(replica.apply_ltx(&files[2].2).unwrap(), primary.db.pos());
}

#[test]
fn copied_in_database_is_recorded_as_txid_1() {
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
    for (_, _, path) in &files[..3] {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    assert_eq!(
        primary
            .db
            .enforce_retention(Duration::from_secs(60))
            .unwrap(),
        3
    );
    let left: Vec<u64> = primary
        .db
        .ltx_files()
        .unwrap()
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(left, vec![4, 5]);

    // Even when every file is old, the newest stays.
    for (_, _, path) in &files[3..] {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    assert_eq!(
        primary
            .db
            .enforce_retention(Duration::from_secs(60))
            .unwrap(),
        1
    );
    let left: Vec<u64> = primary
        .db
        .ltx_files()
        .unwrap()
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(left, vec![5]);
    assert_eq!(primary.db.enforce_retention(Duration::ZERO).unwrap(), 0);

    // The position does not depend on the deleted files.
    let pos = primary.db.pos();
    drop(primary.conn);
    let store = Store::open(&tmp.path().join("primary")).unwrap();
    assert_eq!(store.db("db").unwrap().pos(), pos);
}
