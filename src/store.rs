//! Every database's state, without FUSE: the data directory, each
//! database's position (TXID and rolling checksum), per-page checksums,
//! dirty pages, commit to LTX files, applying LTX files on a replica,
//! snapshots, retention, and recovery at start-up.
//!
//! The data directory (ARCHITECTURE.md, "Data directory", lists every
//! name) holds `id` (the node id) and `incoming/` (received LTX files not
//! yet verified), both named here; `dbs/<name>/` per database, whose files
//! `db.rs` names (`database`, `journal`, `wal`, `shm`, `undo`,
//! `super-journal-*`, `ltx/<min>-<max>.ltx`); `ltx/next` (`slot.rs`),
//! `ltx/*.ltx.queued` (`queue.rs`) and `ltx/*.ltx.pending` (`apply.rs`);
//! and at the top `deleted/<name>` and `trash/` (`delete.rs`) and `lost/`
//! (`lost.rs`).
//!
//! One database is a `Db` (`db.rs`); what changes or reads it is split by
//! concern: commits on the primary (`commit.rs`), applying LTX files on a
//! replica (`apply.rs`), snapshots, LTX listing and retention
//! (`snapshot.rs`), recovery at start-up (`recovery.rs`) and damaged files
//! (`damage.rs`). A database that cannot be recovered is refused alone
//! (`Store::refused`); the store serves the others.
//!
//! The database checksum is the XOR of `ltx::page_checksum` over every page
//! except SQLite's lock page (the page holding byte offset 1 GiB, which
//! SQLite never writes and LTX files never hold), with `CHECKSUM_FLAG` set.
//! A database with no pages has the checksum `CHECKSUM_FLAG`; the position
//! before the first transaction is `0/0`.

mod acks;
mod apply;
mod commit;
mod damage;
mod db;
mod delete;
mod diverged;
mod error;
mod import;
mod lost;
mod names;
mod page_reader;
mod publish;
mod queue;
mod raw_edit;
mod recovery;
mod seal;
mod slot;
mod snapshot;
mod space;
mod take_back;
mod undo;
mod wal_commit;
pub(crate) mod write_back;

pub use acks::{Acks, LagExceeded, NodeAcks, SyncTimedOut};
pub use db::{Commit, Db};
use error::io_error;
pub use error::Error;
pub use lost::set_keep as set_lost_keep;
pub use names::{validate_name, MAX_DB_NAME_LEN};
pub(crate) use space::statvfs;
pub use space::{is_disk_full_io, DiskFull};
pub use wal_commit::{WalPosition, WalTransaction};

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{ltx, sqlite};

/// Where received LTX files wait to be verified (see `Store::incoming_dir`).
const INCOMING_DIR: &str = "incoming";
/// Bytes read at a time when checksumming a whole database file.
const READ_CHUNK: usize = 1 << 20;

/// A database's replication position: the TXID of its newest transaction
/// and the database checksum after it. Displayed as `%016x/%016x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// TXID of the newest transaction (0 before the first one).
    pub txid: u64,
    /// Database checksum after that transaction (0 before the first one).
    pub checksum: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:016x}", self.txid, self.checksum)
    }
}

/// All databases of one data directory.
pub struct Store {
    data_dir: PathBuf,
    dbs_dir: PathBuf,
    node_id: u64,
    dbs: Mutex<BTreeMap<String, Arc<Db>>>,
    /// Databases refused at start-up, by name (see [`Store::refused`]).
    refused: Mutex<BTreeMap<String, Refusal>>,
    /// Counts changes (see [`Store::notify_change`]); replication streams wait on it.
    changes: Mutex<u64>,
    /// Databases deleted since the store opened (see [`Store::deletions`]).
    deletions: std::sync::atomic::AtomicU64,
    changed: std::sync::Condvar,
    /// When this replica last was caught up (see [`Store::note_caught_up`]).
    caught_up: Mutex<CaughtUp>,
    /// When the store was opened: a replica that never caught up lags
    /// since then.
    opened_at: std::time::Instant,
    /// Full-disk episodes of the data directory (`space.rs`).
    disk: DiskFull,
    /// When databases refused for a full disk were last tried again.
    /// and the free bytes then.
    last_retry: Mutex<Option<(std::time::Instant, u64)>>,
    /// What replicas hold durably; synchronous commits wait on it.
    acks: Arc<Acks>,
}

/// A database refused at start-up (see [`Store::refused`]).
#[derive(Debug, Clone)]
struct Refusal {
    /// Why, naming the file and what to do.
    reason: String,
    /// A replica said once that it skips the primary's frames for it.
    skip_logged: bool,
    /// Refused for a full disk: opened again once there is room
    /// (`Store::retry_full_refusals`).
    full: bool,
}

/// When a replica last was caught up with its primary.
#[derive(Debug, Default)]
struct CaughtUp {
    /// Everything received was applied.
    applied: Option<std::time::Instant>,
    /// The same, at a heartbeat: the primary had nothing more to send.
    idle: Option<std::time::Instant>,
}

impl Store {
    /// Opens the data directory (creating it, its `id` file and `dbs/` when
    /// missing) and opens and recovers every database in `dbs/`. A database
    /// that cannot be recovered (damaged files, see `damage.rs`, or any
    /// other error opening it) is refused: logged at ERROR with the file
    /// and what to do, listed by [`Store::refused`], and otherwise left
    /// alone; the others are opened. Fails only for the data directory
    /// itself (creating it, the node id).
    pub fn open(data_dir: &Path) -> Result<Store, Error> {
        fs::create_dir_all(data_dir).map_err(io_error("creating the data directory", data_dir))?;
        let node_id = read_or_create_node_id(&data_dir.join("id"))?;
        let dbs_dir = data_dir.join("dbs");
        fs::create_dir_all(&dbs_dir)
            .map_err(io_error("creating the databases directory", &dbs_dir))?;
        // Files half received when the last run stopped.
        let _ = fs::remove_dir_all(data_dir.join(INCOMING_DIR));
        delete::finish_deletions(data_dir, &dbs_dir)?;
        let acks = Arc::new(Acks::default());
        let mut dbs = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let entries = fs::read_dir(&dbs_dir)
            .map_err(io_error("listing the databases directory", &dbs_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("listing the databases directory", &dbs_dir))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map_err(io_error("reading the type of", &path))?
                .is_dir();
            let name = match entry.file_name().into_string() {
                Ok(name) if is_dir => name,
                _ => {
                    log::warn!(
                        "ignoring {:?}: not a database directory",
                        path.display().to_string()
                    );
                    continue;
                }
            };
            if let Err(err) = validate_name(&name) {
                log::warn!("ignoring {:?}: {err}", path.display().to_string());
                continue;
            }
            match Db::open(&dbs_dir, &name, node_id, acks.clone()) {
                Ok(db) => {
                    dbs.insert(name, Arc::new(db));
                }
                Err(err) if err.is_disk_full() => {
                    log::warn!(
                        "database {name:?} is not served yet: the data directory is full \
                         ({err}); free space there and it is opened again when next asked \
                         for, without a restart"
                    );
                    let refusal = Refusal {
                        reason: err.to_string(),
                        skip_logged: false,
                        full: true,
                    };
                    refused.insert(name, refusal);
                }
                Err(err) => {
                    let reason = match err {
                        Error::Damaged { .. } => err.to_string(),
                        other => format!(
                            "{other}; fix that (or move {} out of the data directory) and \
                             start litefs again",
                            path.display()
                        ),
                    };
                    log::error!(
                        "refusing database {name:?}: {reason}. It is not served or \
                         replicated until then, nothing of it was deleted, and the other \
                         databases are served"
                    );
                    let refusal = Refusal {
                        reason,
                        skip_logged: false,
                        full: false,
                    };
                    refused.insert(name, refusal);
                }
            }
        }
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            dbs_dir,
            node_id,
            dbs: Mutex::new(dbs),
            refused: Mutex::new(refused),
            changes: Mutex::new(0),
            deletions: std::sync::atomic::AtomicU64::new(0),
            changed: std::sync::Condvar::new(),
            caught_up: Mutex::new(CaughtUp::default()),
            opened_at: std::time::Instant::now(),
            disk: DiskFull::new(data_dir),
            last_retry: Mutex::new(None),
            acks,
        })
    }

    /// `incoming/` in the data directory, where a replica receives LTX
    /// files before they are verified and belong to a database. Created
    /// when first needed; emptied at start-up.
    pub fn incoming_dir(&self) -> Result<PathBuf, Error> {
        let dir = self.data_dir.join(INCOMING_DIR);
        fs::create_dir_all(&dir).map_err(io_error("creating the incoming directory", &dir))?;
        Ok(dir)
    }

    /// The data directory this store was opened on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Full-disk episodes of the data directory: one WARN each.
    pub fn disk(&self) -> &DiskFull {
        &self.disk
    }

    /// This node's id, written into every LTX file it creates.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The database called `name`, if it exists.
    pub fn db(&self, name: &str) -> Option<Arc<Db>> {
        self.lock().get(name).cloned()
    }

    /// The database called `name`, created (empty, position 0/0) if missing.
    /// Fails for a name that cannot be a database (see [`validate_name`]).
    /// Fails for a database refused at start-up: its files stay as they are.
    pub fn create_db(&self, name: &str) -> Result<Arc<Db>, Error> {
        validate_name(name)?;
        if let Some(reason) = self.refusal(name) {
            return Err(Error::RefusedAtStart {
                db: name.to_string(),
                reason,
            });
        }
        let mut dbs = self.lock();
        if let Some(db) = dbs.get(name) {
            return Ok(db.clone());
        }
        // Before the directory exists: see `delete.rs` for why.
        delete::remove_tombstone(&self.data_dir, name)?;
        let db = Arc::new(Db::open(
            &self.dbs_dir,
            name,
            self.node_id,
            self.acks.clone(),
        )?);
        sync_dir(&self.dbs_dir)?;
        log::info!("created database {name}");
        dbs.insert(name.to_string(), db.clone());
        Ok(db)
    }

    /// Every database, sorted by name.
    pub fn dbs(&self) -> Vec<Arc<Db>> {
        self.lock().values().cloned().collect()
    }

    /// The databases refused at start-up, sorted by name, each with the
    /// reason (naming the file and what to do). A refused database is not
    /// among [`Store::dbs`], not on the mount, not replicated in either
    /// direction, and cannot be created again until litefs restarts with
    /// its files repaired or moved away.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.refused_lock()
            .iter()
            .map(|(name, r)| (name.clone(), r.reason.clone()))
            .collect()
    }

    /// Why `name` was refused at start-up; `None` if it was not.
    pub fn refusal(&self, name: &str) -> Option<String> {
        self.retry_full_refusals();
        self.refused_lock().get(name).map(|r| r.reason.clone())
    }

    /// For a replica skipping a frame of the refused database `name`: true
    /// the first time (so the skip is logged once).
    pub fn first_skip_of_refused(&self, name: &str) -> bool {
        match self.refused_lock().get_mut(name) {
            Some(refusal) => !std::mem::replace(&mut refusal.skip_logged, true),
            None => false,
        }
    }

    fn refused_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Refusal>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a replica when everything it received is applied: by the
    /// stream on a heartbeat (`idle`: the primary had nothing more to send,
    /// so the replica is at the primary's position), or by the apply
    /// thread when it empties the queue (as current as the stream).
    pub fn note_caught_up(&self, idle: bool) {
        let dbs = self.dbs();
        let now = std::time::Instant::now();
        // Per database: each with nothing left to apply is as current as
        // the stream (`litefs_db_replication_lag_seconds`).
        for db in dbs.iter().filter(|db| db.queued_len() == 0) {
            db.mark_caught_up(now);
        }
        if dbs.iter().all(|db| db.queued_len() == 0) {
            let now = Some(now);
            let mut caught_up = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
            caught_up.applied = now;
            if idle {
                caught_up.idle = now;
            }
        }
    }

    /// When the replica last had applied everything it had received (see
    /// [`Store::note_caught_up`]): the `.lag` of a replica.
    pub fn caught_up_at(&self) -> Option<std::time::Instant> {
        self.caught_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .applied
    }

    /// A replica's lag: the time since [`Store::caught_up_at`], or since
    /// the store was opened when it never caught up. The `.lag` file and
    /// the metrics show it (the primary shows 0 instead).
    pub fn replica_lag(&self) -> std::time::Duration {
        self.lag_since(self.caught_up_at())
    }

    /// `db`'s lag on a replica: the time since it was last caught up (see
    /// [`Store::note_caught_up`]), or since the store was opened.
    pub fn db_lag(&self, db: &Db) -> std::time::Duration {
        self.lag_since(db.caught_up_at())
    }

    fn lag_since(&self, at: Option<std::time::Instant>) -> std::time::Duration {
        at.unwrap_or(self.opened_at).elapsed()
    }

    /// When the replica was last known to be at its primary's position
    /// (a heartbeat found nothing waiting): readiness.
    pub fn idle_caught_up_at(&self) -> Option<std::time::Instant> {
        self.caught_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .idle
    }

    /// Tells whoever waits in [`Store::wait_for_change`] that a database
    /// changed (a commit, an applied LTX file, a new database).
    pub fn notify_change(&self) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        *changes = changes.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` while the change counter equals `seen`, and
    /// returns the counter (pass `u64::MAX` and no timeout to read it).
    pub fn wait_for_change(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, _) = self
            .changed
            .wait_timeout_while(changes, timeout, |count| *count == seen)
            .unwrap_or_else(|e| e.into_inner());
        *changes
    }

    /// What replicas acknowledged holding, and where synchronous commits
    /// wait for them (`store/acks.rs`).
    pub fn acks(&self) -> &Acks {
        &self.acks
    }

    /// Each database's newest position, by name.
    pub fn positions(&self) -> Vec<(String, Position)> {
        self.dbs()
            .iter()
            .map(|db| (db.name().to_string(), db.pos()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Db>>> {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The database checksum of a raw SQLite file, recomputed from scratch: the
/// XOR of every page's checksum (lock page excluded) with `CHECKSUM_FLAG`
/// set. An empty file has the checksum `CHECKSUM_FLAG`.
pub fn database_checksum(path: &Path) -> Result<u64, Error> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(io_error("opening the database file", path))?;
    let (_, checksums) = read_database(&name, path, &file)?;
    Ok(checksums.checksum())
}

/// What litefs writes after the zeroed magic of a journal it empties in
/// place of SQLite's delete (`LitefsFs::hide_journal`): start-up recovery
/// tells that end from SQLite's own zeroed header (PERSIST, exclusive
/// locking mode) by it. SQLite reads only the magic of an ended journal.
pub const HIDDEN_JOURNAL_MARK: &[u8; 20] = b"litefs hid this file";

/// The header litefs writes over a journal it ends itself: SQLite's magic
/// zeroed, then `HIDDEN_JOURNAL_MARK`.
pub fn hidden_journal_header() -> [u8; sqlite::JOURNAL_HEADER_SIZE] {
    let mut header = [0u8; sqlite::JOURNAL_HEADER_SIZE];
    header[8..].copy_from_slice(HIDDEN_JOURNAL_MARK);
    header
}

/// Per-page checksums of a database and their rolling XOR. Index `i` holds
/// page `i + 1`; the lock page, and pages not counted yet, hold 0.
#[derive(Debug, Clone)]
struct PageChecksums {
    pages: Vec<u64>,
    sum: u64,
}

impl PageChecksums {
    /// The checksums of a database with no pages.
    fn empty() -> PageChecksums {
        PageChecksums {
            pages: Vec::new(),
            sum: ltx::CHECKSUM_FLAG,
        }
    }

    /// The number of pages.
    fn page_count(&self) -> u32 {
        self.pages.len() as u32
    }

    /// The database checksum.
    fn checksum(&self) -> u64 {
        self.sum
    }

    /// The checksum of page `pgno` (0 when beyond the end).
    fn get(&self, pgno: u32) -> u64 {
        self.pages.get(pgno as usize - 1).copied().unwrap_or(0)
    }

    /// Sets page `pgno`'s checksum, growing the database if needed.
    fn set(&mut self, pgno: u32, checksum: u64) {
        if pgno > self.page_count() {
            self.pages.resize(pgno as usize, 0);
        }
        let slot = &mut self.pages[pgno as usize - 1];
        self.sum = ltx::checksum_replace(self.sum, *slot, checksum);
        *slot = checksum;
    }

    /// Drops the pages after `page_count` (XORing them out of the sum).
    fn truncate(&mut self, page_count: u32) {
        while self.page_count() > page_count {
            if let Some(old) = self.pages.pop() {
                self.sum = ltx::checksum_replace(self.sum, old, 0);
            }
        }
    }
}

/// Whether `pgno` is SQLite's lock page for `page_size`.
fn is_lock_page(pgno: u32, page_size: u32) -> bool {
    pgno == ltx::lock_pgno(page_size)
}

/// What a database file's header says about its size and free list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    page_size: u32,
    page_count: u32,
    freelist_trunk: u32,
    freelist_count: u32,
    /// The header's file format versions say WAL mode.
    wal: bool,
}

/// Reads the header of an open database file; `None` for an empty file.
fn read_database_shape(db: &str, path: &Path, file: &File) -> Result<Option<Shape>, Error> {
    let len = file
        .metadata()
        .map_err(io_error(format!("reading the size of database {db}"), path))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    let invalid = |reason: String| Error::InvalidDatabase {
        db: db.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    if len < sqlite::DATABASE_HEADER_SIZE as u64 {
        return Err(invalid(format!(
            "the file is {len} bytes long, too short for a SQLite header"
        )));
    }
    let mut buf = [0u8; sqlite::DATABASE_HEADER_SIZE];
    file.read_exact_at(&mut buf, 0).map_err(io_error(
        format!("reading the header of database {db}"),
        path,
    ))?;
    let header = sqlite::parse_database_header(&buf).map_err(|e| invalid(e.to_string()))?;
    let page_size = header.page_size;
    let page_count = if header.page_count_is_valid() {
        header.page_count
    } else {
        // What SQLite does for files written by old versions: the size
        // comes from the file length.
        (len / u64::from(page_size)) as u32
    };
    if page_count == 0 {
        return Err(invalid("the database has 0 pages".to_string()));
    }
    let needed = u64::from(page_count) * u64::from(page_size);
    if len < needed {
        return Err(invalid(format!(
            "the header says {page_count} pages of {page_size} bytes ({needed} bytes) \
             but the file is only {len} bytes long"
        )));
    }
    Ok(Some(Shape {
        page_size,
        page_count,
        freelist_trunk: header.freelist_trunk,
        wal: header.is_wal(),
        freelist_count: header.freelist_count,
    }))
}

/// Reads a whole database file: its shape (`None` when empty) and the
/// checksum of every page.
fn read_database(
    db: &str,
    path: &Path,
    file: &File,
) -> Result<(Option<Shape>, PageChecksums), Error> {
    let Some(shape) = read_database_shape(db, path, file)? else {
        return Ok((None, PageChecksums::empty()));
    };
    let checksums = read_page_checksums(db, path, file, shape.page_size, shape.page_count)?;
    Ok((Some(shape), checksums))
}

/// The free list of a database: its trunk pages and the leaf pages they list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Freelist {
    /// First trunk page and free page count, as in the header.
    trunk: u32,
    count: u32,
    /// Trunk pages, sorted.
    trunks: Vec<u32>,
    /// Leaf pages, sorted.
    leaves: Vec<u32>,
}

/// Reads the free list of a database file. Best effort: a malformed free
/// list is logged and treated as empty (its pages are then not protected
/// by the undo log).
fn read_freelist(db: &str, file: &File, shape: &Shape) -> Freelist {
    let mut list = Freelist {
        trunk: shape.freelist_trunk,
        count: shape.freelist_count,
        ..Freelist::default()
    };
    let size = shape.page_size as usize;
    let mut page = vec![0u8; size];
    let mut next = shape.freelist_trunk;
    let mut leaves = Vec::new();
    while next != 0 {
        let problem = if next > shape.page_count || list.trunks.len() >= shape.page_count as usize {
            Some(format!(
                "trunk page {next} is out of range or the list loops"
            ))
        } else if let Err(err) = file.read_exact_at(&mut page, page_offset(next, shape.page_size)) {
            Some(format!("reading trunk page {next}: {err}"))
        } else if be_u32(&page[4..8]) as usize > (size - 8) / 4 {
            Some(format!("trunk page {next} claims too many leaves"))
        } else {
            None
        };
        if let Some(problem) = problem {
            log::warn!(
                "database {db}: cannot read the free list ({problem}); reused free pages \
                 will not be restored after a rollback"
            );
            list.trunks.clear();
            return list;
        }
        list.trunks.push(next);
        let count = be_u32(&page[4..8]) as usize;
        for i in 0..count {
            let leaf = be_u32(&page[8 + 4 * i..12 + 4 * i]);
            if (1..=shape.page_count).contains(&leaf) {
                leaves.push(leaf);
            }
        }
        next = be_u32(&page[0..4]);
    }
    list.trunks.sort_unstable();
    leaves.sort_unstable();
    leaves.dedup();
    list.leaves = leaves;
    list
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Computes the checksums of pages 1..=page_count of a database file.
fn read_page_checksums(
    db: &str,
    path: &Path,
    file: &File,
    page_size: u32,
    page_count: u32,
) -> Result<PageChecksums, Error> {
    let size = page_size as usize;
    let pages_per_chunk = (READ_CHUNK / size).max(1) as u32;
    let mut buf = vec![0u8; pages_per_chunk as usize * size];
    let mut checksums = PageChecksums::empty();
    checksums.pages.reserve(page_count as usize);
    let total = u64::from(page_count) * u64::from(page_size);
    let mut progress =
        crate::progress::Progress::start(format!("database {db}: checking its pages"), Some(total));
    let mut pgno = 1u32;
    while pgno <= page_count {
        let count = pages_per_chunk.min(page_count - pgno + 1);
        let chunk = &mut buf[..count as usize * size];
        file.read_exact_at(chunk, page_offset(pgno, page_size))
            .map_err(io_error(
                format!(
                    "reading pages {pgno}..{} of database {db}",
                    pgno + count - 1
                ),
                path,
            ))?;
        for (i, page) in chunk.chunks_exact(size).enumerate() {
            let n = pgno + i as u32;
            let checksum = if is_lock_page(n, page_size) {
                0
            } else {
                ltx::page_checksum(n, page)
            };
            checksums.set(n, checksum);
        }
        pgno += count;
        progress.add(chunk.len() as u64);
    }
    progress.finish(true);
    Ok(checksums)
}

/// The byte offset of page `pgno` in the database file.
fn page_offset(pgno: u32, page_size: u32) -> u64 {
    u64::from(pgno - 1) * u64::from(page_size)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fsyncs a directory so that renames and unlinks in it are durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing the directory", dir))
}

/// Reads the node id from `path`, creating the file with a random id when
/// it does not exist.
fn read_or_create_node_id(path: &Path) -> Result<u64, Error> {
    match fs::read_to_string(path) {
        Ok(content) => {
            let trimmed = content.trim();
            match u64::from_str_radix(trimmed, 16) {
                Ok(id) if id != 0 => Ok(id),
                _ => Err(Error::InvalidNodeId {
                    path: path.to_path_buf(),
                    content: trimmed.chars().take(64).collect(),
                }),
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let id = random_nonzero("node id");
            let tmp = path.with_extension("tmp");
            let write = || -> io::Result<()> {
                let mut file = File::create(&tmp)?;
                writeln!(file, "{id:016x}")?;
                file.sync_all()?;
                fs::rename(&tmp, path)
            };
            write().map_err(io_error("writing the node id file", path))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            log::info!("new node id {id:016x} written to {}", path.display());
            Ok(id)
        }
        Err(err) => Err(io_error("reading the node id file", path)(err)),
    }
}

/// A random non-zero u64 from /dev/urandom, or from the time and process id
/// when that cannot be read; `what` names its use in the warning.
pub(crate) fn random_nonzero(what: &str) -> u64 {
    let mut buf = [0u8; 8];
    let from_urandom = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    let mut id = match from_urandom {
        Ok(()) => u64::from_le_bytes(buf),
        Err(err) => {
            log::warn!("cannot read /dev/urandom ({err}); deriving the {what} from the time");
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
        }
    };
    while id == 0 {
        id = splitmix64(id.wrapping_add(1));
    }
    id
}

/// One step of the SplitMix64 mixer.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
