//! Durability requests: an fsync of a file or of the mount's directory,
//! with what litefs must do before the backing file's own sync (record a
//! WAL commit, sync the undo log, commit a journal that passes through).

use std::fs::File;

use fuser::{Errno, FileHandle};

use super::inodes::FileKind;
use super::LitefsFs;

impl LitefsFs {
    /// Syncs the file open as `fh` (`datasync`: its data only).
    pub(super) fn sync_file(&self, fh: FileHandle, datasync: bool) -> Result<(), Errno> {
        let handle = self.handle(fh)?;
        let Some(file) = &handle.file else {
            return Ok(());
        };
        // SQLite never syncs its WAL index; litefs does, through the mount,
        // only to wait for the kernel's write-backs (`Applier`'s
        // `reset_wal_index`), which happens before this request is sent.
        if handle.kind == FileKind::Shm {
            return Ok(());
        }
        // Nothing of a deleted database is kept: its unlinked files need
        // no disk flush, and a journal's or WAL's end records nothing.
        self.refuse_if_deleted(&handle, "sync")?;
        let _awake = self.role.is_primary().then(|| self.writing());
        if handle.kind == FileKind::Wal && self.role.is_primary() {
            // Records the commit now when the disk is nearly full.
            let wal_len = file.metadata().map_or(u64::MAX, |md| md.len());
            self.wals.synced(&handle.db, wal_len)?;
        }
        if handle.kind == FileKind::Database {
            // The undo log of overwritten free pages must reach the disk
            // before the pages themselves do.
            if let Err(e) = handle.db.before_sync() {
                return Err(self.store_errno(&handle.db, "cannot sync the undo log", &e));
            }
        }
        if handle.kind == FileKind::Journal {
            if let Some(_primary) = self.role.hold_primary() {
                if self.journal_fsync(&handle.db, handle.backing.as_deref())? {
                    return Ok(());
                }
            }
        }
        let res = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        res.map_err(|e| {
            let what = format!("fsync {:?}", handle.kind);
            self.backing_errno(&handle.db, &what, &e)
        })
    }

    /// Syncs the backing directories whose entries changed since the last
    /// sync (`mark_dir_changed`). SQLite syncs the directory so that a new
    /// journal's name is durable before it overwrites database pages; the
    /// backing files live in one directory per database.
    pub(super) fn sync_changed_dirs(&self) -> Result<(), Errno> {
        let dbs = self.take_changed_dirs();
        for (i, db) in dbs.iter().enumerate() {
            if let Err(e) = File::open(db.dir()).and_then(|d| d.sync_all()) {
                for unsynced in &dbs[i..] {
                    self.mark_dir_changed(unsynced.name());
                }
                let what = format!("cannot sync its directory {}", db.dir().display());
                return Err(self.backing_errno(db, &what, &e));
            }
        }
        Ok(())
    }
}
