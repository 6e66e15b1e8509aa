//! One database: its files in the data directory, its position and
//! per-page checksums, the state between transactions, and the small
//! helpers the rest of the database's code shares.
//!
//! What changes a database is in sibling modules, each an `impl Db` block:
//! commits on the primary (`commit.rs`), LTX files applied on a replica
//! (`apply.rs`), snapshots, the list of LTX files and retention
//! (`snapshot.rs`), and recovery at start-up (`recovery.rs`). Each of those
//! files says in what order its changes reach the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::page_reader::PageReader;
use super::queue::Queue;
use super::slot::Slot;
use super::undo::UndoLog;
use super::{io_error, page_offset, Error, Freelist, PageChecksums, Position};
use crate::ltx;

/// Buffer size for reading and writing LTX files.
pub(super) const LTX_BUFFER: usize = 256 * 1024;

/// One database. Every method takes `&self`; the state is behind a mutex,
/// so a `Db` can be shared between threads in an `Arc`.
pub struct Db {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) database_path: PathBuf,
    pub(super) journal_path: PathBuf,
    wal_path: PathBuf,
    shm_path: PathBuf,
    pub(super) ltx_dir: PathBuf,
    pub(super) undo_path: PathBuf,
    pub(super) node_id: u64,
    /// Told of each transaction recorded here (`replication.max-lag`,
    /// `acks.rs`).
    pub(super) acks: Arc<super::Acks>,
    /// Position, checksums and the transaction in progress. Held for a
    /// whole commit or apply.
    state: Mutex<State>,
    /// `ltx/next`, the next LTX file made ahead of its commit (`slot.rs`).
    pub(super) slot: Arc<Slot>,
    /// Received LTX files waiting to be applied (`queue.rs`). Never held
    /// while waiting for `state`, except to read the position.
    pub(super) queue: Mutex<Queue>,
    /// Tells this `Db` apart from an earlier or later database of the
    /// same name (one deleted, then created again): unique in the process.
    instance: u64,
    /// Set once the database was deleted (`delete.rs`); a handle still
    /// open on it must not write.
    pub(super) deleted: AtomicBool,
    /// On a replica: when this database last had applied everything
    /// received, with nothing more known to be coming (`Store::note_caught_up`).
    caught_up_at: Mutex<Option<std::time::Instant>>,
}

/// Gives every `Db` of this process its own `instance`.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The new position; `None` when the database did not change (a
    /// rolled-back or read-only transaction).
    pub position: Option<Position>,
    /// Pages litefs wrote back into the database file itself: free-list
    /// pages a rolled-back transaction had reused. Any cached copy of them
    /// (the kernel's page cache of the mount) is stale.
    pub restored_pages: Vec<u32>,
    /// The page size of `restored_pages` (0 when there are none).
    pub page_size: u32,
}

/// What a database knows about itself between transactions.
#[derive(Debug)]
pub(super) struct State {
    /// The position after the newest recorded transaction.
    pub(super) pos: Position,
    /// The page size as of `pos`; `None` while the database has no pages.
    pub(super) page_size: Option<u32>,
    /// Checksums of the pages as of `pos`.
    pub(super) checksums: PageChecksums,
    /// The free list as of `pos` (shared: a commit keeps the one it
    /// replaces, `take_back.rs`).
    pub(super) freelist: std::sync::Arc<Freelist>,
    /// Pages (in units of `page_size`) written since `pos`.
    pub(super) dirty: BTreeSet<u32>,
    /// The page size in the header most recently written to page 1 since `pos`.
    pub(super) pending_page_size: Option<u32>,
    /// Some write since `pos` was not in units of `page_size`, so `dirty` is
    /// incomplete: the next commit compares every page.
    pub(super) rescan: bool,
    /// Old content of the free-list pages overwritten since `pos`.
    pub(super) undo: UndoLog,
    /// The database file, opened for reading the first time the
    /// transaction since `pos` saves a free-list page (a bulk insert that
    /// reuses freed pages saves one per write); closed when it ends, so a
    /// database file replaced between transactions is never read stale.
    pub(super) database_reader: Option<File>,
    /// The header as of `pos` names WAL mode.
    pub(super) wal_mode: bool,
    /// WAL mode: where the newest committed content of each page is in
    /// the WAL file (the page data's offset), for pages a checkpoint may
    /// not have copied into the database file yet (`wal_commit.rs`). Emptied when
    /// the WAL starts over.
    pub(super) wal_index: BTreeMap<u32, u64>,
    /// WAL mode: LTX files written but not yet fsynced; the WAL's next
    /// fsync syncs them first (`wal_commit.rs`).
    pub(super) unsynced_ltx: Vec<PathBuf>,
    /// The data directory's free bytes when last asked, and when
    /// (`space.rs`).
    pub(super) free_space: Option<(u64, std::time::Instant)>,
    /// What the newest transaction recorded here changed, to take it back
    /// (`take_back.rs`).
    pub(super) last_recorded: Option<super::take_back::Recorded>,
}

impl State {
    pub(super) fn new(undo_path: PathBuf) -> State {
        State {
            pos: Position::default(),
            page_size: None,
            checksums: PageChecksums::empty(),
            freelist: std::sync::Arc::default(),
            dirty: BTreeSet::new(),
            pending_page_size: None,
            rescan: false,
            undo: UndoLog::new(undo_path),
            database_reader: None,
            wal_mode: false,
            wal_index: BTreeMap::new(),
            unsynced_ltx: Vec::new(),
            free_space: None,
            last_recorded: None,
        }
    }

    /// Forgets what was written since `pos` (the transaction is over).
    pub(super) fn end_transaction(&mut self, db: &str) {
        self.dirty.clear();
        self.pending_page_size = None;
        self.rescan = false;
        self.database_reader = None;
        if let Err(err) = self.undo.clear() {
            // Harmless: every record names the position it belongs to.
            log::warn!(
                "database {db}: cannot empty the undo log {}: {err}",
                self.undo.path().display()
            );
        }
    }
}

/// The pages a transaction or LTX file changes, with their new checksums,
/// and the database they lead to.
pub(super) struct Change {
    page_size: u32,
    page_count: u32,
    /// Whether `pages` updates the current checksums (false: replaces them).
    pub(super) incremental: bool,
    /// Changed pages in ascending order, with their new checksums.
    pub(super) pages: Vec<(u32, u64)>,
    /// The database checksum after the change.
    pub(super) checksum: u64,
}

impl Change {
    /// Computes the database checksum after `pages` (ascending) are applied
    /// to `current` (when `incremental`) or to an empty database, truncated
    /// or grown to `page_count`.
    pub(super) fn new(
        current: &PageChecksums,
        incremental: bool,
        page_size: u32,
        page_count: u32,
        pages: Vec<(u32, u64)>,
    ) -> Change {
        let mut checksum = ltx::CHECKSUM_FLAG;
        let mut old_count = 0;
        if incremental {
            checksum = current.checksum();
            old_count = current.page_count();
            for pgno in page_count + 1..=old_count {
                checksum = ltx::checksum_replace(checksum, current.get(pgno), 0);
            }
        }
        for &(pgno, new) in &pages {
            let old = if pgno <= old_count {
                current.get(pgno)
            } else {
                0
            };
            checksum = ltx::checksum_replace(checksum, old, new);
        }
        Change {
            page_size,
            page_count,
            incremental,
            pages,
            checksum,
        }
    }

    /// Applies the change to the state's checksums and page size.
    /// The page count after the change.
    pub(super) fn page_count(&self) -> u32 {
        self.page_count
    }

    pub(super) fn apply_to(&self, state: &mut State) {
        if !self.incremental {
            state.checksums = PageChecksums::empty();
        }
        state.checksums.truncate(self.page_count);
        for &(pgno, checksum) in &self.pages {
            state.checksums.set(pgno, checksum);
        }
        if state.checksums.page_count() < self.page_count {
            // The last page is the lock page, which no LTX file holds.
            state.checksums.pages.resize(self.page_count as usize, 0);
        }
        debug_assert_eq!(state.checksums.checksum(), self.checksum);
        state.page_size = Some(self.page_size);
    }
}

impl Db {
    /// Opens (creating its directories if needed) and recovers the database
    /// `name` in `dbs_dir`.
    pub(super) fn open(
        dbs_dir: &Path,
        name: &str,
        node_id: u64,
        acks: Arc<super::Acks>,
    ) -> Result<Db, Error> {
        let dir = dbs_dir.join(name);
        let ltx_dir = dir.join("ltx");
        fs::create_dir_all(&ltx_dir).map_err(io_error(
            format!("creating the directory of database {name}"),
            &ltx_dir,
        ))?;
        let undo_path = dir.join("undo");
        let slot = Arc::new(Slot::new(&ltx_dir));
        let mut db = Db {
            name: name.to_string(),
            database_path: dir.join("database"),
            journal_path: dir.join("journal"),
            wal_path: dir.join("wal"),
            shm_path: dir.join("shm"),
            ltx_dir,
            state: Mutex::new(State::new(undo_path.clone())),
            slot,
            queue: Mutex::new(Queue::default()),
            undo_path,
            dir,
            node_id,
            acks,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            deleted: AtomicBool::new(false),
            caught_up_at: Mutex::new(None),
        };
        let state = db.recover()?;
        log::debug!("database {}: recovered at position {}", db.name, state.pos);
        *db.state.get_mut().unwrap_or_else(|e| e.into_inner()) = state;
        db.apply_leftover_queue()?;
        Ok(db)
    }

    /// The database's name (its file name in the mount).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A number no other `Db` of this process has, so that a database
    /// deleted and created again under the same name is told apart.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// On a replica: when this database was last caught up with its
    /// primary (see `Store::note_caught_up`); `None` before the first time.
    pub fn caught_up_at(&self) -> Option<std::time::Instant> {
        *self.caught_up_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn mark_caught_up(&self, at: std::time::Instant) {
        *self.caught_up_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Whether the database's header, as of its position, names WAL mode
    /// (file format versions 2).
    pub fn in_wal_mode(&self) -> bool {
        self.lock().wal_mode
    }

    /// Whether the database was deleted (see `Store::delete_db`).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// The database's directory, `dbs/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (the parent of `dbs/`).
    pub(super) fn data_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The SQLite database file, `dbs/<name>/database`.
    pub fn database_path(&self) -> &Path {
        &self.database_path
    }

    /// The rollback journal, `dbs/<name>/journal`.
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// Where the super-journal `<name>-mj<digits as 9 hex digits>` of a
    /// transaction across ATTACHed databases (this one the main database)
    /// is kept: `dbs/<name>/super-journal-<digits>`.
    pub fn super_journal_path(&self, digits: u64) -> PathBuf {
        self.dir.join(super_journal_file(digits))
    }

    /// The digits of the super-journals kept for this database, in order
    /// (none when its directory cannot be read).
    pub fn super_journals(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut digits: Vec<u64> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let hex = name.to_str()?.strip_prefix("super-journal-")?;
                (hex.len() == 9).then(|| u64::from_str_radix(hex, 16).ok())?
            })
            .collect();
        digits.sort_unstable();
        digits
    }

    /// The write-ahead log, `dbs/<name>/wal`.
    pub fn wal_path(&self) -> &Path {
        &self.wal_path
    }

    /// The WAL index, `dbs/<name>/shm`.
    pub fn shm_path(&self) -> &Path {
        &self.shm_path
    }

    /// The directory of LTX files, `dbs/<name>/ltx`.
    pub fn ltx_dir(&self) -> &Path {
        &self.ltx_dir
    }

    /// The undo log of free-list pages, `dbs/<name>/undo`.
    pub fn undo_path(&self) -> &Path {
        &self.undo_path
    }

    /// The position after the newest recorded transaction.
    pub fn pos(&self) -> Position {
        self.lock().pos
    }

    /// The page size as of the newest recorded transaction; `None` while
    /// the database has no pages.
    pub fn page_size(&self) -> Option<u32> {
        self.lock().page_size
    }

    /// The database's size in bytes as of the newest recorded transaction
    /// (page size times page count); 0 while it has no pages.
    pub fn size_bytes(&self) -> u64 {
        let state = self.lock();
        let pages = u64::from(state.checksums.page_count());
        state.page_size.map_or(0, |size| u64::from(size) * pages)
    }

    /// Reads page `pgno` of the database file into `page`.
    pub(super) fn read_page(
        &self,
        database: &File,
        pgno: u32,
        page: &mut [u8],
    ) -> Result<(), Error> {
        database
            .read_exact_at(page, page_offset(pgno, page.len() as u32))
            .map_err(self.page_read_error(pgno))
    }

    /// Reads page `pgno` through `reader` (see `page_reader.rs`).
    pub(super) fn read_listed_page(
        &self,
        reader: &PageReader,
        pgno: u32,
        page: &mut [u8],
    ) -> Result<(), Error> {
        reader.read(pgno, page).map_err(self.page_read_error(pgno))
    }

    fn page_read_error(&self, pgno: u32) -> impl FnOnce(std::io::Error) -> Error + '_ {
        io_error(
            format!("reading page {pgno} of database {}", self.name),
            &self.database_path,
        )
    }

    /// Wraps an LTX error with this database and the file's path.
    pub(super) fn ltx_error<'a>(
        &'a self,
        path: &'a Path,
    ) -> impl Fn(ltx::Error) -> Error + Copy + 'a {
        move |source| Error::Ltx {
            db: self.name.clone(),
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("name", &self.name)
            .field("pos", &self.pos())
            .finish()
    }
}

/// The file name in a database's directory of its super-journal
/// `<name>-mj<digits>` (`Db::super_journal_path`).
pub(super) fn super_journal_file(digits: u64) -> String {
    format!("super-journal-{digits:09X}")
}

/// The temporary name a file is written under before being renamed to `path`.
pub(super) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}
