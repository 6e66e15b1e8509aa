//! Databases written without SQLite: `cp`, `cat > app.db`, Tcl's
//! `file copy`, `dd`, `rsync --inplace`. SQLite opens a database read-only
//! or read-write and never with O_TRUNC, so an open of a database on the
//! primary that is write-only or truncates is a *copy-in*: its handle
//! writes to a staging file (`ltx/copy-in-<n>.tmp` of the database's
//! directory: empty after O_TRUNC, else a copy of the database), never to
//! the database. When the writer closes the file the staging file is
//! checked as a whole SQLite database (`sqlite::check_database_file`) and imported as one transaction
//! (`Applier::import`, as `litefs import` does), which replicates like any
//! commit. Anything else that opens the database meanwhile sees the
//! database as it was.
//!
//! The close is the kernel's FLUSH, which only copy-in handles get: every
//! other open says FOPEN_NOFLUSH (nothing to do at close, and litefs's own
//! descriptors of the mount must never make the kernel wait on a dying
//! litefs at a kill -9; see `Applier`). close() returns once the
//! transaction is durable, or fails (EINVAL for a file that is not a whole
//! database, with one log line saying what to do) and the database is
//! unchanged. A kernel older than FUSE 7.35 (Linux 5.19) cannot be told
//! FOPEN_NOFLUSH: FLUSH is then turned off for the mount and a copy-in is
//! imported at its RELEASE, just after close() returns.
//!
//! Crash safety: only the import changes the database, and its LTX apply
//! is crash-safe; a staging file left by a crash is a `*.tmp` in `ltx/`,
//! deleted at start-up (`recovery.rs`). A copy cut short by a crash leaves
//! the old database, or for a database the copy created, an empty one. A
//! writer killed in the middle of its copy still closes the file: the
//! check refuses what it left (shorter than its header's page count).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{Errno, FopenFlags, ReplyEmpty, ReplyOpen};
use log::{error, info};

use super::counted::Counted;
use super::inodes::FileKind;
use super::{Applier, Handle, LitefsFs};
use crate::role::Role;
use crate::sqlite;
use crate::store::{self, Db};

/// Gives every staging file its own name.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The staging file of a copy-in handle. Dropped with the handle (at
/// RELEASE), which deletes the file.
pub(super) struct CopyIn {
    path: PathBuf,
    /// The staging file differs from what the database last got from it.
    changed: AtomicBool,
    /// One import at a time (two descriptors of one open file can each
    /// be closed).
    importing: Mutex<()>,
}

impl Drop for CopyIn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!(
                    "cannot delete the staging file {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

impl CopyIn {
    /// Notes a change of the staging file through the handle.
    pub(super) fn changed(&self) {
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Refuses at once a write of `data` at `offset` that puts anything
    /// but SQLite's header magic at the start of the file (`echo text >
    /// app.db`), rather than at close.
    pub(super) fn check_write(&self, db: &str, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let magic = sqlite::DATABASE_MAGIC;
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < magic.len()) else {
            return Ok(());
        };
        let n = data.len().min(magic.len() - start);
        if data[..n] == magic[start..start + n] {
            return Ok(());
        }
        info!(
            "refused a write to {db:?} without SQLite: the file is not a SQLite database (it \
             must start with \"SQLite format 3\\0\"); the mount holds only databases"
        );
        Err(Errno::EINVAL)
    }
}

/// Whether an open of a file of `kind` with `flags` is a copy-in.
pub(super) fn is_copy_in(kind: FileKind, flags: i32) -> bool {
    kind == FileKind::Database
        && ((flags & libc::O_ACCMODE) == libc::O_WRONLY || flags & libc::O_TRUNC != 0)
}

impl LitefsFs {
    /// Writes `data` at `offset` of a copy-in's staging file `file`:
    /// nothing reaches the database before the close.
    pub(super) fn write_copy_in(
        &self,
        db: &Db,
        copy_in: &CopyIn,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        copy_in.check_write(db.name(), offset, data)?;
        file.write_all_at(data, offset)
            .map_err(|e| self.backing_errno(db, "write a copy's staging file", &e))?;
        copy_in.changed();
        Ok(())
    }

    /// `flags` for an open that is not a copy-in: no FLUSH at its close,
    /// where the kernel honours it.
    pub(super) fn without_flush(&self, flags: FopenFlags) -> FopenFlags {
        if self.noflush {
            flags | FopenFlags::FOPEN_NOFLUSH
        } else {
            flags
        }
    }

    /// Opens a copy-in of `db` (see the module doc): the staging file,
    /// read-write, and its record. Refused for a database in WAL mode,
    /// whose connections keep pages cached that an import cannot reach.
    pub(super) fn open_copy_in(&self, db: &Db, flags: i32) -> Result<(File, CopyIn), Errno> {
        if db.in_wal_mode() {
            info!(
                "refused to write database {} without SQLite (cp, a write-only or O_TRUNC \
                 open): it is in WAL mode; run PRAGMA journal_mode=DELETE on it first, or \
                 delete it and copy again",
                db.name()
            );
            return Err(Errno::EPERM);
        }
        let path = db.ltx_dir().join(format!(
            "copy-in-{}.tmp",
            STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let staging_error = |e: std::io::Error| {
            self.backing_errno(
                db,
                &format!("create the staging file {}", path.display()),
                &e,
            )
        };
        if flags & libc::O_TRUNC == 0 {
            // Written in place (dd conv=notrunc, rsync --inplace): the
            // writes land on a copy of the database.
            match std::fs::copy(db.database_path(), &path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(staging_error(e)),
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(flags & libc::O_TRUNC != 0)
            .open(&path)
            .map_err(staging_error)?;
        Ok((
            file,
            CopyIn {
                path,
                changed: AtomicBool::new(false),
                importing: Mutex::new(()),
            },
        ))
    }

    /// Truncates the staging file of the copy-in `handle` to `size`.
    pub(super) fn truncate_copy_in(&self, handle: &Handle, size: u64) -> Result<(), Errno> {
        let (Some(file), Some(copy_in)) = (&handle.file, &handle.copy_in) else {
            return Ok(());
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if len == size {
            // O_TRUNC's truncate of a new staging file changes nothing.
            return Ok(());
        }
        file.set_len(size)
            .map_err(|e| self.backing_errno(&handle.db, "truncate a copy's staging file", &e))?;
        copy_in.changed();
        Ok(())
    }

    /// Registers a copy-in handle and answers its open. Direct I/O: the
    /// copy's bytes must not enter the kernel's cache of the database,
    /// which other openers read meanwhile.
    pub(super) fn reply_copy_in(
        &self,
        db: Arc<Db>,
        file: File,
        copy_in: CopyIn,
        reply: Counted<ReplyOpen>,
    ) {
        match self.add_handle(copy_in_handle(db, file, copy_in)) {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    /// Imports what a copy-in `handle` wrote, if anything, then answers
    /// `reply` (FLUSH, or RELEASE on an old kernel). Runs on a thread of
    /// its own: the import opens the database through the mount and waits
    /// for SQLite's locks, which needs the mount's worker threads free.
    pub(super) fn finish_copy_in(&self, handle: Arc<Handle>, reply: Counted<ReplyEmpty>) {
        let changed = handle
            .copy_in
            .as_ref()
            .is_some_and(|c| c.changed.load(Ordering::SeqCst));
        if !changed {
            return reply.ok();
        }
        let applier = self.applier();
        let role = self.role.clone();
        let task = Arc::new(Mutex::new(Some(reply)));
        let answer = task.clone();
        let spawned = std::thread::Builder::new()
            .name("copy-in".to_string())
            .spawn(move || {
                let result = import_copy(&applier, &role, &handle);
                if let Some(reply) = answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    match result {
                        Ok(()) => reply.ok(),
                        Err(errno) => reply.error(errno),
                    }
                }
            });
        if let Err(e) = spawned {
            error!("cannot start a thread to import a copied database: {e}");
            if let Some(reply) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                reply.error(Errno::EIO);
            }
        }
    }
}

/// The handle of a copy-in of `db`, writing to the staging `file`.
pub(super) fn copy_in_handle(db: Arc<Db>, file: File, copy_in: CopyIn) -> Handle {
    Handle {
        copy_in: Some(copy_in),
        ..Handle::new(db, FileKind::Database, Some(file), None)
    }
}

/// Imports the staging file of `handle` into its database as one
/// transaction, unless nothing changed since the last import.
fn import_copy(applier: &Applier, role: &Role, handle: &Handle) -> Result<(), Errno> {
    let Some(copy) = &handle.copy_in else {
        return Ok(());
    };
    let _one = copy.importing.lock().unwrap_or_else(|e| e.into_inner());
    if !copy.changed.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    let db = &handle.db;
    let len = std::fs::metadata(&copy.path).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        if db.pos().txid == 0 {
            // A new database copied from an empty file: still empty.
            return Ok(());
        }
        error!(
            "refused to empty database {} by writing it without SQLite: an empty file is not \
             a database; the database is unchanged (delete it to remove it)",
            db.name()
        );
        return Err(Errno::EINVAL);
    }
    match applier.import(db, &copy.path, role) {
        Ok(pos) => {
            info!(
                "database {} written without SQLite ({len} bytes) committed as one \
                 transaction, position {pos}",
                db.name()
            );
            Ok(())
        }
        Err(e) => {
            // What was written stays staged: a later close tries again.
            copy.changed();
            let errno = match &e {
                store::Error::InvalidDatabase { .. } => Errno::EINVAL,
                store::Error::Refused { .. } => Errno::EPERM,
                e if e.is_disk_full() => Errno::ENOSPC,
                _ => Errno::EIO,
            };
            error!(
                "database {}: a copy written without SQLite was not committed and nothing was \
                 replicated: {e}; write a whole SQLite database file (sqlite3 SRC \
                 \".backup DEST\" makes one)",
                db.name()
            );
            Err(errno)
        }
    }
}
