//! Applying LTX files received from the primary on a replica.
//!
//! Crash safety, in the order things reach the disk: the LTX file is
//! verified, checked against the position, and its result predicted from
//! the per-page checksums before anything is written. Then it is put in
//! `ltx/` as `<name>.ltx.pending` (fsynced), the pages are written and
//! fsynced, and it is renamed to its proper name. Recovery completes a
//! pending file left by a crash by writing its pages again, which gives the
//! same result however far the apply got (see `recovery.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::db::{temp_path, Change, State, LTX_BUFFER};
use super::{io_error, page_offset, read_database_shape, sync_dir, Db, Error, Position};
use crate::ltx;

/// Suffix of an LTX file being applied.
pub(super) const PENDING_SUFFIX: &str = ".pending";

impl Db {
    /// Applies an LTX file received from the primary. The whole file is
    /// verified first, and refused unless it follows the position (its min
    /// TXID is the next TXID and its pre-apply checksum the current
    /// checksum) or is a snapshot, and unless applying it gives exactly its
    /// post-apply checksum; a refusal changes nothing. Then the file is kept
    /// in `ltx/` under its proper name (moved when it already is in `ltx/`,
    /// copied otherwise), the pages written, the file truncated to `commit`
    /// pages and fsynced, and the position advanced. A snapshot also
    /// removes every other LTX file (they belong to a different history),
    /// after saving a local history it may replace (`diverged.rs`).
    pub fn apply_ltx(&self, path: &Path) -> Result<Position, Error> {
        let mut state = self.lock();
        let (header, change) = self.plan_apply(path, &state)?;
        if header.is_snapshot() {
            // Before anything of the local history is overwritten.
            self.keep_diverged(&state, &header, change.checksum)?;
        }
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
            _ => {
                state.freelist = std::sync::Arc::default();
                state.wal_mode = false;
            }
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
    pub(super) fn plan_apply(
        &self,
        path: &Path,
        state: &State,
    ) -> Result<(ltx::Header, Change), Error> {
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
                // A queued file was synced when it was queued.
                if !super::queue::is_queued(from) {
                    File::open(from)?.sync_all()?;
                }
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
    pub(super) fn write_pages(&self, path: &Path, header: &ltx::Header) -> Result<(), Error> {
        self.write_pages_to(&self.database_path, path, header)
    }

    /// [`Db::write_pages`] into the file at `db_path` (created if missing).
    pub(super) fn write_pages_to(
        &self,
        db_path: &Path,
        path: &Path,
        header: &ltx::Header,
    ) -> Result<(), Error> {
        let ltx_error = self.ltx_error(path);
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
    pub(super) fn finish_apply(
        &self,
        pending: &Path,
        final_path: &Path,
        snapshot: bool,
    ) -> Result<(), Error> {
        if snapshot {
            self.remove_ltx_files_except(&[final_path])?;
        }
        fs::rename(pending, final_path).map_err(io_error(
            format!("renaming an applied LTX file of database {}", self.name),
            final_path,
        ))?;
        // Not synced: if the rename is lost in a crash, recovery finds the
        // pending file and writes its pages again, which changes nothing;
        // the next apply's sync of this directory makes it durable.
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
}

/// The name an LTX file has in `ltx/` while it is being applied.
fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(PENDING_SUFFIX);
    PathBuf::from(name)
}
