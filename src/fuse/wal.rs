//! Following SQLite's writes to a database's `-wal` on the primary: the
//! WAL header, each frame's header and page as they are written, and the
//! commit frame that ends a transaction, which the store records as one
//! LTX file (`Db::commit_wal`) before the write returns to SQLite.
//!
//! SQLite writes a WAL in a fixed shape (wal.c): a 32-byte header at
//! offset 0 whenever it starts the WAL over (new salts), then per frame a
//! 24-byte frame header and the page, each one write (which the kernel
//! may split into several requests). A transaction's frames follow the
//! last committed frame, so the frames after it are the transaction under
//! way; a rolled-back one is simply overwritten by the next. A page
//! written twice in one transaction is overwritten in place; after such an
//! overwrite SQLite writes the following frame headers without salts and
//! checksums and fills them in once the commit frame is written (wal.c's
//! walRewriteChecksums). So a transaction is recorded when its commit
//! frame's page is written, or, when that frame's header still lacks its
//! checksums, when its rewritten header arrives: never on an earlier
//! event, so a page left at a frame slot by a rolled-back transaction can
//! never stand in for the new one's.
//!
//! The tracker of each database lives in `LitefsFs::wals`; its lock is
//! held for one write's bookkeeping and the commit it may complete, which
//! also keeps two commits of one database in order (SQLite's WAL write
//! lock already allows only one writer).

use std::collections::{BTreeMap, BTreeSet};

use fuser::Errno;
use log::error;

use super::LitefsFs;
use crate::sqlite::wal::{self, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};
use crate::store::{Db, WalPosition, WalTransaction};

/// What litefs knows of one database's WAL.
#[derive(Debug, Default)]
pub(super) struct WalTracker {
    /// The current generation's header; `None` until SQLite writes one.
    header: Option<WalHeader>,
    /// Index of the last commit frame of this generation (`None`: none yet).
    last_commit: Option<u64>,
    /// Frames after the last commit whose header is written: index ->
    /// (page number, commit size, whether the header has its salts and
    /// checksums yet).
    frames: BTreeMap<u64, (u32, u32, bool)>,
    /// A commit frame whose page is written but whose header still waits
    /// for its salts and checksums.
    awaiting_checksums: Option<u64>,
    /// Frames after the last commit whose page is written.
    written: BTreeSet<u64>,
    /// Byte ranges written so far of frame headers and pages not yet
    /// whole: the kernel may split one write of SQLite's into several
    /// requests (at page-cache boundaries), handled in any order.
    partial: BTreeMap<(u64, bool), Vec<(u64, u64)>>,
    /// The backing WAL file, open for reading back what was written.
    file: Option<std::fs::File>,
    /// A transaction whose commit could not be recorded (SQLite was told
    /// it failed): the index of its first frame and the errno it got.
    /// Writes to its frames are refused with that errno until SQLite
    /// starts its next transaction there (see `wal_write_allowed`).
    failed: Option<(u64, Errno)>,
}

impl WalTracker {
    fn start_over(&mut self, header: Option<WalHeader>) {
        *self = WalTracker {
            header,
            ..WalTracker::default()
        };
    }

    /// The backing WAL file of `db`, opened once per generation.
    fn file(&mut self, db: &Db) -> std::io::Result<&std::fs::File> {
        Ok(match self.file {
            Some(ref file) => file,
            None => self.file.insert(std::fs::File::open(db.wal_path())?),
        })
    }

    fn first_open_frame(&self) -> u64 {
        self.last_commit.map_or(0, |i| i + 1)
    }

    /// Adds `[start, end)` (relative to the region) to what is written of
    /// frame `index`'s header (`page` false) or page; true once the region
    /// of `len` bytes is whole.
    fn cover(&mut self, index: u64, page: bool, start: u64, end: u64, len: u64) -> bool {
        if start == 0 && end == len {
            self.partial.remove(&(index, page));
            return true;
        }
        let ranges = self.partial.entry((index, page)).or_default();
        ranges.push((start, end));
        ranges.sort_unstable();
        let mut reach = 0;
        for &(s, e) in ranges.iter() {
            if s > reach {
                return false;
            }
            reach = reach.max(e);
        }
        if reach >= len {
            self.partial.remove(&(index, page));
            return true;
        }
        false
    }
}

impl LitefsFs {
    /// Whether `db` is in WAL mode as far as its writes go: SQLite has
    /// written a WAL header in this mount's life, so writes to the
    /// database file without a rollback journal are checkpoints.
    pub(super) fn wal_active(&self, db: &Db) -> bool {
        self.wals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(db.name())
            .is_some_and(|t| t.header.is_some())
    }

    /// Checks a write at `offset` to `db`'s WAL before it reaches the
    /// backing file. After a commit that could not be recorded, SQLite may
    /// write the rest of the commit frame again (it retries a short write,
    /// and the kernel splits large writes), which would complete the
    /// commit on disk with no LTX file and report success: such writes
    /// get the commit's errno. The next transaction starts at the failed
    /// one's first frame (or a new WAL header), which ends this.
    pub(super) fn wal_write_allowed(&self, db: &Db, offset: u64) -> Result<(), Errno> {
        let mut wals = self.wals.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tracker) = wals.get_mut(db.name()) else {
            return Ok(());
        };
        let (Some((first, errno)), Some(header)) = (tracker.failed, tracker.header) else {
            return Ok(());
        };
        let start = wal::frame_offset(first, header.page_size);
        if offset == 0 || offset == start {
            tracker.failed = None;
            return Ok(());
        }
        if offset < start {
            return Ok(());
        }
        log::debug!(
            "db {}: refused a WAL write at {offset}: it belongs to a transaction whose commit \
             failed",
            db.name()
        );
        Err(errno)
    }

    /// Notes a write of `data` at `offset` to `db`'s WAL, which has reached
    /// the backing file, and records the transaction it commits, if any.
    pub(super) fn wal_written(&self, db: &Db, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut wals = self.wals.lock().unwrap_or_else(|e| e.into_inner());
        let tracker = wals.entry(db.name().to_string()).or_default();
        let end = offset + data.len() as u64;
        let mut at = offset;
        if offset == 0 {
            let header = wal::parse_header(data).ok_or_else(|| {
                error!(
                    "db {}: refused a WAL header litefs cannot read ({} bytes)",
                    db.name(),
                    data.len()
                );
                Errno::EIO
            })?;
            tracker.start_over(Some(header));
            // Every frame of the old generation was checkpointed before
            // SQLite started the WAL over.
            db.wal_reset();
            at = WAL_HEADER_SIZE;
        }
        let Some(header) = tracker.header else {
            error!(
                "db {}: a WAL frame was written before any WAL header litefs saw; \
                 refused (close every connection to the database and retry)",
                db.name()
            );
            return Err(Errno::EIO);
        };
        let frame_size = FRAME_HEADER_SIZE + u64::from(header.page_size);
        let page_size = u64::from(header.page_size);
        while at < end {
            let rel = at - WAL_HEADER_SIZE;
            let (index, within) = (rel / frame_size, rel % frame_size);
            let open = index >= tracker.first_open_frame();
            // The part of this write inside one region: the frame header
            // (`within` < 24) or the page.
            let (page, region_start, region_len) = if within < FRAME_HEADER_SIZE {
                (false, 0, FRAME_HEADER_SIZE)
            } else {
                (true, FRAME_HEADER_SIZE, page_size)
            };
            let piece_end = end.min(at - within + region_start + region_len);
            let (start, stop) = (
                within - region_start,
                piece_end - (at - within + region_start),
            );
            at = piece_end;
            if !open || !tracker.cover(index, page, start, stop, region_len) {
                continue;
            }
            if page {
                tracker.written.insert(index);
                match tracker.frames.get(&index) {
                    // The commit frame's page, written after its header:
                    // every page of the transaction is in place now.
                    Some(&(_, commit, true)) if commit != 0 => {
                        self.commit_wal_frames(db, tracker, &header, index)?;
                    }
                    // Its header still lacks salts and checksums: SQLite
                    // writes them again once the frames are written (see
                    // the module comment).
                    Some(&(_, commit, false)) if commit != 0 => {
                        tracker.awaiting_checksums = Some(index);
                    }
                    _ => {}
                }
                continue;
            }
            // A whole frame header: read it back from the backing file
            // (its bytes may have come in several requests).
            let mut buf = [0u8; FRAME_HEADER_SIZE as usize];
            let offset_in_file = wal::frame_offset(index, header.page_size);
            let read = tracker.file(db).and_then(|f| {
                std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, offset_in_file)
            });
            if let Err(e) = read {
                error!("db {}: cannot read back a WAL frame header: {e}", db.name());
                return Err(Errno::EIO);
            }
            let fh = wal::parse_frame_header(&buf);
            let salted = (fh.salt1, fh.salt2) == (header.salt1, header.salt2);
            if !salted && (fh.salt1, fh.salt2) != (0, 0) {
                continue;
            }
            tracker.frames.insert(index, (fh.pgno, fh.commit, salted));
            if salted && fh.commit != 0 && tracker.awaiting_checksums == Some(index) {
                // The checksums of the transaction's frames are written,
                // the commit frame's last.
                self.commit_wal_frames(db, tracker, &header, index)?;
            }
        }
        Ok(())
    }

    /// Records the transaction whose commit frame is `last`: the frames
    /// after the last commit up to it.
    fn commit_wal_frames(
        &self,
        db: &Db,
        tracker: &mut WalTracker,
        header: &WalHeader,
        last: u64,
    ) -> Result<(), Errno> {
        let first = tracker.first_open_frame();
        let mut pages = BTreeMap::new();
        let mut commit = 0;
        for index in first..=last {
            let (Some(&(pgno, frame_commit, _)), true) =
                (tracker.frames.get(&index), tracker.written.contains(&index))
            else {
                error!(
                    "db {}: lost track of WAL frame {index} before the commit frame {last}; \
                     the transaction is refused (nothing is recorded)",
                    db.name()
                );
                fail_wal_commit(db, tracker, header, first, last, Errno::EIO);
                return Err(Errno::EIO);
            };
            pages.insert(
                pgno,
                wal::frame_offset(index, header.page_size) + FRAME_HEADER_SIZE,
            );
            commit = frame_commit;
        }
        let start = wal::frame_offset(first, header.page_size);
        let at = WalPosition {
            salt1: header.salt1,
            salt2: header.salt2,
            offset: start,
            size: wal::frame_offset(last + 1, header.page_size) - start,
        };
        let recorded = tracker.file(db).map_err(|e| crate::store::Error::Io {
            what: format!("opening the WAL of database {}", db.name()),
            path: db.wal_path().to_path_buf(),
            source: e,
        });
        let txn = WalTransaction {
            page_size: header.page_size,
            commit,
            pages: &pages,
            at,
        };
        let recorded = recorded.and_then(|file| db.commit_wal(file, &txn));
        match recorded {
            Ok(pos) => {
                if let Some(pos) = pos {
                    log::debug!("db {}: committed WAL TXID {pos}", db.name());
                    self.recorded();
                }
                tracker.last_commit = Some(last);
                tracker.frames.retain(|&i, _| i > last);
                tracker.written.retain(|&i| i > last);
                tracker.partial.retain(|&(i, _), _| i > last);
                tracker.awaiting_checksums = None;
                Ok(())
            }
            Err(e) => {
                // The commit fails in SQLite too (SQLITE_FULL for a full
                // disk), which writes the next transaction over these
                // frames: forget them, and make sure they never count
                // (see `fail_wal_commit`).
                let errno = self.store_errno(db, "cannot record a WAL transaction", &e);
                fail_wal_commit(db, tracker, header, first, last, errno);
                Err(errno)
            }
        }
    }

    /// `db`'s WAL was truncated to zero or deleted: it starts over.
    pub(super) fn wal_gone(&self, db: &Db) {
        if let Some(tracker) = self
            .wals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(db.name())
        {
            tracker.start_over(None);
        }
        db.wal_reset();
    }
}

/// A WAL transaction (frames `first` to `last`) whose commit could not be
/// recorded: its commit frame is whole on disk, so SQLite's own recovery,
/// or litefs's at start-up, would take it for a commit SQLite's caller was
/// told failed. Its salts are zeroed there (an overwrite, which needs no
/// room), and further writes to its frames are refused until SQLite
/// starts the next transaction (`wal_write_allowed`).
fn fail_wal_commit(
    db: &Db,
    tracker: &mut WalTracker,
    header: &WalHeader,
    first: u64,
    last: u64,
    errno: Errno,
) {
    tracker.frames.clear();
    tracker.written.clear();
    tracker.partial.clear();
    tracker.failed = Some((first, errno));
    // The salts are bytes 8 to 16 of the frame header.
    let at = wal::frame_offset(last, header.page_size) + 8;
    let zeroed = std::fs::OpenOptions::new()
        .write(true)
        .open(db.wal_path())
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8], at));
    if let Err(e) = zeroed {
        error!(
            "db {}: cannot invalidate the unrecorded commit frame at {at} of {}: {e}; \
             a crash before SQLite overwrites it would keep that transaction",
            db.name(),
            db.wal_path().display()
        );
    }
}
