//! The mount: a `fuser::Filesystem` that passes SQLite's files through to
//! the data directory and watches the rollback journal for commits.
//!
//! The mount is one flat directory. For every database `<name>` it shows
//! `<name>` and its SQLite companions (`-journal`, `-wal`, `-shm`), backed by
//! `dbs/<name>/...` in the data directory, plus the read-only `<name>-pos`.
//! On a replica it also shows `.primary`. Writes are passed through, with
//! the database's dirty pages noted; the end of a journal (unlink, truncate
//! to zero, or a zeroed header) is the commit point, where the store turns
//! the dirty pages into an LTX file *before* the journal goes away, so a
//! crash can never leave a committed transaction without its LTX file.

mod locks;

pub use locks::{Lock, LockTable};

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, error, info, warn};

use crate::sqlite;
use crate::store::{self, Db, Position, Store};

/// How long the kernel may cache names and attributes. Every change on a
/// primary passes through the kernel, so it stays coherent; a replica
/// invalidates what it changes.
const TTL: Duration = Duration::from_secs(1);
const ROOT_INO: u64 = 1;
const PRIMARY_INO: u64 = 2;
const FIRST_DB_INO: u64 = 16;
/// Inode numbers reserved per database: one per `FileKind`.
const INOS_PER_DB: u64 = 8;
/// The file that names the primary on a replica.
pub const PRIMARY_FILE: &str = ".primary";
/// How long an F_SETLKW waits before giving up with EAGAIN. SQLite itself
/// never blocks on a lock; this only bounds other programs.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Which of a database's files a name or inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Database,
    Journal,
    Wal,
    Shm,
    Pos,
}

impl FileKind {
    const ALL: [FileKind; 5] = [
        FileKind::Database,
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ];

    fn suffix(self) -> &'static str {
        match self {
            FileKind::Database => "",
            FileKind::Journal => "-journal",
            FileKind::Wal => "-wal",
            FileKind::Shm => "-shm",
            FileKind::Pos => "-pos",
        }
    }

    fn index(self) -> u64 {
        match self {
            FileKind::Database => 0,
            FileKind::Journal => 1,
            FileKind::Wal => 2,
            FileKind::Shm => 3,
            FileKind::Pos => 4,
        }
    }
}

/// Splits a name on the mount into its database name and file kind.
pub fn parse_name(name: &str) -> (&str, FileKind) {
    for kind in [
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ] {
        if let Some(db) = name.strip_suffix(kind.suffix()) {
            if !db.is_empty() {
                return (db, kind);
            }
        }
    }
    (name, FileKind::Database)
}

/// Whether this node is primary, and if not, who is. Shared with the node,
/// which changes it when the lease moves.
#[derive(Debug)]
pub struct Role {
    state: RwLock<RoleState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleState {
    Primary,
    /// Read-only; the primary's hostname when one is known.
    Replica(Option<String>),
}

impl Role {
    /// A role that starts as primary.
    pub fn primary() -> Role {
        Role {
            state: RwLock::new(RoleState::Primary),
        }
    }

    /// A read-only role, replicating from `hostname` when one is known.
    pub fn replica(hostname: Option<String>) -> Role {
        Role {
            state: RwLock::new(RoleState::Replica(hostname)),
        }
    }

    /// True when this node accepts writes.
    pub fn is_primary(&self) -> bool {
        *self.state.read().unwrap_or_else(|e| e.into_inner()) == RoleState::Primary
    }

    /// The primary's hostname when this node is a replica that knows it.
    pub fn hostname(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            RoleState::Primary => None,
            RoleState::Replica(h) => h.clone(),
        }
    }

    /// Keeps this node primary while one change to a database's files is
    /// made: `set_replica` waits for the guard, so no write lands after a
    /// step-down has begun. `None` when this node is not primary. Holders
    /// must not ask the role anything else until they drop it.
    pub fn hold_primary(&self) -> Option<PrimaryGuard<'_>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        (*state == RoleState::Primary).then_some(PrimaryGuard { _state: state })
    }

    /// Makes this node the primary.
    pub fn set_primary(&self) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = RoleState::Primary;
    }

    /// Makes this node read-only, following `hostname` when known.
    pub fn set_replica(&self, hostname: Option<String>) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = RoleState::Replica(hostname);
    }
}

/// Proof that this node stays primary while it is held (see
/// [`Role::hold_primary`]).
pub struct PrimaryGuard<'a> {
    _state: std::sync::RwLockReadGuard<'a, RoleState>,
}

/// Database names by inode slot, so inode numbers stay stable for the life
/// of the mount.
#[derive(Default)]
struct Inodes {
    names: Vec<String>,
    slots: HashMap<String, u64>,
}

impl Inodes {
    fn ino(&mut self, db: &str, kind: FileKind) -> u64 {
        let slot = match self.slots.get(db) {
            Some(slot) => *slot,
            None => {
                let slot = self.names.len() as u64;
                self.names.push(db.to_string());
                self.slots.insert(db.to_string(), slot);
                slot
            }
        };
        FIRST_DB_INO + slot * INOS_PER_DB + kind.index()
    }

    fn lookup(&self, ino: u64) -> Option<(String, FileKind)> {
        let rel = ino.checked_sub(FIRST_DB_INO)?;
        let name = self.names.get((rel / INOS_PER_DB) as usize)?;
        let kind = FileKind::ALL.get((rel % INOS_PER_DB) as usize)?;
        Some((name.clone(), *kind))
    }
}

/// One open file of the mount.
struct Handle {
    db: Arc<Db>,
    kind: FileKind,
    /// The backing file in the data directory; None for `-pos`.
    file: Option<File>,
}

/// The litefs file system.
pub struct LitefsFs {
    store: Arc<Store>,
    role: Arc<Role>,
    locks: Arc<LockTable>,
    inodes: Arc<RwLock<Inodes>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Databases whose journal holds a live header: a write transaction is
    /// under way, and the journal's end will be its commit.
    active_journals: Arc<Mutex<HashSet<String>>>,
    uid: u32,
    gid: u32,
}

impl LitefsFs {
    /// Creates the file system over `store`.
    pub fn new(store: Arc<Store>, role: Arc<Role>, locks: Arc<LockTable>) -> LitefsFs {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        LitefsFs {
            store,
            role,
            locks,
            inodes: Arc::new(RwLock::new(Inodes::default())),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            active_journals: Arc::new(Mutex::new(HashSet::new())),
            uid,
            gid,
        }
    }

    /// The replica's way to apply LTX files to this mount (see `Applier`).
    pub fn applier(&self) -> Applier {
        Applier {
            locks: self.locks.clone(),
            active_journals: self.active_journals.clone(),
            inodes: self.inodes.clone(),
            notifier: Mutex::new(None),
        }
    }

    /// The inode number of `db`'s file of `kind` (stable for the mount's life).
    pub fn ino(&self, db: &str, kind: FileKind) -> u64 {
        self.inodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .ino(db, kind)
    }

    fn resolve(&self, ino: u64) -> Option<(Arc<Db>, FileKind)> {
        let (name, kind) = self
            .inodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(ino)?;
        Some((self.store.db(&name)?, kind))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(handle));
        FileHandle(fh)
    }

    fn journal_active(&self, db: &str) -> bool {
        self.active_journals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(db)
    }

    fn set_journal_active(&self, db: &str, active: bool) {
        let mut set = self
            .active_journals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if active {
            set.insert(db.to_string());
        } else {
            set.remove(db);
        }
    }

    /// The journal is ending: record the transaction before it goes away.
    fn commit(&self, db: &Db) -> Result<(), Errno> {
        if !self.journal_active(db.name()) {
            return Ok(());
        }
        match db.commit() {
            Ok(Some(pos)) => {
                debug!("db {}: committed TXID {}", db.name(), pos);
                // Wake the replication streams.
                self.store.notify_change();
            }
            Ok(None) => debug!("db {}: transaction rolled back, no LTX", db.name()),
            Err(e) => {
                error!(
                    "db {}: commit failed, the transaction is not recorded: {e}",
                    db.name()
                );
                return Err(Errno::EIO);
            }
        }
        self.set_journal_active(db.name(), false);
        Ok(())
    }

    fn attr(&self, ino: u64, db: &Db, kind: FileKind) -> Result<FileAttr, Errno> {
        if kind == FileKind::Pos {
            return Ok(self.synthetic_attr(ino, pos_text(db).len() as u64));
        }
        let md = std::fs::metadata(path_of(db, kind)).map_err(|e| io_errno(&e))?;
        Ok(self.file_attr(ino, &md))
    }

    fn file_attr(&self, ino: u64, md: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: md.len(),
            blocks: md.blocks(),
            atime: md.accessed().unwrap_or(UNIX_EPOCH),
            mtime: md.modified().unwrap_or(UNIX_EPOCH),
            ctime: UNIX_EPOCH + Duration::new(md.ctime().max(0) as u64, md.ctime_nsec() as u32),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: (md.mode() & 0o7777) as u16,
            nlink: 1,
            uid: md.uid(),
            gid: md.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn synthetic_attr(&self, ino: u64, size: u64) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: if ino == ROOT_INO {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if ino == ROOT_INO { 0o755 } else { 0o444 },
            nlink: if ino == ROOT_INO { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn primary_contents(&self) -> Option<String> {
        self.role.hostname().map(|h| format!("{h}\n"))
    }

    /// Opens (or creates) the backing file for `kind` with the caller's flags.
    fn open_backing(
        &self,
        db: &Db,
        kind: FileKind,
        flags: i32,
        create: bool,
    ) -> Result<File, Errno> {
        let path = path_of(db, kind);
        let mut opts = OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => opts.write(true),
            libc::O_RDWR => opts.read(true).write(true),
            _ => opts.read(true),
        };
        if create {
            opts.create(true).mode(0o644);
        }
        opts.open(&path).map_err(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("open {}: {e}", path.display());
            }
            io_errno(&e)
        })
    }

    fn read_only_error(&self, what: &str, name: &str) -> Errno {
        match self.role.hostname() {
            Some(primary) => info!(
                "refused {what} of {name}: this node is a read-only replica of {primary}; \
                 write on the primary"
            ),
            None => {
                info!("refused {what} of {name}: no primary is known yet, so writes are refused")
            }
        }
        Errno::EROFS
    }
}

/// The backing path in the data directory of a database's file.
fn path_of(db: &Db, kind: FileKind) -> PathBuf {
    match kind {
        FileKind::Database | FileKind::Pos => db.database_path().to_path_buf(),
        FileKind::Journal => db.journal_path().to_path_buf(),
        FileKind::Wal => db.wal_path().to_path_buf(),
        FileKind::Shm => db.shm_path().to_path_buf(),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None => Errno::EIO,
    }
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// True when a journal header write starts with SQLite's journal magic.
fn is_journal_header(data: &[u8]) -> bool {
    data.len() >= sqlite::JOURNAL_MAGIC.len() && data[..8] == sqlite::JOURNAL_MAGIC
}

/// Reads the first bytes of a journal on disk to see if it holds a live
/// transaction (for example a hot journal SQLite is about to play back).
fn journal_on_disk_is_live(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    match File::open(path) {
        Ok(f) => f.read_exact_at(&mut magic, 0).is_ok() && magic == sqlite::JOURNAL_MAGIC,
        Err(_) => false,
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

impl Filesystem for LitefsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS) {
            warn!(
                "kernel does not offer {missing:?}: SQLite locks stay kernel-local and litefs \
                 cannot take part in them"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        if name == PRIMARY_FILE {
            return match self.primary_contents() {
                Some(s) => reply.entry(
                    &TTL,
                    &self.synthetic_attr(PRIMARY_INO, s.len() as u64),
                    Generation(0),
                ),
                None => reply.error(Errno::ENOENT),
            };
        }
        let (db_name, kind) = parse_name(name);
        let Some(db) = self.store.db(db_name) else {
            debug!("lookup {name}: there is no database {db_name}");
            return reply.error(Errno::ENOENT);
        };
        let ino = self.ino(db_name, kind);
        match self.attr(ino, &db, kind) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT_INO {
            return reply.attr(&TTL, &self.synthetic_attr(ROOT_INO, 0));
        }
        if ino.0 == PRIMARY_INO {
            return match self.primary_contents() {
                Some(s) => reply.attr(&TTL, &self.synthetic_attr(PRIMARY_INO, s.len() as u64)),
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some((db, kind)) = self.resolve(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.attr(ino.0, &db, kind) {
            Ok(attr) => reply.attr(&TTL, &attr),
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
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some((db, kind)) = self.resolve(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let path = path_of(&db, kind);
        if let Some(size) = size {
            if kind == FileKind::Pos {
                return reply.error(Errno::EACCES);
            }
            let Some(_primary) = self.role.hold_primary() else {
                return reply.error(self.read_only_error("truncate", db.name()));
            };
            if kind == FileKind::Journal && size == 0 {
                // journal_mode=TRUNCATE: truncating the journal commits.
                if let Err(e) = self.commit(&db) {
                    return reply.error(e);
                }
            }
            if kind == FileKind::Database {
                if let Err(e) = db.before_truncate(size) {
                    warn!("db {}: refused truncate: {e}", db.name());
                    return reply.error(Errno::EINVAL);
                }
            }
            let res = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size));
            if let Err(e) = res {
                warn!("truncate {}: {e}", path.display());
                return reply.error(io_errno(&e));
            }
        }
        if let (Some(mode), false) = (mode, kind == FileKind::Pos) {
            let perms = std::fs::Permissions::from_mode(mode & 0o7777);
            if let Err(e) = std::fs::set_permissions(&path, perms) {
                return reply.error(io_errno(&e));
            }
        }
        match self.attr(ino.0, &db, kind) {
            Ok(attr) => reply.attr(&TTL, &attr),
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
        reply.error(Errno::EPERM);
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
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        let (db_name, kind) = parse_name(name);
        let db = match self.store.db(db_name) {
            Some(db) if name != PRIMARY_FILE => db,
            _ => return reply.error(Errno::ENOENT),
        };
        let Some(_primary) = self.role.hold_primary() else {
            return reply.error(self.read_only_error("delete", name));
        };
        match kind {
            FileKind::Database | FileKind::Pos => {
                info!("refused to delete {name}: deleting a database is not supported; drop its tables instead");
                return reply.error(Errno::EPERM);
            }
            FileKind::Journal => {
                // journal_mode=DELETE: deleting the journal commits.
                if let Err(e) = self.commit(&db) {
                    return reply.error(e);
                }
            }
            FileKind::Wal | FileKind::Shm => {}
        }
        match std::fs::remove_file(path_of(&db, kind)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        info!("refused rmdir of {name:?}: the litefs mount has no directories");
        reply.error(Errno::ENOTDIR);
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
        reply.error(Errno::EPERM);
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
        info!("refused rename of {name:?} to {newname:?}: renaming databases is not supported");
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
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        if ino.0 == PRIMARY_INO {
            if wants_write(flags) {
                return reply.error(Errno::EACCES);
            }
            // The contents are generated on each read; keep the kernel out.
            return match self.resolve_primary_handle() {
                Some(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some((db, kind)) = self.resolve(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if kind == FileKind::Pos {
            if wants_write(flags) {
                return reply.error(Errno::EACCES);
            }
            let fh = self.add_handle(Handle {
                db,
                kind,
                file: None,
            });
            return reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
        }
        if wants_write(flags) && !self.role.is_primary() {
            return reply.error(self.read_only_error("write access", db.name()));
        }
        if flags & libc::O_TRUNC != 0 && kind == FileKind::Database {
            info!(
                "refused O_TRUNC open of database {}: it would destroy it",
                db.name()
            );
            return reply.error(Errno::EPERM);
        }
        let file = match self.open_backing(&db, kind, flags, false) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if kind == FileKind::Journal && journal_on_disk_is_live(db.journal_path()) {
            self.set_journal_active(db.name(), true);
        }
        let open_flags = if kind == FileKind::Database {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        let fh = self.add_handle(Handle {
            db,
            kind,
            file: Some(file),
        });
        reply.opened(fh, open_flags);
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
        if ino.0 == PRIMARY_INO {
            let text = self.primary_contents().unwrap_or_default();
            return reply.data(slice_at(text.as_bytes(), offset, size));
        }
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else {
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
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let db = &handle.db;
        let Some(file) = &handle.file else {
            return reply.error(Errno::EACCES);
        };
        let Some(_primary) = self.role.hold_primary() else {
            return reply.error(self.read_only_error("write", db.name()));
        };
        match handle.kind {
            FileKind::Database => {
                // Pure checks on the data first; before_write records the
                // write (dirty pages, undo log) once it is going to happen.
                if offset == 0 && data.len() >= 20 && (data[18] == 2 || data[19] == 2) {
                    error!(
                        "db {}: refused switching to journal_mode=WAL: WAL is not supported yet; \
                         use journal_mode=DELETE, TRUNCATE or PERSIST",
                        db.name()
                    );
                    return reply.error(Errno::EIO);
                }
                if let Err(e) = db.before_write(offset, data) {
                    error!(
                        "db {}: refused write of {} bytes at {offset}: {e}",
                        db.name(),
                        data.len()
                    );
                    return reply.error(Errno::EINVAL);
                }
                if !self.journal_active(db.name()) {
                    error!(
                        "db {}: refused a write with no rollback journal: journal_mode=OFF and \
                         MEMORY cannot be replicated; use PRAGMA journal_mode=DELETE (or TRUNCATE, PERSIST)",
                        db.name()
                    );
                    return reply.error(Errno::EIO);
                }
            }
            FileKind::Journal if offset == 0 => {
                if is_journal_header(data) {
                    self.set_journal_active(db.name(), true);
                } else if data.len() >= 8 && data[..8].iter().all(|b| *b == 0) {
                    // journal_mode=PERSIST: zeroing the header commits.
                    if let Err(e) = self.commit(db) {
                        return reply.error(e);
                    }
                }
            }
            _ => {}
        }
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                error!("db {}: write {:?} at {offset}: {e}", db.name(), handle.kind);
                reply.error(io_errno(&e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() of any descriptor ends the process's POSIX locks on the file.
        self.locks.release_owner(ino.0, lock_owner.0);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        if let (true, Some(owner)) = (flush, lock_owner) {
            self.locks.release_owner(ino.0, owner.0);
        }
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else {
            return reply.ok();
        };
        if handle.kind == FileKind::Database {
            // The undo log of overwritten free pages must reach the disk
            // before the pages themselves do.
            if let Err(e) = handle.db.before_sync() {
                error!("db {}: cannot sync the undo log: {e}", handle.db.name());
                return reply.error(Errno::EIO);
            }
        }
        let res = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => {
                error!("db {}: fsync {:?}: {e}", handle.db.name(), handle.kind);
                reply.error(io_errno(&e))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ROOT_INO, FileType::Directory, ".".into()),
            (ROOT_INO, FileType::Directory, "..".into()),
        ];
        if self.primary_contents().is_some() {
            entries.push((PRIMARY_INO, FileType::RegularFile, PRIMARY_FILE.into()));
        }
        for db in self.store.dbs() {
            for kind in FileKind::ALL {
                let present = match kind {
                    FileKind::Pos => true,
                    _ => path_of(&db, kind).exists(),
                };
                if present {
                    let name = format!("{}{}", db.name(), kind.suffix());
                    entries.push((self.ino(db.name(), kind), FileType::RegularFile, name));
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
        // SQLite syncs the directory so a new journal's name is durable
        // before it overwrites database pages. The backing files live in one
        // directory per database; sync those.
        for db in self.store.dbs() {
            if let Err(e) = File::open(db.dir()).and_then(|d| d.sync_all()) {
                error!(
                    "db {}: cannot sync its directory {}: {e}",
                    db.name(),
                    db.dir().display()
                );
                return reply.error(io_errno(&e));
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match statvfs(self.store.data_dir()) {
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
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
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
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Ok(name) = name_str(name) else {
            return reply.error(Errno::EINVAL);
        };
        if !self.role.is_primary() {
            return reply.error(self.read_only_error("create", name));
        }
        let (db_name, kind) = parse_name(name);
        let db = match kind {
            FileKind::Database => match self.store.create_db(db_name) {
                Ok(db) => db,
                Err(e) => {
                    info!("refused to create {name}: {e}");
                    return reply.error(Errno::EINVAL);
                }
            },
            FileKind::Journal => match self.store.db(db_name) {
                Some(db) => db,
                None => {
                    info!("refused to create {name}: there is no database {db_name}");
                    return reply.error(Errno::ENOENT);
                }
            },
            FileKind::Wal | FileKind::Shm => {
                error!(
                    "refused to create {name}: WAL mode is not supported yet; use \
                     journal_mode=DELETE, TRUNCATE or PERSIST"
                );
                return reply.error(Errno::EIO);
            }
            FileKind::Pos => {
                info!("refused to create {name}: -pos files are litefs's own, read-only");
                return reply.error(Errno::EPERM);
            }
        };
        let file = match self.open_backing(&db, kind, flags, true) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let ino = self.ino(db.name(), kind);
        let attr = self.file_attr(ino, &md);
        let fh = self.add_handle(Handle {
            db,
            kind,
            file: Some(file),
        });
        let open_flags = if kind == FileKind::Database {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.created(&TTL, &attr, Generation(0), fh, open_flags);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        match self.locks.conflict(ino.0, lock_owner.0, start, end, typ) {
            Some(l) => reply.locked(l.start, l.end, l.typ, l.pid),
            None => reply.locked(start, end, libc::F_UNLCK, pid),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        if typ != locks::READ && typ != locks::WRITE && typ != locks::UNLOCK {
            return reply.error(Errno::EINVAL);
        }
        let lock = Lock {
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
        };
        let ok = if sleep {
            self.locks.set_wait(ino.0, lock, LOCK_WAIT)
        } else {
            self.locks.try_set(ino.0, lock)
        };
        if ok {
            reply.ok()
        } else {
            reply.error(Errno::EAGAIN)
        }
    }
}

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
    locks: Arc<LockTable>,
    active_journals: Arc<Mutex<HashSet<String>>>,
    inodes: Arc<RwLock<Inodes>>,
    notifier: Mutex<Option<fuser::Notifier>>,
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

impl LitefsFs {
    fn resolve_primary_handle(&self) -> Option<FileHandle> {
        self.primary_contents()?;
        Some(FileHandle(0))
    }
}

/// The contents of `<name>-pos`: TXID / database checksum, newline.
fn pos_text(db: &Db) -> String {
    format!("{}\n", db.pos())
}

fn slice_at(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: cpath is a valid NUL-terminated string and st is a plain C
    // struct that statvfs fills in.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(cpath.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_database_and_kind() {
        assert_eq!(parse_name("my.db"), ("my.db", FileKind::Database));
        assert_eq!(parse_name("my.db-journal"), ("my.db", FileKind::Journal));
        assert_eq!(parse_name("my.db-wal"), ("my.db", FileKind::Wal));
        assert_eq!(parse_name("my.db-shm"), ("my.db", FileKind::Shm));
        assert_eq!(parse_name("my.db-pos"), ("my.db", FileKind::Pos));
        assert_eq!(parse_name("-pos"), ("-pos", FileKind::Database));
    }

    #[test]
    fn inode_numbers_round_trip() {
        let mut inodes = Inodes::default();
        let a = inodes.ino("a", FileKind::Journal);
        let b = inodes.ino("b", FileKind::Pos);
        assert_eq!(inodes.ino("a", FileKind::Journal), a);
        assert_eq!(inodes.lookup(a), Some(("a".to_string(), FileKind::Journal)));
        assert_eq!(inodes.lookup(b), Some(("b".to_string(), FileKind::Pos)));
        assert_eq!(inodes.lookup(ROOT_INO), None);
        assert_eq!(inodes.lookup(FIRST_DB_INO + 7), None);
    }
}
