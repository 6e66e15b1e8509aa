//! The apply queue of a replica: LTX files received from the primary and
//! stored durably, waiting to be applied.
//!
//! Receiving and applying are separate so that readers on a replica delay
//! only the apply, never the stream: while a long read transaction holds
//! SQLite's locks, what the primary sends is verified, fsynced and kept in
//! `ltx/` as `<min>-<max>.ltx.queued`, and the replica's position on the
//! wire is the *received* position (the last queued file's), so nothing is
//! sent twice. The apply thread takes files from the front in order; each
//! apply moves the file to its proper name (`apply.rs`).
//!
//! The queue's own lock (`Db::queue`) is never held while the database's
//! state lock is wanted, and vice versa except for reading the position,
//! so receiving never waits for an apply in progress.
//!
//! At start-up (`Db::open`), files left queued by a crash or a shutdown
//! are applied in order before the mount exists, so no reader is there to
//! wait for; a file that does not follow the position is deleted.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{io_error, sync_dir, Db, Error, Position};
use crate::ltx;

/// Suffix of an LTX file received and waiting to be applied.
const QUEUED_SUFFIX: &str = ".queued";

/// One received file waiting in `ltx/`.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    path: PathBuf,
    /// The position the database has once this file is applied.
    after: Position,
}

/// Received files in TXID order, front first.
#[derive(Debug, Default)]
pub(super) struct Queue {
    files: VecDeque<Queued>,
    /// Files were dropped unapplied since the stream last asked
    /// (`Db::take_queue_dropped`): it must reconnect from the position.
    dropped: bool,
}

impl Db {
    /// The position this replica has received: that of the last queued
    /// file, or the database's own when nothing waits. It is what the
    /// replica tells the primary, so nothing received is sent again.
    pub fn received_pos(&self) -> Position {
        self.received_locked(&self.queue())
    }

    /// `received_pos` with the queue's lock held.
    fn received_locked(&self, queue: &Queue) -> Position {
        match queue.files.back() {
            Some(last) => last.after,
            None => self.pos(),
        }
    }

    /// Verifies the received LTX file at `path` and queues it for applying
    /// (the file is moved into `ltx/`; copied when it is on another file
    /// system). It must follow the received
    /// position (next TXID, pre-apply checksum equal to the received
    /// checksum) or be a snapshot; otherwise it is refused and nothing
    /// changes. The file is fsynced and renamed into the queue, and the
    /// directory fsynced, before this returns the new received position.
    pub fn enqueue_ltx(&self, path: &Path) -> Result<Position, Error> {
        let (header, trailer) = ltx::verify_file(path).map_err(self.ltx_error(path))?;
        let mut queue = self.queue();
        let received = self.received_locked(&queue);
        if !header.is_snapshot()
            && (header.min_txid != received.txid + 1
                || header.pre_apply_checksum != received.checksum)
        {
            return Err(Error::Refused {
                db: self.name.clone(),
                path: path.to_path_buf(),
                reason: format!(
                    "it covers TXIDs {:016x}-{:016x} from checksum {:016x}, which does not \
                     follow the received position {received}",
                    header.min_txid, header.max_txid, header.pre_apply_checksum
                ),
            });
        }
        if header.is_snapshot() {
            // A snapshot replaces the database whatever it holds: files
            // queued before it (a history the primary no longer has, such
            // as a transaction it took back) are never applied, and one of
            // the primary's next files could take one's name.
            self.drop_queued(&mut queue);
        }
        let queued = queued_path(
            &self
                .ltx_dir
                .join(ltx::filename(header.min_txid, header.max_txid)),
        );
        let place = || -> std::io::Result<()> {
            File::open(path)?.sync_all()?;
            // A rename where the data directory's file system allows (the
            // store's incoming directory); a copy from anywhere else.
            match fs::rename(path, &queued) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    fs::copy(path, &queued)?;
                    File::open(&queued)?.sync_all()
                }
                Err(e) => Err(e),
            }
        };
        place().map_err(io_error(
            format!("queueing a received LTX file of database {}", self.name),
            &queued,
        ))?;
        sync_dir(&self.ltx_dir)?;
        let after = Position {
            txid: header.max_txid,
            checksum: trailer.post_apply_checksum,
        };
        queue.files.push_back(Queued {
            path: queued,
            after,
        });
        Ok(after)
    }

    /// The oldest queued file, if any; it stays queued until
    /// `finish_queued` is called for it.
    pub fn front_queued(&self) -> Option<PathBuf> {
        self.queue().files.front().map(|q| q.path.clone())
    }

    /// How many received files wait to be applied.
    pub fn queued_len(&self) -> usize {
        self.queue().files.len()
    }

    /// Ends the front file's turn: applied (its file was moved into place)
    /// or refused. When refused, every queued file is deleted: they follow
    /// a position the database never reached; the stream reconnects from
    /// the database's own position (`take_queue_dropped`).
    pub fn finish_queued(&self, path: &Path, applied: bool) {
        let mut queue = self.queue();
        if queue.files.front().map(|q| q.path.as_path()) != Some(path) {
            return;
        }
        if applied {
            queue.files.pop_front();
            return;
        }
        self.drop_queued(&mut queue);
        queue.dropped = true;
    }

    /// Whether queued files were dropped unapplied since the last call:
    /// the primary, which was told they were received, must be asked
    /// again from this replica's position (the stream reconnects at its
    /// next heartbeat, `http/frames.rs`).
    pub fn take_queue_dropped(&self) -> bool {
        std::mem::take(&mut self.queue().dropped)
    }

    /// Deletes every queued file.
    fn drop_queued(&self, queue: &mut Queue) {
        for q in queue.files.drain(..) {
            if let Err(e) = fs::remove_file(&q.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot delete {}: {e}", q.path.display());
                }
            }
        }
    }

    /// Applies the files a previous run left queued, in TXID order, with
    /// no reader to wait for (the mount is not up yet). A file that does
    /// not follow the position, or fails, is deleted with a WARN: the
    /// primary sends it again.
    pub(super) fn apply_leftover_queue(&self) -> Result<(), Error> {
        let leftovers = self.ltx_files_with_suffix(QUEUED_SUFFIX)?;
        let count = leftovers.len();
        let mut applied = 0;
        for (_, _, path) in leftovers {
            match self.apply_ltx(&path) {
                Ok(_) => applied += 1,
                Err(e) => {
                    log::warn!(
                        "database {}: deleting a received LTX file left queued that cannot \
                         be applied ({e}); the primary will send what is missing",
                        self.name
                    );
                    fs::remove_file(&path)
                        .map_err(io_error("deleting a stale queued LTX file", &path))?;
                }
            }
        }
        if count > 0 {
            log::info!(
                "database {}: applied {applied} of {count} received LTX files left queued; \
                 position {}",
                self.name,
                self.pos()
            );
        }
        Ok(())
    }

    /// Forgets every queued file (the database was deleted with its files).
    pub(super) fn clear_queue(&self) {
        self.queue().files.clear();
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `path` is a queued file (already synced).
pub(super) fn is_queued(path: &Path) -> bool {
    path.as_os_str()
        .to_str()
        .is_some_and(|p| p.ends_with(QUEUED_SUFFIX))
}

/// The name a received LTX file has while it waits in the queue.
fn queued_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(QUEUED_SUFFIX);
    PathBuf::from(name)
}
