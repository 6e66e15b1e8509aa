//! The `fuser::Filesystem` implementation: each request of the kernel,
//! answered from the inode table, the open handles and the store.

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use log::{debug, info, warn};

use super::counted::{Counted, FuseOp};
use super::inodes::{parse_name, FileKind, ROOT_INO};
use super::{
    io_errno, is_special, journal_on_disk_is_live, name_str, path_of, pos_text, slice_at,
    special_ino, wants_write, Handle, LitefsFs, NEGATIVE_TTL, SPECIAL_FILES, TTL,
};

impl Filesystem for LitefsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let reply = Counted::new(FuseOp::Lookup, reply);
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(ino) = special_ino(name) {
            return match self.special_contents(ino) {
                Some(s) => reply.entry(
                    &TTL,
                    &self.synthetic_attr(ino, s.len() as u64),
                    Generation(0),
                ),
                None => reply.error(Errno::ENOENT),
            };
        }
        let (db_name, kind) = parse_name(name);
        // One refused for a full disk may open now (`retry_full_refusals`).
        let found = || self.store.db(db_name);
        let Some(db) = found().or_else(|| self.store.retry_full_refusals().then(found).flatten())
        else {
            debug!("lookup {name:?}: there is no database {db_name:?}");
            return reply.error(Errno::ENOENT);
        };
        let ino = self.ino(&db, kind);
        match self.attr(ino, &db, kind) {
            Ok(attr) => reply.entry_with_ttls(&self.attr_ttl(kind), &TTL, &attr, Generation(0)),
            Err(Errno::ENOENT) if kind != FileKind::Database => {
                // An absent companion (`-journal`, `-wal`, `-shm`): SQLite
                // asks for it at every read transaction. A negative entry
                // (node id 0) lets the kernel answer for NEGATIVE_TTL. It
                // stays true: companions appear only through the kernel
                // (create), which replaces the entry, or are removed by
                // litefs itself, which invalidates it (`Applier`).
                reply.entry(&NEGATIVE_TTL, &self.synthetic_attr(0, 0), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let reply = Counted::new(FuseOp::Getattr, reply);
        if ino.0 == ROOT_INO {
            return reply.attr(&TTL, &self.synthetic_attr(ROOT_INO, 0));
        }
        if is_special(ino.0) {
            return match self.special_contents(ino.0) {
                Some(s) => reply.attr(&TTL, &self.synthetic_attr(ino.0, s.len() as u64)),
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some((db, kind)) = self.resolve(ino.0) else {
            // fstat of a deleted database still open: its backing file,
            // unlinked, as on any file system (the kernel names no handle
            // for fstat: any open one of the inode does). Not for its
            // companions: they went with it, but the kernel may still hold
            // their names, and a stat by name must find nothing (ESTALE
            // makes the kernel look the name up again). A connection in
            // WAL mode from before the deletion then fails at its next
            // transaction.
            let open = self
                .open_handle_of(ino.0)
                .filter(|h| h.kind == FileKind::Database);
            return match open.as_ref().and_then(|h| h.file.as_ref()) {
                Some(file) => match file.metadata() {
                    Ok(md) => reply.attr(&TTL, &self.file_attr(ino.0, &md)),
                    Err(e) => reply.error(io_errno(&e)),
                },
                None => reply.error(self.gone(ino.0)),
            };
        };
        match self.attr(ino.0, &db, kind) {
            Ok(attr) => reply.attr(&self.attr_ttl(kind), &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let reply = Counted::new(FuseOp::Setattr, reply);
        let Some((db, kind)) = self.resolve(ino.0) else {
            return reply.error(self.gone(ino.0));
        };
        let path = path_of(&db, kind);
        // A truncate through a copy-in handle (O_TRUNC's, or ftruncate)
        // changes its staging file, whose size the writer then sees.
        let copy_in = fh
            .and_then(|fh| self.handle(fh).ok())
            .filter(|h| h.copy_in.is_some());
        if let Some(size) = size {
            let truncated = match &copy_in {
                Some(handle) => self.truncate_copy_in(handle, size),
                None => self.truncate(&db, kind, size),
            };
            if let Err(e) = truncated {
                return reply.error(e);
            }
        }
        if let (Some(mode), false) = (mode, kind == FileKind::Pos) {
            let perms = std::fs::Permissions::from_mode(mode & 0o7777);
            if let Err(e) = std::fs::set_permissions(&path, perms) {
                return reply.error(io_errno(&e));
            }
        }
        match self.attr(ino.0, &db, kind) {
            Ok(mut attr) => {
                if let Some(Ok(md)) = copy_in.and_then(|h| h.file.as_ref().map(|f| f.metadata())) {
                    attr.size = md.len();
                    attr.blocks = std::os::unix::fs::MetadataExt::blocks(&md);
                }
                reply.attr(&TTL, &attr)
            }
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        info!("refused mknod of {name:?}: litefs holds only SQLite databases");
        Counted::new(FuseOp::Mknod, reply).error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        info!("refused mkdir of {name:?}: the litefs mount is one flat directory of databases");
        Counted::new(FuseOp::Mkdir, reply).error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let reply = Counted::new(FuseOp::Unlink, reply);
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        let (db_name, kind) = parse_name(name);
        let db = match self.store.db(db_name) {
            Some(db) if special_ino(name).is_none() => db,
            _ => return reply.error(Errno::ENOENT),
        };
        let Some(_primary) = self.role.hold_primary() else {
            return reply.error(self.read_only_error("delete", name));
        };
        match self.remove(&db, kind, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        info!("refused rmdir of {name:?}: the litefs mount has no directories");
        Counted::new(FuseOp::Rmdir, reply).error(Errno::ENOTDIR);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        info!("refused symlink {link_name:?}: litefs holds only SQLite databases");
        Counted::new(FuseOp::Symlink, reply).error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let reply = Counted::new(FuseOp::Rename, reply);
        let (from, to) = (name.to_string_lossy(), newname.to_string_lossy());
        let is_database = |n: &str| parse_name(n).1 == FileKind::Database;
        if is_database(&from) && is_database(&to) {
            // EXDEV, as between two file systems: `mv` and Tcl's `file
            // rename` then copy (a copy-in, one transaction at close) and
            // delete, each of which replicates.
            debug!("rename of {from:?} to {to:?}: EXDEV, so it is done as a copy and a delete");
            return reply.error(Errno::EXDEV);
        }
        info!(
            "refused rename of {from:?} to {to:?}: only a database can be renamed, to a \
             database name (as a copy and a delete)"
        );
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        info!("refused hard link {newname:?}: hard links are not supported on litefs");
        Counted::new(FuseOp::Link, reply).error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let reply = Counted::new(FuseOp::Open, reply);
        let flags = flags.0;
        if is_special(ino.0) {
            if wants_write(flags) {
                return reply.error(Errno::EACCES);
            }
            // The contents are generated on each read; keep the kernel out.
            return match self.special_contents(ino.0) {
                Some(_) => reply.opened(
                    FileHandle(0),
                    self.without_flush(FopenFlags::FOPEN_DIRECT_IO),
                ),
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some((db, kind)) = self.resolve(ino.0) else {
            return reply.error(self.gone(ino.0));
        };
        if kind == FileKind::Pos {
            if wants_write(flags) {
                return reply.error(Errno::EACCES);
            }
            return match self.add_handle(Handle::new(db, kind, None, None)) {
                Ok(fh) => reply.opened(fh, self.without_flush(FopenFlags::FOPEN_DIRECT_IO)),
                Err(e) => reply.error(e),
            };
        }
        // litefs (through its mount helper) opens a replica's database read-write to
        // take SQLite's write locks while applying (`Applier`); it writes
        // nothing through that descriptor. An application's read-write
        // open of a database is let through too (not a copy-in): each
        // write is refused, and once this node is promoted the same
        // connection writes (`writes.rs`).
        if wants_write(flags)
            && !self.role.is_primary()
            && !self.is_litefs(req.pid())
            && !super::writes::read_write_open_on_a_replica(kind, flags)
        {
            return reply.error(self.read_only_error("write access", db.name()));
        }
        if super::copy_in::is_copy_in(kind, flags) {
            return match self.open_copy_in(&db, flags) {
                Ok((file, copy_in)) => self.reply_copy_in(db, file, copy_in, reply),
                Err(e) => reply.error(e),
            };
        }
        if flags & libc::O_TRUNC != 0 {
            // The kernel leaves O_TRUNC to litefs (FUSE_ATOMIC_O_TRUNC).
            if let Err(e) = self.truncate(&db, kind, 0) {
                return reply.error(e);
            }
        }
        let file = match self.open_backing(&db, kind, flags, false) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if kind == FileKind::Journal && journal_on_disk_is_live(db.journal_path()) {
            self.set_journal_active(db.name(), true);
        }
        if kind == FileKind::Journal && wants_write(flags) {
            self.journal_opened_for_writing(db.name());
        }
        let (open_flags, opened) =
            self.open_mode(&db, kind, flags, &file, |f| reply.open_backing(f));
        let mut handle = Handle::new(db, kind, Some(file), opened);
        handle.edits_in_place = super::writes::edits_in_place(kind, flags);
        let backing = handle.backing.clone();
        match self.add_handle(handle) {
            Ok(fh) => reply.opened_with(
                fh,
                self.without_flush(open_flags),
                backing.as_ref().map(|b| &b.id),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let reply = Counted::new(FuseOp::Read, reply);
        if is_special(ino.0) {
            let text = self.special_contents(ino.0).unwrap_or_default();
            return reply.data(slice_at(text.as_bytes(), offset, size));
        }
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else {
            // `-pos` is current: what the WAL committed is recorded first.
            if self.role.is_primary() {
                self.wals.catch_up_quietly(&handle.db);
            }
            return reply.data(slice_at(pos_text(&handle.db).as_bytes(), offset, size));
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(
                        "db {}: read {:?} at {offset}: {e}",
                        handle.db.name(),
                        handle.kind
                    );
                    return reply.error(io_errno(&e));
                }
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let reply = Counted::new(FuseOp::Write, reply);
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let db = &handle.db;
        let Some(file) = &handle.file else {
            return reply.error(Errno::EACCES);
        };
        if let Some(copy_in) = &handle.copy_in {
            return match self.write_copy_in(db, copy_in, file, offset, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            };
        }
        // SQLite's WAL index (`-shm`) is this node's own locking state,
        // never replicated: a connection opened while the node was primary
        // keeps writing it (read marks, a rebuilt index) after a step-down.
        // Refused, such a write would leave a clean page the kernel may
        // drop at any open, reverting the index under readers in the
        // middle of a read transaction. New connections on a replica open
        // `-shm` read-only and never write it.
        let _primary = self.role.hold_primary();
        if _primary.is_none() && handle.kind != FileKind::Shm {
            return reply.error(self.read_only_error("write", db.name()));
        }
        if let Err(e) = self.refuse_if_deleted(&handle, "write") {
            return reply.error(e);
        }
        let _awake = self.writing();
        match self.before_write(&handle, offset, data) {
            Ok(super::writes::WriteNext::PassThrough) => {}
            Ok(super::writes::WriteNext::Done) => return reply.written(data.len() as u32),
            Err(e) => return reply.error(e),
        }
        match file.write_all_at(data, offset) {
            Ok(()) if handle.kind == FileKind::Wal => {
                use super::sync_commit::Kind;
                let waited = match self.wals.written(db, offset, data.len() as u64) {
                    Ok(Some(pos)) => self
                        .admit_commit(db, pos, Kind::Wal)
                        .and_then(|()| self.await_replicas(db, pos, Kind::Wal)),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                match waited {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(e),
                }
            }
            Ok(()) => {
                if handle.kind == FileKind::Database {
                    super::writes::hand_to_disk(&handle, file, data.len());
                }
                reply.written(data.len() as u32)
            }
            Err(e) => {
                let what = format!("write {:?} at {offset}", handle.kind);
                reply.error(self.backing_errno(db, &what, &e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let reply = Counted::new(FuseOp::Flush, reply);
        match self.handle(fh) {
            // The writer of a copy-in closes it: its commit point.
            Ok(handle) if handle.copy_in.is_some() => self.finish_copy_in(handle, reply),
            // Every other open says FOPEN_NOFLUSH. A kernel that ignores it
            // gets ENOSYS, after which it never sends FLUSH again: litefs
            // holds files of its own mount open (see `Applier`), and at a
            // kill -9 the kernel would send their FLUSH to the dying
            // process and wait for it forever.
            _ if !self.noflush => reply.error(Errno::ENOSYS),
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let reply = Counted::new(FuseOp::Release, reply);
        let handle = self
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        match &handle {
            // No FLUSH on this kernel: the copy is committed now.
            Some(h) if h.copy_in.is_some() && !self.noflush => {
                return self.finish_copy_in(h.clone(), reply);
            }
            _ => reply.ok(),
        }
        if let Some(handle) = handle.filter(|h| !h.db.is_deleted()) {
            if let (FileKind::Journal, Some(backing)) = (handle.kind, &handle.backing) {
                if let Some(_primary) = self.role.hold_primary() {
                    self.journal_released(&handle.db, backing);
                }
            }
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let reply = Counted::new(FuseOp::Fsync, reply);
        match self.sync_file(fh, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let mut reply = Counted::new(FuseOp::Readdir, reply);
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ROOT_INO, FileType::Directory, ".".into()),
            (ROOT_INO, FileType::Directory, "..".into()),
        ];
        for (name, ino) in SPECIAL_FILES {
            if self.special_contents(ino).is_some() {
                entries.push((ino, FileType::RegularFile, name.into()));
            }
        }
        for db in self.store.dbs() {
            let super_journals = db.super_journals().into_iter().map(FileKind::SuperJournal);
            for kind in FileKind::ALL.into_iter().chain(super_journals) {
                let present = match kind {
                    // Opened by name only: a glob or `cp mnt/*` copies the
                    // databases and SQLite's files, not litefs's own.
                    FileKind::Pos => false,
                    FileKind::Journal if self.journal_hidden(db.name()) => false,
                    _ => path_of(&db, kind).exists(),
                };
                if present {
                    let name = format!("{}{}", db.name(), kind.suffix());
                    entries.push((self.ino(&db, kind), FileType::RegularFile, name));
                }
            }
        }
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let reply = Counted::new(FuseOp::Fsyncdir, reply);
        match self.sync_changed_dirs() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let reply = Counted::new(FuseOp::Statfs, reply);
        match crate::store::statvfs(self.store.data_dir()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS, not "no such attribute": the kernel then stops asking
        // (it otherwise asks for `security.capability` before every write)
        // and answers EOPNOTSUPP itself.
        Counted::new(FuseOp::Getxattr, reply).error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        Counted::new(FuseOp::Listxattr, reply).error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let reply = Counted::new(FuseOp::Opendir, reply);
        // With FUSE_NO_OPENDIR_SUPPORT, ENOSYS tells the kernel to skip
        // opendir and releasedir from now on (SQLite opens the directory
        // for every commit's fsync); readdir and fsyncdir need no handle.
        if self.no_opendir {
            reply.error(Errno::ENOSYS)
        } else {
            reply.opened(FileHandle(0), FopenFlags::empty())
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let reply = Counted::new(FuseOp::Access, reply);
        if mask.contains(fuser::AccessFlags::W_OK) && !self.role.is_primary() {
            return reply.error(Errno::EROFS);
        }
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let reply = Counted::new(FuseOp::Create, reply);
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::EINVAL);
        };
        self.create_file(name, mode & !umask & 0o7777, flags, reply)
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Python's open() asks isatty (TCGETS) of every file; ENOTTY is what
        // a regular file answers. The kernel does not remember an ioctl
        // refusal, so this must stay quiet.
        self.unsupported("ioctl", cmd);
        Counted::new(FuseOp::Ioctl, reply).error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // ENOSYS: the kernel stops asking and answers EOPNOTSUPP, which
        // SQLite takes as "no preallocation".
        self.unsupported("fallocate", mode as u32);
        Counted::new(FuseOp::Fallocate, reply).error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // ENOSYS: the kernel handles SEEK_DATA/SEEK_HOLE itself from then on.
        self.unsupported("lseek", whence as u32);
        Counted::new(FuseOp::Lseek, reply).error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS: the kernel falls back to reads and writes, which litefs
        // checks like any other.
        self.unsupported("copy_file_range", 0);
        Counted::new(FuseOp::CopyFileRange, reply).error(Errno::ENOSYS);
    }
}
