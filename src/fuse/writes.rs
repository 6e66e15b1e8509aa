//! Writes, truncates and deletes on the primary, as the store sees them:
//! a database write is checked and its pages noted dirty; the rollback
//! journal's end (deleted, truncated to zero, or its header zeroed) is the
//! commit point; in WAL mode a write to the database file is a
//! checkpoint and the WAL's commit frames are the commit points (`wal_follower.rs`);
//! deleting a database deletes it everywhere; and what cannot be
//! replicated (no journal at all) is refused with a log line.
//! The `Filesystem` methods in `filesystem.rs` call these with the
//! primary role held (`Role::hold_primary`).

use std::fs::{File, OpenOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::Errno;
use log::{error, info, warn};

use super::inodes::FileKind;
use super::{io_errno, is_journal_header, path_of, Handle, LitefsFs};
use crate::store::{write_back, Db};

/// Whether an open of a file of `kind` with `flags` is a program other
/// than SQLite opening a database read-write (Tcl's `open RDWR`, Python's
/// `open('r+b')`): SQLite's unix VFS opens every database with
/// O_NOFOLLOW, which the kernel passes on. Such a handle's writes outside
/// a SQLite transaction are each a transaction of their own
/// (`store/raw_edit.rs`); its writes inside one are the transaction's, as
/// on any file system. A SQLite that opened without O_NOFOLLOW would only
/// see its journal_mode=OFF writes recorded one by one instead of refused.
pub(super) fn edits_in_place(kind: FileKind, flags: i32) -> bool {
    kind == FileKind::Database
        && (flags & libc::O_ACCMODE) == libc::O_RDWR
        && flags & libc::O_NOFOLLOW == 0
}

/// Whether an open of a file of `kind` with `flags` on a replica is
/// SQLite's read-write open of a database (see `edits_in_place`), which is
/// let through: every write through it is refused (EROFS) while the node
/// is a replica, and after a promotion the connection that made it
/// writes, as it would have had it been opened on the primary (when this
/// open fails, SQLite falls back to a read-only open for the connection's
/// life). A write transaction on a replica fails at its journal's
/// creation, refused with EACCES: "attempt to write a readonly database".
/// Other programs' read-write opens stay refused at once (EROFS). In WAL
/// mode a connection's `-wal` and `-shm` still open read-only on a
/// replica, so such a connection stays read-only. Such a connection can
/// take SQLite's write locks on a replica (the kernel grants them without
/// asking litefs): `BEGIN IMMEDIATE` or `EXCLUSIVE` there holds applies
/// off (and, EXCLUSIVE, readers) until the application rolls back, as a
/// long read transaction holds applies off.
pub(super) fn read_write_open_on_a_replica(kind: FileKind, flags: i32) -> bool {
    kind == FileKind::Database
        && !super::copy_in::is_copy_in(kind, flags)
        && !edits_in_place(kind, flags)
}

/// What is left of a write once `before_write` has passed it.
pub(super) enum WriteNext {
    /// Write the data to the backing file.
    PassThrough,
    /// Already written and recorded.
    Done,
}

impl LitefsFs {
    /// Refuses `what` through a handle of a database deleted since it was
    /// opened (EIO: SQLite reports a disk I/O error and rolls back), but
    /// for `-shm`, SQLite's own locking state, which records nothing.
    pub(super) fn refuse_if_deleted(&self, handle: &Handle, what: &str) -> Result<(), Errno> {
        if !handle.db.is_deleted() || handle.kind == FileKind::Shm {
            return Ok(());
        }
        info!(
            "refused {what} of {:?} of database {}: the database was deleted while this \
             file was open; close the connection",
            handle.kind,
            handle.db.name()
        );
        Err(Errno::EIO)
    }

    /// Checks and records a write of `data` at `offset` through `handle`,
    /// before it reaches the backing file; a journal header zeroed in
    /// PERSIST mode commits first. A write in place without SQLite is
    /// made and recorded here (`store/raw_edit.rs`): then the caller has
    /// nothing left to write.
    pub(super) fn before_write(
        &self,
        handle: &Handle,
        offset: u64,
        data: &[u8],
    ) -> Result<WriteNext, Errno> {
        let db = &handle.db;
        match handle.kind {
            FileKind::Database => {
                // A transaction whose journal passes through begins (and in
                // one case ends) unseen (`journal.rs`); the first of them
                // after a database leaves WAL mode must not pass for a
                // checkpoint.
                let journal = self.journal_bounds(db)?;
                if !journal {
                    // A SQLite that opens without O_NOFOLLOW (older than
                    // about 2020, or another VFS) writes whole pages in WAL
                    // mode checkpoints: those go on as checkpoints below.
                    let editor = handle.edits_in_place && !self.wals.active(db);
                    if editor || db.is_partial_page_write(offset, data.len()) {
                        self.admit_write(db)?;
                        self.edit_in_place(db, offset, data)?;
                        return Ok(WriteNext::Done);
                    }
                    // WAL mode: a checkpoint copying committed pages from
                    // the WAL, which must all be recorded before SQLite
                    // may start the WAL over (`wal_follower.rs`).
                    if self.wals.before_frames_go(db)? {
                        return Ok(WriteNext::PassThrough);
                    }
                }
                // Pure checks on the data first; before_write records the
                // write (dirty pages, undo log) once it is going to happen.
                match db.before_write(offset, data) {
                    Ok(()) => {}
                    Err(e @ crate::store::Error::InvalidWrite { .. }) => {
                        error!(
                            "db {}: refused write of {} bytes at {offset}: {e}",
                            db.name(),
                            data.len()
                        );
                        return Err(Errno::EINVAL);
                    }
                    // No room for the LTX file or the undo log: SQLITE_FULL.
                    Err(e) => return Err(self.store_errno(db, "refused a write", &e)),
                }
                if !journal {
                    error!(
                        "db {}: refused a write with no rollback journal: journal_mode=OFF and \
                         MEMORY cannot be replicated; use PRAGMA journal_mode=DELETE (or \
                         TRUNCATE, PERSIST, WAL)",
                        db.name()
                    );
                    return Err(Errno::EIO);
                }
            }
            FileKind::Journal if offset == 0 => {
                // Each transaction's journal starts with its header at 0,
                // and SQLite syncs a journal only after writing it; so this
                // is the one place a new transaction can clear the flag (no
                // lock on the other journal writes).
                self.set_journal_ended(db.name(), false);
                if is_journal_header(data) {
                    self.journal_began(db.name());
                } else if data.len() >= 8 && data[..8].iter().all(|b| *b == 0) {
                    // journal_mode=PERSIST: zeroing the header commits.
                    self.commit(db)?;
                }
            }
            FileKind::Wal => self.wals.write_allowed(db, offset)?,
            _ => {}
        }
        Ok(WriteNext::PassThrough)
    }

    /// Writes part of a page of `db` in place, outside any SQLite
    /// transaction, as a transaction of its own (`store/raw_edit.rs`).
    fn edit_in_place(&self, db: &Db, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match db.edit_in_place(offset, data) {
            Ok(_) => {
                self.recorded();
                Ok(())
            }
            Err(e @ crate::store::Error::InvalidWrite { .. }) => {
                error!("db {}: {e}", db.name());
                Err(Errno::EINVAL)
            }
            Err(e) => Err(self.store_errno(db, "a write in place failed", &e)),
        }
    }

    /// Truncates `db`'s file of `kind` to `size`; truncating the journal
    /// to zero (TRUNCATE mode) commits first.
    pub(super) fn truncate(&self, db: &Arc<Db>, kind: FileKind, size: u64) -> Result<(), Errno> {
        let path = path_of(db, kind);
        if kind == FileKind::Pos {
            return Err(Errno::EACCES);
        }
        let Some(_primary) = self.role.hold_primary() else {
            return Err(self.read_only_error("truncate", db.name()));
        };
        if kind == FileKind::Journal && size == 0 {
            // journal_mode=TRUNCATE: truncating the journal commits.
            self.commit(db)?;
        }
        let set_len = || {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size))
                .map_err(|e| self.backing_errno(db, &format!("truncate {}", path.display()), &e))
        };
        match kind {
            // Committed frames are recorded before any of them can go.
            FileKind::Wal if size == 0 => return self.wals.going(db, set_len),
            FileKind::Wal => {
                self.wals.before_frames_go(db)?;
            }
            FileKind::Database if self.wals.active(db) => {
                self.wals.before_frames_go(db)?;
            }
            FileKind::Database => {
                // Outside a transaction only the pages past the database
                // may go (SQLite drops them just after a commit that made
                // the database smaller); cutting into it would not be
                // recorded. A copy-in replaces a database (`copy_in.rs`).
                if size < db.committed_len() && !self.journal_bounds(db)? {
                    info!(
                        "refused to truncate database {} to {size} bytes outside a SQLite \
                         transaction: it would not replicate; to replace the database, copy a \
                         whole database file over it (cp), or delete it",
                        db.name()
                    );
                    return Err(Errno::EPERM);
                }
                if let Err(e) = db.before_truncate(size) {
                    warn!("db {}: refused truncate: {e}", db.name());
                    return Err(Errno::EINVAL);
                }
            }
            _ => {}
        }
        set_len()
    }

    /// Removes `db`'s file of `kind` (called `name` on the mount): the
    /// database itself, or a companion; deleting the journal (DELETE mode)
    /// commits first.
    pub(super) fn remove(&self, db: &Arc<Db>, kind: FileKind, name: &str) -> Result<(), Errno> {
        match kind {
            FileKind::Database => return self.delete_database(db),
            FileKind::Pos => {
                info!("refused to delete {name:?}: it is litefs's; delete the database instead");
                return Err(Errno::EPERM);
            }
            FileKind::Journal => {
                // journal_mode=DELETE: deleting the journal commits.
                self.commit(db)?;
            }
            FileKind::Wal => {
                self.wals.going(db, || {
                    std::fs::remove_file(path_of(db, kind)).map_err(|e| io_errno(&e))
                })?;
                self.forget_wal_backing(db);
                self.mark_dir_changed(db.name());
                return Ok(());
            }
            // Deleting a super-journal commits a transaction across
            // ATTACHed databases in SQLite's eyes; each database's LTX file
            // comes when SQLite then ends its journal.
            FileKind::Shm | FileKind::SuperJournal(_) => {}
        }
        if kind == FileKind::Journal {
            // Keep the backing file, emptied, and show it as absent: a
            // journal created and deleted per transaction costs the backing
            // file system an inode each time (see `hide_journal`).
            if self.journal_hidden(db.name()) {
                return Err(Errno::ENOENT);
            }
            return self
                .hide_journal(db)
                .map_err(|e| self.backing_errno(db, "cannot empty the journal", &e));
        }
        std::fs::remove_file(path_of(db, kind)).map_err(|e| io_errno(&e))?;
        self.mark_dir_changed(db.name());
        Ok(())
    }

    /// Deletes `db` (the application removed its file on the primary), as
    /// unlink does on any file system: the name goes at once, also while
    /// connections hold its files open. Their handles keep the backing
    /// files (unlinked, in the store's trash) and read on; their writes
    /// are refused (`refuse_if_deleted`), so nothing of a deleted database
    /// is recorded. A new file of the same name is a new database (another
    /// instance, other inode numbers). The deletion is made under the
    /// handle table's lock, which `add_handle` takes too, so no open of
    /// the old instance can slip in. The store leaves a tombstone that the
    /// replication stream carries to every replica.
    fn delete_database(&self, db: &Arc<Db>) -> Result<(), Errno> {
        let handles = self.handles.write().unwrap_or_else(|e| e.into_inner());
        let open = handles
            .values()
            .filter(|h| h.db.instance() == db.instance())
            .count();
        if open > 0 {
            info!(
                "deleting database {} while {open} of its files are open: they read on, \
                 and their writes fail",
                db.name()
            );
        }
        match self.store.delete_db(db.name()) {
            Ok(_) => {
                drop(handles);
                // The companions went with the database: the kernel
                // forgets their names at once, so that SQLite finds no
                // `-wal` of a new database of the name (until then an
                // open of one gets ESTALE and looks it up again, `gone`).
                // Not in this request: the kernel holds the directory
                // until it is answered.
                let notifier = self.notifier.clone();
                let name = db.name().to_string();
                std::thread::spawn(move || {
                    let companions = [FileKind::Journal, FileKind::Wal, FileKind::Shm];
                    super::apply::forget_names(&notifier, &name, &companions);
                });
                self.wals.forget_db(db.name());
                self.journals.forget(db.name());
                // A journal header noted for the old database must never be
                // put back into a new one's journal (`journal_fsync`).
                self.unseen_txns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(db.name());
                self.changed_dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(db.name());
                Ok(())
            }
            Err(e) => {
                error!("cannot delete database {}: {e}", db.name());
                Err(Errno::EIO)
            }
        }
    }
}

/// Starts writing out the database file's dirty pages, without waiting,
/// once every `write_back::EVERY` bytes written through `handle`: SQLite
/// writes a large transaction's pages long before its fsync (cache
/// spills), and the disk can write them meanwhile, so that fsync, on the
/// commit's path, finds little left. The fsync alone makes them durable.
/// Not while the transaction's undo records are not durable yet: a reused
/// free-list page must not reach the disk before its old content does
/// (the database's fsync syncs the undo log first, `Db::before_sync`).
pub(super) fn hand_to_disk(handle: &Handle, file: &File, len: usize) {
    let total = handle.not_handed.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
    if total >= write_back::EVERY {
        handle.not_handed.store(0, Ordering::Relaxed);
        if handle.db.undo_is_synced() {
            write_back::start(file, 0, 0);
        }
    }
}
