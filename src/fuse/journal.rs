//! The rollback journal in FUSE passthrough on the primary: where a
//! transaction begins and ends when its journal writes never reach litefs.
//!
//! SQLite writes each journal record as three writes (page number, page,
//! checksum), and through litefs each is a round trip to the daemon: most
//! of what a small transaction costs on the mount. litefs needs none of
//! the records while it runs (start-up recovery reads them from the backing
//! file, where passthrough puts them at once), only the transaction's
//! bounds. So on the primary the journal passes through (`passthrough.rs`)
//! and litefs learns the bounds from what still reaches it:
//!
//! - **Begin**: the first database write of a transaction finds the
//!   journal's header live on disk (`journal_bounds`).
//! - **End**: deleting the journal (DELETE) and truncating it (TRUNCATE)
//!   still reach litefs. Zeroing its header (PERSIST, and every mode under
//!   `locking_mode=EXCLUSIVE`) is a write, which passes through; SQLite
//!   then syncs the journal, and that fsync, finding the header no longer
//!   live, is the commit point (`journal_fsync`), before COMMIT returns.
//!   Killed between the zeroing and that fsync, litefs finds the
//!   transaction at start-up (`Db::reload`).
//!
//! That last rule holds only when SQLite syncs (synchronous=NORMAL or
//! FULL). With synchronous=OFF nothing would reach litefs after the header
//! is zeroed, and the LTX file would come late. So a journal passes
//! through only for a database whose previous recorded transaction synced
//! its journal before its pages reached the database (`commit` notes it),
//! which synchronous=OFF never does: its journal writes go through litefs,
//! and the zeroed header is seen as it is written. After each start a
//! database's first transaction goes through litefs; a database deleted
//! and created again keeps its name's flag (`JournalStates::forget`), so
//! for its first transaction the case below applies too. A connection in
//! exclusive locking mode keeps the journal it opened first, passing
//! through or not.
//!
//! The case left: a connection that turns synchronous=OFF while its
//! database's journal passes through (a syncing connection used it just
//! before) and ends a transaction by zeroing the header makes no fsync
//! after it. Its transaction is recorded when SQLite closes the journal
//! (`journal_released`), a moment after COMMIT returns, or, in exclusive
//! locking mode (the journal stays open), at the next transaction's first
//! database write, which finds a header with another nonce
//! (`journal_bounds`), or when the connection closes. A kill -9 of litefs
//! before then, with the header still zeroed, is recorded at start-up
//! (`Db::reload`); in exclusive mode with the next transaction's header
//! already written, start-up rolls that one back and reports the earlier
//! one as a mismatch (nothing of it is lost on the primary; replicas take
//! a snapshot). Tests: `with_synchronous_off_the_journal_goes_through_litefs`
//! (tests/journal_passthrough.rs).
//!
//! Should recording fail at the fsync that ends a transaction (a full
//! disk), the header found at the transaction's start is written back
//! (`put_back_header`), so the journal is hot again and SQLite's COMMIT
//! fails and rolls back, as when the commit point reaches litefs before
//! the disk. A step-down seals a journal some handle holds in passthrough
//! (`Applier::seal_journal`), so a connection from before it fails at its
//! next journal write instead of leaving a live header every reader on the
//! replica would take for a hot journal.
//!
//! Locks: `unseen_txns` is taken first where it is taken, then the name
//! sets (each its own mutex, taken alone) and the database's state (in
//! `commit`); the caller holds the primary role (`Role::hold_primary`).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::Errno;
use log::{error, warn};

use super::inodes::FileKind;
use super::passthrough::Backing;
use super::{Answer, LitefsFs};
use crate::sqlite::{
    read_journal_head, read_journal_head_from, JOURNAL_HEADER_SIZE, JOURNAL_MAGIC,
};
use crate::store::Db;

/// A journal's header as it is on disk (zeros past the file's end).
type Header = [u8; JOURNAL_HEADER_SIZE];

/// The transactions that began unseen in a journal passing through, by
/// database name: each one's header as its first database write found
/// it. The mutex also makes each decision about a passing-through
/// journal's bounds (`journal_bounds`, `journal_fsync`,
/// `journal_released`) one step, so that no other connection's
/// transaction can begin between a check of the header and the commit
/// it decides.
pub(super) type UnseenTransactions = std::sync::Mutex<HashMap<String, Header>>;

impl LitefsFs {
    /// Whether an open for writing of `db`'s journal may pass through:
    /// `db`'s last recorded transaction synced its journal before writing
    /// the database (see the module comment).
    pub(super) fn journal_may_pass_through(&self, db: &Db) -> bool {
        self.journals.get(db.name()).syncing_db
    }

    /// The backing file of `db`'s journal while some handle holds it open
    /// in passthrough.
    fn journal_passes_through(&self, db: &Db) -> Option<Arc<Backing>> {
        self.passthrough.registered(self.ino(db, FileKind::Journal))
    }

    /// At a write of `db`'s database: whether a transaction is under way
    /// in its journal. With the journal passing through, its header on
    /// disk says so: a live header litefs has not noted begins a
    /// transaction; one with another nonce (SQLite seeds each header
    /// afresh), or none, means the noted transaction ended unseen, by a
    /// zeroed header with no fsync after it (`synchronous=OFF` in
    /// exclusive locking mode), and it is recorded first: every page of
    /// it came before this write.
    pub(super) fn journal_bounds(&self, db: &Db) -> Result<bool, Errno> {
        let active = self.journal_active(db.name());
        let Some(journal) = self.journal_passes_through(db) else {
            return Ok(active);
        };
        let mut unseen = self.unseen_txns.lock().unwrap_or_else(|e| e.into_inner());
        // A read that fails tells nothing of the bounds: refuse the write
        // rather than guess (SQLite rolls back).
        let Some((head, _)) = read_journal_head_from(&journal.file) else {
            error!(
                "db {}: cannot read its journal's header; the write is refused",
                db.name()
            );
            return Err(Errno::EIO);
        };
        let live = is_live(&head);
        if active {
            match unseen.get(db.name()) {
                // Begun as litefs saw it (a hot journal opened), or the
                // same transaction still.
                None => return Ok(true),
                Some(noted) if live && noted[12..16] == head[12..16] => return Ok(true),
                Some(_) => {
                    warn!(
                        "db {}: a transaction ended without a journal sync \
                         (synchronous=OFF); recording it at the next one's first write",
                        db.name()
                    );
                    // Reported committed long ago: not waited for.
                    let recorded = self.record_commit(db, false)?;
                    self.finish_commit(db, recorded, Answer::Now)?;
                    unseen.remove(db.name());
                }
            }
        }
        if !live {
            return Ok(false);
        }
        self.journal_began(db.name());
        unseen.insert(db.name().to_string(), head);
        Ok(true)
    }

    /// A transaction began in `db`'s journal (its header was written).
    pub(super) fn journal_began(&self, db: &str) {
        self.journals.update(db, |j| {
            j.ended = false;
            j.active = true;
        });
    }

    /// `db`'s journal was opened for writing: a transaction is about to
    /// begin in it, and has synced nothing yet.
    pub(super) fn journal_opened_for_writing(&self, db: &str) {
        self.journals.update(db, |j| j.synced = false);
    }

    /// An fsync of `db`'s journal on the primary. With a live header it is
    /// a sync within a transaction, noted for `commit`; without one, a
    /// transaction litefs still counts as open ended by zeroing the header
    /// in passthrough, and this is its commit point: should recording it
    /// fail, the header is put back, so that the transaction is rolled
    /// back (SQLite's COMMIT fails) rather than left in the file
    /// unrecorded. Returns whether the disk flush may be skipped: the
    /// journal ended a recorded transaction (`JournalState::ended`) and is
    /// still as that end left it, empty or its header all zeros (a new
    /// transaction's first header in `synchronous=FULL` has only its magic
    /// zeroed, until its records are synced).
    pub(super) fn journal_fsync(&self, db: &Db, backing: Option<&Backing>) -> Result<bool, Errno> {
        let mut unseen = self.unseen_txns.lock().unwrap_or_else(|e| e.into_inner());
        let head = journal_header(db, backing);
        if is_live(&head) {
            self.journals.update(db.name(), |j| {
                j.synced = true;
                j.ended = false;
            });
            return Ok(false);
        }
        let put_back = |noted: Option<&Header>| {
            if let Some(noted) = noted {
                if let Err(restore) = put_back_header(db, noted) {
                    error!(
                        "db {}: cannot put the journal's header back after a failed commit \
                         ({restore}); the transaction stays in the database file and is \
                         recorded at start-up",
                        db.name()
                    );
                }
            }
        };
        // `max-lag` and the replicas are asked once `unseen_txns` is let
        // go: other databases' journals need it meanwhile.
        let recorded = match self.record_commit(db, false) {
            Ok(recorded) => recorded,
            Err(e) => {
                put_back(unseen.get(db.name()));
                return Err(e);
            }
        };
        // Other databases' journals need `unseen_txns` while this commit
        // waits for replicas; SQLite's lock keeps this one's transaction.
        let noted = unseen.remove(db.name());
        drop(unseen);
        if let Err(e) = self.finish_commit(db, recorded, Answer::AfterAdmitAndReplicas) {
            // Taken back: the journal's header is live and noted again, so
            // SQLite's rollback of it is seen as that transaction's end.
            let mut unseen = self.unseen_txns.lock().unwrap_or_else(|e| e.into_inner());
            put_back(noted.as_ref());
            if let Some(noted) = noted {
                unseen.insert(db.name().to_string(), noted);
            }
            return Err(e);
        }
        Ok(self.journals.get(db.name()).ended && head == [0u8; JOURNAL_HEADER_SIZE])
    }

    /// A handle of `db`'s journal that passed through was closed: a
    /// transaction that ended by zeroing the header with no sync after it
    /// (see the module comment) is recorded now.
    pub(super) fn journal_released(&self, db: &Db, backing: &Backing) {
        let mut unseen = self.unseen_txns.lock().unwrap_or_else(|e| e.into_inner());
        if !self.journal_active(db.name()) || is_live(&journal_header(db, Some(backing))) {
            return;
        }
        // Reported committed already: not waited for.
        match self
            .record_commit(db, false)
            .and_then(|recorded| self.finish_commit(db, recorded, Answer::Now))
        {
            Ok(()) => {
                unseen.remove(db.name());
            }
            Err(e) => error!(
                "db {}: the transaction that ended when its journal was closed is not \
                 recorded ({e:?}); it is recorded at the next commit or start-up",
                db.name()
            ),
        }
    }

    /// Bookkeeping at a recorded commit (`recorded`: an LTX file was
    /// written, not a rollback): whether this transaction synced its
    /// journal decides whether the next one's may pass through.
    pub(super) fn journal_committed(&self, db: &str, recorded: bool) {
        self.journals.update(db, |j| {
            if recorded {
                j.syncing_db = j.synced;
            }
            j.synced = false;
        });
    }
}

/// `db`'s journal header on disk, read from `backing` (the registered
/// file SQLite's writes reach) when the journal passes through; zeros
/// where there is none.
fn journal_header(db: &Db, backing: Option<&Backing>) -> Header {
    match backing {
        Some(backing) => read_journal_head_from(&backing.file),
        None => read_journal_head(db.journal_path()),
    }
    .map_or([0u8; JOURNAL_HEADER_SIZE], |(head, _)| head)
}

fn is_live(head: &Header) -> bool {
    head[..8] == JOURNAL_MAGIC
}

/// Writes `header` back at the start of `db`'s journal, making it hot.
fn put_back_header(db: &Db, header: &Header) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(db.journal_path())?;
    file.write_all_at(header, 0)?;
    file.sync_data()
}
