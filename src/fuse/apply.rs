//! Applying LTX files on a replica under SQLite's own locks, so that no
//! reader of the mount ever sees half a transaction, and dropping a write
//! transaction left open by a step-down.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fuser::INodeNo;
use log::warn;

use super::inodes::{FileKind, Inodes, ROOT_INO};
use super::locks::{self, Lock, LockTable};
use crate::store::{self, Db, Position};

/// SQLite's lock bytes in the database file (see sqlite3's os.h).
const PENDING_BYTE: u64 = 0x4000_0000;
const SHARED_FIRST: u64 = PENDING_BYTE + 2;
const SHARED_SIZE: u64 = 510;
/// The lock owner litefs uses for itself; the kernel's owners are hashes
/// of process file tables and never take this value in practice.
const APPLY_OWNER: u64 = u64::MAX;
/// How long an apply waits for readers to finish before giving up.
const APPLY_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Applies LTX files on a replica as a SQLite writer would: it takes the
/// PENDING lock (no new readers), then the exclusive lock (no readers left),
/// writes the pages through the store, drops the kernel's cached pages of
/// the database, and releases. Readers thus see whole transactions only.
pub struct Applier {
    pub(super) locks: Arc<LockTable>,
    pub(super) active_journals: Arc<Mutex<HashSet<String>>>,
    pub(super) inodes: Arc<RwLock<Inodes>>,
    pub(super) notifier: Mutex<Option<fuser::Notifier>>,
}

impl Applier {
    /// Gives the applier the mount's notifier, once the mount is up.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Applies the LTX file at `path` to `db` under SQLite's locks.
    pub fn apply(&self, db: &Db, path: &Path) -> Result<Position, store::Error> {
        let ino = self
            .inodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .ino(db.name(), FileKind::Database);
        let pending = Lock {
            owner: APPLY_OWNER,
            start: PENDING_BYTE,
            end: PENDING_BYTE,
            typ: locks::WRITE,
            pid: std::process::id(),
        };
        let shared = Lock {
            start: SHARED_FIRST,
            end: SHARED_FIRST + SHARED_SIZE - 1,
            ..pending
        };
        // PENDING first: it keeps new readers out while those reading finish.
        let locked = self.locks.set_wait(ino, pending, APPLY_LOCK_WAIT) && {
            let mut waited = 0;
            loop {
                if self.locks.set_wait(ino, shared, Duration::from_secs(1)) {
                    break true;
                }
                waited += 1;
                warn!(
                    "db {}: apply waiting {waited}s for readers to finish",
                    db.name()
                );
                if waited >= APPLY_LOCK_WAIT.as_secs() {
                    break false;
                }
            }
        };
        if !locked {
            self.locks.release_owner(ino, APPLY_OWNER);
            return Err(store::Error::Refused {
                db: db.name().to_string(),
                path: path.to_path_buf(),
                reason: format!(
                    "readers held the database's locks for {}s; will retry",
                    APPLY_LOCK_WAIT.as_secs()
                ),
            });
        }
        let result = db.apply_ltx(path);
        if result.is_ok() {
            self.invalidate(ino, db.name());
        }
        self.locks.release_owner(ino, APPLY_OWNER);
        result
    }

    /// Drops a write transaction left open when this node stopped being
    /// the primary (see `Db::abandon_transaction`), then the kernel's
    /// cached pages of the database, which may hold that transaction's
    /// uncommitted writes, and its cached view of the journal.
    pub fn abandon_transaction(&self, db: &Db) -> Result<Position, store::Error> {
        let (db_ino, journal_ino) = {
            let mut inodes = self.inodes.write().unwrap_or_else(|e| e.into_inner());
            (
                inodes.ino(db.name(), FileKind::Database),
                inodes.ino(db.name(), FileKind::Journal),
            )
        };
        let result = db.abandon_transaction();
        self.active_journals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db.name());
        self.invalidate(db_ino, db.name());
        self.invalidate(journal_ino, db.name());
        let notifier = self.notifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = notifier.as_ref() {
            let journal = format!("{}{}", db.name(), FileKind::Journal.suffix());
            if let Err(e) = n.inval_entry(INodeNo(ROOT_INO), OsStr::new(&journal)) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!(
                        "db {}: cannot invalidate the kernel's entry for {journal}: {e}",
                        db.name()
                    );
                }
            }
        }
        result
    }

    /// Drops the kernel's cached pages and attributes of the database file.
    fn invalidate(&self, ino: u64, name: &str) {
        let notifier = self.notifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = notifier.as_ref() {
            // ENOENT: the kernel has never seen this inode; nothing cached.
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!("db {name}: cannot invalidate the kernel page cache: {e}");
                }
            }
        }
    }
}
