//! The mount: a `fuser::Filesystem` that passes SQLite's files through to
//! the data directory and records every committed transaction.
//!
//! The mount is one flat directory. For every database `<name>` it shows
//! `<name>` and its SQLite companions (`-journal`, `-wal`, `-shm`, and a
//! super-journal `<name>-mjXXXXXXXXX` while SQLite has one), backed by
//! `dbs/<name>/...` in the data directory, plus the read-only `<name>-pos`
//! (the position; opened by name, never listed, so a glob or `cp mnt/*`
//! copies only what SQLite made). At the root, `.lag` holds a replica's
//! lag in seconds (`0` on the primary) and `.primary`, on a replica that
//! knows its primary, the primary's hostname. `-pos`, `.lag` and
//! `.primary` are made at each read (direct I/O, no page cache), so they
//! are current.
//!
//! On the primary, database writes are checked and their pages noted dirty
//! (`writes.rs`). In the rollback-journal modes the end of the journal
//! (unlink, truncate to zero, or a zeroed header) is the commit point,
//! where the store turns the dirty pages into an LTX file *before* the
//! journal goes away, so a crash can never leave a committed transaction
//! without its LTX file. A journal passing through the kernel has its
//! header zeroed before litefs hears of it; the commit point is then
//! SQLite's fsync of it, and start-up recovery records a transaction a
//! crash caught in between (`journal.rs`). In WAL mode `-wal` passes
//! through (`passthrough.rs`), and litefs reads each committed transaction
//! back from it (`wal_follower.rs`, `watch.rs`). On a replica every change is
//! refused with EROFS; an apply takes SQLite's locks through the mount
//! itself, then writes the backing files through the store (`apply.rs`).
//!
//! The kernel keeps SQLite's POSIX locks (litefs does not ask for
//! FUSE_POSIX_LOCKS), caches names and attributes for `TTL`, and remembers
//! absent companions for `NEGATIVE_TTL`; litefs invalidates what it
//! changes behind the kernel's back.

mod apply;
mod copy_in;
mod counted;
mod create;
mod filesystem;
mod full;
mod inodes;
mod journal;
mod journal_states;
pub mod mount_helper;
mod passthrough;
mod role_change;
mod sync;
mod sync_commit;
mod wal_follower;
mod watch;
mod writes;

use crate::role::Role;
pub use apply::{Applier, DatabaseLock};
pub use inodes::{parse_name, FileKind};

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, InitFlags, KernelConfig};
use log::{debug, info, warn};

use crate::cpu_wake::{Awake, CpuWake};
use crate::sqlite;
use crate::store::{Db, Position, Store};
use inodes::{Inodes, LAG_INO, PRIMARY_INO, ROOT_INO};
use journal_states::JournalStates;
use sync_commit::Kind;

/// When a recorded journal transaction is answered to SQLite
/// (`LitefsFs::finish_commit`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// At once: SQLite was told it committed already (recorded late).
    Now,
    /// Once the replicas `replication.sync` asks for hold it.
    AfterReplicas,
    /// The same, after `max-lag` admitted it (not asked at recording).
    AfterAdmitAndReplicas,
}

/// How long the kernel may cache names and attributes. Every change on a
/// primary passes through the kernel, so it stays coherent; a replica
/// invalidates what it changes.
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// The largest journal `LitefsFs::hide_journal` keeps whole (its header
/// zeroed); a larger one is emptied.
const HIDDEN_JOURNAL_KEEP: u64 = 1 << 20;
/// How long the kernel may remember that a database's companion file
/// (`-journal`, `-wal`, `-shm`) is absent. Long, because it is kept true by
/// invalidation, not by expiry (see `lookup`).
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(3600);
/// The file that names the primary on a replica.
pub const PRIMARY_FILE: &str = ".primary";
/// The file that tells a replica's lag in seconds (`0` on the primary).
pub const LAG_FILE: &str = ".lag";

/// One open file of the mount.
struct Handle {
    db: Arc<Db>,
    kind: FileKind,
    /// The backing file in the data directory; None for `-pos`.
    file: Option<File>,
    /// The kernel's registration of `file` when it is open in passthrough
    /// (`passthrough.rs`): kept while any handle of the inode is open.
    backing: Option<Arc<passthrough::Backing>>,
    /// For a WAL or journal open without passthrough: held until the
    /// kernel is known to have finished the open, at the handle's first
    /// request (`LitefsFs::handle`) or its release (`passthrough.rs`).
    direct: Mutex<Option<Arc<passthrough::DirectOpen>>>,
    /// Bytes of database pages written through this handle since the disk
    /// was last asked to start writing them out (see `write`).
    not_handed: AtomicU64,
    /// For a database written without SQLite: the staging file `file`
    /// is (`copy_in.rs`).
    copy_in: Option<copy_in::CopyIn>,
    /// A database opened read-write by a program other than SQLite: its
    /// writes outside a SQLite transaction are edits in place
    /// (`writes.rs`).
    edits_in_place: bool,
}

impl Handle {
    /// A handle of `db`'s file of `kind`: `file` is None for `-pos`;
    /// `opened` says how the kernel opened it (`passthrough.rs`).
    fn new(
        db: Arc<Db>,
        kind: FileKind,
        file: Option<File>,
        opened: Option<passthrough::Opened>,
    ) -> Handle {
        let (backing, direct) = passthrough::Opened::split(opened);
        Handle {
            db,
            kind,
            file,
            backing,
            direct: Mutex::new(direct),
            not_handed: AtomicU64::new(0),
            copy_in: None,
            edits_in_place: false,
        }
    }
}

/// The litefs file system.
pub struct LitefsFs {
    store: Arc<Store>,
    role: Arc<Role>,
    /// Where the mount is: the applier takes SQLite's locks through it.
    mount_dir: PathBuf,
    inodes: Arc<RwLock<Inodes>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// What the mount knows of each database's journal (`journal_states.rs`),
    /// shared with the `Applier`.
    journals: Arc<JournalStates>,
    /// Transactions that began unseen in a journal passing through
    /// (`journal.rs`).
    unseen_txns: journal::UnseenTransactions,
    /// What litefs follows of each database's WAL (`wal_follower.rs`), by name.
    wals: Arc<wal_follower::WalFollowers>,
    /// FUSE passthrough of the primary's `-wal` (`passthrough.rs`).
    passthrough: Arc<passthrough::Passthrough>,
    /// The mount's notifier once it is up, shared with the `Applier`.
    notifier: Arc<Mutex<Option<fuser::Notifier>>>,
    /// What litefs asks of its own mount goes through this helper
    /// process (`mount_helper.rs`), shared with every `Applier`.
    mount_helper: Arc<mount_helper::MountHelper>,
    /// Wakes on writes to the primary's WALs (`watch.rs`).
    watcher: watch::WalWatcher,
    /// The request for awake CPUs while databases are written
    /// (`crate::cpu_wake`); off until `keep_cpus_awake`.
    cpu_wake: CpuWake,
    /// Databases whose backing directory gained or lost an entry since the
    /// last fsyncdir: the only ones it must sync.
    changed_dirs: Mutex<HashSet<String>>,
    /// The kernel skips opendir/releasedir (FUSE_NO_OPENDIR_SUPPORT).
    no_opendir: bool,
    /// Whether the kernel honours FOPEN_NOFLUSH (FUSE 7.35): then only
    /// copy-in handles get FLUSH (`copy_in.rs`).
    noflush: bool,
    /// Kinds of request litefs does not support that were logged already.
    unsupported_seen: Mutex<HashSet<&'static str>>,
    uid: u32,
    gid: u32,
}

impl LitefsFs {
    /// Creates the file system over `store`.
    pub fn new(store: Arc<Store>, role: Arc<Role>, mount_dir: &Path) -> LitefsFs {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // An empty journal, or one with its header zeroed, left by an
        // earlier run is one litefs kept (or SQLite's PERSIST mode left,
        // which SQLite then opens with O_CREAT all the same).
        let hidden_journals: Vec<String> = store
            .dbs()
            .iter()
            .filter(|db| journal_is_ended(db.journal_path()))
            .map(|db| db.name().to_string())
            .collect();
        let wals = Arc::new(wal_follower::WalFollowers::new(store.clone()));
        let watcher = watch::WalWatcher::new(store.clone(), role.clone(), wals.clone());
        LitefsFs {
            store,
            role,
            mount_dir: mount_dir.to_path_buf(),
            inodes: Arc::new(RwLock::new(Inodes::default())),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            journals: Arc::new(JournalStates::with_hidden(hidden_journals)),
            changed_dirs: Mutex::new(HashSet::new()),
            wals,
            passthrough: Arc::default(),
            notifier: Arc::default(),
            mount_helper: Arc::default(),
            watcher,
            cpu_wake: CpuWake::off(),
            unseen_txns: Default::default(),
            no_opendir: false,
            noflush: false,
            unsupported_seen: Mutex::new(HashSet::new()),
            uid,
            gid,
        }
    }

    /// Asks the kernel for awake CPUs while databases are written
    /// (`fuse.keep-cpus-awake`; see `crate::cpu_wake`). Once, before the
    /// mount serves requests.
    pub fn keep_cpus_awake(&mut self, keep: bool) {
        if keep {
            self.cpu_wake = CpuWake::start();
        }
    }

    /// A write, sync or commit of a database's files on the primary is
    /// being served: CPUs are kept awake until the guard goes (and a
    /// moment more).
    fn writing(&self) -> Awake<'_> {
        self.cpu_wake.hold()
    }

    /// The replica's way to apply LTX files to this mount (see `Applier`).
    pub fn applier(&self) -> Applier {
        Applier {
            mount_dir: self.mount_dir.clone(),
            journals: self.journals.clone(),
            inodes: self.inodes.clone(),
            notifier: self.notifier.clone(),
            files: Mutex::new(HashMap::new()),
            wals: self.wals.clone(),
            passthrough: self.passthrough.clone(),
            helper: self.mount_helper.clone(),
        }
    }

    /// The inode number of `db`'s file of `kind` (stable for the mount's life).
    pub fn ino(&self, db: &Db, kind: FileKind) -> u64 {
        // Every database write asks (for its journal's); only a database's
        // first ask allocates.
        let known = self.inodes.read().unwrap_or_else(|e| e.into_inner()).known(
            db.name(),
            db.instance(),
            kind,
        );
        known.unwrap_or_else(|| {
            self.inodes.write().unwrap_or_else(|e| e.into_inner()).ino(
                db.name(),
                db.instance(),
                kind,
            )
        })
    }

    fn resolve(&self, ino: u64) -> Option<(Arc<Db>, FileKind)> {
        let (name, instance, kind) = self
            .inodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(ino)?;
        // An inode of a database since deleted resolves to nothing.
        let db = self
            .store
            .db(&name)
            .filter(|db| db.instance() == instance)?;
        Some((db, kind))
    }

    /// The errno for inode `ino` that resolves to nothing: ESTALE for a
    /// file of a database deleted since the kernel looked its name up
    /// (the kernel then looks the name up again and retries, finding the
    /// new database of that name, or none: a companion such as `-wal`
    /// goes with its database, and the kernel may still hold its name),
    /// ENOENT for an inode litefs never gave out.
    fn gone(&self, ino: u64) -> Errno {
        let known = self
            .inodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(ino)
            .is_some();
        if known {
            Errno::ESTALE
        } else {
            Errno::ENOENT
        }
    }

    /// An open handle of inode `ino` (of a database since deleted, say).
    fn open_handle_of(&self, ino: u64) -> Option<Arc<Handle>> {
        let (name, instance, kind) = self
            .inodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(ino)?;
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|h| h.db.name() == name && h.db.instance() == instance && h.kind == kind)
            .cloned()
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        let handle = self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        // A request on the handle: the kernel has finished its open. Only
        // a WAL or journal handle can hold a direct mark; a database's
        // reads and writes take no lock for it.
        if matches!(handle.kind, FileKind::Wal | FileKind::Journal) {
            handle
                .direct
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        Ok(handle)
    }

    /// Registers an open file. ENOENT when its database was deleted since
    /// it was looked up: `delete_database` deletes under the same lock.
    fn add_handle(&self, handle: Handle) -> Result<FileHandle, Errno> {
        let mut handles = self.handles.write().unwrap_or_else(|e| e.into_inner());
        if handle.db.is_deleted() {
            return Err(Errno::ENOENT);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, Arc::new(handle));
        Ok(FileHandle(fh))
    }

    fn journal_active(&self, db: &str) -> bool {
        self.journals.get(db).active
    }

    /// Notes that `db`'s journal ended a recorded transaction (`ended`), or
    /// that a new transaction wrote its header (`!ended`).
    fn set_journal_ended(&self, db: &str, ended: bool) {
        self.journals.update(db, |j| j.ended = ended);
    }

    fn set_journal_active(&self, db: &str, active: bool) {
        self.journals.update(db, |j| j.active = active);
    }

    /// Asks the kernel, at INIT, for what the mount uses of FUSE, and
    /// notes what it granted.
    fn negotiate(&mut self, config: &mut KernelConfig) {
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        // O_TRUNC reaches open and create with their handle (a copy-in's
        // truncate must reach its staging file), not as a SETATTR without
        // one.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            warn!("this kernel's FUSE has no atomic O_TRUNC; cp over a database fails");
        }
        // FOPEN_NOFLUSH came with FUSE 7.35 (`copy_in.rs`).
        let abi = config.kernel_abi();
        self.noflush = abi.0 > 7 || (abi.0 == 7 && abi.1 >= 35);
        if !self.noflush {
            warn!(
                "this kernel's FUSE ({}.{}) predates FOPEN_NOFLUSH (Linux 5.19): a database \
                 written without SQLite (cp) is committed just after its writer closes it, \
                 not before close() returns",
                abi.0, abi.1
            );
        }
        // The primary's WAL and journals pass through (`passthrough.rs`). Depth 2 lets
        // the data directory itself be on a stacked file system (overlayfs).
        if self.passthrough.refused() {
            info!("fuse.passthrough is false: the WAL's and journals' writes go through litefs");
            return;
        }
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        self.passthrough.set_enabled(passthrough);
        if !passthrough {
            info!(
                "the kernel offers no FUSE passthrough; the WAL's and journals' writes go \
                 through litefs (slower; Linux 6.9 or later has it)"
            );
        }
        // FUSE_POSIX_LOCKS is deliberately not asked for: the kernel keeps
        // SQLite's POSIX locks itself, with no round trip to litefs per
        // lock, and wakes waiters on every unlock, downgrade, close and
        // exit. litefs takes the locks it needs through the mount (see
        // `Applier`).
    }

    /// Logs a request litefs does not support, at debug and once per kind:
    /// programs ask these routinely (isatty on every open) and the answer
    /// is the expected errno, not a fault.
    fn unsupported(&self, kind: &'static str, detail: u32) {
        let first = self
            .unsupported_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind);
        if first {
            debug!("{kind} ({detail:#x}) is not supported on the mount; answered with its errno (logged once)");
        }
    }

    /// Notes that `db`'s backing directory gained or lost an entry, so the
    /// next fsyncdir syncs it.
    fn mark_dir_changed(&self, db: &str) {
        self.changed_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string());
    }

    /// The databases whose directories changed since the last call.
    fn take_changed_dirs(&self) -> Vec<Arc<Db>> {
        let names =
            std::mem::take(&mut *self.changed_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        names
            .iter()
            .filter_map(|name| self.store.db(name))
            .collect()
    }

    /// Whether `db`'s journal is one litefs kept after SQLite deleted it.
    fn journal_hidden(&self, db: &str) -> bool {
        self.journals.get(db).hidden
    }

    /// SQLite deletes the journal (journal_mode=DELETE) once the
    /// transaction is recorded: zero the backing file's header and show it
    /// as absent, instead of deleting it. Creating and deleting a file per
    /// transaction is what costs most on the backing file system (a new
    /// inode each time; ext4 without a journal scans past every recently
    /// deleted one), and emptying it costs freeing its blocks (100-150 us
    /// here), where a zeroed header is what ends a transaction in SQLite's
    /// own PERSIST mode: the journal is not hot, and SQLite's checksums,
    /// seeded afresh in each header, keep it from reading the stale
    /// records after a shorter transaction. A journal over
    /// `HIDDEN_JOURNAL_KEEP` bytes is emptied, so its space comes back.
    /// Not synced: the LTX file already records the commit, and a journal
    /// that comes back after a crash is one whose transaction recovery
    /// finds recorded, so it only deletes it.
    fn hide_journal(&self, db: &Db) -> std::io::Result<()> {
        let journal = OpenOptions::new().write(true).open(db.journal_path())?;
        if journal.metadata()?.len() > HIDDEN_JOURNAL_KEEP {
            journal.set_len(0)?;
        } else {
            journal.write_all_at(&crate::store::hidden_journal_header(), 0)?;
        }
        self.journals.update(db.name(), |j| j.hidden = true);
        Ok(())
    }

    /// SQLite created the journal again: show it.
    fn show_journal(&self, db: &str) {
        self.journals.update(db, |j| j.hidden = false);
    }

    /// The journal is ending: record the transaction before it goes away,
    /// and wait for the replicas synchronous replication asks for
    /// (`sync_commit.rs`).
    fn commit(&self, db: &Db) -> Result<(), Errno> {
        let recorded = self.record_commit(db, true)?;
        self.finish_commit(db, recorded, Answer::AfterReplicas)
    }

    /// Records the journal's transaction: its position, `None` when no
    /// transaction is active or it changed nothing. With `admit`, refused
    /// by `max-lag` before the streams are woken (`sync_commit.rs`).
    /// `finish_commit` must follow.
    fn record_commit(&self, db: &Db, admit: bool) -> Result<Option<Position>, Errno> {
        if !self.journal_active(db.name()) {
            return Ok(None);
        }
        let _awake = self.writing();
        match db.commit() {
            Ok(Some(pos)) => {
                debug!("db {}: committed TXID {}", db.name(), pos);
                if admit {
                    self.admit_commit(db, pos, Kind::Journal)?;
                }
                self.recorded();
                Ok(Some(pos))
            }
            Ok(None) => {
                debug!("db {}: transaction rolled back, no LTX", db.name());
                self.journal_committed(db.name(), false);
                self.journal_ended(db.name());
                Ok(None)
            }
            // The journal stays: SQLite rolls the transaction back.
            Err(e) => {
                Err(self.store_errno(db, "commit failed, the transaction is not recorded", &e))
            }
        }
    }

    /// After `record_commit`: waits for the replicas (when `wait`; see
    /// `sync_commit.rs`), then ends the journal's transaction. A commit
    /// taken back leaves it active: SQLite rolls it back.
    fn finish_commit(
        &self,
        db: &Db,
        recorded: Option<Position>,
        answer: Answer,
    ) -> Result<(), Errno> {
        let Some(pos) = recorded else {
            return Ok(());
        };
        if answer == Answer::AfterAdmitAndReplicas {
            self.admit_commit(db, pos, Kind::Journal)?;
        }
        if answer != Answer::Now {
            self.await_replicas(db, pos, Kind::Journal)?;
        }
        self.journal_committed(db.name(), true);
        self.journal_ended(db.name());
        Ok(())
    }

    fn journal_ended(&self, db: &str) {
        self.set_journal_active(db, false);
        self.set_journal_ended(db, true);
    }

    fn attr(&self, ino: u64, db: &Db, kind: FileKind) -> Result<FileAttr, Errno> {
        if kind == FileKind::Journal && self.journal_hidden(db.name()) {
            return Err(Errno::ENOENT);
        }
        if kind == FileKind::Pos {
            return Ok(self.synthetic_attr(ino, pos_text(db).len() as u64));
        }
        let md = std::fs::metadata(path_of(db, kind)).map_err(|e| io_errno(&e))?;
        Ok(self.file_attr(ino, &md))
    }

    /// How long the kernel may keep the attributes of `db`'s file of
    /// `kind`: `TTL`, but not at all for a replica's database file. That
    /// file changes behind the kernel (each apply writes the backing file),
    /// and SQLite sizes the database with fstat at the start of each read
    /// transaction, under its SHARED lock. Each apply invalidates the
    /// kernel's cached attributes before it releases its locks, yet a
    /// reader has been seen answered from cached attributes older than
    /// the pages it then read (the header of page 1 naming 93 pages, fstat
    /// 92, with no round trip to litefs: "database disk image is
    /// malformed", about once in 7 million reads under load; where the
    /// stale attributes come from is not known). Uncached, every fstat
    /// asks litefs, which answers what the backing file holds under the
    /// reader's lock; it costs a round trip per read transaction.
    fn attr_ttl(&self, kind: FileKind) -> Duration {
        if kind == FileKind::Database && !self.role.is_primary() {
            Duration::ZERO
        } else {
            TTL
        }
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
        if kind == FileKind::Journal && !create && self.journal_hidden(db.name()) {
            return Err(Errno::ENOENT);
        }
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

    pub(super) fn read_only_error(&self, what: &str, name: &str) -> Errno {
        match self.role.hostname() {
            Some(primary) => info!(
                "refused {what} of {name:?}: this node is a read-only replica of {primary}; \
                 write on the primary"
            ),
            None => {
                info!("refused {what} of {name:?}: no primary is known yet, so writes are refused")
            }
        }
        Errno::EROFS
    }
}

impl LitefsFs {
    /// The contents of a special file of the root, made at each read;
    /// `None` when it does not exist now (`.primary` on the primary).
    fn special_contents(&self, ino: u64) -> Option<String> {
        match ino {
            PRIMARY_INO => self.primary_contents(),
            LAG_INO => Some(self.lag_contents()),
            _ => None,
        }
    }

    /// `.lag`: seconds since this replica last had applied everything its
    /// primary had sent (see `Store::replica_lag`), one decimal; `0` on
    /// the primary. A replica that never caught up counts from the start.
    fn lag_contents(&self) -> String {
        if self.role.is_primary() {
            return "0\n".to_string();
        }
        format!("{:.1}\n", self.store.replica_lag().as_secs_f64())
    }
}

/// The special files of the root, by name and inode.
pub(crate) const SPECIAL_FILES: [(&str, u64); 2] =
    [(PRIMARY_FILE, PRIMARY_INO), (LAG_FILE, LAG_INO)];

/// The inode of the special file `name`, if it is one.
fn special_ino(name: &str) -> Option<u64> {
    SPECIAL_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ino)| *ino)
}

fn is_special(ino: u64) -> bool {
    SPECIAL_FILES.iter().any(|(_, i)| *i == ino)
}

/// The contents of `<name>-pos`: TXID / database checksum, newline.
pub(crate) fn pos_text(db: &Db) -> String {
    format!("{}\n", db.pos())
}

/// The backing path in the data directory of a database's file.
pub(crate) fn path_of(db: &Db, kind: FileKind) -> PathBuf {
    match kind {
        FileKind::Database | FileKind::Pos => db.database_path().to_path_buf(),
        FileKind::Journal => db.journal_path().to_path_buf(),
        FileKind::Wal => db.wal_path().to_path_buf(),
        FileKind::Shm => db.shm_path().to_path_buf(),
        FileKind::SuperJournal(digits) => db.super_journal_path(digits),
    }
}

/// The errno of a failed I/O on a backing file; a used-up quota is a full
/// disk to SQLite (it reports SQLITE_FULL only for ENOSPC).
pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::EDQUOT) => Errno::ENOSPC,
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
    sqlite::read_journal_head(path).is_some_and(|(head, _)| head[..8] == sqlite::JOURNAL_MAGIC)
}

/// Whether the journal at `path` exists and ended its transaction the way
/// litefs (`LitefsFs::hide_journal`) or SQLite's TRUNCATE and PERSIST
/// modes end one: empty, or its header zeroed.
fn journal_is_ended(path: &Path) -> bool {
    sqlite::read_journal_head(path)
        .is_some_and(|(head, len)| len == 0 || (len >= 8 && head[..8] == [0u8; 8]))
}

/// Whether the request comes from a thread of this process. The kernel
/// reports the calling thread's id, so look it up among our tasks.
fn is_own_thread(tid: u32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

impl LitefsFs {
    /// Whether the request came from litefs itself: one of its threads, or
    /// its mount helper (`mount_helper.rs`).
    fn is_litefs(&self, pid: u32) -> bool {
        self.mount_helper.is_helper(pid) || is_own_thread(pid)
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

fn slice_at(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}
