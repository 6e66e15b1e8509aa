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
//!   journal's header live on disk (`journal_began_unseen`).
//! - **End**: deleting the journal (DELETE) and truncating it (TRUNCATE)
//!   still reach litefs. Zeroing its header (PERSIST, and every mode under
//!   `locking_mode=EXCLUSIVE`) is a write, which passes through; SQLite
//!   then syncs the journal, and that fsync, finding the header no longer
//!   live, is the commit point (`journal_fsync`), before COMMIT returns.
//!
//! That last rule holds only when SQLite syncs (synchronous=NORMAL or
//! FULL). With synchronous=OFF nothing would reach litefs after the header
//! is zeroed, and the LTX file would come late. So a journal passes
//! through only for a database whose previous recorded transaction synced
//! its journal before its pages reached the database (`commit` notes it),
//! which synchronous=OFF never does: its journal writes go through litefs
//! as before, and the zeroed header is seen as it is written. (A
//! connection that turns synchronous=OFF while it holds the journal open
//! in passthrough, in exclusive locking mode, is the one case left: its
//! transaction is recorded when the journal is closed or the next one
//! begins; see the README.)
//!
//! Lock order: each set below is its own mutex, taken alone.

use fuser::Errno;
use log::error;

use super::{has_name, journal_on_disk_is_live, set_name, LitefsFs};
use crate::store::Db;

impl LitefsFs {
    /// Whether an open for writing of `db`'s journal may pass through:
    /// `db`'s last recorded transaction synced its journal before writing
    /// the database (see the module comment).
    pub(super) fn journal_may_pass_through(&self, db: &Db) -> bool {
        has_name(&self.syncing_dbs, db.name())
    }

    /// A write of `db`'s database while litefs knows of no transaction:
    /// whether the journal's header on disk is live, because a transaction
    /// began in a journal that passes through. Notes the transaction.
    pub(super) fn journal_began_unseen(&self, db: &Db) -> bool {
        if !journal_on_disk_is_live(db.journal_path()) {
            return false;
        }
        self.journal_began(db.name());
        true
    }

    /// A transaction began in `db`'s journal (its header was written).
    pub(super) fn journal_began(&self, db: &str) {
        self.set_journal_ended(db, false);
        self.set_journal_active(db, true);
    }

    /// `db`'s journal was opened for writing: a transaction is about to
    /// begin in it, and has synced nothing yet.
    pub(super) fn journal_opened_for_writing(&self, db: &str) {
        set_name(&self.synced_journals, db, false);
    }

    /// An fsync of `db`'s journal on the primary. With a live header it is
    /// a sync within a transaction, noted for `commit`; without one, a
    /// transaction litefs still counts as open ended by zeroing the header
    /// in passthrough, and this is its commit point. Returns whether the
    /// disk flush may be skipped: the journal ended a recorded transaction
    /// (see `journal_ended`).
    pub(super) fn journal_fsync(&self, db: &Db) -> Result<bool, Errno> {
        if journal_on_disk_is_live(db.journal_path()) {
            set_name(&self.synced_journals, db.name(), true);
            self.set_journal_ended(db.name(), false);
            return Ok(false);
        }
        self.commit(db)?;
        Ok(self.journal_ended(db.name()))
    }

    /// The last handle of `db`'s journal that passed through was closed:
    /// a transaction that ended by zeroing the header with no sync after
    /// it (see the module comment) is recorded now.
    pub(super) fn journal_released(&self, db: &Db) {
        if !self.journal_active(db.name()) || journal_on_disk_is_live(db.journal_path()) {
            return;
        }
        if let Err(e) = self.commit(db) {
            error!(
                "db {}: the transaction that ended when its journal was closed is not \
                 recorded ({e:?}); it is recorded at the next commit or start-up",
                db.name()
            );
        }
    }

    /// Bookkeeping at a recorded commit (`recorded`: an LTX file was
    /// written, not a rollback): whether this transaction synced its
    /// journal decides whether the next one's may pass through.
    pub(super) fn journal_committed(&self, db: &str, recorded: bool) {
        let synced = has_name(&self.synced_journals, db);
        set_name(&self.synced_journals, db, false);
        if recorded {
            set_name(&self.syncing_dbs, db, synced);
        }
    }
}
