//! Tests of the store without FUSE: recovery when a store is opened again —
//! positions, tampered files, SQLite's hot journal and litefs's undo log
//! after a crash mid-transaction, interrupted applies, and databases copied
//! into the data directory.

mod store_common;

use std::fs::{self, File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use litefs::ltx::{self, LtxDecoder};
use litefs::store::{self, Db, Position, Store};
use rusqlite::Connection;
use store_common::{
    commit_through_writes, connect, empty_db, integrity_check, read, sqlite_alone, sqlite_shared,
    three_transactions, write_through,
};

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
    crash_in(&m, REUSING_TRANSACTION);
    assert!(fs::metadata(m.db.undo_path()).unwrap().len() > 0);
    (m.store.data_dir().to_path_buf(), pos, committed)
}

/// Leaves what a crash of litefs in the middle of `sql` leaves: its writes
/// passed through to the database file, SQLite's hot journal in place.
fn crash_in(m: &Mirrored, sql: &str) {
    let before = read(m.db.database_path());
    let (hot, journal) = hot_shadow(m, sql, "ROLLBACK");
    write_through(&m.db, &m.shadow_file, &hot);
    fs::write(m.db.journal_path(), &journal).unwrap();
    assert!(read(m.db.database_path()) != before);
}

/// Opens the store again after `crash_in` and checks that recovery gave
/// back position `pos` and the file `committed`.
fn reopens_at(m: Mirrored, pos: Position, committed: &[u8], context: &str) {
    let data = m.store.data_dir().to_path_buf();
    drop(m);
    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos, "{context}");
    assert!(read(db.database_path()) == committed, "{context}");
    assert_eq!(integrity_check(db.database_path()), "ok", "{context}");
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

/// A rollback that ended the way PERSIST mode ends a transaction, with the
/// journal's header zeroed (in passthrough, litefs learns of that end only
/// at the fsync after it), and litefs killed before that fsync: the file
/// differs from the position only in the reused free-list pages of the
/// undo log. Start-up puts those back and records nothing, where a
/// committed transaction that ended so would be recorded
/// (tests/journal_passthrough.rs).
#[test]
fn a_rollback_that_ended_in_a_zeroed_journal_is_undone_not_recorded() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let m = with_free_pages(tmp.path());
    let pos = m.db.pos();
    let committed = read(m.db.database_path());
    let (hot, journal) = hot_shadow(&m, REUSING_TRANSACTION, "ROLLBACK");
    // The transaction's writes, then SQLite's rollback of them.
    write_through(&m.db, &m.shadow_file, &hot);
    let rolled_back = read(&m.shadow);
    assert!(
        rolled_back != committed,
        "the rollback must leave changed free pages"
    );
    write_through(&m.db, &hot, &rolled_back);
    let mut zeroed = journal.clone();
    zeroed[..28].fill(0);
    fs::write(m.db.journal_path(), &zeroed).unwrap();
    let data = m.store.data_dir().to_path_buf();
    drop(m);

    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos, "a rollback was recorded as a transaction");
    assert!(read(db.database_path()) == committed);
    assert_eq!(integrity_check(db.database_path()), "ok");
}

/// Like [`REUSING_TRANSACTION`], reusing fewer free-list pages.
const SMALL_REUSING_TRANSACTION: &str = "PRAGMA cache_size=10; BEGIN;
    INSERT INTO t(v) SELECT randomblob(3500) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 15) SELECT x FROM c);";

/// Each transaction writes its undo records over the earlier ones from the
/// start of the file, which is not emptied between transactions: records
/// of an earlier transaction stay behind the new ones. Those of another
/// position are ignored, and those of the same position hold the pages as
/// they are at that position, so recovery from a crash in a smaller
/// transaction still gives the committed file, whichever they are.
#[test]
fn undo_records_left_by_earlier_transactions_are_harmless() {
    let _page_cache = sqlite_alone();
    for move_position in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = with_free_pages(tmp.path());
        // A large transaction's records stay behind it.
        m.exec(&format!("{REUSING_TRANSACTION} ROLLBACK;"));
        let undo_len = fs::metadata(m.db.undo_path()).unwrap().len();
        assert!(undo_len > 0, "the rollback saved no free-list page");
        if move_position {
            // Their position is no longer the current one, and the pages
            // they hold now hold something else.
            let commit = m.exec(&format!("{REUSING_TRANSACTION} COMMIT;"));
            assert!(commit.position.is_some());
        }
        let pos = m.db.pos();
        let committed = read(m.db.database_path());

        crash_in(&m, SMALL_REUSING_TRANSACTION);
        assert_eq!(
            fs::metadata(m.db.undo_path()).unwrap().len(),
            undo_len,
            "the smaller transaction's records must lie over the larger one's"
        );
        reopens_at(
            m,
            pos,
            &committed,
            &format!("position moved: {move_position}"),
        );
    }
}

/// Undo records all have one length, so that recovery's scan never reads
/// from the middle of an old record: the first record of another page
/// size than those in the file empties it first.
#[test]
fn a_new_page_size_empties_the_undo_log_first() {
    let _page_cache = sqlite_alone();
    let tmp = tempfile::tempdir().unwrap();
    let mut m = with_free_pages(tmp.path());
    m.exec(&format!("{REUSING_TRANSACTION} ROLLBACK;"));
    let old_len = fs::metadata(m.db.undo_path()).unwrap().len();
    assert_eq!(old_len % (4096 + 40), 0);

    m.exec("PRAGMA page_size=1024; VACUUM;");
    m.exec("INSERT INTO t(v) SELECT randomblob(700) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300) SELECT x FROM c);");
    m.exec("DELETE FROM t WHERE id % 5 != 0;");
    let pos = m.db.pos();
    let committed = read(m.db.database_path());
    let small = "PRAGMA cache_size=10; BEGIN;
        INSERT INTO t(v) SELECT randomblob(800) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 15) SELECT x FROM c);";
    crash_in(&m, small);
    let new_len = fs::metadata(m.db.undo_path()).unwrap().len();
    assert!(new_len > 0, "the transaction saved no free-list page");
    assert!(
        new_len < old_len && new_len % (1024 + 40) == 0,
        "{new_len} bytes: the old records were not emptied first ({old_len} bytes)"
    );
    reopens_at(m, pos, &committed, "page size 1024");
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

/// Waits until the store has made `ltx/next` for `db`'s next commit.
fn wait_next_ltx_file(db: &Db) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !db.next_ltx_file_ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "ltx/next was not made within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_commit_whose_rename_was_lost_is_named_at_open() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut primary, _) = three_transactions(&data);
    wait_next_ltx_file(&primary.db);
    let pos = primary
        .exec("UPDATE t SET v = randomblob(300) WHERE rowid % 4 = 1;")
        .unwrap();
    let ltx_dir = data.join("dbs/db/ltx");
    let newest = ltx_dir.join(ltx::filename(pos.txid, pos.txid));
    assert!(
        newest.exists(),
        "the commit through ltx/next named its file"
    );
    let committed = read(primary.db.database_path());
    wait_next_ltx_file(&primary.db);
    drop(primary);

    // A crash before the directory holding the rename reached the disk:
    // the file is still `next`.
    fs::rename(&newest, ltx_dir.join("next")).unwrap();
    let store = Store::open(&data).unwrap();
    let db = store.db("db").unwrap();
    assert_eq!(db.pos(), pos);
    assert!(newest.exists(), "recovery gave the file its name");
    assert!(!ltx_dir.join("next").exists());
    assert!(read(db.database_path()) == committed);
}

#[test]
fn an_unfinished_or_stale_next_ltx_file_is_deleted_at_open_an_empty_one_kept() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (primary, _) = three_transactions(&data);
    let pos = primary.db.pos();
    wait_next_ltx_file(&primary.db);
    drop(primary);
    let ltx_dir = data.join("dbs/db/ltx");
    let newest = fs::read(ltx_dir.join(ltx::filename(pos.txid, pos.txid))).unwrap();
    let older = fs::read(ltx_dir.join(ltx::filename(pos.txid - 1, pos.txid - 1))).unwrap();
    let _ = fs::remove_file(ltx_dir.join("next"));
    let files_before = fs::read_dir(&ltx_dir).unwrap().count();
    // Torn (a commit cut short), and whole but not the next TXID.
    for content in [newest[..newest.len() / 2].to_vec(), older] {
        fs::write(ltx_dir.join("next"), &content).unwrap();
        let store = Store::open(&data).unwrap();
        assert_eq!(store.db("db").unwrap().pos(), pos);
        assert!(!ltx_dir.join("next").exists());
        assert_eq!(fs::read_dir(&ltx_dir).unwrap().count(), files_before);
    }
    // Empty (made, never filled): kept for the next commit.
    fs::write(ltx_dir.join("next"), b"").unwrap();
    let store = Store::open(&data).unwrap();
    assert_eq!(store.db("db").unwrap().pos(), pos);
    assert_eq!(fs::metadata(ltx_dir.join("next")).unwrap().len(), 0);
}
