//! Damaged files at start-up: what recovery (`recovery.rs`) does when the
//! newest LTX file does not verify, or the database file is missing,
//! empty or shorter than its header says.
//!
//! litefs repairs a database only when it can prove what is right, and
//! otherwise refuses it with [`Error::Damaged`], which names the file and
//! what to do; `Store::open` then leaves that database out (not served,
//! not replicated, nothing of it deleted) and serves the others. Per case:
//!
//! - **The newest LTX file is damaged** (torn, truncated, a flipped byte).
//!   Recovered when a hot rollback journal exists and rolling it back (with
//!   the undo log of reused free-list pages) gives exactly the position
//!   before that file (the previous file's post-apply checksum, or an
//!   empty database before TXID 1): the journal still being hot proves
//!   SQLite never committed the transaction, so no application saw it
//!   succeed (litefs lets the journal go only after the LTX file is
//!   durable). The damaged file is moved to `lost/` (`lost.rs`) and the
//!   journal rolled back. Without such a journal nothing proves the
//!   transaction was not acknowledged: refused. In WAL mode the newest
//!   files are set aside before this check (`wal_commit.rs`,
//!   `set_aside_unsynced_wal_ltx`): there the WAL is the commit, and an
//!   LTX file is fsynced only before its frames can leave the WAL.
//! - **The database file is missing** while LTX files record a position:
//!   refused. It is never served as an empty database at its old TXID.
//! - **The database file is empty or shorter than its header says**
//!   (after a hot journal is rolled back, as SQLite would): rebuilt when
//!   the LTX files form a verified chain from TXID 1 (a snapshot `1-N`
//!   and the files after it, as a replica keeps, or every file of a young
//!   database) to the newest position: the chain is applied into
//!   `database.rebuild.tmp`, its checksum must be the newest position's,
//!   then the damaged file moves to `lost/` and the rebuilt one takes its
//!   place. Otherwise (retention deleted the start of the chain) refused.
//!
//! A database file whose content does not match its newest LTX file (but
//! is whole) is not damage in this sense: see `Db::reload`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::db::State;
use super::{
    io_error, is_lock_page, lost, page_offset, read_database_shape, sync_dir, undo, Db, Error,
    Position,
};
use crate::{ltx, sqlite};

/// LTX files as (min TXID, max TXID, path).
type Files = [(u64, u64, PathBuf)];

/// The name the rebuilt database file has until it is complete.
const REBUILD_NAME: &str = "database.rebuild.tmp";

impl Db {
    /// The newest LTX file and the position it records; `None` without LTX
    /// files. A damaged newest file is set aside when its transaction
    /// provably never committed (the position is then the one before it),
    /// and refused otherwise.
    pub(super) fn newest_position(
        &self,
        files: &Files,
    ) -> Result<Option<(PathBuf, Position)>, Error> {
        let Some((min, max, path)) = files.iter().max_by_key(|&&(min, max, _)| (max, min)) else {
            return Ok(None);
        };
        match ltx::verify_file(path) {
            Ok((header, trailer)) => Ok(Some((
                path.clone(),
                Position {
                    txid: header.max_txid,
                    checksum: trailer.post_apply_checksum,
                },
            ))),
            Err(err) => self.set_aside_damaged_newest(files, *min, *max, path, &strip_path(err)),
        }
    }

    /// See [`Db::newest_position`]: `path` (TXIDs `min`-`max`) failed
    /// verification with `err`.
    fn set_aside_damaged_newest(
        &self,
        files: &Files,
        min: u64,
        max: u64,
        path: &Path,
        err: &str,
    ) -> Result<Option<(PathBuf, Position)>, Error> {
        let refuse = |why: String| Error::Damaged {
            db: self.name.clone(),
            path: path.to_path_buf(),
            problem: format!("the newest LTX file is damaged ({err}) and {why}"),
            remedy: format!(
                "check it with `litefs ltx verify {0}`. To keep the database file as it \
                 is, stop litefs, move that LTX file out of {1} and start again (the \
                 database then goes on from its own content at the TXID before it); \
                 on a replica you may instead move {2} out of the data directory to \
                 receive a fresh copy from the primary",
                path.display(),
                self.ltx_dir.display(),
                self.dir.display()
            ),
        };
        // The position before the damaged file.
        let previous = if min <= 1 {
            None
        } else {
            let candidate = files
                .iter()
                .find(|(_, m, p)| *m == min - 1 && p.as_path() != path);
            let Some((_, _, prev_path)) = candidate else {
                return Err(refuse(format!(
                    "no LTX file ends at TXID {:016x}, the one before it",
                    min - 1
                )));
            };
            match ltx::verify_file(prev_path) {
                Ok((header, trailer)) => Some((
                    prev_path.clone(),
                    Position {
                        txid: header.max_txid,
                        checksum: trailer.post_apply_checksum,
                    },
                )),
                Err(prev_err) => {
                    return Err(refuse(format!(
                        "the file before it is damaged too ({})",
                        strip_path(prev_err)
                    )))
                }
            }
        };
        let base = previous.as_ref().map(|(_, pos)| *pos).unwrap_or_default();
        // Before TXID 1 the database is empty: its checksum is the flag alone.
        let expected = if base.txid == 0 {
            ltx::CHECKSUM_FLAG
        } else {
            base.checksum
        };
        if !self.rollback_gives(base, expected)? {
            return Err(refuse(format!(
                "nothing proves its transaction was never acknowledged: there is no hot \
                 journal that rolls the database back to TXID {:016x}",
                base.txid
            )));
        }
        let dir = lost::new_dir(&self.data_dir(), &self.name, max)?;
        let moved = lost::move_into(&dir, path)?;
        log::warn!(
            "database {}: the newest LTX file was damaged ({err}); its transaction was \
             never acknowledged (the hot journal rolls the database back to TXID {:016x}), \
             so the file was moved to {} and the journal is rolled back",
            self.name,
            base.txid,
            moved.display()
        );
        Ok(previous)
    }

    /// Whether rolling back the hot journal (and, if needed, the undo log
    /// of a transaction that started at `base`) would give a database with
    /// checksum `expected`. Computed in memory: nothing is written. False
    /// without a hot journal or a database file.
    fn rollback_gives(&self, base: Position, expected: u64) -> Result<bool, Error> {
        let journal =
            sqlite::read_journal_pages(&self.journal_path).map_err(|source| Error::Journal {
                db: self.name.clone(),
                path: self.journal_path.clone(),
                source,
            })?;
        let Some((header, pages)) = journal else {
            return Ok(false);
        };
        let database = match File::open(&self.database_path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => {
                return Err(io_error(
                    format!("opening database {}", self.name),
                    &self.database_path,
                )(err))
            }
        };
        let count = header.initial_page_count;
        let page_size = header.page_size;
        // What the rollback writes: the first journal copy of each page.
        let mut restored: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        for (pgno, page) in pages {
            if (1..=count).contains(&pgno) && page.len() == page_size as usize {
                restored.entry(pgno).or_insert(page);
            }
        }
        let Some(sum) = checksum_with(&database, page_size, count, &restored) else {
            return Ok(false);
        };
        if sum == expected {
            return Ok(true);
        }
        // Free-list pages the transaction reused, saved in the undo log.
        let mut saved = restored;
        undo::read_saved_pages(&self.undo_path, base, |pgno, page| {
            if (1..=count).contains(&pgno) && page.len() == page_size as usize {
                saved.insert(pgno, page.to_vec());
            }
            Ok(())
        })
        .map_err(io_error(
            format!("reading the undo log of database {}", self.name),
            &self.undo_path,
        ))?;
        Ok(checksum_with(&database, page_size, count, &saved) == Some(expected))
    }

    /// Checks the database file before recovery uses it, given the
    /// position `base` recorded by the newest LTX file `newest`: a missing
    /// file is refused; an empty or short one (short only when no hot
    /// journal may still fix it) is rebuilt from the LTX chain or refused.
    pub(super) fn check_database_file(
        &self,
        files: &Files,
        newest: &Path,
        base: Position,
    ) -> Result<(), Error> {
        let path = &self.database_path;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Damaged {
                    db: self.name.clone(),
                    path: path.clone(),
                    problem: format!(
                        "the database file is missing, but {} records TXID {:016x}; it is \
                         not served as an empty database",
                        newest.display(),
                        base.txid
                    ),
                    remedy: format!(
                        "put the database file back (from a backup, or `litefs export` on \
                         another node) and start again; or, to start this database over \
                         or receive a fresh copy from the primary, stop litefs and move \
                         {} out of the data directory",
                        self.dir.display()
                    ),
                })
            }
            Err(err) => {
                return Err(io_error(format!("opening database {}", self.name), path)(
                    err,
                ))
            }
        };
        let hot_journal = fs::metadata(&self.journal_path).is_ok_and(|md| md.len() > 0);
        match read_database_shape(&self.name, path, &file) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => self.repair_database(
                files,
                newest,
                base,
                "the database file is empty".to_string(),
            ),
            Err(_) if hot_journal => Ok(()),
            Err(Error::InvalidDatabase { reason, .. }) => {
                self.repair_database(files, newest, base, reason)
            }
            Err(err) => Err(err),
        }
    }

    /// Rebuilds a damaged database file (`problem` says how) from a
    /// verified chain of LTX files from TXID 1 to `base`, setting the
    /// damaged file aside in `lost/`; refuses the database when there is
    /// no such chain.
    pub(super) fn repair_database(
        &self,
        files: &Files,
        newest: &Path,
        base: Position,
        problem: String,
    ) -> Result<(), Error> {
        let rebuilt = match self.rebuild(files, base) {
            Ok(rebuilt) => rebuilt,
            Err(why) => {
                return Err(Error::Damaged {
                    db: self.name.clone(),
                    path: self.database_path.clone(),
                    problem: format!(
                        "{problem}, but {} records TXID {:016x}, and the LTX files cannot \
                         rebuild it: {why}",
                        newest.display(),
                        base.txid
                    ),
                    remedy: format!(
                        "restore the database file (from a backup, or `litefs export` on \
                         another node) and start again; or, on a replica, stop litefs and \
                         move {} out of the data directory to receive a fresh copy from \
                         the primary",
                        self.dir.display()
                    ),
                })
            }
        };
        let dir = lost::new_dir(&self.data_dir(), &self.name, base.txid)?;
        let moved = lost::move_into(&dir, &self.database_path)?;
        fs::rename(&rebuilt, &self.database_path).map_err(io_error(
            format!("putting the rebuilt database {} in place", self.name),
            &self.database_path,
        ))?;
        sync_dir(&self.dir)?;
        log::warn!(
            "database {}: {problem}; rebuilt it from its LTX files up to TXID {:016x} \
             (checksum verified); the damaged file was moved to {}",
            self.name,
            base.txid,
            moved.display()
        );
        Ok(())
    }

    /// Applies the chain of LTX files from TXID 1 to `base` into a new
    /// file beside the database, verified against `base`; the error says
    /// why there is no such chain.
    fn rebuild(&self, files: &Files, base: Position) -> Result<PathBuf, String> {
        let tmp = self.dir.join(REBUILD_NAME);
        let result = self.rebuild_into(files, base, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| tmp)
    }

    fn rebuild_into(&self, files: &Files, base: Position, tmp: &Path) -> Result<(), String> {
        match fs::remove_file(tmp) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot remove {}: {err}", tmp.display())),
        }
        let mut state = State::new(self.undo_path.clone());
        while state.pos.txid < base.txid {
            let at = state.pos.txid;
            // The longest step that follows on (a snapshot 1-N first).
            let next = files
                .iter()
                .filter(|(min, max, _)| (*min == at + 1 || *min == 1) && *max > at)
                .filter(|(_, max, _)| *max <= base.txid)
                .max_by_key(|(_, max, _)| *max);
            let Some((_, _, path)) = next else {
                return Err(if at == 0 {
                    "no LTX file starts at TXID 1 (older files were deleted by retention)"
                        .to_string()
                } else {
                    format!("no LTX file follows TXID {at:016x}")
                });
            };
            let (header, change) = self
                .plan_apply(path, &state)
                .map_err(|err| err.to_string())?;
            self.write_pages_to(tmp, path, &header)
                .map_err(|err| err.to_string())?;
            change.apply_to(&mut state);
            state.pos = Position {
                txid: header.max_txid,
                checksum: change.checksum,
            };
        }
        if state.pos != base {
            return Err(format!(
                "the chain leads to {}, not to the newest position {base}",
                state.pos
            ));
        }
        // The checksum of what was written, read back from the file.
        let written = super::database_checksum(tmp).map_err(|err| err.to_string())?;
        if written != base.checksum {
            return Err(format!(
                "the rebuilt file's checksum is {written:016x}, not {:016x}",
                base.checksum
            ));
        }
        Ok(())
    }

    /// Refuses an incremental LTX file left pending by a crash when the
    /// database file it would write into is missing (writing it would
    /// create a database with only its pages).
    pub(super) fn check_pending_target(&self, pending: &Path) -> Result<(), Error> {
        match OpenOptions::new().read(true).open(&self.database_path) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(Error::Damaged {
                db: self.name.clone(),
                path: self.database_path.clone(),
                problem: format!(
                    "the database file is missing, but {} waits to be applied to it",
                    pending.display()
                ),
                remedy: format!(
                    "put the database file back and start again, or stop litefs and move \
                     {} out of the data directory to receive a fresh copy from the primary",
                    self.dir.display()
                ),
            }),
            Err(err) => Err(io_error(
                format!("opening database {}", self.name),
                &self.database_path,
            )(err)),
        }
    }
}

/// The checksum of pages 1..=`count` of `database`, with the pages in
/// `overlay` taking the place of the file's; `None` when the file is too
/// short to hold a page the overlay lacks.
fn checksum_with(
    database: &File,
    page_size: u32,
    count: u32,
    overlay: &std::collections::BTreeMap<u32, Vec<u8>>,
) -> Option<u64> {
    let mut sum = ltx::CHECKSUM_FLAG;
    let mut page = vec![0u8; page_size as usize];
    for pgno in 1..=count {
        if is_lock_page(pgno, page_size) {
            continue;
        }
        let content = match overlay.get(&pgno) {
            Some(content) => content.as_slice(),
            None => {
                database
                    .read_exact_at(&mut page, page_offset(pgno, page_size))
                    .ok()?;
                page.as_slice()
            }
        };
        sum = ltx::checksum_replace(sum, 0, ltx::page_checksum(pgno, content));
    }
    Some(sum)
}

/// An LTX error's message without the path it names (the caller says it).
fn strip_path(err: ltx::Error) -> String {
    match err {
        ltx::Error::File { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
