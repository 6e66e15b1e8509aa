//! Reading a database's history: a snapshot of the whole database as one
//! LTX file, the list of LTX files in `ltx/`, and retention (deleting the
//! oldest LTX files).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{io_error, is_lock_page, now_ms, page_offset, sync_dir, Db, Error, READ_CHUNK};
use crate::ltx;

impl Db {
    /// Writes a snapshot of the database as of its position to `w`: an LTX
    /// file with min TXID 1, max TXID the current TXID, and every page. Fails
    /// with [`Error::Changed`] if the file does not match the position (a
    /// write transaction in progress: hold SQLite's shared lock while
    /// snapshotting). Does not block commits while it streams.
    pub fn write_snapshot<W: Write>(&self, w: W) -> Result<ltx::Header, Error> {
        let (pos, page_size, checksums, wal_index) = {
            let state = self.lock();
            match state.page_size {
                Some(page_size) if state.pos.txid > 0 => (
                    state.pos,
                    page_size,
                    state.checksums.clone(),
                    state.wal_index.clone(),
                ),
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
        // WAL mode: pages a checkpoint has not copied yet come from the WAL.
        let wal_file = if wal_index.is_empty() {
            None
        } else {
            Some(File::open(self.wal_path()).map_err(io_error(
                format!("opening the WAL of database {} for a snapshot", self.name),
                self.wal_path(),
            ))?)
        };
        let no_txn = std::collections::BTreeMap::new();
        let from_wal = wal_file
            .as_ref()
            .map(|wal| super::wal_commit::PageSource::new(wal, &no_txn, &wal_index));
        let size = page_size as usize;
        let pages_per_chunk = (READ_CHUNK / size).max(1) as u32;
        let mut buf = vec![0u8; pages_per_chunk as usize * size];
        let mut pgno = 1u32;
        while pgno <= header.commit {
            let count = pages_per_chunk.min(header.commit - pgno + 1);
            let chunk = &mut buf[..count as usize * size];
            match &from_wal {
                Some(source) => {
                    for (i, page) in chunk.chunks_exact_mut(size).enumerate() {
                        source.read(self, pgno + i as u32, page)?;
                    }
                }
                None => database
                    .read_exact_at(chunk, page_offset(pgno, page_size))
                    .map_err(io_error(
                        format!("reading database {} for a snapshot", self.name),
                        path,
                    ))?,
            }
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
        self.ltx_files_with_suffix("")
    }

    /// The files in `ltx/` named `<min>-<max>.ltx` followed by `suffix`
    /// (`.pending`, `.queued`), as (min TXID, max TXID, path), sorted.
    pub(super) fn ltx_files_with_suffix(
        &self,
        suffix: &str,
    ) -> Result<Vec<(u64, u64, PathBuf)>, Error> {
        let mut files = Vec::new();
        for path in self.ltx_dir_paths()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some((min, max)) = name.strip_suffix(suffix).and_then(ltx::parse_filename) {
                files.push((min, max, path));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every path in `ltx/` (none when the directory is missing).
    pub(super) fn ltx_dir_paths(&self) -> Result<Vec<PathBuf>, Error> {
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
        entries
            .map(|entry| entry.map(|e| e.path()).map_err(list_error))
            .collect()
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
}
