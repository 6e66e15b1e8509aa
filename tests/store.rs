//! Tests of the store without FUSE: real SQLite transactions (rusqlite on
//! plain files in a data directory) committed to LTX files and replayed onto
//! other stores. The random-workload property tests, page-size changes,
//! rolled-back transactions, the checks on writes, database names, the
//! checksum of raw files, and sharing between threads. Applying, snapshots
//! and retention are in tests/store_apply.rs; recovery at open in
//! tests/store_recovery.rs.

mod store_common;

use std::fs;
use std::sync::Arc;

use litefs::ltx;
use litefs::store::{self, Db, Error, Store};
use rusqlite::{params, Connection};
use store_common::{
    all_pages, changed_pages, commit_through_writes, empty_db, integrity_check, read, sqlite_alone,
    sqlite_shared, Primary,
};

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
    let names: Vec<_> = fs::read_dir(primary.db.ltx_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "next") // made ahead, empty
        .collect();
    assert_eq!(names.len(), files.len(), "{names:?}");
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
        "x.db-mj0000029AB",
        &"a".repeat(store::MAX_DB_NAME_LEN + 1),
    ] {
        let err = store.create_db(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad}: {err}");
    }
    // The longest name leaves room for every companion's suffix.
    let longest = "a".repeat(store::MAX_DB_NAME_LEN);
    store.create_db(&longest).unwrap();
    assert_eq!(format!("{longest}-mj0000029AB").len(), 255);
    store.create_db("x.db-mj").unwrap();
    store.create_db("my.db").unwrap();
    assert!(store.db("my.db").is_some());
    assert!(store.db("other").is_none());
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
