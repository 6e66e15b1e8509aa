//! Recording transactions on the primary: checking each write to the
//! database file before the mount passes it through, saving the old content
//! of reused free-list pages to the undo log, and, when the rollback
//! journal ends, committing the transaction as an LTX file.
//!
//! Crash safety, in the order things reach the disk:
//! - commit: the LTX file is written into `ltx/next`, made ahead with its
//!   name already durable (`slot.rs`), fsynced, and renamed to its own
//!   name; without a `next` (the first commit after start-up), it is
//!   written unnamed (or under a temporary name), fsynced, given its name
//!   (`publish.rs`), and the directory fsynced. All of it happens while
//!   the rollback journal still exists (the mount calls commit before the
//!   journal goes away). A crash before the file has its name leaves a
//!   hot journal that recovery rolls back; a crash after it leaves a hot
//!   journal whose database already matches the newest LTX file, so
//!   recovery only deletes the journal (see `recovery.rs`).
//! - a transaction that changed nothing (a rollback restored every page)
//!   gets no TXID and no LTX file.
//! - rollback: SQLite does not journal the free-list pages it reuses, so
//!   their old content is kept in the undo log (see `undo.rs`) and put
//!   back after a `ROLLBACK` (at commit time, here) or a hot-journal
//!   rollback (at recovery, see `recovery.rs`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::db::{Change, State, LTX_BUFFER};
use super::page_reader::PageReader;
use super::publish::NewFile;
use super::take_back::Recorded;
use super::write_back::WriteBack;
use super::{
    io_error, is_lock_page, now_ms, page_offset, read_database_shape, read_freelist, sync_dir,
    Commit, Db, Error, Position, Shape,
};
use crate::{ltx, sqlite};

/// What the undo log holds while a transaction is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UndoHolds {
    /// The old content of reused free-list pages: when they are all that
    /// differs from the position, the transaction was rolled back and they
    /// are put back.
    FreePages,
    /// The old content of pages edited in place (`raw_edit.rs`): the edit
    /// is recorded, never undone by the commit.
    EditedPages,
}

impl Db {
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
        self.ensure_ltx_space(&mut state, offset, data)?;
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
        let database = match &mut state.database_reader {
            Some(file) => &*file,
            reader @ None => &*reader.insert(
                File::open(path)
                    .map_err(io_error(format!("opening database {}", self.name), path))?,
            ),
        };
        let mut page = vec![0u8; page_size as usize];
        for pgno in to_save {
            self.read_page(database, pgno, &mut page)?;
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

    /// Whether every undo record written so far is durable: until then no
    /// page of the transaction may be pushed to the disk early (see
    /// `write_back.rs`), since a reused free-list page must not reach the
    /// disk before its old content does.
    pub fn undo_is_synced(&self) -> bool {
        self.lock().undo.is_synced()
    }

    /// The size of the database as of its position: its page count times
    /// its page size. SQLite truncates the file to it just after a commit
    /// that made the database smaller.
    pub fn committed_len(&self) -> u64 {
        let state = self.lock();
        state.page_size.map_or(0, |p| {
            u64::from(state.checksums.page_count()) * u64::from(p)
        })
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
        let result = self.commit_locked(&mut state, dirty, UndoHolds::FreePages);
        if result.is_err() {
            // Keep the pages for the next attempt; the database file holds them.
            state.dirty.extend(dirty.iter().copied());
        }
        result
    }

    pub(super) fn commit_locked(
        &self,
        state: &mut State,
        extra_dirty: &BTreeSet<u32>,
        undo: UndoHolds,
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
        let mut candidates: Vec<u32> = if !incremental || state.rescan {
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
        candidates.retain(|&pgno| !is_lock_page(pgno, page_size));
        let reader = PageReader::new(&file, &candidates, page_size);
        let mut page = vec![0u8; page_size as usize];
        let mut pages = Vec::new();
        for &pgno in &candidates {
            self.read_listed_page(&reader, pgno, &mut page)?;
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
        let rolled_back_with_free_pages = undo == UndoHolds::FreePages
            && incremental
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
        let listed: Vec<u32> = change.pages.iter().map(|&(pgno, _)| pgno).collect();
        let reader = PageReader::new(&file, &listed, page_size);
        let read = |pgno, page: &mut [u8]| self.read_listed_page(&reader, pgno, page);
        let ltx_bytes = match self.slot.take() {
            // Its name is durable already (`slot.rs`).
            Some(next) => self.fill_slot(next, &final_path, &header, &change, read)?,
            None => self.write_ltx_synced(&final_path, &header, &change, read)?,
        };
        let after = Position {
            txid,
            checksum: change.checksum,
        };
        let recorded = Recorded::before(state, &change, final_path, after);
        change.apply_to(state);
        state.pos = after;
        state.last_recorded = Some(recorded);
        self.acks.note_recorded(&self.name, after);
        self.refresh_freelist(state, &file, &shape, &change);
        state.end_transaction(&self.name);
        // The next commit's file, made while SQLite prepares that commit
        // (the first commit after start-up makes its own).
        self.slot.request();
        crate::metrics::commit(&self.name, ltx_bytes);
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

    /// After a change, takes the journal mode from the header just read
    /// and re-reads the free list if the change may have altered it.
    pub(super) fn refresh_freelist(
        &self,
        state: &mut State,
        file: &File,
        shape: &Shape,
        change: &Change,
    ) {
        state.wal_mode = shape.wal;
        let list = &state.freelist;
        let unchanged = change.incremental
            && list.trunk == shape.freelist_trunk
            && list.count == shape.freelist_count
            && !change
                .pages
                .iter()
                .any(|(pgno, _)| list.trunks.binary_search(pgno).is_ok());
        if !unchanged {
            state.freelist = Arc::new(read_freelist(&self.name, file, shape));
        }
    }

    /// Writes the pages of `change`, each read with `read` from the
    /// database file, as a new LTX file at `path`, fsynced, its directory
    /// too; returns its length in bytes (for the metrics).
    fn write_ltx_synced(
        &self,
        path: &Path,
        header: &ltx::Header,
        change: &Change,
        read: impl Fn(u32, &mut [u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let len = self.write_change(path, header, change, true, read)?;
        // Durable before the position moves: should the directory sync
        // fail (a full disk, an I/O error), the file goes again and the
        // transaction is not recorded; the journal is still there, so
        // SQLite rolls it back.
        if let Err(err) = sync_dir(&self.ltx_dir) {
            if let Err(rm) = fs::remove_file(path) {
                log::error!(
                    "database {}: cannot remove {} after its directory sync failed: {rm}",
                    self.name,
                    path.display()
                );
            }
            return Err(err);
        }
        Ok(len)
    }

    /// Like [`Db::write_ltx_synced`], into `next`, the empty `ltx/next`
    /// whose name is durable (`slot.rs`): fsynced, then renamed to `path`.
    /// On failure `next` is removed.
    fn fill_slot(
        &self,
        next: File,
        path: &Path,
        header: &ltx::Header,
        change: &Change,
        read: impl Fn(u32, &mut [u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let slot = self.slot.path();
        let filled = self
            .encode_change(&next, path, header, change, true, read)
            .and_then(|len| {
                fs::rename(slot, path).map(|()| len).map_err(io_error(
                    format!("naming the new LTX file of database {}", self.name),
                    path,
                ))
            });
        if filled.is_err() {
            self.slot.discard();
        }
        filled
    }

    /// Writes the pages of `change` as the LTX file `path`, each read
    /// with `read` and checked against its checksum in `change` (a page
    /// that changed meanwhile fails the write), fsynced when `sync`, and
    /// only then named `path` (`publish.rs`; the directory is not synced);
    /// returns its length in bytes (for the metrics; 0 when unknown).
    pub(super) fn write_change(
        &self,
        path: &Path,
        header: &ltx::Header,
        change: &Change,
        sync: bool,
        read: impl Fn(u32, &mut [u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let new = NewFile::create(path).map_err(io_error(
            format!("creating an LTX file of database {}", self.name),
            path,
        ))?;
        match self.encode_change(&new.file, path, header, change, sync, read) {
            Ok(len) => {
                new.publish(path).map_err(io_error(
                    format!("naming the new LTX file of database {}", self.name),
                    path,
                ))?;
                Ok(len)
            }
            Err(err) => {
                new.discard();
                Err(err)
            }
        }
    }

    /// Writes the pages of `change` into the empty `file`, to become the
    /// LTX file `path`, as [`Db::write_change`] says; returns its length.
    fn encode_change(
        &self,
        file: &File,
        path: &Path,
        header: &ltx::Header,
        change: &Change,
        sync: bool,
        read: impl Fn(u32, &mut [u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let ltx_error = self.ltx_error(path);
        // Handed to the disk as it is written, while the rest is encoded.
        let writer = BufWriter::with_capacity(LTX_BUFFER, WriteBack::new(file));
        let mut encoder = ltx::LtxEncoder::new(writer, header).map_err(ltx_error)?;
        let mut page = vec![0u8; header.page_size as usize];
        for &(pgno, checksum) in &change.pages {
            read(pgno, &mut page)?;
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
            .map_err(|err| io_error("writing the LTX file", path)(err.into_error()))?
            .file;
        if sync {
            file.sync_all().map_err(io_error(
                format!("syncing an LTX file of database {}", self.name),
                path,
            ))?;
        }
        // Only the metrics want the length: should fstat fail, they
        // miss these bytes rather than the commit failing.
        Ok(file.metadata().map_or(0, |md| md.len()))
    }
}
