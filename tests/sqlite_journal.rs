//! Tests of the SQLite format readers against files written by the real
//! SQLite (rusqlite, bundled): the database header, and rollback journals
//! copied while a write transaction is still open.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use litefs::sqlite::{
    self, journal_checksum, parse_database_header, read_database_header, read_journal_pages,
    JournalReader, DATABASE_MAGIC, JOURNAL_MAGIC,
};
use rusqlite::Connection;

/// Runs this file's tests one at a time. They share the process's SQLite
/// page-cache pool, and another test's connections can take the pages that
/// would make a small cache spill, leaving a test with nothing to check.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn journal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

/// Creates a database with `rows` rows of blobs a quarter page long.
fn create_db(dir: &Path, page_size: u32, rows: u32, journal_mode: &str) -> (PathBuf, Connection) {
    let path = dir.join(format!("db-{page_size}-{journal_mode}"));
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size};
         PRAGMA journal_mode = {journal_mode};
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);"
    ))
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO t (id, v) SELECT i, randomblob(?2) FROM n",
        (rows, page_size / 4),
    )
    .unwrap();
    (path, conn)
}

/// What the files looked like around an open transaction.
struct Capture {
    page_size: usize,
    /// The database before the transaction.
    original: Vec<u8>,
    /// The journal while the transaction was open.
    journal: Vec<u8>,
    /// The database file at the same moment.
    on_disk: Vec<u8>,
}

/// Runs `sql` inside a transaction and copies the journal and database file
/// before ending it with `end` ("COMMIT" or "ROLLBACK").
fn capture(conn: &Connection, db: &Path, page_size: u32, sql: &str, end: &str) -> Capture {
    let original = std::fs::read(db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute_batch(sql).unwrap();
    let journal = std::fs::read(journal_path(db)).unwrap();
    let on_disk = std::fs::read(db).unwrap();
    conn.execute_batch(end).unwrap();
    Capture {
        page_size: page_size as usize,
        original,
        journal,
        on_disk,
    }
}

/// What the reader found in a captured journal.
struct Checked {
    pages: BTreeSet<u32>,
    segments: u32,
    record_count: u32,
}

/// Reads the captured journal and checks it against the database copies:
/// every page is the original content, the initial size is the original
/// size, and playing it back onto the on-disk copy gives the original.
fn check(c: &Capture) -> Checked {
    let ps = c.page_size;
    let mut reader = JournalReader::new(Cursor::new(&c.journal), c.journal.len() as u64)
        .unwrap()
        .expect("journal of a transaction that wrote the database must be hot");
    let header = *reader.header();
    assert_eq!(header.page_size as usize, ps);
    assert_eq!(header.initial_page_count as usize * ps, c.original.len());
    assert!(header.sector_size.is_power_of_two() && header.sector_size >= 32);

    let mut listed = BTreeSet::new();
    let mut restored = c.on_disk.clone();
    let mut page = Vec::new();
    while let Some(pgno) = reader.next_record(&mut page).unwrap() {
        assert!(
            pgno >= 1 && pgno <= header.initial_page_count,
            "page {pgno}"
        );
        assert!(listed.insert(pgno), "page {pgno} listed twice");
        let at = (pgno as usize - 1) * ps;
        assert!(
            page == c.original[at..at + ps],
            "journal page {pgno} differs from the original"
        );
        if restored.len() < at + ps {
            restored.resize(at + ps, 0);
        }
        restored[at..at + ps].copy_from_slice(&page);
    }
    // Reading past the end keeps saying so.
    assert_eq!(reader.next_record(&mut page).unwrap(), None);

    for pgno in 1..=header.initial_page_count {
        let at = (pgno as usize - 1) * ps;
        let now = c.on_disk.get(at..at + ps);
        if now != Some(&c.original[at..at + ps]) {
            assert!(
                listed.contains(&pgno),
                "page {pgno} was overwritten but is not in the journal"
            );
        }
    }
    restored.truncate(header.initial_page_count as usize * ps);
    assert!(
        restored == c.original,
        "rollback does not restore the original"
    );
    Checked {
        pages: listed,
        segments: reader.segments_read(),
        record_count: header.record_count,
    }
}

/// Updates most pages, deletes some rows and appends new ones.
fn churn(page_size: u32) -> String {
    format!(
        "UPDATE t SET v = randomblob(length(v)) WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 7 = 0;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO t (v) SELECT randomblob({}) FROM n;",
        page_size / 3
    )
}

#[test]
fn delete_mode_journal_with_cache_spills() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    for page_size in [1024, 4096, 65536] {
        let (db, conn) = create_db(dir.path(), page_size, 400, "DELETE");
        // cache_spill too: tests in one process share SQLite's page-cache
        // pool, so a small cache_size alone does not always force a spill.
        conn.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 10")
            .unwrap();
        let c = capture(&conn, &db, page_size, &churn(page_size), "COMMIT");
        assert!(
            c.on_disk != c.original,
            "no cache spill: the test checks nothing"
        );
        let checked = check(&c);
        assert!(
            checked.segments >= 2,
            "page size {page_size}: only {} segment(s)",
            checked.segments
        );
        assert!(checked.pages.len() > 10);
        // The committed journal is gone.
        assert!(read_journal_pages(&journal_path(&db)).unwrap().is_none());
    }
}

#[test]
fn persist_mode_journal_with_stale_tail() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let page_size = 4096;
    let (db, conn) = create_db(dir.path(), page_size, 600, "PERSIST");
    conn.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 10")
        .unwrap();
    // A big first transaction leaves a long journal behind.
    conn.execute_batch("UPDATE t SET v = randomblob(length(v))")
        .unwrap();
    let persisted = std::fs::read(journal_path(&db)).unwrap();
    assert!(persisted.len() > 100 * 4096);
    assert!(persisted[..28].iter().all(|&b| b == 0), "header not zeroed");
    assert!(read_journal_pages(&journal_path(&db)).unwrap().is_none());

    let c = capture(
        &conn,
        &db,
        page_size,
        "UPDATE t SET v = randomblob(length(v)) WHERE id % 20 = 0",
        "COMMIT",
    );
    assert!(
        c.on_disk != c.original,
        "no cache spill: the test checks nothing"
    );
    let checked = check(&c);
    assert!(checked.segments >= 2);
    let frame = page_size as usize + 8;
    assert!(
        checked.pages.len() * frame < c.journal.len() / 2,
        "the journal should have a stale tail from the first transaction"
    );
    assert!(read_journal_pages(&journal_path(&db)).unwrap().is_none());
}

#[test]
fn big_transaction_many_segments() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let page_size = 4096;
    let (db, conn) = create_db(dir.path(), page_size, 4000, "DELETE");
    conn.execute_batch("PRAGMA cache_size = 20; PRAGMA cache_spill = 20")
        .unwrap();
    let sql = "UPDATE t SET v = randomblob(length(v) + 10);
               DELETE FROM t WHERE id % 4 = 1;
               UPDATE t SET v = randomblob(100) WHERE id % 4 = 2;";
    let c = capture(&conn, &db, page_size, sql, "ROLLBACK");
    let checked = check(&c);
    let original_pages = (c.original.len() / c.page_size) as u32;
    assert!(checked.segments >= 5, "{} segments", checked.segments);
    assert!(
        checked.pages.len() as u32 > original_pages / 2,
        "{} of {original_pages} pages journaled",
        checked.pages.len()
    );
    // The rollback left the database as it was.
    assert!(std::fs::read(&db).unwrap() == c.original);
}

#[test]
fn synchronous_off_journal_counts_records_from_file_size() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let page_size = 1024;
    let (db, conn) = create_db(dir.path(), page_size, 300, "DELETE");
    conn.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 10; PRAGMA synchronous = OFF")
        .unwrap();
    let c = capture(&conn, &db, page_size, &churn(page_size), "COMMIT");
    let checked = check(&c);
    assert_eq!(checked.record_count, 0xffff_ffff);
    assert_eq!(checked.segments, 1);
    assert!(checked.pages.len() > 10);
}

#[test]
fn journal_not_synced_yet_is_not_hot() {
    let _serial = one_at_a_time();
    // Without a cache spill the journal header is only completed at commit,
    // and the database file is untouched: nothing to roll back.
    let dir = tempfile::tempdir().unwrap();
    let (db, conn) = create_db(dir.path(), 4096, 50, "DELETE");
    let c = capture(&conn, &db, 4096, "UPDATE t SET v = x'00'", "COMMIT");
    assert!(c.on_disk == c.original);
    assert!(!c.journal.is_empty());
    assert!(
        JournalReader::new(Cursor::new(&c.journal), c.journal.len() as u64)
            .unwrap()
            .is_none()
    );
}

#[test]
fn playback_stops_at_first_bad_checksum() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let page_size = 1024;
    let (db, conn) = create_db(dir.path(), page_size, 300, "DELETE");
    conn.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 10")
        .unwrap();
    let c = capture(&conn, &db, page_size, &churn(page_size), "COMMIT");
    let all = check(&c).pages.len();
    assert!(all > 5);
    let sector = u32::from_be_bytes(c.journal[20..24].try_into().unwrap()) as usize;
    let frame = page_size as usize + 8;
    let records_in_first = u32::from_be_bytes(c.journal[8..12].try_into().unwrap()) as usize;
    assert!(records_in_first > 3);

    let count = |journal: &[u8]| {
        let mut reader = JournalReader::new(Cursor::new(journal), journal.len() as u64)
            .unwrap()
            .unwrap();
        let mut page = Vec::new();
        let mut n = 0;
        while reader.next_record(&mut page).unwrap().is_some() {
            n += 1;
        }
        n
    };
    // A byte the checksum covers (page offset page_size - 200) in record 3.
    let mut bad = c.journal.clone();
    bad[sector + 3 * frame + 4 + page_size as usize - 200] ^= 1;
    assert_eq!(count(&bad), 3);
    // A wrong stored checksum in record 2.
    let mut bad = c.journal.clone();
    bad[sector + 3 * frame - 1] ^= 0x80;
    assert_eq!(count(&bad), 2);
    // Page number 0 ends playback too.
    let mut bad = c.journal.clone();
    bad[sector + frame..sector + frame + 4].copy_from_slice(&[0; 4]);
    assert_eq!(count(&bad), 1);
    // A journal cut in the middle of a record ends before that record.
    assert_eq!(count(&c.journal[..sector + 2 * frame + 10]), 2);
}

#[test]
fn journal_checksum_matches_sqlite_records() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let page_size = 4096;
    let (db, conn) = create_db(dir.path(), page_size, 200, "DELETE");
    conn.execute_batch("PRAGMA cache_size = 10; PRAGMA cache_spill = 10")
        .unwrap();
    let c = capture(&conn, &db, page_size, &churn(page_size), "COMMIT");
    let sector = u32::from_be_bytes(c.journal[20..24].try_into().unwrap()) as usize;
    let nonce = u32::from_be_bytes(c.journal[12..16].try_into().unwrap());
    let ps = page_size as usize;
    let record = &c.journal[sector..sector + ps + 8];
    let stored = u32::from_be_bytes(record[4 + ps..].try_into().unwrap());
    assert_eq!(journal_checksum(nonce, &record[4..4 + ps]), stored);
    assert_ne!(
        journal_checksum(nonce.wrapping_add(1), &record[4..4 + ps]),
        stored
    );
}

#[test]
fn journals_that_are_not_hot() {
    let _serial = one_at_a_time();
    let none = |bytes: &[u8]| {
        JournalReader::new(Cursor::new(bytes), bytes.len() as u64)
            .unwrap()
            .is_none()
    };
    assert!(none(b""));
    assert!(none(&[0u8; 4096]));
    assert!(none(&[0xffu8; 4096]));
    let mut short = JOURNAL_MAGIC.to_vec();
    short.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 2, 0, 0, 0, 2, 0]);
    assert!(none(&short), "header shorter than its sector is not hot");

    let mut bad_sector = short.clone();
    bad_sector[20..24].copy_from_slice(&1000u32.to_be_bytes());
    bad_sector.resize(4096, 0);
    let err = JournalReader::new(Cursor::new(&bad_sector), 4096)
        .err()
        .unwrap();
    assert!(err.to_string().contains("sector size 1000"), "{err}");

    let mut bad_page = short.clone();
    bad_page[24..28].copy_from_slice(&1000u32.to_be_bytes());
    bad_page.resize(4096, 0);
    let err = JournalReader::new(Cursor::new(&bad_page), 4096)
        .err()
        .unwrap();
    assert!(err.to_string().contains("page size 1000"), "{err}");

    // A valid header with no records: hot (the database is truncated) but empty.
    let mut empty = short.clone();
    empty.resize(512, 0);
    let mut reader = JournalReader::new(Cursor::new(&empty), 512)
        .unwrap()
        .unwrap();
    assert_eq!(reader.header().initial_page_count, 2);
    assert_eq!(reader.header().nonce, 9);
    assert_eq!(reader.next_record(&mut Vec::new()).unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    assert!(read_journal_pages(&dir.path().join("missing-journal"))
        .unwrap()
        .is_none());
    let path = dir.path().join("bad-journal");
    std::fs::write(&path, &bad_page).unwrap();
    let err = read_journal_pages(&path).unwrap_err();
    assert!(err.to_string().contains("bad-journal"), "{err}");
}

#[test]
fn database_header_of_real_files() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    for page_size in [512, 1024, 4096, 32768, 65536] {
        let (db, conn) = create_db(dir.path(), page_size, 40, "DELETE");
        let bytes = std::fs::read(&db).unwrap();
        assert_eq!(&bytes[..16], DATABASE_MAGIC);
        let header = parse_database_header(&bytes).unwrap();
        assert_eq!(header.page_size, page_size);
        assert_eq!(header.page_count as usize * page_size as usize, bytes.len());
        assert!(header.page_count_is_valid());
        assert!(!header.is_wal());
        assert_eq!(header.text_encoding, 1);
        assert_eq!(header, read_database_header(&db).unwrap());

        let before = header.change_counter;
        conn.execute_batch("INSERT INTO t (v) VALUES (x'01'); PRAGMA user_version = 7;")
            .unwrap();
        let after = read_database_header(&db).unwrap();
        assert_eq!(after.change_counter, before + 2);
        assert_eq!(after.user_version, 7);
        let len = std::fs::metadata(&db).unwrap().len();
        assert_eq!(u64::from(after.page_count) * u64::from(page_size), len);
    }
    let (db, conn) = create_db(dir.path(), 4096, 10, "WAL");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    assert!(read_database_header(&db).unwrap().is_wal());
}

#[test]
fn database_header_errors() {
    let _serial = one_at_a_time();
    let err = parse_database_header(&[0u8; 50]).unwrap_err();
    assert!(err.to_string().contains("got 50"), "{err}");
    let err = parse_database_header(&[b'x'; 100]).unwrap_err();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    let mut buf = [0u8; 100];
    buf[..16].copy_from_slice(DATABASE_MAGIC);
    buf[16..18].copy_from_slice(&1000u16.to_be_bytes());
    let err = parse_database_header(&buf).unwrap_err();
    assert!(err.to_string().contains("page size 1000"), "{err}");
    buf[16..18].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(parse_database_header(&buf).unwrap().page_size, 65536);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.db");
    std::fs::write(&path, b"SQLite format 3\0").unwrap();
    let err = read_database_header(&path).unwrap_err();
    assert!(err.to_string().contains("short.db"), "{err}");
    assert!(matches!(err, sqlite::Error::File { .. }));
}
