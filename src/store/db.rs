//! One database: its files in the data directory, its position and
//! per-page checksums, and what changes them: commits on the primary, LTX
//! files applied on a replica, and recovery at start-up.
//!
//! Crash safety, in the order things reach the disk:
//! - commit: the LTX file is written under a temporary name, fsynced,
//!   renamed, and the directory fsynced, all while the rollback journal
//!   still exists (the mount calls commit before the journal goes away).
//!   A crash before the rename leaves a hot journal that recovery rolls
//!   back; a crash after it leaves a hot journal whose database already
//!   matches the newest LTX file, so recovery only deletes the journal.
//! - rollback: SQLite does not journal the free-list pages it reuses, so
//!   their old content is kept in the undo log (see `undo.rs`) and put
//!   back after a `ROLLBACK` (at commit time) or a hot-journal rollback
//!   (at recovery).
//! - apply: the LTX file is verified, checked against the position, and its
//!   result predicted from the per-page checksums before anything is
//!   written. Then it is put in `ltx/` as `<name>.ltx.pending` (fsynced),
//!   the pages are written and fsynced, and it is renamed to its proper
//!   name. Recovery completes a pending file left by a crash by writing its
//!   pages again, which gives the same result however far the apply got.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::undo::{self, UndoLog};
use super::{
    io_error, is_lock_page, now_ms, page_offset, read_database, read_database_shape, read_freelist,
    sync_dir, Error, Freelist, PageChecksums, Position, Shape, READ_CHUNK,
};
use crate::{ltx, sqlite};

/// Buffer size for reading and writing LTX files.
const LTX_BUFFER: usize = 256 * 1024;
/// Suffix of an LTX file being applied.
const PENDING_SUFFIX: &str = ".pending";

/// One database. Every method takes `&self`; the state is behind a mutex,
/// so a `Db` can be shared between threads in an `Arc`.
pub struct Db {
    name: String,
    dir: PathBuf,
    database_path: PathBuf,
    journal_path: PathBuf,
    wal_path: PathBuf,
    shm_path: PathBuf,
    ltx_dir: PathBuf,
    undo_path: PathBuf,
    node_id: u64,
    state: Mutex<State>,
}

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
struct State {
    /// The position after the newest recorded transaction.
    pos: Position,
    /// The page size as of `pos`; `None` while the database has no pages.
    page_size: Option<u32>,
    /// Checksums of the pages as of `pos`.
    checksums: PageChecksums,
    /// The free list as of `pos`.
    freelist: Freelist,
    /// Pages (in units of `page_size`) written since `pos`.
    dirty: BTreeSet<u32>,
    /// The page size in the header most recently written to page 1 since `pos`.
    pending_page_size: Option<u32>,
    /// Some write since `pos` was not in units of `page_size`, so `dirty` is
    /// incomplete: the next commit compares every page.
    rescan: bool,
    /// Old content of the free-list pages overwritten since `pos`.
    undo: UndoLog,
}

impl State {
    fn new(undo_path: PathBuf) -> State {
        State {
            pos: Position::default(),
            page_size: None,
            checksums: PageChecksums::empty(),
            freelist: Freelist::default(),
            dirty: BTreeSet::new(),
            pending_page_size: None,
            rescan: false,
            undo: UndoLog::new(undo_path),
        }
    }

    /// Forgets what was written since `pos` (the transaction is over).
    fn end_transaction(&mut self, db: &str) {
        self.dirty.clear();
        self.pending_page_size = None;
        self.rescan = false;
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
struct Change {
    page_size: u32,
    page_count: u32,
    /// Whether `pages` updates the current checksums (false: replaces them).
    incremental: bool,
    /// Changed pages in ascending order, with their new checksums.
    pages: Vec<(u32, u64)>,
    /// The database checksum after the change.
    checksum: u64,
}

impl Change {
    /// Computes the database checksum after `pages` (ascending) are applied
    /// to `current` (when `incremental`) or to an empty database, truncated
    /// or grown to `page_count`.
    fn new(
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
    fn apply_to(&self, state: &mut State) {
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
    pub(super) fn open(dbs_dir: &Path, name: &str, node_id: u64) -> Result<Db, Error> {
        let dir = dbs_dir.join(name);
        let ltx_dir = dir.join("ltx");
        fs::create_dir_all(&ltx_dir).map_err(io_error(
            format!("creating the directory of database {name}"),
            &ltx_dir,
        ))?;
        let undo_path = dir.join("undo");
        let mut db = Db {
            name: name.to_string(),
            database_path: dir.join("database"),
            journal_path: dir.join("journal"),
            wal_path: dir.join("wal"),
            shm_path: dir.join("shm"),
            ltx_dir,
            state: Mutex::new(State::new(undo_path.clone())),
            undo_path,
            dir,
            node_id,
        };
        let state = db.recover()?;
        log::debug!("database {}: recovered at position {}", db.name, state.pos);
        *db.state.get_mut().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(db)
    }

    /// The database's name (its file name in the mount).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's directory, `dbs/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SQLite database file, `dbs/<name>/database`.
    pub fn database_path(&self) -> &Path {
        &self.database_path
    }

    /// The rollback journal, `dbs/<name>/journal`.
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
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

    /// Checks a write to the database file before the mount passes it
    /// through, marks the pages it covers dirty, and saves the old content
    /// of free-list pages it overwrites to the undo log.
    ///
    /// A write must cover whole pages. A write at offset 0 must start with
    /// a SQLite header; the page size it names becomes the pending page size
    /// (`PRAGMA page_size` + `VACUUM`), and until the next commit a write
    /// may be aligned to either the current or the pending page size
    /// (VACUUM writes the new content in units of the old page size). In a
    /// new database whose page 1 has not been written yet (SQLite may spill
    /// other pages first), any power-of-two write of 512 to 65536 bytes at a
    /// multiple of its length is accepted.
    pub fn before_write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        self.check_write(&mut state, offset, data)?;
        self.save_free_pages(&mut state, offset, data.len() as u64)
    }

    fn check_write(&self, state: &mut State, offset: u64, data: &[u8]) -> Result<(), Error> {
        let len = data.len() as u64;
        let refuse = |reason: String| {
            Err(Error::InvalidWrite {
                db: self.name.clone(),
                offset,
                len: data.len(),
                reason,
            })
        };
        if offset == 0 {
            let header = match sqlite::parse_database_header(data) {
                Ok(header) => header,
                Err(err) => {
                    return refuse(format!(
                        "page 1 must start with a SQLite database header: {err}"
                    ))
                }
            };
            let page_size = header.page_size;
            let whole_current = state
                .page_size
                .is_some_and(|current| len % u64::from(current) == 0);
            if len % u64::from(page_size) != 0 && !whole_current {
                return refuse(format!(
                    "it is not a whole number of pages: the header says the page size is {page_size}"
                ));
            }
            state.pending_page_size = Some(page_size);
        }
        if let Some(page_size) = state.page_size {
            let size = u64::from(page_size);
            if offset % size == 0 && len % size == 0 {
                let first = offset / size + 1;
                let last = (offset + len) / size;
                if last > u64::from(u32::MAX) {
                    return refuse("it is beyond the largest page number".to_string());
                }
                state.dirty.extend(first as u32..=last as u32);
                return Ok(());
            }
        }
        if let Some(pending) = state.pending_page_size {
            let size = u64::from(pending);
            if offset % size == 0 && len % size == 0 {
                state.rescan = true;
                return Ok(());
            }
        }
        let new_database = state.page_size.is_none() && state.pending_page_size.is_none();
        if new_database && len <= 65536 && ltx::is_valid_page_size(len as u32) && offset % len == 0
        {
            state.rescan = true;
            return Ok(());
        }
        match state.pending_page_size.or(state.page_size) {
            Some(page_size) => refuse(format!(
                "it is not aligned to whole pages of {page_size} bytes"
            )),
            None => refuse(
                "the first write to a new database must be whole pages, starting with \
                 page 1 and its SQLite header"
                    .to_string(),
            ),
        }
    }

    /// Saves to the undo log the current content of the free-list pages
    /// (as of the position) that a write of `len` bytes at `offset` is about
    /// to overwrite for the first time in this transaction.
    fn save_free_pages(&self, state: &mut State, offset: u64, len: u64) -> Result<(), Error> {
        let Some(page_size) = state.page_size else {
            return Ok(());
        };
        let size = u64::from(page_size);
        let first = offset / size + 1;
        let last = (offset + len).div_ceil(size);
        let leaves = &state.freelist.leaves;
        let start = leaves.partition_point(|&pgno| u64::from(pgno) < first);
        let to_save: Vec<u32> = leaves[start..]
            .iter()
            .copied()
            .take_while(|&pgno| u64::from(pgno) <= last)
            .filter(|&pgno| !state.undo.contains(pgno))
            .collect();
        if to_save.is_empty() {
            return Ok(());
        }
        let path = &self.database_path;
        let database =
            File::open(path).map_err(io_error(format!("opening database {}", self.name), path))?;
        let mut page = vec![0u8; page_size as usize];
        for pgno in to_save {
            self.read_page(&database, pgno, &mut page)?;
            state.undo.append(state.pos, pgno, &page).map_err(io_error(
                format!(
                    "saving free-list page {pgno} of database {} to the undo log",
                    self.name
                ),
                &self.undo_path,
            ))?;
        }
        Ok(())
    }

    /// Makes the undo log durable. Call it before fsyncing the database
    /// file, so that a power loss cannot keep a reused free-list page
    /// without its old content.
    pub fn before_sync(&self) -> Result<(), Error> {
        self.lock().undo.sync().map_err(io_error(
            format!("syncing the undo log of database {}", self.name),
            &self.undo_path,
        ))
    }

    /// Checks a truncation of the database file before the mount passes it
    /// through: the new size must be a whole number of pages of the current
    /// or the pending page size.
    pub fn before_truncate(&self, size: u64) -> Result<(), Error> {
        let state = self.lock();
        let sizes = [state.page_size, state.pending_page_size];
        let known: Vec<u32> = sizes.iter().flatten().copied().collect();
        if known.is_empty() || known.iter().any(|&p| size % u64::from(p) == 0) {
            return Ok(());
        }
        Err(Error::InvalidWrite {
            db: self.name.clone(),
            offset: size,
            len: 0,
            reason: format!(
                "truncating to {size} bytes would cut a page of {} bytes",
                known[0]
            ),
        })
    }

    /// Records the transaction that just ended (the journal is ending): reads
    /// the page count from the database header, checksums the dirty pages,
    /// and if the database changed writes `ltx/<txid>-<txid>.ltx` and
    /// advances the position. Returns `None`, writing nothing, when the
    /// database is unchanged (a rolled-back transaction).
    pub fn commit(&self) -> Result<Option<Position>, Error> {
        self.commit_detailed(&BTreeSet::new()).map(|c| c.position)
    }

    /// Like [`Db::commit`], with `dirty` added to the pages written through
    /// [`Db::before_write`] (for a dirty set derived from the journal).
    pub fn commit_pages(&self, dirty: &BTreeSet<u32>) -> Result<Option<Position>, Error> {
        self.commit_detailed(dirty).map(|c| c.position)
    }

    /// Like [`Db::commit_pages`], also saying which pages litefs itself
    /// wrote back into the database file: when a rolled-back transaction had
    /// reused free-list pages, their old content comes back from the undo
    /// log so that the database matches its position again.
    pub fn commit_detailed(&self, dirty: &BTreeSet<u32>) -> Result<Commit, Error> {
        let mut state = self.lock();
        let result = self.commit_locked(&mut state, dirty);
        if result.is_err() {
            // Keep the pages for the next attempt; the database file holds them.
            state.dirty.extend(dirty.iter().copied());
        }
        result
    }

    fn commit_locked(
        &self,
        state: &mut State,
        extra_dirty: &BTreeSet<u32>,
    ) -> Result<Commit, Error> {
        let path = &self.database_path;
        let file = match File::open(path) {
            Ok(file) => Some(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(io_error(format!("opening database {}", self.name), path)(
                    err,
                ))
            }
        };
        let shape = match &file {
            Some(file) => read_database_shape(&self.name, path, file)?,
            None => None,
        };
        let (Some(file), Some(shape)) = (file, shape) else {
            if state.checksums.page_count() == 0 {
                state.end_transaction(&self.name);
                return Ok(Commit {
                    position: None,
                    restored_pages: Vec::new(),
                    page_size: 0,
                });
            }
            return Err(Error::InvalidDatabase {
                db: self.name.clone(),
                path: path.clone(),
                reason: format!(
                    "the database file is empty or missing, but TXID {:016x} recorded {} pages",
                    state.pos.txid,
                    state.checksums.page_count()
                ),
            });
        };
        let Shape {
            page_size,
            page_count,
            ..
        } = shape;

        let incremental = state.pos.txid > 0 && state.page_size == Some(page_size);
        let old_count = if incremental {
            state.checksums.page_count()
        } else {
            0
        };
        let candidates: Vec<u32> = if !incremental || state.rescan {
            (1..=page_count).collect()
        } else {
            let last_old = page_count.min(old_count);
            let mut pages: Vec<u32> = state
                .dirty
                .union(extra_dirty)
                .copied()
                .filter(|&pgno| pgno >= 1 && pgno <= last_old)
                .collect();
            pages.extend(old_count + 1..=page_count);
            pages
        };

        let mut page = vec![0u8; page_size as usize];
        let mut pages = Vec::new();
        for pgno in candidates {
            if is_lock_page(pgno, page_size) {
                continue;
            }
            self.read_page(&file, pgno, &mut page)?;
            let checksum = ltx::page_checksum(pgno, &page);
            if pgno <= old_count && state.checksums.get(pgno) == checksum {
                continue;
            }
            pages.push((pgno, checksum));
        }

        // A rolled-back transaction leaves page 1 (with its change counter)
        // as it was; if every page that still differs is a reused free-list
        // page saved in the undo log, put those back.
        let mut restored_pages = Vec::new();
        let rolled_back_with_free_pages = incremental
            && page_count == old_count
            && !pages.is_empty()
            && pages
                .iter()
                .all(|&(pgno, _)| pgno != 1 && state.undo.contains(pgno));
        if rolled_back_with_free_pages {
            restored_pages = self.restore_free_pages(state, &pages, page_size)?;
            pages.clear();
        }
        if incremental && page_count == old_count && pages.is_empty() {
            state.end_transaction(&self.name);
            return Ok(Commit {
                position: None,
                restored_pages,
                page_size,
            });
        }

        let change = Change::new(&state.checksums, incremental, page_size, page_count, pages);
        let txid = state.pos.txid + 1;
        let header = ltx::Header {
            page_size,
            commit: page_count,
            min_txid: txid,
            max_txid: txid,
            timestamp: now_ms(),
            pre_apply_checksum: if txid == 1 { 0 } else { state.pos.checksum },
            node_id: self.node_id,
            ..ltx::Header::default()
        };
        let final_path = self.ltx_dir.join(ltx::filename(txid, txid));
        let tmp_path = temp_path(&final_path);
        if let Err(err) = self.write_ltx(&tmp_path, &header, &file, &change) {
            let _ = fs::remove_file(&tmp_path);
            return Err(err);
        }
        fs::rename(&tmp_path, &final_path).map_err(|err| {
            let _ = fs::remove_file(&tmp_path);
            io_error(
                format!("renaming the new LTX file of database {}", self.name),
                &final_path,
            )(err)
        })?;
        change.apply_to(state);
        state.pos = Position {
            txid,
            checksum: change.checksum,
        };
        self.refresh_freelist(state, &file, &shape, &change);
        state.end_transaction(&self.name);
        sync_dir(&self.ltx_dir)?;
        Ok(Commit {
            position: Some(state.pos),
            restored_pages,
            page_size,
        })
    }

    /// Writes the saved content of `pages` back from the undo log (each must
    /// match its checksum as of the position) and fsyncs the database file.
    fn restore_free_pages(
        &self,
        state: &mut State,
        pages: &[(u32, u64)],
        page_size: u32,
    ) -> Result<Vec<u32>, Error> {
        let path = &self.database_path;
        let write_error = |err| {
            io_error(
                format!("restoring free-list pages of database {}", self.name),
                path,
            )(err)
        };
        let database = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(write_error)?;
        let mut page = vec![0u8; page_size as usize];
        let mut restored = Vec::with_capacity(pages.len());
        for &(pgno, _) in pages {
            let found = state.undo.read_page(pgno, &mut page).map_err(io_error(
                format!("reading the undo log of database {}", self.name),
                &self.undo_path,
            ))?;
            if !found || ltx::page_checksum(pgno, &page) != state.checksums.get(pgno) {
                return Err(Error::Changed {
                    db: self.name.clone(),
                    reason: format!(
                        "the undo log does not hold the content of free-list page {pgno} \
                         at position {}",
                        state.pos
                    ),
                });
            }
            database
                .write_all_at(&page, page_offset(pgno, page_size))
                .map_err(write_error)?;
            restored.push(pgno);
        }
        database.sync_all().map_err(write_error)?;
        log::info!(
            "database {}: a rolled-back transaction had reused {} free-list pages; \
             restored their old content",
            self.name,
            restored.len()
        );
        Ok(restored)
    }

    /// Re-reads the free list if the change may have altered it.
    fn refresh_freelist(&self, state: &mut State, file: &File, shape: &Shape, change: &Change) {
        let list = &state.freelist;
        let unchanged = change.incremental
            && list.trunk == shape.freelist_trunk
            && list.count == shape.freelist_count
            && !change
                .pages
                .iter()
                .any(|(pgno, _)| list.trunks.binary_search(pgno).is_ok());
        if !unchanged {
            state.freelist = read_freelist(&self.name, file, shape);
        }
    }

    /// Writes the pages of `change`, read from the database file, as an LTX
    /// file at `path`, fsynced.
    fn write_ltx(
        &self,
        path: &Path,
        header: &ltx::Header,
        database: &File,
        change: &Change,
    ) -> Result<(), Error> {
        let ltx_error = self.ltx_error(path);
        let file = File::create(path).map_err(io_error(
            format!("creating an LTX file of database {}", self.name),
            path,
        ))?;
        let mut encoder = ltx::LtxEncoder::new(BufWriter::with_capacity(LTX_BUFFER, file), header)
            .map_err(ltx_error)?;
        let mut page = vec![0u8; header.page_size as usize];
        for &(pgno, checksum) in &change.pages {
            self.read_page(database, pgno, &mut page)?;
            if ltx::page_checksum(pgno, &page) != checksum {
                return Err(Error::Changed {
                    db: self.name.clone(),
                    reason: format!(
                        "page {pgno} changed while TXID {:016x} was being recorded",
                        header.max_txid
                    ),
                });
            }
            encoder.encode_page(pgno, &page).map_err(ltx_error)?;
        }
        let (writer, _) = encoder.finish(change.checksum).map_err(ltx_error)?;
        let file = writer
            .into_inner()
            .map_err(|err| io_error("writing the LTX file", path)(err.into_error()))?;
        file.sync_all().map_err(io_error(
            format!("syncing an LTX file of database {}", self.name),
            path,
        ))
    }

    /// Applies an LTX file received from the primary. The whole file is
    /// verified first, and refused unless it follows the position (its min
    /// TXID is the next TXID and its pre-apply checksum the current
    /// checksum) or is a snapshot, and unless applying it gives exactly its
    /// post-apply checksum; a refusal changes nothing. Then the file is kept
    /// in `ltx/` under its proper name (moved when it already is in `ltx/`,
    /// copied otherwise), the pages written, the file truncated to `commit`
    /// pages and fsynced, and the position advanced. A snapshot also
    /// removes every other LTX file (they belong to a different history).
    pub fn apply_ltx(&self, path: &Path) -> Result<Position, Error> {
        let mut state = self.lock();
        let (header, change) = self.plan_apply(path, &state)?;
        let final_path = self
            .ltx_dir
            .join(ltx::filename(header.min_txid, header.max_txid));
        let pending = pending_path(&final_path);
        let result = (|| {
            self.place_ltx(path, &pending)?;
            self.write_pages(&pending, &header)?;
            self.finish_apply(&pending, &final_path, header.is_snapshot())
        })();
        if let Err(err) = result {
            // The database may be half written: start again from what is on disk.
            match self.recover() {
                Ok(recovered) => *state = recovered,
                Err(recover_err) => log::error!(
                    "database {}: cannot recover after a failed apply: {recover_err}",
                    self.name
                ),
            }
            return Err(err);
        }
        change.apply_to(&mut state);
        state.pos = Position {
            txid: header.max_txid,
            checksum: change.checksum,
        };
        state.end_transaction(&self.name);
        let path_db = &self.database_path;
        match File::open(path_db)
            .map(|file| (read_database_shape(&self.name, path_db, &file), file))
        {
            Ok((Ok(Some(shape)), file)) => {
                self.refresh_freelist(&mut state, &file, &shape, &change)
            }
            _ => state.freelist = Freelist::default(),
        }
        log::debug!(
            "database {}: applied {} ({} pages), position {}",
            self.name,
            path.display(),
            change.pages.len(),
            state.pos
        );
        Ok(state.pos)
    }

    /// Reads and verifies the whole LTX file at `path` and computes what
    /// applying it to the database in `state` gives; refuses it unless it
    /// follows the position and leads to its post-apply checksum.
    fn plan_apply(&self, path: &Path, state: &State) -> Result<(ltx::Header, Change), Error> {
        let refuse = |reason: String| Error::Refused {
            db: self.name.clone(),
            path: path.to_path_buf(),
            reason,
        };
        let ltx_error = self.ltx_error(path);
        let file = File::open(path).map_err(io_error(
            format!("opening an LTX file for database {}", self.name),
            path,
        ))?;
        let mut decoder =
            ltx::LtxDecoder::new(BufReader::with_capacity(LTX_BUFFER, file)).map_err(ltx_error)?;
        let header = *decoder.header();
        let pos = state.pos;
        if !header.is_snapshot() && header.min_txid != pos.txid + 1 {
            return Err(refuse(format!(
                "it starts at TXID {:016x} but the database is at TXID {:016x}, \
                 so the next file must start at TXID {:016x}",
                header.min_txid,
                pos.txid,
                pos.txid + 1
            )));
        }
        if !header.is_snapshot() && header.pre_apply_checksum != pos.checksum {
            return Err(refuse(format!(
                "its pre-apply checksum {:016x} is not the database checksum {:016x} \
                 at TXID {:016x}",
                header.pre_apply_checksum, pos.checksum, pos.txid
            )));
        }
        let page_size = header.page_size;
        let incremental = !header.is_snapshot() && state.page_size == Some(page_size);
        let mut page = vec![0u8; page_size as usize];
        let mut pages = Vec::new();
        while let Some(pgno) = decoder.next_page(&mut page).map_err(ltx_error)? {
            pages.push((pgno, ltx::page_checksum(pgno, &page)));
        }
        let trailer = decoder.finish().map_err(ltx_error)?;

        // Every page after the ones the database already has must be in the file.
        let known = if incremental {
            state.checksums.page_count().min(header.commit)
        } else {
            0
        };
        let lock_page = ltx::lock_pgno(page_size);
        let needed = (header.commit - known) as usize
            - usize::from(lock_page > known && lock_page <= header.commit);
        let held = pages.iter().filter(|&&(pgno, _)| pgno > known).count();
        if held != needed {
            return Err(refuse(format!(
                "the database would have {} pages but the file holds only {held} of the \
                 {needed} pages after page {known}",
                header.commit
            )));
        }
        let change = Change::new(
            &state.checksums,
            incremental,
            page_size,
            header.commit,
            pages,
        );
        if change.checksum != trailer.post_apply_checksum {
            return Err(refuse(format!(
                "applying it would give the database checksum {:016x}, but its post-apply \
                 checksum is {:016x}: the database does not match the one it was made from",
                change.checksum, trailer.post_apply_checksum
            )));
        }
        Ok((header, change))
    }

    /// Puts the LTX file at `from` into `ltx/` as `to`, durably: fsynced and
    /// renamed when it is in `ltx/` already, copied (to a temporary name,
    /// fsynced, renamed) otherwise.
    fn place_ltx(&self, from: &Path, to: &Path) -> Result<(), Error> {
        if from == to {
            return Ok(());
        }
        if from.parent() == Some(self.ltx_dir.as_path()) {
            let rename = || -> io::Result<()> {
                File::open(from)?.sync_all()?;
                fs::rename(from, to)
            };
            rename().map_err(io_error(
                format!("moving an LTX file of database {} into place", self.name),
                to,
            ))?;
        } else {
            let tmp = temp_path(to);
            let copy = || -> io::Result<()> {
                fs::copy(from, &tmp)?;
                File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, to)
            };
            if let Err(err) = copy() {
                let _ = fs::remove_file(&tmp);
                return Err(io_error(
                    format!(
                        "copying {} into the LTX directory of database {}",
                        from.display(),
                        self.name
                    ),
                    to,
                )(err));
            }
        }
        sync_dir(&self.ltx_dir)
    }

    /// Writes the pages of the (already verified) LTX file at `path` into the
    /// database file, truncates it to `commit` pages and fsyncs it.
    fn write_pages(&self, path: &Path, header: &ltx::Header) -> Result<(), Error> {
        let ltx_error = self.ltx_error(path);
        let db_path = &self.database_path;
        let write_error = |err| io_error(format!("writing database {}", self.name), db_path)(err);
        let database = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(db_path)
            .map_err(write_error)?;
        let file = File::open(path).map_err(io_error(
            format!("opening an LTX file of database {}", self.name),
            path,
        ))?;
        let mut decoder =
            ltx::LtxDecoder::new(BufReader::with_capacity(LTX_BUFFER, file)).map_err(ltx_error)?;
        let page_size = header.page_size;
        let mut page = vec![0u8; page_size as usize];
        while let Some(pgno) = decoder.next_page(&mut page).map_err(ltx_error)? {
            database
                .write_all_at(&page, page_offset(pgno, page_size))
                .map_err(write_error)?;
        }
        decoder.finish().map_err(ltx_error)?;
        database
            .set_len(u64::from(header.commit) * u64::from(page_size))
            .map_err(write_error)?;
        database.sync_all().map_err(write_error)
    }

    /// Ends an apply whose pages are written: a snapshot removes every other
    /// LTX file, then the pending file gets its proper name.
    fn finish_apply(&self, pending: &Path, final_path: &Path, snapshot: bool) -> Result<(), Error> {
        if snapshot {
            self.remove_ltx_files_except(&[final_path])?;
        }
        fs::rename(pending, final_path).map_err(io_error(
            format!("renaming an applied LTX file of database {}", self.name),
            final_path,
        ))?;
        sync_dir(&self.ltx_dir)
    }

    /// Writes a snapshot of the database as of its position to `w`: an LTX
    /// file with min TXID 1, max TXID the current TXID, and every page. Fails
    /// with [`Error::Changed`] if the file does not match the position (a
    /// write transaction in progress: hold SQLite's shared lock while
    /// snapshotting). Does not block commits while it streams.
    pub fn write_snapshot<W: Write>(&self, w: W) -> Result<ltx::Header, Error> {
        let (pos, page_size, checksums) = {
            let state = self.lock();
            match state.page_size {
                Some(page_size) if state.pos.txid > 0 => {
                    (state.pos, page_size, state.checksums.clone())
                }
                _ => {
                    return Err(Error::NoTransactions {
                        db: self.name.clone(),
                    })
                }
            }
        };
        let header = ltx::Header {
            page_size,
            commit: checksums.page_count(),
            min_txid: 1,
            max_txid: pos.txid,
            timestamp: now_ms(),
            pre_apply_checksum: 0,
            node_id: self.node_id,
            ..ltx::Header::default()
        };
        let snapshot_error = |source| Error::Snapshot {
            db: self.name.clone(),
            source,
        };
        let path = &self.database_path;
        let database = File::open(path).map_err(io_error(
            format!("opening database {} for a snapshot", self.name),
            path,
        ))?;
        let mut encoder = ltx::LtxEncoder::new(w, &header).map_err(snapshot_error)?;
        let size = page_size as usize;
        let pages_per_chunk = (READ_CHUNK / size).max(1) as u32;
        let mut buf = vec![0u8; pages_per_chunk as usize * size];
        let mut pgno = 1u32;
        while pgno <= header.commit {
            let count = pages_per_chunk.min(header.commit - pgno + 1);
            let chunk = &mut buf[..count as usize * size];
            database
                .read_exact_at(chunk, page_offset(pgno, page_size))
                .map_err(io_error(
                    format!("reading database {} for a snapshot", self.name),
                    path,
                ))?;
            for (i, page) in chunk.chunks_exact(size).enumerate() {
                let n = pgno + i as u32;
                if is_lock_page(n, page_size) {
                    continue;
                }
                if ltx::page_checksum(n, page) != checksums.get(n) {
                    return Err(Error::Changed {
                        db: self.name.clone(),
                        reason: format!(
                            "page {n} of the database file does not match position {pos}: \
                             a write transaction is in progress or the file was changed \
                             outside litefs"
                        ),
                    });
                }
                encoder.encode_page(n, page).map_err(snapshot_error)?;
            }
            pgno += count;
        }
        encoder.finish(pos.checksum).map_err(snapshot_error)?;
        Ok(header)
    }

    /// The LTX files of this database as (min TXID, max TXID, path), sorted
    /// by min TXID. Files whose names are not LTX names are left out.
    pub fn ltx_files(&self) -> Result<Vec<(u64, u64, PathBuf)>, Error> {
        let dir = &self.ltx_dir;
        let list_error = |err| {
            io_error(
                format!("listing the LTX files of database {}", self.name),
                dir,
            )(err)
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(list_error(err)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name();
            if let Some((min, max)) = name.to_str().and_then(ltx::parse_filename) {
                files.push((min, max, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Deletes the oldest LTX files while their modification time is more
    /// than `max_age` ago, stopping at the first younger one and always
    /// keeping the newest file (so the files kept are a contiguous run up
    /// to the position). Returns how many were deleted.
    pub fn enforce_retention(&self, max_age: Duration) -> Result<usize, Error> {
        let _state = self.lock();
        let mut files = self.ltx_files()?;
        files.sort_by_key(|&(min, max, _)| (max, min));
        files.pop();
        let now = SystemTime::now();
        let mut deleted = 0;
        for (_, _, path) in &files {
            let modified = match fs::metadata(path).and_then(|m| m.modified()) {
                Ok(modified) => modified,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(io_error(
                        format!("reading the age of an LTX file of database {}", self.name),
                        path,
                    )(err))
                }
            };
            if now.duration_since(modified).unwrap_or(Duration::ZERO) <= max_age {
                break;
            }
            match fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(io_error(
                        format!("deleting an old LTX file of database {}", self.name),
                        path,
                    )(err))
                }
            }
        }
        if deleted > 0 {
            sync_dir(&self.ltx_dir)?;
            log::debug!(
                "database {}: retention deleted {deleted} LTX files",
                self.name
            );
        }
        Ok(deleted)
    }

    /// Rebuilds the state from the files on disk, in this order: deletes
    /// leftover temporary files, completes an interrupted apply, rolls back
    /// (or, if already recorded, deletes) a hot journal, puts back free-list
    /// pages from the undo log, and checks the database checksum against
    /// the newest LTX file. A database file without LTX files is recorded
    /// as TXID 1.
    fn recover(&self) -> Result<State, Error> {
        self.remove_temp_files()?;
        self.finish_pending_apply()?;
        let files = self.ltx_files()?;
        let newest = match files.iter().max_by_key(|&&(min, max, _)| (max, min)) {
            Some((_, _, path)) => {
                let (header, trailer) = ltx::verify_file(path).map_err(self.ltx_error(path))?;
                let pos = Position {
                    txid: header.max_txid,
                    checksum: trailer.post_apply_checksum,
                };
                Some((path.clone(), pos))
            }
            None => None,
        };
        let base = newest.as_ref().map(|(_, pos)| *pos).unwrap_or_default();
        let mut state = self.reload(base, newest.is_some())?;
        if newest.is_none() && state.checksums.page_count() > 0 {
            log::warn!(
                "database {}: the database file has no LTX files (copied in?); \
                 recording its current content as TXID 1",
                self.name
            );
            self.commit_locked(&mut state, &BTreeSet::new())?;
        }
        Ok(state)
    }

    /// Drops a write transaction this node can no longer commit because it
    /// stopped being the primary: rolls back the hot journal (and the undo
    /// log of overwritten free pages) so the file is back at the position,
    /// and forgets the dirty pages. Returns the position.
    pub fn abandon_transaction(&self) -> Result<Position, Error> {
        let mut state = self.lock();
        let pos = state.pos;
        let fresh = self.reload(pos, pos.txid > 0)?;
        *state = fresh;
        if state.pos != pos {
            log::warn!(
                "database {}: abandoned an uncommitted transaction; position {} -> {}",
                self.name,
                pos,
                state.pos
            );
        }
        Ok(state.pos)
    }

    /// Brings the database file back to `base` after a crash or an
    /// abandoned transaction and builds the in-memory state from the file.
    /// When the file still differs from `base` (changed outside litefs), the
    /// position keeps the TXID with the file's own checksum, which no other
    /// node has, so replication resends a snapshot where needed.
    fn reload(&self, base: Position, recorded: bool) -> Result<State, Error> {
        self.recover_journal(recorded.then_some(base.checksum))?;
        let (mut shape, mut checksums) = self.read_database_file()?;
        if base.txid > 0 && checksums.checksum() != base.checksum && self.restore_undo(base)? > 0 {
            (shape, checksums) = self.read_database_file()?;
        }
        let mut state = State::new(self.undo_path.clone());
        state.undo.reset().map_err(io_error(
            format!("emptying the undo log of database {}", self.name),
            &self.undo_path,
        ))?;
        state.page_size = shape.map(|s| s.page_size);
        state.checksums = checksums;
        if let Some(shape) = &shape {
            if let Ok(file) = File::open(&self.database_path) {
                state.freelist = read_freelist(&self.name, &file, shape);
            }
        }
        if !recorded {
            return Ok(state);
        }
        state.pos = base;
        if state.checksums.checksum() != base.checksum {
            let mismatch = Error::ChecksumMismatch {
                db: self.name.clone(),
                txid: base.txid,
                ltx_checksum: base.checksum,
                file_checksum: state.checksums.checksum(),
                ltx_path: self.ltx_dir.join(ltx::filename(base.txid, base.txid)),
            };
            log::error!(
                "{mismatch}; continuing from the file's content: position {:016x}/{:016x}, \
                 replication will resend a snapshot where needed",
                base.txid,
                state.checksums.checksum()
            );
            state.pos.checksum = state.checksums.checksum();
        }
        Ok(state)
    }

    /// Completes applies interrupted by a crash: writes the pages of each
    /// intact `*.ltx.pending` file again (the result is the same however far
    /// the apply got) and gives it its proper name. A pending file that does
    /// not verify never had its pages written, and is deleted.
    fn finish_pending_apply(&self) -> Result<(), Error> {
        let dir = &self.ltx_dir;
        let list_error = |err| {
            io_error(
                format!("listing the LTX files of database {}", self.name),
                dir,
            )(err)
        };
        let mut pending = Vec::new();
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some((min, max)) = name
                .strip_suffix(PENDING_SUFFIX)
                .and_then(ltx::parse_filename)
            {
                pending.push((min, max, path));
            }
        }
        pending.sort();
        for (min, max, path) in pending {
            match ltx::verify_file(&path) {
                Ok((header, _)) => {
                    log::warn!(
                        "database {}: completing the interrupted apply of {}",
                        self.name,
                        path.display()
                    );
                    self.write_pages(&path, &header)?;
                    let final_path = dir.join(ltx::filename(min, max));
                    self.finish_apply(&path, &final_path, header.is_snapshot())?;
                }
                Err(err) => {
                    log::warn!(
                        "database {}: deleting an incomplete pending LTX file: {err}",
                        self.name
                    );
                    fs::remove_file(&path)
                        .map_err(io_error("deleting an incomplete pending LTX file", &path))?;
                }
            }
        }
        Ok(())
    }

    /// Handles a hot rollback journal left by a crash: if the database
    /// already matches `recorded_checksum` (the newest LTX file's post-apply
    /// checksum) the transaction was recorded and the journal is deleted;
    /// otherwise the journal is rolled back as SQLite would, then deleted.
    fn recover_journal(&self, recorded_checksum: Option<u64>) -> Result<(), Error> {
        let journal_path = &self.journal_path;
        let journal =
            sqlite::read_journal_pages(journal_path).map_err(|source| Error::Journal {
                db: self.name.clone(),
                path: journal_path.clone(),
                source,
            })?;
        let Some((header, pages)) = journal else {
            return Ok(());
        };
        let db_path = &self.database_path;
        let write_error =
            |err| io_error(format!("rolling back database {}", self.name), db_path)(err);
        let database = match OpenOptions::new().read(true).write(true).open(db_path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                log::warn!(
                    "database {}: deleting a hot journal without a database file",
                    self.name
                );
                return self.remove_journal();
            }
            Err(err) => return Err(write_error(err)),
        };
        let current = match read_database(&self.name, db_path, &database) {
            Ok((_, checksums)) => Some(checksums.checksum()),
            // A half-written transaction may leave a header that promises more pages.
            Err(Error::InvalidDatabase { .. }) => None,
            Err(err) => return Err(err),
        };
        if current.is_some() && current == recorded_checksum {
            // Pages the transaction wrote past the recorded end are not
            // counted by the checksum; cut them off so the file matches the
            // other nodes byte for byte.
            if let Ok(Some(shape)) = read_database_shape(&self.name, db_path, &database) {
                let committed_len = u64::from(shape.page_count) * u64::from(shape.page_size);
                let len = database.metadata().map_err(write_error)?.len();
                if len > committed_len {
                    database.set_len(committed_len).map_err(write_error)?;
                    database.sync_all().map_err(write_error)?;
                }
            }
            log::info!(
                "database {}: the transaction of the hot journal was already recorded (or \
                 wrote only past the end); deleting the journal",
                self.name
            );
            return self.remove_journal();
        }
        let page_size = header.page_size;
        let mut restored = BTreeSet::new();
        for (pgno, page) in &pages {
            if *pgno == 0 || *pgno > header.initial_page_count || !restored.insert(*pgno) {
                continue;
            }
            if page.len() != page_size as usize {
                return Err(Error::InvalidDatabase {
                    db: self.name.clone(),
                    path: journal_path.clone(),
                    reason: format!(
                        "journal page {pgno} is {} bytes long, its page size is {page_size}",
                        page.len()
                    ),
                });
            }
            database
                .write_all_at(page, page_offset(*pgno, page_size))
                .map_err(write_error)?;
        }
        database
            .set_len(u64::from(header.initial_page_count) * u64::from(page_size))
            .map_err(write_error)?;
        database.sync_all().map_err(write_error)?;
        log::warn!(
            "database {}: rolled back a hot journal left by a crash: restored {} pages, \
             the database has {} pages",
            self.name,
            restored.len(),
            header.initial_page_count
        );
        self.remove_journal()
    }

    /// Puts back the free-list pages saved in the undo log by a transaction
    /// that started at `base` and was interrupted. Returns how many.
    fn restore_undo(&self, base: Position) -> Result<usize, Error> {
        let path = &self.database_path;
        let write_error = |err| {
            io_error(
                format!("restoring free-list pages of database {}", self.name),
                path,
            )(err)
        };
        let database = match OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(write_error(err)),
        };
        let restored = undo::read_saved_pages(&self.undo_path, base, |pgno, page| {
            database.write_all_at(page, page_offset(pgno, page.len() as u32))
        })
        .map_err(write_error)?;
        if restored > 0 {
            database.sync_all().map_err(write_error)?;
            log::warn!(
                "database {}: restored {restored} free-list pages from the undo log of an \
                 interrupted transaction",
                self.name
            );
        }
        Ok(restored)
    }

    fn remove_journal(&self) -> Result<(), Error> {
        fs::remove_file(&self.journal_path).map_err(io_error(
            format!("deleting the hot journal of database {}", self.name),
            &self.journal_path,
        ))?;
        sync_dir(&self.dir)
    }

    /// Reads the database file's shape and page checksums (none when the
    /// file is missing or empty).
    fn read_database_file(&self) -> Result<(Option<Shape>, PageChecksums), Error> {
        let path = &self.database_path;
        match File::open(path) {
            Ok(file) => read_database(&self.name, path, &file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok((None, PageChecksums::empty())),
            Err(err) => Err(io_error(format!("opening database {}", self.name), path)(
                err,
            )),
        }
    }

    /// Deletes `*.tmp` files left in `ltx/` by a crash.
    fn remove_temp_files(&self) -> Result<(), Error> {
        let dir = &self.ltx_dir;
        let list_error = |err| {
            io_error(
                format!("listing the LTX files of database {}", self.name),
                dir,
            )(err)
        };
        let mut removed = 0;
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path)
                    .map_err(io_error("deleting a leftover temporary file", &path))?;
                log::info!(
                    "database {}: deleted leftover {}",
                    self.name,
                    path.display()
                );
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Deletes every LTX file except those at `keep`.
    fn remove_ltx_files_except(&self, keep: &[&Path]) -> Result<(), Error> {
        for (_, _, path) in self.ltx_files()? {
            if keep.contains(&path.as_path()) {
                continue;
            }
            fs::remove_file(&path).map_err(io_error(
                format!(
                    "deleting an LTX file replaced by a snapshot of database {}",
                    self.name
                ),
                &path,
            ))?;
        }
        sync_dir(&self.ltx_dir)
    }

    /// Reads page `pgno` of the database file into `page`.
    fn read_page(&self, database: &File, pgno: u32, page: &mut [u8]) -> Result<(), Error> {
        database
            .read_exact_at(page, page_offset(pgno, page.len() as u32))
            .map_err(io_error(
                format!("reading page {pgno} of database {}", self.name),
                &self.database_path,
            ))
    }

    /// Wraps an LTX error with this database and the file's path.
    fn ltx_error<'a>(&'a self, path: &'a Path) -> impl Fn(ltx::Error) -> Error + Copy + 'a {
        move |source| Error::Ltx {
            db: self.name.clone(),
            path: path.to_path_buf(),
            source,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
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

/// The temporary name a file is written under before being renamed to `path`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The name an LTX file has in `ltx/` while it is being applied.
fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(PENDING_SUFFIX);
    PathBuf::from(name)
}
