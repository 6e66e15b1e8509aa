//! Recovery: bringing a database back to the position of its newest LTX
//! file from whatever a crash left on disk (at start-up), after a failed
//! apply, or when a node that stopped being the primary abandons a write
//! transaction.
//!
//! Each step finishes or undoes one ordering of the other modules: leftover
//! `*.tmp` files are deleted, pending LTX files are applied again (see
//! `apply.rs`), and a hot rollback journal is either deleted, when its
//! transaction was already recorded, or rolled back together with the undo
//! log of reused free-list pages (see `commit.rs`); a transaction that
//! ended in a journal passing through before litefs recorded it is
//! recorded (see `reload`); a WAL is reconciled with the LTX chain and
//! emptied (see `wal_commit.rs`).
//!
//! Transactions across ATTACHed databases (rollback-journal modes): SQLite
//! writes a super-journal naming each database's journal and appends its
//! name to each journal; deleting the super-journal is the commit, then
//! each journal is ended, and each database on the mount records its part
//! as one LTX file then, as any commit. A crash between the two leaves hot
//! journals whose super-journal is gone: SQLite counts those transactions
//! as committed, and so does recovery, which keeps the database file,
//! records it as the next TXID (an LTX file of every page) and only then
//! deletes the journal. A hot journal whose super-journal still exists is
//! rolled back. A super-journal named by a path off the mount is looked up
//! where it is.
//!
//! A database file that does not match its newest LTX file once the
//! journal is dealt with (changed behind litefs's back, or diverged) is
//! kept as it is, with an error in the log: the position keeps its TXID
//! with the file's own checksum, which no other node has, so replication
//! sends a snapshot to or from this node. Nothing is deleted.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::apply::PENDING_SUFFIX;
use super::commit::UndoHolds;
use super::db::{super_journal_file, State};
use super::undo;
use super::HIDDEN_JOURNAL_MARK;
use super::{
    io_error, page_offset, read_database, read_database_shape, read_freelist, sync_dir, Db, Error,
    PageChecksums, Position, Shape,
};
use crate::{ltx, sqlite};

impl Db {
    /// Rebuilds the state from the files on disk, in this order: deletes
    /// leftover temporary files, completes an interrupted apply, rolls back
    /// (or, if already recorded, deletes) a hot journal, puts back free-list
    /// pages from the undo log, and checks the database checksum against
    /// the newest LTX file. A database file without LTX files is recorded
    /// as TXID 1. A damaged newest LTX file or database file is repaired
    /// when litefs can prove what is right, and refused with
    /// [`Error::Damaged`] otherwise (see `damage.rs`).
    pub(super) fn recover(&self) -> Result<State, Error> {
        self.remove_temp_files()?;
        self.recover_slot()?;
        self.finish_pending_apply()?;
        // Sealed by a step-down (`seal.rs`); whoever is primary now,
        // litefs itself may have to write them.
        if let Err(err) = self.unseal_companions() {
            log::warn!(
                "database {}: cannot make the WAL and journal writable: {err}",
                self.name
            );
        }
        // WAL mode: LTX files a power cut caught unsynced, then the WAL's
        // recorded commits into the database file.
        self.set_aside_unsynced_wal_ltx()?;
        self.checkpoint_recorded_wal()?;
        let files = self.ltx_files()?;
        let newest = self.newest_position(&files)?;
        let base = newest.as_ref().map(|(_, pos)| *pos).unwrap_or_default();
        if let Some((path, _)) = &newest {
            self.check_database_file(&files, path, base)?;
        }
        let mut state = match (self.reload(base, newest.is_some()), &newest) {
            // Still short once a hot journal was rolled back.
            (Err(Error::InvalidDatabase { reason, .. }), Some((path, _))) => {
                self.repair_database(&files, path, base, reason)?;
                self.reload(base, true)?
            }
            (result, _) => result?,
        };
        if newest.is_none() && state.checksums.page_count() > 0 {
            log::warn!(
                "database {}: the database file has no LTX files (copied in?); \
                 recording its current content as TXID 1",
                self.name
            );
            self.commit_locked(&mut state, &BTreeSet::new(), UndoHolds::FreePages)?;
        }
        // WAL mode: LTX files for the WAL's unrecorded commits.
        self.record_unrecorded_wal(&mut state)?;
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
        let ended_in_journal = recorded && journal_header_zeroed(&self.journal_path);
        let journal = self.recover_journal(recorded.then_some(base))?;
        let mut committed = journal == HotJournal::Committed;
        let (mut shape, mut checksums) = self.read_database_file()?;
        // A transaction whose journal passed through the mount on the primary
        // (`fuse/journal.rs`) ends by zeroing the header (PERSIST mode,
        // exclusive locking mode), and litefs records it at the sync that
        // follows. Killed in between, the file holds the transaction whole
        // (SQLite zeroes the header only after writing every page) and no
        // journal can undo it: SQLite counts it committed, and so it is
        // recorded now. A rollback that ended the same way differs from the
        // position only in the free-list pages of the undo log.
        if !committed
            && ended_in_journal
            && base.txid > 0
            && checksums.checksum() != base.checksum
            && self.checksum_with_undo(&checksums, base)? != base.checksum
        {
            log::warn!(
                "database {}: the journal ended a transaction (header zeroed) that was not \
                 recorded yet; recording it",
                self.name
            );
            committed = true;
        }
        if !committed
            && base.txid > 0
            && checksums.checksum() != base.checksum
            && self.restore_undo(base)? > 0
        {
            (shape, checksums) = self.read_database_file()?;
        }
        let mut state = State::new(self.undo_path.clone());
        state.undo.reset().map_err(io_error(
            format!("emptying the undo log of database {}", self.name),
            &self.undo_path,
        ))?;
        state.page_size = shape.map(|s| s.page_size);
        state.wal_mode = shape.is_some_and(|s| s.wal);
        state.checksums = checksums;
        if let Some(shape) = &shape {
            if let Ok(file) = File::open(&self.database_path) {
                state.freelist = Arc::new(read_freelist(&self.name, &file, shape));
            }
        }
        if committed {
            if recorded && state.checksums.checksum() != base.checksum {
                state.pos = base;
                self.record_committed_journal(&mut state)?;
                return Ok(state);
            }
            // Nothing to record here: without LTX files the caller records
            // the file as it is (TXID 1).
            self.remove_journal()?;
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
        let pending = self.ltx_files_with_suffix(PENDING_SUFFIX)?;
        for (min, max, path) in pending {
            match ltx::verify_file(&path) {
                Ok((header, _)) => {
                    if !header.is_snapshot() {
                        self.check_pending_target(&path)?;
                    }
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
    /// already matches `recorded` (the newest LTX file's position), or
    /// matches it once the undo log's pages of that position are put back
    /// (the next step of `reload`: a write in place was cut short after
    /// the journal's zeroed header, not synced, was lost), the
    /// transaction was recorded and the journal is deleted;
    /// if it belongs to a transaction across ATTACHed databases whose
    /// super-journal is gone, SQLite committed it (deleting the
    /// super-journal is that commit): the database is kept as it is and
    /// `Committed` returned, the journal left for the caller to delete once
    /// the transaction is recorded; otherwise the journal is rolled back as
    /// SQLite would, then deleted.
    fn recover_journal(&self, recorded: Option<Position>) -> Result<HotJournal, Error> {
        let journal_path = &self.journal_path;
        let journal =
            sqlite::read_journal_pages(journal_path).map_err(|source| Error::Journal {
                db: self.name.clone(),
                path: journal_path.clone(),
                source,
            })?;
        let Some((header, pages)) = journal else {
            return Ok(HotJournal::Done);
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
                return self.remove_journal().map(|()| HotJournal::Done);
            }
            Err(err) => return Err(write_error(err)),
        };
        let checksums = match read_database(&self.name, db_path, &database) {
            Ok((_, checksums)) => Some(checksums),
            // A half-written transaction may leave a header that promises more pages.
            Err(Error::InvalidDatabase { .. }) => None,
            Err(err) => return Err(err),
        };
        let matches = match (&checksums, recorded) {
            (Some(checksums), Some(base)) => {
                checksums.checksum() == base.checksum
                    || self.checksum_with_undo(checksums, base)? == base.checksum
            }
            _ => false,
        };
        if matches {
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
            return self.remove_journal().map(|()| HotJournal::Done);
        }
        if let Some(super_journal) = self.gone_super_journal()? {
            log::warn!(
                "database {}: the hot journal belongs to a transaction across ATTACHed \
                 databases that SQLite committed (its super-journal {super_journal:?} is \
                 gone); keeping it",
                self.name
            );
            return Ok(HotJournal::Committed);
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
        self.remove_journal().map(|()| HotJournal::Done)
    }

    /// The super-journal the hot journal names, when it no longer exists.
    /// On the mount it is kept beside its main database in the data
    /// directory (`Db::super_journal_path`): the mount is not there at
    /// start-up; any other path is looked up as it is.
    fn gone_super_journal(&self) -> Result<Option<PathBuf>, Error> {
        let name = sqlite::read_super_journal_name(&self.journal_path).map_err(|source| {
            Error::Journal {
                db: self.name.clone(),
                path: self.journal_path.clone(),
                source,
            }
        })?;
        let Some(name) = name else {
            return Ok(None);
        };
        let on_mount = name
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(sqlite::split_super_journal_name)
            .zip(self.dir.parent())
            .map(|((main, digits), dbs)| dbs.join(main).join(super_journal_file(digits)));
        // When in doubt (a lookup that fails), it exists: rolling back is
        // what SQLite does when it cannot tell either.
        let exists = |path: &Path| path.try_exists().unwrap_or(true);
        let gone = !exists(&name) && !on_mount.is_some_and(|p| exists(&p));
        Ok(gone.then_some(name))
    }

    /// Records the transaction of a hot journal SQLite committed across
    /// ATTACHed databases (see `recover_journal`), then deletes the
    /// journal. `state` is at the position with the file's page checksums;
    /// the whole file is recorded (an LTX file of every page, applied like
    /// any other), which needs no page checksums of the position.
    fn record_committed_journal(&self, state: &mut State) -> Result<(), Error> {
        let page_size = state.page_size;
        state.page_size = None;
        let made = self.commit_locked(state, &BTreeSet::new(), UndoHolds::FreePages);
        if made.is_err() {
            state.page_size = page_size;
        }
        let made = made?;
        log::warn!(
            "database {}: recorded the committed transaction of the journal as {}",
            self.name,
            made.position
                .map(|p| p.to_string())
                .unwrap_or_else(|| "no change".to_string())
        );
        self.remove_journal()
    }

    /// The database checksum the file would have with the free-list pages
    /// of the undo log put back (see `restore_undo`); nothing is written.
    fn checksum_with_undo(&self, checksums: &PageChecksums, base: Position) -> Result<u64, Error> {
        let mut sum = checksums.checksum();
        undo::read_saved_pages(&self.undo_path, base, |pgno, page| {
            let saved = ltx::page_checksum(pgno, page);
            sum = ltx::checksum_replace(sum, checksums.get(pgno), saved);
            Ok(())
        })
        .map_err(io_error(
            format!("reading the undo log of database {}", self.name),
            &self.undo_path,
        ))?;
        Ok(sum)
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
        let mut removed = 0;
        for path in self.ltx_dir_paths()? {
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
}

/// What `recover_journal` left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotJournal {
    /// No hot journal: there was none, or it was rolled back (or found
    /// recorded already) and deleted.
    Done,
    /// Its transaction committed (across ATTACHed databases); the file is
    /// kept and the journal is still there.
    Committed,
}

/// Whether a journal is at `path` with its header zeroed by SQLite: the
/// end of a transaction in PERSIST or exclusive locking mode. (A journal
/// litefs emptied carries `HIDDEN_JOURNAL_MARK` after the zeros.)
fn journal_header_zeroed(path: &Path) -> bool {
    sqlite::read_journal_head(path).is_some_and(|(head, len)| {
        len == head.len() && head[..8] == [0u8; 8] && head[8..] != HIDDEN_JOURNAL_MARK[..]
    })
}
