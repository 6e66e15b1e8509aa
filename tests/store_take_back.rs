//! Tests of the store without FUSE: taking back the newest transaction (a
//! synchronous commit its replicas did not acknowledge in time), and a
//! replica that had received it and then gets the primary's snapshot.

mod store_common;

use std::fs;
use std::path::PathBuf;

use litefs::store::{self, Error};
use store_common::{empty_db, read, sqlite_shared, three_transactions};

#[test]
fn taking_back_the_newest_transaction_restores_the_position_before_it() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (mut primary, states) = three_transactions(&tmp.path().join("primary"));
    let before = primary.db.pos();
    // Changes existing pages, adds pages and reuses none of the free list.
    let pos = primary
        .exec("UPDATE t SET v = randomblob(300) WHERE rowid % 2 = 0; INSERT INTO t VALUES(randomblob(9000));")
        .unwrap();
    let taken = primary.newest_ltx();

    // Only the newest transaction, and only at its own position.
    let older = store::Position {
        txid: before.txid,
        checksum: before.checksum,
    };
    assert!(matches!(
        primary.db.take_back(older),
        Err(Error::Changed { .. })
    ));
    assert_eq!(primary.db.take_back(pos).unwrap(), before);
    assert_eq!(primary.db.pos(), before);
    assert!(!taken.exists(), "{} was not removed", taken.display());
    assert!(matches!(
        primary.db.take_back(pos),
        Err(Error::Changed { .. })
    ));

    // SQLite puts the old pages back (its journal's rollback, done here by
    // hand): nothing is recorded, the state matches the file again.
    fs::write(primary.db.database_path(), &states[2]).unwrap();
    primary.file = states[2].clone();
    assert_eq!(primary.record(), None);
    // The next transaction takes the TXID back, from the position before.
    let next = primary.exec("DELETE FROM t WHERE rowid = 1;").unwrap();
    assert_eq!(next.txid, pos.txid);
    assert_ne!(next.checksum, pos.checksum);
}

#[test]
fn a_snapshot_replaces_files_queued_from_a_history_taken_back() {
    let _page_cache = sqlite_shared();
    let tmp = tempfile::tempdir().unwrap();
    let (mut primary, states) = three_transactions(&tmp.path().join("primary"));
    let (_replica_store, replica) = empty_db(&tmp.path().join("replica"));
    for (_, _, path) in primary.db.ltx_files().unwrap() {
        replica.apply_ltx(&path).unwrap();
    }

    // TXID 4 reaches the replica's queue, then the primary takes it back.
    let pos = primary
        .exec("INSERT INTO t VALUES(randomblob(700));")
        .unwrap();
    let copy = |from: PathBuf, name: &str| {
        let to = tmp.path().join(name);
        fs::copy(from, &to).unwrap();
        to
    };
    let taken = copy(primary.newest_ltx(), "taken.ltx");
    replica.enqueue_ltx(&taken).unwrap();
    primary.db.take_back(pos).unwrap();
    fs::write(primary.db.database_path(), &states[2]).unwrap();
    primary.file = states[2].clone();

    // The primary's stream sends a snapshot (the replica is ahead), then
    // its own TXID 4, whose file name is the queued one's.
    let snapshot = tmp.path().join("snapshot.ltx");
    primary
        .db
        .write_snapshot(fs::File::create(&snapshot).unwrap())
        .unwrap();
    replica.enqueue_ltx(&snapshot).unwrap();
    let next = primary
        .exec("INSERT INTO t VALUES(randomblob(800));")
        .unwrap();
    replica
        .enqueue_ltx(&copy(primary.newest_ltx(), "next.ltx"))
        .unwrap();

    // The queue holds the snapshot and the new TXID 4 only.
    assert_eq!(replica.queued_len(), 2);
    while let Some(front) = replica.front_queued() {
        replica.apply_ltx(&front).unwrap();
        replica.finish_queued(&front, true);
    }
    assert_eq!(replica.pos(), next);
    assert!(read(replica.database_path()) == read(primary.db.database_path()));
    assert!(!replica.take_queue_dropped());
}
