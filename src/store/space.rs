//! A full data directory (ENOSPC, or EDQUOT for a quota).
//!
//! - [`DiskFull`] logs one WARN per episode, naming the data directory and
//!   what to do, and one INFO when space returns; every failed write in
//!   between is logged at debug only.
//! - [`Error::is_disk_full`] tells the mount to answer ENOSPC (SQLite then
//!   reports SQLITE_FULL, "database or disk is full") instead of EIO.
//! - [`Db::ensure_ltx_space`]: in rollback-journal mode the LTX file is
//!   written when the journal ends (unlink, truncate or a zeroed header),
//!   where SQLite maps any error of unlink or ftruncate to "disk I/O
//!   error". So each write of a changed page to the database file first
//!   checks that the data directory has room for the LTX file the
//!   transaction will need; if not, that *write* fails with ENOSPC, which
//!   SQLite reports as SQLITE_FULL and rolls back. A write that puts pages
//!   back as they are at the position (SQLite rolling back) needs no room
//!   and is never refused, so a rollback always completes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::db::State;
use super::{Db, Error, Store};
use crate::ltx;

/// Room kept beyond the LTX file's own size: its header and trailer, the
/// file system's block rounding and the directory entry.
const LTX_SPACE_MARGIN: u64 = 64 * 1024;
/// Free space well above the need is trusted for this long without
/// asking the file system again.
const FREE_SPACE_TTL: Duration = Duration::from_millis(100);
/// What "well above" means for `FREE_SPACE_TTL`.
const FREE_SPACE_SLACK: u64 = 32 * 1024 * 1024;

/// Whether `err` says the file system is full (or the quota used up).
pub fn is_disk_full_io(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl Error {
    /// Whether this error comes from a full data directory.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => is_disk_full_io(source),
            Error::Ltx {
                source: ltx::Error::Io(source),
                ..
            } => is_disk_full_io(source),
            _ => false,
        }
    }
}

/// The full-disk episodes of one data directory.
#[derive(Debug)]
pub struct DiskFull {
    dir: PathBuf,
    full: AtomicBool,
}

impl DiskFull {
    pub(super) fn new(dir: &Path) -> DiskFull {
        DiskFull {
            dir: dir.to_path_buf(),
            full: AtomicBool::new(false),
        }
    }

    /// Notes that `what` failed for lack of space; the first time in an
    /// episode logs a WARN saying what it means (`effect`) and what to do.
    pub fn full(&self, what: &str, effect: &str) {
        if self.full.swap(true, Ordering::SeqCst) {
            log::debug!("data directory {} still full: {what}", self.dir.display());
            return;
        }
        log::warn!(
            "data directory {} is full: {what}; {effect}. Free space on that file system \
             (delete files or grow it): litefs carries on by itself once there is room \
             (logged once until then)",
            self.dir.display()
        );
    }

    /// Notes that something was written: ends an episode, if one was on.
    pub fn space(&self) {
        if self.full.swap(false, Ordering::SeqCst) {
            log::info!(
                "data directory {} has room again; writes succeed",
                self.dir.display()
            );
        }
    }
}

/// The file system statistics of `path` (statvfs(3)).
pub(crate) fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: cpath is NUL-terminated and st a plain C struct statvfs fills.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(cpath.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Bytes available to unprivileged writers on the file system of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = statvfs(dir)?;
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Db {
    /// Checks, before a write of `data` at `offset` to the database file
    /// in rollback-journal mode (its pages already counted in
    /// `state.dirty`), that the data directory has room for the LTX file
    /// of the transaction; an ENOSPC error otherwise. See the module
    /// comment.
    pub(super) fn ensure_ltx_space(
        &self,
        state: &mut State,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let Some(page_size) = state.page_size else {
            return Ok(());
        };
        let pages = state.dirty.len() as u64;
        let need = pages * (u64::from(page_size) + ltx::PAGE_HEADER_SIZE as u64) + LTX_SPACE_MARGIN;
        if let Some((free, at)) = state.free_space {
            if at.elapsed() < FREE_SPACE_TTL && free >= need.saturating_add(FREE_SPACE_SLACK) {
                return Ok(());
            }
        }
        let free = free_bytes(&self.ltx_dir).map_err(super::io_error(
            format!("reading the free space for database {}", self.name),
            &self.ltx_dir,
        ))?;
        state.free_space = Some((free, Instant::now()));
        if free >= need || restores_position(state, offset, data, page_size) {
            return Ok(());
        }
        Err(Error::Io {
            what: format!(
                "database {}: refused a write of {} bytes at {offset} before it reached the \
                 database: the transaction's LTX file needs up to {need} bytes and {free} are \
                 free",
                self.name,
                data.len()
            ),
            path: self.ltx_dir.clone(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        })
    }

    /// Whether the data directory may lack room for the LTX files of
    /// `bytes` of WAL frames not yet recorded (with the margins
    /// `ensure_ltx_space` keeps): the mount then records a WAL commit
    /// before SQLite's fsync returns, so that one that cannot be recorded
    /// fails (see `fuse/wal_follower.rs`).
    ///
    /// Asks the file system each time (statvfs, no I/O) rather than take
    /// the state lock for the cached figure: a WAL transaction being
    /// recorded holds that lock, and this is on SQLite's commit path.
    pub fn short_of_space_for(&self, bytes: u64) -> bool {
        let need = bytes
            .saturating_add(LTX_SPACE_MARGIN)
            .saturating_add(FREE_SPACE_SLACK);
        free_bytes(&self.ltx_dir).map_or(true, |free| free < need)
    }
}

/// Whether the write puts back whole pages exactly as they are at the
/// position (SQLite rolling a transaction back), so it makes no LTX file
/// larger.
fn restores_position(state: &State, offset: u64, data: &[u8], page_size: u32) -> bool {
    let size = page_size as usize;
    if offset % size as u64 != 0 || data.len() % size != 0 {
        return false;
    }
    let first = offset / size as u64 + 1;
    data.chunks(size).enumerate().all(|(i, page)| {
        let Ok(pgno) = u32::try_from(first + i as u64) else {
            return false;
        };
        pgno <= state.checksums.page_count()
            && ltx::page_checksum(pgno, page) == state.checksums.get(pgno)
    })
}

/// How often databases refused for a full disk are tried again, at most,
/// unless space was freed since.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Store {
    /// Opens again the databases refused at start-up for a full disk
    /// (their recovery, such as a WAL checkpoint, needed room), at most
    /// once per `RETRY_INTERVAL`: called when a database is asked for and
    /// not found (the mount's lookup, a replica's frame), so one comes
    /// back without a restart as soon as there is room. Returns whether
    /// any did.
    pub fn retry_full_refusals(&self) -> bool {
        let names: Vec<String> = {
            let refused = self.refused_lock();
            refused
                .iter()
                .filter(|(_, r)| r.full)
                .map(|(n, _)| n.clone())
                .collect()
        };
        if names.is_empty() {
            return false;
        }
        // Held through the reopening: two callers must never recover the
        // same database at once.
        let mut last = self.last_retry.lock().unwrap_or_else(|e| e.into_inner());
        // Again at once when space was freed since, else once a second.
        let free = free_bytes(&self.data_dir).unwrap_or(u64::MAX);
        if last.is_some_and(|(at, was)| at.elapsed() < RETRY_INTERVAL && free <= was) {
            return false;
        }
        *last = Some((Instant::now(), free));
        let mut opened = false;
        for name in names {
            // Another caller may have reopened it before this one got the lock.
            let still_refused = self.refused_lock().get(&name).is_some_and(|r| r.full);
            if !still_refused || self.db(&name).is_some() {
                continue;
            }
            match Db::open(&self.dbs_dir, &name, self.node_id, self.acks.clone()) {
                Ok(db) => {
                    self.refused_lock().remove(&name);
                    self.lock().insert(name.clone(), std::sync::Arc::new(db));
                    log::info!("database {name:?}: opened now that the data directory has room");
                    opened = true;
                }
                Err(err) if err.is_disk_full() => {
                    log::debug!("database {name:?}: still no room to open it: {err}");
                }
                Err(err) => {
                    log::error!(
                        "refusing database {name:?}: {err}; fix that (or move it out of the \
                         data directory) and start litefs again"
                    );
                    if let Some(r) = self.refused_lock().get_mut(&name) {
                        r.reason = err.to_string();
                        r.full = false;
                    }
                }
            }
        }
        if opened {
            self.notify_change();
        }
        opened
    }
}
