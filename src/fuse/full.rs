//! Errors of the mount's writes, as SQLite needs them: a full data
//! directory (ENOSPC, or EDQUOT) is answered with ENOSPC, which SQLite
//! reports as SQLITE_FULL ("database or disk is full") on a write and
//! rolls the transaction back; any other failure of the store is EIO
//! ("disk I/O error"). A full disk is logged once per episode by the
//! store's [`DiskFull`](crate::store::DiskFull), each failed write at
//! debug only.

use fuser::Errno;
use log::error;

use super::{io_errno, LitefsFs};
use crate::store::{self, is_disk_full_io, Db, Store};

/// What a full data directory means on the primary, for its WARN.
const EFFECT: &str = "commits fail with SQLITE_FULL (\"database or disk is full\") and SQLite \
                      rolls them back; nothing committed is lost";

impl LitefsFs {
    /// The errno for `what` on `db` failing in the store with `err`,
    /// logged: ENOSPC for a full data directory, EIO otherwise.
    pub(super) fn store_errno(&self, db: &Db, what: &str, err: &store::Error) -> Errno {
        store_errno(&self.store, db, what, err)
    }

    /// The errno for `what` on one of `db`'s backing files failing with
    /// `err`, logged: its own, with EDQUOT answered as ENOSPC.
    pub(super) fn backing_errno(&self, db: &Db, what: &str, err: &std::io::Error) -> Errno {
        if is_disk_full_io(err) {
            self.store
                .disk()
                .full(&format!("db {}: {what}: {err}", db.name()), EFFECT);
            return Errno::ENOSPC;
        }
        error!("db {}: {what}: {err}", db.name());
        io_errno(err)
    }

    /// A transaction was recorded: a full-disk episode, if any, is over,
    /// and the replication streams have something to send.
    pub(super) fn recorded(&self) {
        recorded(&self.store);
    }
}

/// `LitefsFs::store_errno` for a part of the mount that has only the store.
pub(super) fn store_errno(store: &Store, db: &Db, what: &str, err: &store::Error) -> Errno {
    if err.is_disk_full() {
        store
            .disk()
            .full(&format!("db {}: {what}: {err}", db.name()), EFFECT);
        return Errno::ENOSPC;
    }
    error!("db {}: {what}: {err}", db.name());
    Errno::EIO
}

/// `LitefsFs::recorded` for a part of the mount that has only the store.
pub(super) fn recorded(store: &Store) {
    store.disk().space();
    store.notify_change();
}
