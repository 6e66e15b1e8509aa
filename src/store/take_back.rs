//! Taking back the newest recorded transaction: a synchronous commit
//! (`replication.sync`) whose replicas did not acknowledge it within
//! `sync-timeout`, with `sync-fallback: fail`. The application is told the
//! commit failed, so the transaction must not stay: its LTX file goes
//! (durably, before SQLite hears back), and the database's state returns
//! to the position before it. SQLite then rolls the database file back
//! itself: the rollback journal stays hot (the mount refuses the journal's
//! end), or the WAL's commit frame is invalidated (`fuse/wal_follower.rs`).
//!
//! Each commit keeps what it changed in `State::last_recorded` (the old
//! checksums of the pages it changed or cut off, the free list, the WAL
//! index), a few bytes per changed page. Only the newest transaction can
//! be taken back, and only while the writer that committed it still holds
//! SQLite's write lock (the mount waits for replicas before it answers the
//! commit's last request), so nothing can have been recorded after it.
//!
//! A replica that received the file before it went has a transaction the
//! primary does not: its stream sees the replica ahead of (or beside) the
//! primary and sends a snapshot (`http/server/stream.rs`).
//!
//! Free-list pages the transaction reused are not in SQLite's journal and
//! its undo-log copies are gone once it is recorded: after SQLite's
//! rollback they keep the new content, which the next commit records as a
//! transaction of its own (pages SQLite never reads: the rows are those
//! of the position before the taken-back one).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use super::db::{Change, State};
use super::{sync_dir, Db, Error, Freelist, PageChecksums, Position};

/// What a recorded transaction changed in `State`, to put back.
#[derive(Debug)]
pub(super) struct Recorded {
    /// The positions before and after it.
    before: Position,
    after: Position,
    /// Its LTX file.
    path: PathBuf,
    page_size: Option<u32>,
    checksums: OldChecksums,
    freelist: Arc<Freelist>,
    wal_mode: bool,
    /// WAL commits: the WAL index before them.
    wal_index: Option<BTreeMap<u32, u64>>,
}

/// The page checksums before a transaction.
#[derive(Debug)]
enum OldChecksums {
    /// The page count, and the old checksum of each page the transaction
    /// changed or cut off.
    Pages(u32, Vec<(u32, u64)>),
    /// All of them (a transaction that replaced every page).
    All(PageChecksums),
}

impl Recorded {
    /// Notes what `change`, about to be applied to `state` as the
    /// transaction recorded in `path` at `after`, replaces.
    pub(super) fn before(
        state: &State,
        change: &Change,
        path: PathBuf,
        after: Position,
    ) -> Recorded {
        let checksums = if change.incremental {
            let count = state.checksums.page_count();
            let cut = (change.page_count() + 1)..=count;
            let mut old: Vec<(u32, u64)> = change
                .pages
                .iter()
                .filter(|&&(pgno, _)| pgno <= count)
                .map(|&(pgno, _)| (pgno, state.checksums.get(pgno)))
                .collect();
            old.extend(cut.map(|pgno| (pgno, state.checksums.get(pgno))));
            OldChecksums::Pages(count, old)
        } else {
            OldChecksums::All(state.checksums.clone())
        };
        Recorded {
            before: state.pos,
            after,
            path,
            page_size: state.page_size,
            checksums,
            freelist: state.freelist.clone(),
            wal_mode: state.wal_mode,
            wal_index: None,
        }
    }

    /// The WAL index before a WAL commit.
    pub(super) fn with_wal_index(mut self, index: BTreeMap<u32, u64>) -> Recorded {
        self.wal_index = Some(index);
        self
    }
}

impl Db {
    /// This primary imported a file as the transaction at `pos`
    /// (`Applier::import`): `replication.max-lag` counts it like a commit.
    pub fn note_imported(&self, pos: Position) {
        self.acks.note_recorded(&self.name, pos);
    }

    /// Takes back the transaction recorded at `pos`, the newest (see the
    /// module comment). Returns the position before it. Refused when `pos`
    /// is not the newest or its record is gone; the LTX file that cannot
    /// be removed leaves everything as it was.
    pub fn take_back(&self, pos: Position) -> Result<Position, Error> {
        let mut state = self.lock();
        let recorded = match state.last_recorded.take() {
            Some(r) if r.after == pos && state.pos == pos => r,
            other => {
                state.last_recorded = other;
                return Err(Error::Changed {
                    db: self.name.clone(),
                    reason: format!(
                        "cannot take back TXID {pos}: it is not the newest transaction \
                         recorded (the newest is {})",
                        state.pos
                    ),
                });
            }
        };
        if let Err(err) = fs::remove_file(&recorded.path) {
            let path = recorded.path.clone();
            state.last_recorded = Some(recorded);
            return Err(super::io_error(
                format!("taking back TXID {pos} of database {}", self.name),
                &path,
            )(err));
        }
        // Durably gone before SQLite hears the commit failed: a crash then
        // must not find it and keep the transaction.
        if let Err(err) = sync_dir(&self.ltx_dir) {
            log::error!(
                "database {}: the LTX file of the taken-back TXID {pos} is removed, but its \
                 directory cannot be synced ({err}); a power cut now could keep it",
                self.name
            );
        }
        let Recorded {
            before,
            path,
            page_size,
            checksums,
            freelist,
            wal_mode,
            wal_index,
            ..
        } = recorded;
        let changed = match checksums {
            OldChecksums::Pages(count, old) => {
                state.checksums.truncate(count);
                for &(pgno, checksum) in &old {
                    state.checksums.set(pgno, checksum);
                }
                old.into_iter().map(|(pgno, _)| pgno).collect()
            }
            OldChecksums::All(all) => {
                state.checksums = all;
                state.rescan = true;
                Vec::new()
            }
        };
        state.pos = before;
        self.acks.note_taken_back(&self.name, pos);
        state.page_size = page_size;
        state.freelist = freelist;
        state.wal_mode = wal_mode;
        state.unsynced_ltx.retain(|p| *p != path);
        match wal_index {
            Some(index) => state.wal_index = index,
            // SQLite's rollback writes the journaled pages back; every page
            // the transaction changed is compared at the next commit.
            None => state.dirty.extend(changed),
        }
        Ok(before)
    }
}
