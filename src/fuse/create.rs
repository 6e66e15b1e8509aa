//! Creating a file on the mount (the kernel's CREATE): a database, or a
//! companion of one (`-journal`, `-wal`, `-shm`), which creates its
//! database too. The new file gets the mode its creator asked for less
//! its umask (a journal its database's, as SQLite gives it); O_TRUNC is
//! litefs's to do; a hidden journal is shown again; a write-only or
//! truncating open of a database is a copy-in (`copy_in.rs`). Replicas
//! create nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuser::{Errno, FopenFlags, ReplyCreate};
use log::{error, info};

use super::counted::Counted;
use super::inodes::{parse_name, FileKind};
use super::{io_errno, path_of, Handle, LitefsFs, TTL};
use crate::store::Db;

impl LitefsFs {
    /// Creates `name` with `mode` (the creator's umask applied) and opens
    /// it with `flags`.
    pub(super) fn create_file(
        &self,
        name: &str,
        mode: u32,
        flags: i32,
        reply: Counted<ReplyCreate>,
    ) {
        let (db_name, kind) = parse_name(name);
        if !self.role.is_primary() {
            return reply.error(self.read_only_create_error(name, kind));
        }
        if kind == FileKind::Pos {
            info!("refused to create {name:?}: -pos files are litefs's own, read-only");
            return reply.error(Errno::EPERM);
        }
        // A companion (`-journal`, `-wal`, ...) of a database that does not
        // exist creates the database, empty, as an open of it with O_CREAT
        // would: on any file system the companion is just a file (a journal
        // written by hand, or left by a test harness after deleting its
        // database), and SQLite opening the empty database finds a journal
        // it may delete (a database of no pages has nothing to roll back).
        // Nothing replicates until its first commit.
        let db = match self.store.create_db(db_name) {
            Ok(db) => db,
            Err(e @ crate::store::Error::RefusedAtStart { .. }) => {
                error!("refused to create {name:?}: {e}");
                return reply.error(Errno::EIO);
            }
            Err(e) => {
                info!("refused to create {name:?}: {e}");
                return reply.error(Errno::EINVAL);
            }
        };
        let existed = path_of(&db, kind).exists();
        if existed && flags & libc::O_TRUNC != 0 && kind != FileKind::Database {
            // The kernel leaves O_TRUNC to litefs (FUSE_ATOMIC_O_TRUNC).
            if let Err(e) = self.truncate(&db, kind, 0) {
                return reply.error(e);
            }
        }
        // A hidden journal's backing file is kept, but to the application
        // the journal is new.
        let new_to_app = !existed || (kind == FileKind::Journal && self.journal_hidden(db.name()));
        let file = match self.open_backing(&db, kind, flags, true) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let ino = self.ino(&db, kind);
        let mut attr = self.file_attr(ino, &md);
        if new_to_app {
            let wanted = self.new_file_mode(&db, kind, mode);
            if u32::from(attr.perm) != wanted {
                let perms = std::fs::Permissions::from_mode(wanted);
                if let Err(e) = file.set_permissions(perms) {
                    let what = "cannot set the new file's mode";
                    return reply.error(self.backing_errno(&db, what, &e));
                }
                attr.perm = wanted as u16;
            }
        }
        if kind == FileKind::Journal {
            self.show_journal(db.name());
            self.journal_opened_for_writing(db.name());
        }
        if !existed {
            self.mark_dir_changed(db.name());
        }
        if super::copy_in::is_copy_in(kind, flags) {
            let handle = match self.open_copy_in(&db, flags) {
                Ok((file, copy_in)) => super::copy_in::copy_in_handle(db, file, copy_in),
                Err(e) => return reply.error(e),
            };
            return match self.add_handle(handle) {
                Ok(fh) => reply.created_with(&TTL, &attr, fh, FopenFlags::FOPEN_DIRECT_IO, None),
                Err(e) => reply.error(e),
            };
        }
        let (open_flags, opened) =
            self.open_mode(&db, kind, flags, &file, |f| reply.open_backing(f));
        let handle = Handle::new(db, kind, Some(file), opened);
        let backing = handle.backing.clone();
        match self.add_handle(handle) {
            Ok(fh) => reply.created_with(
                &TTL,
                &attr,
                fh,
                self.without_flush(open_flags),
                backing.as_ref().map(|b| &b.id),
            ),
            Err(e) => reply.error(e),
        }
    }

    /// The mode of a file of `kind` that an application creates asking for
    /// `asked` (its umask already taken off), as on any file system
    /// (litefs's own umask does not apply). A journal gets its database's
    /// mode, as SQLite gives it with an fchmod of the new, empty file: a
    /// hidden journal is not empty (see `hide_journal`), so SQLite's fchmod
    /// never reaches it.
    fn new_file_mode(&self, db: &Db, kind: FileKind, asked: u32) -> u32 {
        if kind == FileKind::Journal {
            if let Ok(md) = std::fs::metadata(db.database_path()) {
                return md.mode() & 0o777;
            }
        }
        asked
    }

    /// [`LitefsFs::read_only_error`] for creating `name` (a file of
    /// `kind`): a journal gets EACCES, which SQLite reports as "attempt to
    /// write a readonly database" (a journal it may not create), where
    /// EROFS would be "unable to open database file".
    fn read_only_create_error(&self, name: &str, kind: FileKind) -> Errno {
        let errno = self.read_only_error("create", name);
        if kind == FileKind::Journal {
            Errno::EACCES
        } else {
            errno
        }
    }
}
