//! WAL mode on the primary: each transaction SQLite commits to the WAL
//! (a commit frame) gets one TXID in an LTX file (one file per
//! transaction, or per run of transactions recorded at once under a
//! burst), with the pages read back from the WAL itself; checkpoints make
//! no TXID; and at start-up the WAL and the LTX chain are reconciled.
//!
//! Durability follows SQLite's own promise in each mode: a commit is as
//! durable as the WAL SQLite wrote it to. The mount records each WAL
//! transaction as its LTX file soon after the commit (`fuse/wal_follower.rs`), and
//! fsyncs the LTX files, with their directory, before their frames can
//! leave the WAL (`Db::sync_wal_ltx`, before a checkpoint's first write
//! to the database file and before the WAL is truncated or deleted). A
//! kill -9 loses nothing (the page cache survives it); a power failure
//! may lose what SQLite itself may lose; start-up reconciles the two logs:
//! - WAL commits newer than the newest LTX file's WAL position (the LTX
//!   header's WAL salts and offset) have no LTX file yet: one is made for
//!   each, in order (`recover_wal`);
//! - an LTX file that claims a WAL commit the WAL no longer holds is
//!   removed;
//! - then every WAL commit is copied into the database file, which is
//!   fsynced, and the WAL emptied (SQLite's `-shm` index is deleted with
//!   it; the first connection rebuilds it), so the rest of recovery sees
//!   a database file at the newest LTX file's position.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::commit::UndoHolds;
use super::db::{Change, State};
use super::take_back::Recorded;
use super::{io_error, is_lock_page, now_ms, page_offset, sync_dir, Db, Error, Position};
use crate::ltx;
use crate::sqlite::wal::{self, WalCommit};

/// More unsynced LTX files than this are synced with one syncfs.
const SYNCFS_THRESHOLD: usize = 16;
/// The two copies of the WAL-index header at the start of `-shm` (wal.c).
const WAL_INDEX_HEADER_SIZE: u64 = 96;

/// One transaction committed to the WAL, as `Db::commit_wal` records it.
#[derive(Debug, Clone, Copy)]
pub struct WalTransaction<'a> {
    /// The WAL's page size.
    pub page_size: u32,
    /// The database size in pages after it (its commit frame's).
    pub commit: u32,
    /// Each page it wrote, with the offset of its newest data in the WAL.
    pub pages: &'a BTreeMap<u32, u64>,
    /// Where its frames are.
    pub at: WalPosition,
}

/// Where a WAL transaction's frames are, as recorded in its LTX header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// The salts of the WAL generation the frames belong to.
    pub salt1: u32,
    pub salt2: u32,
    /// Offset of the transaction's first frame.
    pub offset: u64,
    /// Bytes from there to the end of its commit frame.
    pub size: u64,
}

impl Db {
    /// Records `txns`, consecutive transactions committed to the WAL open
    /// as `wal_file` (one generation, in order), as one LTX file covering
    /// one TXID for each of them that changed the database (see
    /// `record_wal_commits`). Writes the file (not yet fsynced, see the
    /// module comment) and advances the position; `None` when none of
    /// them changed the database.
    pub fn commit_wal(
        &self,
        wal_file: &File,
        txns: &[WalTransaction<'_>],
    ) -> Result<Option<Position>, Error> {
        let mut state = self.lock();
        self.record_wal_commits(&mut state, wal_file, txns)
    }

    /// Records `txns` in one LTX file. Each transaction is checked against
    /// the database as the ones before it in the batch left it (a
    /// transaction that rewrote pages with what they held makes no TXID,
    /// as when it is recorded alone); the file holds each page's newest
    /// content and covers one TXID per transaction that changed something.
    /// Under a burst of commits the mount records whatever the WAL holds
    /// at once this way, so creating LTX files does not bound the commit
    /// rate. The WAL index (`State::wal_index`) takes the transactions'
    /// frames once they are recorded, and stays as it was if they are not.
    fn record_wal_commits(
        &self,
        state: &mut State,
        wal_file: &File,
        txns: &[WalTransaction<'_>],
    ) -> Result<Option<Position>, Error> {
        let (Some(first), Some(last)) = (txns.first(), txns.last()) else {
            return Ok(None);
        };
        let page_size = first.page_size;
        let incremental = state.pos.txid > 0 && state.page_size == Some(page_size);
        let old_count = if incremental {
            state.checksums.page_count()
        } else {
            0
        };
        // The batch so far: each page it changed with its checksum, the
        // page count, the WAL index with its frames, and how many TXIDs it
        // takes.
        let mut changed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut count = old_count;
        let mut index = state.wal_index.clone();
        let mut txids = 0u64;
        let mut page = vec![0u8; page_size as usize];
        for txn in txns {
            let source = PageSource::new(wal_file, txn.pages, &index);
            let commit = txn.commit;
            let candidates: BTreeSet<u32> = txn
                .pages
                .keys()
                .copied()
                .filter(|&pgno| pgno <= commit.min(count))
                .chain(count + 1..=commit)
                .collect();
            let mut any = false;
            for pgno in candidates {
                if is_lock_page(pgno, page_size) {
                    continue;
                }
                source.read(self, pgno, &mut page)?;
                let checksum = ltx::page_checksum(pgno, &page);
                let before = if pgno > count {
                    None
                } else if let Some(&sum) = changed.get(&pgno) {
                    Some(sum)
                } else if pgno <= old_count {
                    Some(state.checksums.get(pgno))
                } else {
                    None
                };
                if before != Some(checksum) {
                    changed.insert(pgno, checksum);
                    any = true;
                }
            }
            if any || commit != count {
                txids += 1;
            }
            count = commit;
            changed.retain(|&pgno, _| pgno <= count);
            for (&pgno, &offset) in txn.pages {
                if pgno <= commit {
                    index.insert(pgno, offset);
                }
            }
            index.retain(|&pgno, _| pgno <= commit);
        }
        if txids == 0 {
            state.wal_index = index;
            return Ok(None);
        }
        let change = Change::new(
            &state.checksums,
            incremental,
            page_size,
            count,
            changed.into_iter().collect(),
        );
        let min_txid = state.pos.txid + 1;
        let max_txid = state.pos.txid + txids;
        let header = ltx::Header {
            page_size,
            commit: count,
            min_txid,
            max_txid,
            timestamp: now_ms(),
            pre_apply_checksum: if min_txid == 1 { 0 } else { state.pos.checksum },
            wal_offset: first.at.offset,
            wal_size: last.at.offset + last.at.size - first.at.offset,
            wal_salt1: last.at.salt1,
            wal_salt2: last.at.salt2,
            node_id: self.node_id,
            ..ltx::Header::default()
        };
        let final_path = self.ltx_dir.join(ltx::filename(min_txid, max_txid));
        let no_pages = BTreeMap::new();
        let source = PageSource::new(wal_file, &index, &no_pages);
        let ltx_bytes = self.write_change(&final_path, &header, &change, false, |pgno, page| {
            source.read(self, pgno, page)
        })?;
        let after = Position {
            txid: max_txid,
            checksum: change.checksum,
        };
        let recorded = Recorded::before(state, &change, final_path.clone(), after);
        change.apply_to(state);
        state.pos = after;
        let old_index = std::mem::replace(&mut state.wal_index, index);
        state.last_recorded = Some(recorded.with_wal_index(old_index));
        self.acks.note_recorded(&self.name, after);
        state.unsynced_ltx.push(final_path);
        crate::metrics::commit(&self.name, ltx_bytes);
        Ok(Some(state.pos))
    }

    /// Fsyncs the LTX files of WAL transactions written since the last
    /// call, and their directory: called before their frames can leave
    /// the WAL.
    pub fn sync_wal_ltx(&self) -> Result<(), Error> {
        let mut state = self.lock();
        if state.unsynced_ltx.is_empty() {
            return Ok(());
        }
        if state.unsynced_ltx.len() > SYNCFS_THRESHOLD {
            // Many files (synchronous=NORMAL syncs at checkpoints only):
            // one syncfs of the data directory's file system costs less
            // than an fsync each, and covers the directory too.
            self.syncfs_ltx_dir()?;
        } else {
            for path in &state.unsynced_ltx {
                File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error(
                        format!("syncing an LTX file of database {}", self.name),
                        path,
                    ))?;
            }
            sync_dir(&self.ltx_dir)?;
        }
        state.unsynced_ltx.clear();
        Ok(())
    }

    /// Syncs the file system of the LTX directory (every LTX file and the
    /// directory itself).
    fn syncfs_ltx_dir(&self) -> Result<(), Error> {
        let dir = File::open(&self.ltx_dir)
            .map_err(io_error("opening the LTX directory", &self.ltx_dir))?;
        // SAFETY: a valid descriptor; syncfs touches no memory.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(io_error(
                format!("syncing the LTX files of database {}", self.name),
                &self.ltx_dir,
            )(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The WAL started over (a new header, truncated, or deleted): every
    /// page it held is in the database file now.
    pub fn wal_reset(&self) {
        self.lock().wal_index.clear();
    }

    /// A primary stepping down: copies the WAL's transactions (all
    /// recorded) into the database file and empties the WAL, so that the
    /// database file is at the position, as a replica's must be. Returns
    /// whether there was anything to copy.
    pub fn fold_wal(&self) -> Result<bool, Error> {
        let Some((header, commits)) = self.read_wal()? else {
            return Ok(false);
        };
        let recorded_end = self.recorded_wal_end(header.salt1, header.salt2)?;
        let unrecorded = commits.iter().filter(|c| c.end > recorded_end).count();
        if unrecorded > 0 {
            log::error!(
                "database {}: {unrecorded} WAL transactions have no LTX file at step-down; \
                 they are dropped (the new primary never had them)",
                self.name
            );
        }
        // The LTX files are durable before the frames they came from go.
        self.sync_wal_ltx()?;
        self.checkpoint_recorded_wal()?;
        self.truncate_wal()?;
        self.wal_reset();
        Ok(true)
    }

    /// Makes every connection that keeps SQLite's WAL index in `-shm` see
    /// a new index at its next read transaction, and drop its cached pages:
    /// on a replica, after litefs changed the database file under it.
    /// With no transaction committed in the WAL, the index gets a fresh
    /// header for an empty WAL with the next change counter and new random
    /// salts (`wal::empty_wal_index`); otherwise the header is zeroed, so
    /// that connections rebuild it from the WAL.
    /// Returns whether it wrote anything (the caller drops the kernel's
    /// cached copy).
    pub fn renew_wal_index_header(&self) -> Result<bool, Error> {
        let path = self.shm_path();
        let context = || format!("renewing the WAL index of database {}", self.name);
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_error(context(), path)(err)),
        };
        let len = file.metadata().map_err(io_error(context(), path))?.len();
        if len < WAL_INDEX_HEADER_SIZE {
            return Ok(false);
        }
        let fresh;
        let head: &[u8] = if self.read_wal()?.is_some() || len < wal::WAL_INDEX_HEAD_SIZE as u64 {
            &[0u8; WAL_INDEX_HEADER_SIZE as usize]
        } else {
            let mut change = [0u8; 4];
            file.read_exact_at(&mut change, 8)
                .map_err(io_error(context(), path))?;
            let change = u32::from_ne_bytes(change).wrapping_add(1);
            let salts = super::random_nonzero("WAL salts");
            fresh = wal::empty_wal_index(change, ((salts >> 32) as u32, salts as u32));
            &fresh
        };
        file.write_all_at(head, 0)
            .map_err(io_error(context(), path))?;
        Ok(true)
    }

    /// Reconciles the WAL with the LTX chain at start-up (see the module
    /// comment). `state` is the state as of the newest LTX file, built
    /// from the database file *after* `checkpoint_recorded_wal` ran.
    pub(super) fn record_unrecorded_wal(&self, state: &mut State) -> Result<(), Error> {
        let Some((header, commits)) = self.read_wal()? else {
            return Ok(());
        };
        if !self.newest_ltx_readable() {
            return Ok(());
        }
        let recorded_end = self.recorded_wal_end(header.salt1, header.salt2)?;
        let unrecorded: Vec<&WalCommit> = commits.iter().filter(|c| c.end > recorded_end).collect();
        if !unrecorded.is_empty() {
            let wal_file = File::open(self.wal_path()).map_err(io_error(
                format!("opening the WAL of database {}", self.name),
                self.wal_path(),
            ))?;
            for commit in &unrecorded {
                self.copy_commit(&wal_file, header.page_size, commit)?;
                let dirty: BTreeSet<u32> = commit.pages.keys().copied().collect();
                let made = self.commit_locked(state, &dirty, UndoHolds::FreePages)?;
                log::warn!(
                    "database {}: the WAL held a committed transaction with no LTX file; \
                     recorded it as {}",
                    self.name,
                    made.position
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "no change".to_string())
                );
            }
        }
        self.empty_wal()
    }

    /// Before the reconciliation, in WAL mode: sets aside the LTX files a
    /// power cut left torn. In WAL mode litefs acknowledges nothing on an
    /// LTX file's durability (the WAL is the commit) and fsyncs LTX files
    /// only before their frames can leave the WAL (`sync_wal_ltx`, and
    /// `checkpoint_recorded_wal` at start-up), so a torn file (cut short or
    /// with bytes that do not check) among those of the current WAL
    /// generation has its commits still in the WAL, or lost from both
    /// (synchronous=NORMAL, as SQLite allows), and none of them in the
    /// database file. That file and every one after it are moved to
    /// `lost/` and the reconciliation records the WAL's commits again.
    ///
    /// The files looked at are the newest ones while each is torn or
    /// records a frame of the WAL's current generation (its salts): files
    /// of an earlier generation were synced before the WAL started over.
    /// Without a WAL with a valid header (SQLite syncs it in every mode),
    /// or with a file that cannot be read at all, nothing is set aside and
    /// a damaged file is left to `damage.rs`.
    pub(super) fn set_aside_unsynced_wal_ltx(&self) -> Result<(), Error> {
        let wal_mode = File::open(&self.database_path)
            .ok()
            .and_then(|f| super::read_database_shape(&self.name, &self.database_path, &f).ok())
            .flatten()
            .is_some_and(|shape| shape.wal);
        // The header alone: the reconciliation reads the frames next.
        let wal_header = File::open(self.wal_path())
            .and_then(|f| {
                let len = f.metadata()?.len();
                wal::read_header(&f, len)
            })
            .ok()
            .flatten();
        let Some(wal_header) = wal_header else {
            return Ok(());
        };
        if !wal_mode {
            return Ok(());
        }
        let files = self.ltx_files()?;
        let mut first_torn = None;
        for (i, (_, _, path)) in files.iter().enumerate().rev() {
            match ltx::verify_file(path) {
                Ok((h, _))
                    if h.wal_size > 0
                        && (h.wal_salt1, h.wal_salt2) == (wal_header.salt1, wal_header.salt2) => {}
                Ok(_) => break,
                Err(err) if is_torn(&err) => first_torn = Some(i),
                Err(_) => break,
            }
        }
        let Some(first) = first_torn else {
            return Ok(());
        };
        let newest = files.last().map_or(0, |(_, max, _)| *max);
        let dir = super::lost::new_dir(&self.data_dir(), &self.name, newest)?;
        for (_, _, path) in &files[first..] {
            super::lost::move_into(&dir, path)?;
        }
        log::warn!(
            "database {}: {} LTX file(s) from {} on were not yet durable when litefs \
             stopped (the first is torn); in WAL mode the WAL holds the commits, so they \
             were moved to {} and the WAL's commits are recorded again",
            self.name,
            files.len() - first,
            files[first].2.display(),
            dir.display()
        );
        Ok(())
    }

    /// The first half of the reconciliation: removes LTX files that claim
    /// WAL commits the WAL does not hold, then copies every WAL commit the
    /// LTX chain holds into the database file (fsynced).
    pub(super) fn checkpoint_recorded_wal(&self) -> Result<(), Error> {
        let Some((header, commits)) = self.read_wal()? else {
            return Ok(());
        };
        if !self.newest_ltx_readable() {
            return Ok(());
        }
        // LTX files a killed litefs left unsynced: durable before any
        // frame leaves the WAL, as at run time.
        self.syncfs_ltx_dir()?;
        let last_end = commits.last().map(|c| c.end).unwrap_or(0);
        // An LTX file beyond the WAL's last commit (a power failure took
        // WAL frames whose LTX file survived): the database never had it.
        while let Some((path, h)) = self.newest_ltx_header()? {
            let same_generation = (h.wal_salt1, h.wal_salt2) == (header.salt1, header.salt2);
            if !(same_generation && h.wal_offset + h.wal_size > last_end) {
                break;
            }
            log::warn!(
                "database {}: {} records a WAL transaction the WAL does not hold (lost in a \
                 power failure before SQLite synced it); removing it",
                self.name,
                path.display()
            );
            fs::remove_file(&path).map_err(io_error("removing an LTX file", &path))?;
            sync_dir(&self.ltx_dir)?;
        }
        let recorded_end = self.recorded_wal_end(header.salt1, header.salt2)?;
        let wal_file = File::open(self.wal_path()).map_err(io_error(
            format!("opening the WAL of database {}", self.name),
            self.wal_path(),
        ))?;
        for commit in commits.iter().filter(|c| c.end <= recorded_end) {
            self.copy_commit(&wal_file, header.page_size, commit)?;
        }
        Ok(())
    }

    /// The WAL's committed transactions; `None` when it has none.
    fn read_wal(&self) -> Result<Option<(wal::WalHeader, Vec<WalCommit>)>, Error> {
        let path = self.wal_path();
        match crate::sqlite::wal::read_commits(path) {
            Ok(Some((header, commits))) if !commits.is_empty() => Ok(Some((header, commits))),
            Ok(_) => Ok(None),
            Err(source) => Err(Error::Journal {
                db: self.name.clone(),
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The end of the WAL transactions of generation `salts` the LTX chain
    /// holds (0: none).
    fn recorded_wal_end(&self, salt1: u32, salt2: u32) -> Result<u64, Error> {
        Ok(match self.newest_ltx_header()? {
            Some((_, h)) if (h.wal_salt1, h.wal_salt2) == (salt1, salt2) => {
                h.wal_offset + h.wal_size
            }
            _ => 0,
        })
    }

    /// The newest LTX file and its header. A damaged one is an error here:
    /// the WAL is then left alone for the damage checks (`damage.rs`).
    fn newest_ltx_header(&self) -> Result<Option<(PathBuf, ltx::Header)>, Error> {
        let files = self.ltx_files()?;
        let Some((_, _, path)) = files.iter().max_by_key(|&&(min, max, _)| (max, min)) else {
            return Ok(None);
        };
        let (header, _) = ltx::read_header_and_trailer(path).map_err(self.ltx_error(path))?;
        Ok(Some((path.clone(), header)))
    }

    /// Whether the newest LTX file can be read (see `newest_ltx_header`).
    fn newest_ltx_readable(&self) -> bool {
        match self.newest_ltx_header() {
            Ok(_) => true,
            Err(err) => {
                log::warn!("database {}: the WAL is left as it is: {err}", self.name);
                false
            }
        }
    }

    /// Writes one WAL transaction's pages into the database file and sets
    /// its size, fsynced.
    fn copy_commit(
        &self,
        wal_file: &File,
        page_size: u32,
        commit: &WalCommit,
    ) -> Result<(), Error> {
        let path = &self.database_path;
        let write_error =
            |err| io_error(format!("checkpointing database {}", self.name), path)(err);
        let database = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(write_error)?;
        let mut page = vec![0u8; page_size as usize];
        for (&pgno, &offset) in &commit.pages {
            if pgno > commit.commit {
                continue;
            }
            wal_file.read_exact_at(&mut page, offset).map_err(io_error(
                format!("reading the WAL of database {}", self.name),
                self.wal_path(),
            ))?;
            database
                .write_all_at(&page, page_offset(pgno, page_size))
                .map_err(write_error)?;
        }
        database
            .set_len(u64::from(commit.commit) * u64::from(page_size))
            .and_then(|()| database.sync_all())
            .map_err(write_error)
    }

    /// Truncates the WAL to nothing, durably.
    fn truncate_wal(&self) -> Result<(), Error> {
        let wal = self.wal_path();
        OpenOptions::new()
            .write(true)
            .open(wal)
            .and_then(|f| f.set_len(0).and_then(|()| f.sync_all()))
            .map_err(io_error(
                format!("emptying the WAL of database {}", self.name),
                wal,
            ))
    }

    /// Empties the WAL (everything in it is in the database file and the
    /// LTX chain) and deletes SQLite's index of it.
    fn empty_wal(&self) -> Result<(), Error> {
        self.truncate_wal()?;
        match fs::remove_file(self.shm_path()) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("removing the WAL index", self.shm_path())(err)),
        }
        log::info!(
            "database {}: the WAL was copied into the database file and emptied",
            self.name
        );
        Ok(())
    }
}

/// Where pages are read from while a WAL transaction is recorded or a
/// snapshot made: the transaction's own frames, then earlier committed
/// frames still in the WAL, then the database file (opened only if a page
/// is not in the WAL).
pub(super) struct PageSource<'a> {
    wal: &'a File,
    /// The transaction's pages (offsets in the WAL); empty for a snapshot.
    txn: &'a BTreeMap<u32, u64>,
    /// Committed pages still in the WAL (`State::wal_index`).
    index: &'a BTreeMap<u32, u64>,
    database: std::cell::OnceCell<Option<File>>,
}

impl<'a> PageSource<'a> {
    pub(super) fn new(
        wal: &'a File,
        txn: &'a BTreeMap<u32, u64>,
        index: &'a BTreeMap<u32, u64>,
    ) -> PageSource<'a> {
        PageSource {
            wal,
            txn,
            index,
            database: std::cell::OnceCell::new(),
        }
    }

    /// Reads page `pgno` into `page` (a missing page of the database file
    /// reads as zeros, as SQLite's own would).
    pub(super) fn read(&self, db: &Db, pgno: u32, page: &mut [u8]) -> Result<(), Error> {
        if let Some(&offset) = self.txn.get(&pgno).or_else(|| self.index.get(&pgno)) {
            return self.wal.read_exact_at(page, offset).map_err(io_error(
                format!("reading page {pgno} of database {} from the WAL", db.name),
                db.wal_path(),
            ));
        }
        let database = match self.database.get() {
            Some(file) => file,
            None => {
                let opened = match File::open(&db.database_path) {
                    Ok(file) => Some(file),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                    Err(err) => {
                        return Err(io_error(
                            format!("opening database {}", db.name),
                            &db.database_path,
                        )(err))
                    }
                };
                self.database.get_or_init(|| opened)
            }
        };
        match database {
            Some(file) => match file.read_exact_at(page, page_offset(pgno, page.len() as u32)) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    page.fill(0);
                    Ok(())
                }
                Err(err) => Err(io_error(
                    format!("reading page {pgno} of database {}", db.name),
                    &db.database_path,
                )(err)),
            },
            None => {
                page.fill(0);
                Ok(())
            }
        }
    }
}

/// Whether `err` says an LTX file is cut short or its bytes do not check
/// (what a power cut leaves of an unsynced file), not that it could not be
/// read at all.
fn is_torn(err: &ltx::Error) -> bool {
    match err {
        ltx::Error::File { source, .. } => is_torn(source),
        ltx::Error::Truncated { .. } | ltx::Error::Corrupt(_) => true,
        ltx::Error::Io(_) | ltx::Error::Invalid(_) => false,
    }
}
