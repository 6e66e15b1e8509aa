//! Catching up with a WAL soon after each commit when nothing else makes
//! litefs look: with passthrough and synchronous=NORMAL, a commit is only
//! writes to the backing `-wal`, which never reach litefs. The kernel's
//! inotify reports those writes on the database's backing directory; one
//! thread waits for them and records what the WAL committed
//! (`WalFollowers::catch_up_quietly`), so that replicas get each
//! transaction within about a millisecond.
//!
//! A directory is watched from the first passthrough open of its `-wal`
//! for the mount's life; events for the other files in it are skipped.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};

use log::warn;

use super::wal_follower::WalFollowers;
use crate::role::Role;
use crate::store::{Db, Store};

/// The name of the WAL in a database's backing directory (`Db::wal_path`).
const WAL_FILE: &[u8] = b"wal";

/// The inotify instance and what each of its watches is for.
pub(super) struct WalWatcher {
    store: Arc<Store>,
    role: Arc<Role>,
    wals: Arc<WalFollowers>,
    /// The inotify descriptor, made (and the thread started) at the first
    /// watch; `None` inside when inotify is unavailable (logged once).
    fd: OnceLock<Option<i32>>,
    /// Watch descriptor -> database name. Locked by `watch` and by the
    /// thread for one lookup at a time.
    names: Arc<Mutex<HashMap<i32, String>>>,
}

impl WalWatcher {
    pub(super) fn new(store: Arc<Store>, role: Arc<Role>, wals: Arc<WalFollowers>) -> WalWatcher {
        WalWatcher {
            store,
            role,
            wals,
            fd: OnceLock::new(),
            names: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Watches `db`'s backing directory for writes to its WAL.
    pub(super) fn watch(&self, db: &Db) {
        let Some(fd) = *self.fd.get_or_init(|| self.start()) else {
            return;
        };
        let Some(dir) = db.wal_path().parent() else {
            return;
        };
        let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            warn!(
                "db {}: cannot watch {} for WAL commits ({}); replicas get its transactions \
                 at the next checkpoint or fsync instead",
                db.name(),
                dir.display(),
                std::io::Error::last_os_error()
            );
            return;
        }
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wd, db.name().to_string());
    }

    /// Makes the inotify instance and starts the thread reading it.
    fn start(&self) -> Option<i32> {
        // SAFETY: no pointers involved.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            warn!(
                "inotify is unavailable ({}); replicas get WAL transactions at the next \
                 checkpoint or fsync instead",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let (store, role, wals, names) = (
            self.store.clone(),
            self.role.clone(),
            self.wals.clone(),
            self.names.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("wal-watch".to_string())
            .spawn(move || watch_loop(fd, &store, &role, &wals, &names));
        if let Err(e) = spawned {
            warn!("cannot start the WAL watcher thread: {e}");
            return None;
        }
        Some(fd)
    }
}

/// Reads inotify events for ever; after each batch, catches up with every
/// WAL written to.
fn watch_loop(
    fd: i32,
    store: &Store,
    role: &Role,
    wals: &WalFollowers,
    names: &Mutex<HashMap<i32, String>>,
) {
    crate::priority::raise_for_replication("wal-watch");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            warn!("the WAL watcher stopped: {err}");
            return;
        }
        let written = wal_events(&buf[..n as usize]);
        if !role.is_primary() {
            continue;
        }
        let names = names.lock().unwrap_or_else(|e| e.into_inner());
        // The kernel's queue overflowed (events were lost): every WAL.
        let dbs: BTreeSet<String> = if written.contains(&OVERFLOW) {
            names.values().cloned().collect()
        } else {
            written
                .iter()
                .filter_map(|wd| names.get(wd).cloned())
                .collect()
        };
        drop(names);
        let mut reread = 0;
        for name in dbs {
            if let Some(db) = store.db(&name) {
                reread += wals.catch_up_quietly(&db);
            }
        }
        // A large transaction under way is read again at each wake-up
        // until its commit: waiting about as long as that took (some 1 us
        // a frame) keeps this thread to half a core meanwhile.
        if reread > 0 {
            std::thread::sleep(std::time::Duration::from_micros(reread.min(20_000)));
        }
    }
}

/// What `wal_events` gives for an overflow of the kernel's event queue.
const OVERFLOW: i32 = -1;

/// The watch descriptors of the events in `buf` that name the WAL
/// (`OVERFLOW` for a queue overflow).
fn wal_events(buf: &[u8]) -> BTreeSet<i32> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut wds = BTreeSet::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        // SAFETY: HEADER bytes are in bounds; read_unaligned copies them.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let name_end = (at + HEADER + event.len as usize).min(buf.len());
        let name = &buf[at + HEADER..name_end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            wds.insert(OVERFLOW);
        } else if name == WAL_FILE {
            wds.insert(event.wd);
        }
        at = name_end;
    }
    wds
}
