//! Tests of the store without FUSE: applying LTX files (and refusing those
//! that do not fit), snapshots, and retention of old LTX files.

mod store_common;

use std::fs::{self, File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use litefs::ltx::{self, LtxDecoder, LtxEncoder};
use litefs::store::{Db, Error, Store};
use store_common::{empty_db, read, sqlite_shared, three_transactions, Primary};

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
