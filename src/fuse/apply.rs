//! Applying LTX files on a replica under SQLite's own locks, so that no
//! reader of the mount ever sees half a transaction (an import on the
//! primary is applied the same way). The same `Applier` takes the locks of
//! a step-down (`role_change.rs`).
//!
//! A replica's WAL-mode database gets an empty `-wal` and `-shm`, opened
//! read-only by its readers, who then keep their WAL index in private
//! memory and see each applied transaction at their next read transaction
//! (`sync_wal_companions`); an apply there holds the WAL read-mark locks
//! (`Applier::lock`). A connection that kept a shared-memory index from
//! before a step-down gets a fresh index header after each apply
//! (`reset_wal_index`).
//!
//! litefs holds files of its own mount open for these locks, opened by
//! its mount helper (`mount_helper.rs`: no thread of litefs may wait on a
//! request to its own mount). Their opens say FOPEN_NOFLUSH (so does every open but a copy-in's, `copy_in.rs`),
//! and a kernel that ignores it has FLUSH turned off (`mount_file`): at a
//! kill -9 no close of those files can wait for the dying daemon.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fuser::INodeNo;
use log::{info, warn};

use super::inodes::{FileKind, Inodes, ROOT_INO};
use crate::role::Role;
use crate::store::{self, Db, Position};

/// SQLite's lock bytes in the database file (see sqlite3's os.h).
const PENDING_BYTE: i64 = 0x4000_0000;
const SHARED_FIRST: i64 = PENDING_BYTE + 2;
const SHARED_SIZE: i64 = 510;
/// Gives every import's temporary LTX file its own name.
static IMPORT_COUNTER: AtomicU64 = AtomicU64::new(0);
/// SQLite's WAL read-mark locks in `-shm` (WAL_READ_LOCK(0..4), bytes
/// 123 to 127; see sqlite3's os_unix.c `UNIX_SHM_BASE` and wal.c).
pub(super) const WAL_READ_LOCKS: i64 = 120 + 3;
pub(super) const WAL_READ_LOCK_COUNT: i64 = 5;
/// SQLite's "dead man switch" byte in `-shm` (UNIX_SHM_DMS in os_unix.c),
/// just after the read marks. A read-only connection that finds it locked
/// exclusively at the start of a read transaction gets SQLITE_BUSY and
/// waits in its busy handler (`unixLockSharedMemory`).
const WAL_DMS_LOCK: i64 = WAL_READ_LOCKS + WAL_READ_LOCK_COUNT;
/// How long an apply may wait for readers before one WARN says so.
const STALL_WARNING: Duration = Duration::from_secs(5);

/// Applies LTX files on a replica as a SQLite writer would. The kernel
/// keeps SQLite's POSIX locks for the mount (litefs does not ask for
/// FUSE_POSIX_LOCKS), so litefs takes part as a client of its own mount:
/// it opens `<mount>/<name>` and takes open-file-description locks on
/// SQLite's lock bytes. First PENDING (no new reader starts), then the
/// whole SHARED range (the readers still in a transaction have finished),
/// both with F_OFD_SETLKW, so the kernel wakes the applier the moment the
/// last reader unlocks. Then the pages are written through the store, the
/// kernel's cached pages of the database dropped, and the locks released
/// (F_UNLCK; the descriptor stays open for the next apply). Readers thus
/// see whole transactions only.
pub struct Applier {
    pub(super) mount_dir: PathBuf,
    pub(super) journals: Arc<super::journal_states::JournalStates>,
    pub(super) inodes: Arc<RwLock<Inodes>>,
    pub(super) notifier: Arc<Mutex<Option<fuser::Notifier>>>,
    /// Each database opened through the mount, by name (see `mount_file`).
    pub(super) files: Mutex<HashMap<String, Arc<File>>>,
    /// The primary's WAL followers: what the WAL committed is recorded at
    /// step-down.
    pub(super) wals: Arc<super::wal_follower::WalFollowers>,
    /// The mount's passthrough registrations: is a journal open in it?
    pub(super) passthrough: Arc<super::passthrough::Passthrough>,
    /// Makes the requests litefs needs of its own mount (opens, fsyncs of
    /// `-shm`), so that no thread of litefs waits on its own mount.
    pub(super) helper: Arc<super::mount_helper::MountHelper>,
}

/// The locks that keep SQLite's readers out of one database while litefs
/// writes it, held through litefs's own mount (see [`Applier::lock`]):
/// PENDING and SHARED on the database file, or in WAL mode the read-mark
/// locks in `-shm`. Dropping it unlocks them (F_UNLCK on the descriptor),
/// which wakes the waiting readers.
pub struct DatabaseLock<'a> {
    pub(super) applier: &'a Applier,
    pub(super) db: String,
    /// The key of `file` in `Applier::files`.
    pub(super) key: String,
    pub(super) file: Arc<File>,
    /// The locked byte range.
    pub(super) start: i64,
    pub(super) len: i64,
}

impl Drop for DatabaseLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_ofd_lock(&self.file, libc::F_UNLCK, self.start, self.len, false) {
            // Closing the descriptor releases its locks for certain.
            warn!(
                "db {}: cannot unlock SQLite's locks, closing instead: {e}",
                self.db
            );
            self.applier.forget_file(&self.key);
        }
    }
}

impl Applier {
    /// The inode number of `db`'s file of `kind` on the mount.
    pub(super) fn ino(&self, db: &Db, kind: FileKind) -> u64 {
        self.inodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .ino(db.name(), db.instance(), kind)
    }

    /// Gives the applier the mount's notifier, once the mount is up.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Takes SQLite's locks on `db` as a writer would, waiting as long as
    /// readers hold the database (one WARN after `STALL_WARNING`), as
    /// SQLite's own writer would. The locks last as long as the value.
    ///
    /// A database whose `-shm` exists is read in WAL mode: its readers hold
    /// a SHARED lock on the database file for as long as they are
    /// connected, and one of the WAL read-mark locks in `-shm` for each
    /// read transaction, so the read marks are what is locked, after the
    /// dead man switch byte that keeps new read transactions from starting
    /// meanwhile (see `WAL_DMS_LOCK`).
    pub fn lock(&self, db: &Db) -> Result<DatabaseLock<'_>, store::Error> {
        let refused = |reason: String| store::Error::Refused {
            db: db.name().to_string(),
            path: db.database_path().to_path_buf(),
            reason,
        };
        if db.shm_path().exists() {
            let key = format!("{}{}", db.name(), FileKind::Shm.suffix());
            let file = self.mount_file(db, FileKind::Shm).map_err(refused)?;
            // The gate first, as PENDING is below: readers keep starting
            // read transactions while old ones end, and a write lock on
            // the read marks alone would wait for a moment with none, which
            // readers in a loop never leave. Not to be had while a
            // connection opened on this node as primary uses the WAL index
            // (it holds the byte shared): then the read marks alone.
            let gated =
                set_ofd_lock(&file, libc::F_WRLCK, WAL_DMS_LOCK, 1, false).map_err(|e| {
                    refused(format!(
                        "cannot lock SQLite's WAL index {}-shm: {e}",
                        self.mount_dir.join(db.name()).display()
                    ))
                })?;
            let lock = DatabaseLock {
                applier: self,
                db: db.name().to_string(),
                key,
                file,
                start: WAL_READ_LOCKS,
                len: WAL_READ_LOCK_COUNT + i64::from(gated),
            };
            lock_waiting(&lock.file, WAL_READ_LOCKS, WAL_READ_LOCK_COUNT, db.name()).map_err(
                |e| {
                    refused(format!(
                        "cannot take SQLite's WAL read-mark locks on {}-shm: {e}",
                        self.mount_dir.join(db.name()).display()
                    ))
                },
            )?;
            return Ok(lock);
        }
        let file = self.mount_file(db, FileKind::Database).map_err(refused)?;
        let lock = DatabaseLock {
            applier: self,
            db: db.name().to_string(),
            key: db.name().to_string(),
            file,
            start: PENDING_BYTE,
            len: SHARED_FIRST + SHARED_SIZE - PENDING_BYTE,
        };
        for (start, len, what) in [
            (PENDING_BYTE, 1, "PENDING"),
            (SHARED_FIRST, SHARED_SIZE, "SHARED"),
        ] {
            lock_waiting(&lock.file, start, len, db.name()).map_err(|e| {
                refused(format!(
                    "cannot take SQLite's {what} lock on {}: {e}",
                    self.mount_dir.join(db.name()).display()
                ))
            })?;
        }
        Ok(lock)
    }

    /// The database opened through the mount, kept open between applies
    /// (opening and closing costs four round trips through the kernel).
    pub(super) fn mount_file(&self, db: &Db, kind: FileKind) -> Result<Arc<File>, String> {
        let name = format!("{}{}", db.name(), kind.suffix());
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = files.get(&name) {
            return Ok(file.clone());
        }
        if kind == FileKind::Database {
            // A new database has no file yet; an empty one (a database with
            // no pages, as the position before its first TXID says) gives
            // the locks something to hold on to before any page is written.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(db.database_path())
                .map_err(|e| format!("cannot create {}: {e}", db.database_path().display()))?;
        }
        let on_mount = self.mount_dir.join(&name);
        // Opened by the mount helper (`mount_helper.rs`), which first
        // opens and closes it once: on a kernel that ignores FOPEN_NOFLUSH
        // that FLUSH, answered ENOSYS, turns FLUSH off for the mount, so
        // closing the file kept open here can never wait on this process
        // (at a kill -9 it would, forever). Read-write: a write lock needs
        // a descriptor open for writing. The mount lets litefs's own
        // helper open a replica's file so.
        let file = self.helper.open_rw(&on_mount).map_err(|e| {
            format!(
                "cannot open {} to take SQLite's locks: {e}",
                on_mount.display()
            )
        })?;
        let file = Arc::new(file);
        files.insert(name, file.clone());
        Ok(file)
    }

    /// Closes litefs's descriptors of `db`'s files (the database's key is
    /// its name; `-shm`'s the name with the suffix).
    pub(super) fn forget_file(&self, db: &str) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.remove(db);
        files.remove(&format!("{db}{}", FileKind::Shm.suffix()));
    }

    /// Forgets a database deleted on a replica: closes litefs's own
    /// descriptor of it and drops the kernel's cached names of its files.
    pub fn forget_deleted(&self, name: &str) {
        self.forget_file(name);
        forget_names(&self.notifier, name, &FileKind::ALL);
    }

    /// Closes the databases litefs holds open through the mount, so the
    /// mount can be unmounted (shutdown) and nothing is held while this
    /// node is the primary.
    pub fn close_files(&self) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Applies the LTX file at `path` to `db`, whose locks `_lock` holds,
    /// then drops the kernel's cached pages of the database (whether or
    /// not the apply succeeded) so readers see what is on disk once the
    /// lock is released.
    pub fn apply(
        &self,
        db: &Db,
        path: &Path,
        lock: &DatabaseLock<'_>,
    ) -> Result<Position, store::Error> {
        self.apply_ltx(db, path, lock, true)
    }

    /// [`Applier::apply`] on a replica (`replica`: a database in WAL mode
    /// gets the empty `-wal` and `-shm` its readers need), or on the
    /// primary for an import (its WAL is its connections' to make).
    fn apply_ltx(
        &self,
        db: &Db,
        path: &Path,
        _lock: &DatabaseLock<'_>,
        replica: bool,
    ) -> Result<Position, store::Error> {
        let ino = self.ino(db, FileKind::Database);
        let began = Instant::now();
        let result = db.apply_ltx(path);
        if result.is_ok() {
            if replica {
                self.sync_wal_companions(db);
            }
            self.reset_wal_index(db);
            crate::metrics::apply(db.name(), began.elapsed());
        }
        // Also after a failure: pages may have been written before it, and
        // recovery may have finished the apply (`Db::apply_ltx`), so no
        // reader may keep pages cached from before.
        self.invalidate(ino, db.name());
        result
    }

    /// Loads the SQLite database file at `src` into `db` on the primary as
    /// one transaction (`litefs import`): takes SQLite's locks as a writer
    /// would (waiting for readers and writers to finish), writes the LTX
    /// file (`Db::write_import_ltx`) and applies it as a replica applies
    /// one, then closes litefs's descriptor (a primary keeps none open, see
    /// `close_files`). Refused unless `role` is primary throughout.
    pub fn import(&self, db: &Db, src: &Path, role: &Role) -> Result<Position, store::Error> {
        let result = (|| {
            if db.in_wal_mode() {
                // Open WAL connections would keep pages cached from before.
                return Err(store::Error::Refused {
                    db: db.name().to_string(),
                    path: src.to_path_buf(),
                    reason: "the database is in WAL mode: switch it to \
                             PRAGMA journal_mode=DELETE first, then import"
                        .to_string(),
                });
            }
            let lock = self.lock(db)?;
            let Some(_primary) = role.hold_primary() else {
                return Err(store::Error::Refused {
                    db: db.name().to_string(),
                    path: src.to_path_buf(),
                    reason: "this node stopped being the primary".to_string(),
                });
            };
            let tmp = db.ltx_dir().join(format!(
                "import-{}.tmp",
                IMPORT_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let applied = db
                .write_import_ltx(src, &tmp)
                .and_then(|_| self.apply_ltx(db, &tmp, &lock, false))
                .inspect(|pos| {
                    // A transaction of this primary's: `max-lag` counts it.
                    db.note_imported(*pos);
                    // The database is imported whatever happens here.
                    if let Err(e) = db.keep_tail_of(src) {
                        warn!("db {}: {e}", db.name());
                    }
                    self.invalidate(self.ino(db, FileKind::Database), db.name());
                });
            let _ = std::fs::remove_file(&tmp);
            applied
        })();
        self.forget_file(db.name());
        result
    }

    /// Gives a replica's database in WAL mode the empty `-wal` and `-shm`
    /// SQLite's readers need: they cannot create them on a read-only
    /// mount, and open them read-only instead (EROFS for read-write), which
    /// makes SQLite keep its WAL index in private memory and re-read the
    /// database at every read transaction ("unreliable" shared memory in
    /// wal.c): each applied transaction is seen at the next one. They stay
    /// when the database leaves WAL mode: a connection in WAL mode stays
    /// so (holding a SHARED lock on the database file) until it closes,
    /// and with `-wal` present new connections use WAL mode too, so every
    /// reader keeps to one locking protocol (see `lock`). The kernel's
    /// cached names are dropped (they may say "absent").
    fn sync_wal_companions(&self, db: &Db) {
        if !db.in_wal_mode() {
            return;
        }
        for kind in [FileKind::Wal, FileKind::Shm] {
            let path = match kind {
                FileKind::Wal => db.wal_path(),
                _ => db.shm_path(),
            };
            if path.exists() {
                continue;
            }
            let created = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path);
            match created {
                Ok(_) => self.invalidate_name(db.name(), kind),
                Err(e) => warn!("db {}: cannot create {}: {e}", db.name(), path.display()),
            }
        }
    }

    /// Makes connections that keep a WAL index in `-shm` (opened while
    /// this node was primary) drop their cached pages at their next read
    /// transaction (`Db::renew_wal_index_header`).
    pub(super) fn reset_wal_index(&self, db: &Db) {
        // Connections' changes still in the kernel's cached pages of
        // `-shm` reach the file first, so that nothing written back later
        // lands over the renewed header: an fsync through the mount writes
        // dirty pages back and waits for write-backs already under way
        // (which an invalidation alone would not wait for on kernels that
        // copy pages for write-back). litefs answers it without a disk
        // flush (`Filesystem::fsync`). The callers hold SQLite's WAL
        // read-mark locks (a step-down past its wait does not), without
        // which no connection writes the index in between.
        if !db.shm_path().exists() {
            return;
        }
        let ino = self.ino(db, FileKind::Shm);
        match self.mount_file(db, FileKind::Shm) {
            Ok(file) => {
                if let Err(e) = self.helper.fsync(&file) {
                    warn!("db {}: cannot write the WAL index back: {e}", db.name());
                }
            }
            Err(_) => self.invalidate(ino, db.name()),
        }
        match db.renew_wal_index_header() {
            Ok(true) => self.invalidate(ino, db.name()),
            Ok(false) => {}
            Err(e) => warn!("db {}: {e}", db.name()),
        }
    }

    /// Drops the kernel's cached entry for `db`'s file of `kind`.
    pub(super) fn invalidate_name(&self, db: &str, kind: FileKind) {
        let notifier = self.notifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = notifier.as_ref() {
            let file = format!("{db}{}", kind.suffix());
            if let Err(e) = n.inval_entry(INodeNo(ROOT_INO), OsStr::new(&file)) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!("db {db}: cannot invalidate the kernel's entry for {file}: {e}");
                }
            }
        }
    }

    /// Drops the kernel's cached pages and attributes of the database file.
    pub(super) fn invalidate(&self, ino: u64, name: &str) {
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

/// Drops the kernel's cached names of `name`'s files of `kinds` (ENOENT:
/// the kernel has none). Not from a FUSE request that holds the mount's
/// directory (an unlink, a create): the kernel takes its lock for this.
pub(super) fn forget_names(
    notifier: &Mutex<Option<fuser::Notifier>>,
    name: &str,
    kinds: &[FileKind],
) {
    let notifier = notifier.lock().unwrap_or_else(|e| e.into_inner());
    let Some(n) = notifier.as_ref() else {
        return;
    };
    for kind in kinds {
        let file = format!("{name}{}", kind.suffix());
        if let Err(e) = n.inval_entry(INodeNo(ROOT_INO), OsStr::new(&file)) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                warn!("db {name}: cannot invalidate the kernel's entry for {file}: {e}");
            }
        }
    }
}

/// Takes an exclusive open-file-description lock on `len` bytes at
/// `start`, waiting in the kernel (F_OFD_SETLKW) as long as it takes. When
/// the lock is not free at once, a watcher logs one WARN naming the
/// database if the wait passes `STALL_WARNING`, and one line when it ends.
fn lock_waiting(file: &File, start: i64, len: i64, db: &str) -> std::io::Result<()> {
    if set_ofd_lock(file, libc::F_WRLCK, start, len, false)? {
        return Ok(());
    }
    let began = Instant::now();
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(move || match done_rx.recv_timeout(STALL_WARNING) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                warn!(
                    "db {db}: readers have held the database for {}s; applying waits for \
                     them (replication keeps receiving)",
                    STALL_WARNING.as_secs()
                );
                let _ = done_rx.recv();
                true
            }
            _ => false,
        });
        let result = loop {
            match set_ofd_lock(file, libc::F_WRLCK, start, len, true) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        drop(done_tx);
        if watcher.join().unwrap_or(false) {
            info!(
                "db {db}: readers let go after {:.1}s; applying",
                began.elapsed().as_secs_f64()
            );
        }
        result.map(|_| ())
    })
}

/// F_OFD_SETLK (or F_OFD_SETLKW when `wait`) of a lock of `typ`. Ok(false)
/// when another holder is in the way and `wait` is false.
pub(super) fn set_ofd_lock(
    file: &File,
    typ: i32,
    start: i64,
    len: i64,
    wait: bool,
) -> std::io::Result<bool> {
    // SAFETY: flock is a plain C struct; all zeroes is a valid value (and
    // l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: the descriptor stays open for the call and fl is a valid
    // flock that the kernel only reads.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => Ok(false),
        _ => Err(err),
    }
}
