//! Following SQLite's WAL of each database on the primary: every
//! transaction whose commit frame is in the WAL gets its TXID in an LTX
//! file (`Db::commit_wal`), its pages read from the WAL itself; the
//! commits found together at one catch-up share one file.
//!
//! SQLite's writes to a primary's `-wal` pass through the kernel straight
//! to the backing file (`passthrough.rs`), so litefs reads what they
//! committed from that file ("catches up"):
//! - before anything that could take committed frames away: a write or
//!   truncate of the database file in WAL mode (a checkpoint: once the
//!   frames are in the database file, SQLite may start the WAL over and
//!   overwrite them), and a truncate or deletion of the `-wal`;
//! - when `-pos` is read, so that it is current;
//! - soon after each commit: `watch.rs` wakes on the kernel's change
//!   notification of the backing WAL.
//!
//! A commit's durability is the WAL's, as SQLite makes it (with
//! synchronous=FULL it fsyncs the WAL before COMMIT returns): start-up
//! makes the LTX files of WAL commits that have none (`store/wal_commit.rs`), so
//! neither the recording nor the LTX file's fsync needs to be on the
//! commit path; the LTX files are synced before their frames can go.
//! Without passthrough every write comes through litefs, which catches up
//! after each write to a commit frame, so the commit is recorded before
//! its last write returns.
//!
//! A frame is committed by SQLite's own recovery rule (valid salts and
//! checksum chain up to a commit frame, `sqlite::wal::WalCursor`), the
//! rule start-up applies to a WAL left by a crash (`store/wal_commit.rs`): a
//! commit litefs has not read when it is killed is recorded at start.
//!
//! Locking: each database's follower has a mutex of its own, held while it
//! reads the WAL and records what it found, so each commit is recorded
//! once and in order; the map's lock is held only to find the follower.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};

use fuser::Errno;
use log::error;

use super::full::{recorded, store_errno};
use crate::sqlite::wal::{self, WalCommit, WalCursor, FRAME_HEADER_SIZE};
use crate::store::{Db, Position, Store, WalPosition, WalTransaction};

/// The most WAL commits recorded in one LTX file.
const MAX_BATCH: usize = 1024;

/// The followers of every database's WAL, shared by the mount, the
/// applier (step-down) and the watcher thread.
pub struct WalFollowers {
    store: Arc<Store>,
    by_db: Mutex<HashMap<String, Arc<Mutex<WalFollower>>>>,
}

/// What litefs knows of one database's WAL.
#[derive(Debug, Default)]
pub(super) struct WalFollower {
    /// Where the current generation has been read to; `None` until a
    /// valid WAL header is seen.
    cursor: Option<WalCursor>,
    /// The backing WAL file, open for reading (reopened after deletion).
    file: Option<File>,
    /// Without passthrough: a transaction whose commit could not be
    /// recorded (SQLite was told its write failed), as the index of its
    /// first frame and the errno it got. Writes to its frames are refused
    /// with that errno until SQLite starts its next transaction there (see
    /// `wal_write_allowed`).
    failed: Option<(u64, Errno)>,
    /// The last catch-up off the commit path failed (logged once).
    failing: bool,
    /// The last commit frame recorded: its offset and checksum, which
    /// SQLite never rewrites within a generation unless it takes that
    /// commit back (an fsync that failed after litefs had read it).
    last_commit: Option<(u64, (u32, u32))>,
    /// That happened (logged once).
    taken_back: bool,
    /// The newest batch of commits recorded, to take it back
    /// (`WalFollowers::take_back`).
    last_batch: Option<Batch>,
}

/// A batch of WAL commits recorded in one LTX file: where the follower
/// stood before it, its first commit, and the position it recorded.
#[derive(Debug)]
struct Batch {
    cursor: WalCursor,
    last_commit: Option<(u64, (u32, u32))>,
    first: WalCommit,
    pos: Position,
    /// The write of its commit frame has returned it (`written`): a
    /// catch-up off the commit path (`-pos`, a checkpoint) may record a
    /// commit before its own write asks, and that write must still wait
    /// for it.
    claimed: bool,
}

/// A catch-up that stopped short: the errno for SQLite, and the commit
/// that could not be recorded (`None`: the WAL could not be read).
struct Stopped {
    errno: Errno,
    commit: Option<WalCommit>,
}

impl WalFollower {
    /// Starts over: the WAL is gone, emptied, or replaced.
    fn forget(&mut self, db: &Db) {
        *self = WalFollower::default();
        db.wal_reset();
    }
}

impl WalFollowers {
    pub(super) fn new(store: Arc<Store>) -> WalFollowers {
        WalFollowers {
            store,
            by_db: Mutex::new(HashMap::new()),
        }
    }

    fn follower(&self, db: &Db) -> Arc<Mutex<WalFollower>> {
        self.by_db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(db.name().to_string())
            .or_default()
            .clone()
    }

    /// Whether `db` is in WAL mode as far as its writes go: its header
    /// says so, or its WAL has a valid header, so that writes to the
    /// database file without a rollback journal are checkpoints.
    pub fn active(&self, db: &Db) -> bool {
        db.in_wal_mode()
            || self
                .follower(db)
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cursor
                .is_some()
    }

    /// Records what `db`'s WAL committed, off the commit path (the
    /// watcher, `-pos`): a failure is logged once until a catch-up succeeds
    /// again (the commits stay in the WAL). Returns how many frames of a
    /// transaction under way it read (which the next catch-up reads again).
    pub fn catch_up_quietly(&self, db: &Db) -> u64 {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        let caught_up = self.read_and_record(db, &mut f).is_ok();
        if !caught_up && !f.failing {
            error!(
                "db {}: committed WAL transactions have no LTX file yet; litefs retries, and \
                 checkpoints wait for them",
                db.name()
            );
        }
        f.failing = !caught_up;
        f.cursor.as_ref().map_or(0, WalCursor::open_frames)
    }

    /// SQLite fsyncs `db`'s WAL (each commit with synchronous=FULL, and
    /// checkpoints). The commit is normally recorded just after, off this
    /// path; but when the data directory may lack room for its LTX file
    /// (`Db::short_of_space_for`), it is recorded now, and a commit that
    /// cannot be fails (the fsync's errno, which SQLite reports as an I/O
    /// error; its commit frame invalidated) rather than wait in the WAL,
    /// acknowledged, for room.
    /// `wal_len` is the WAL's length: no more than that is unrecorded, so
    /// the common case needs not wait for the follower's lock, which a
    /// transaction being recorded holds.
    pub fn synced(&self, db: &Db, wal_len: u64) -> Result<(), Errno> {
        if !db.short_of_space_for(wal_len) {
            return Ok(());
        }
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        let Err(stopped) = self.read_and_record(db, &mut f) else {
            return Ok(());
        };
        if let (Some(commit), Some(cursor), Some(file)) = (&stopped.commit, &f.cursor, &f.file) {
            if is_last_commit(file, cursor, commit) {
                invalidate_commit(db, cursor, commit);
            }
        }
        Err(stopped.errno)
    }

    /// litefs itself emptied `db`'s WAL (a step-down's fold): the follower
    /// starts over.
    pub fn reset(&self, db: &Db) {
        let follower = self.follower(db);
        follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(db);
    }

    /// Before SQLite copies WAL frames into the database file (after which
    /// it may start the WAL over) or truncates or deletes the WAL: every
    /// transaction they hold is recorded, and the LTX files are synced.
    /// Until then the WAL itself, fsynced by SQLite, is what start-up makes
    /// their LTX files from (`store/wal_commit.rs`).
    /// Returns whether `db` is in WAL mode (see `active`).
    pub fn before_frames_go(&self, db: &Db) -> Result<bool, Errno> {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        self.record_and_sync(db, &mut f)?;
        Ok(f.cursor.is_some() || db.in_wal_mode())
    }

    /// Records every transaction committed in `db`'s WAL, then syncs the
    /// LTX files: what must hold before frames can leave the WAL. `f` is
    /// the follower, locked.
    fn record_and_sync(&self, db: &Db, f: &mut WalFollower) -> Result<(), Errno> {
        self.read_and_record(db, f)
            .map_err(|stopped| stopped.errno)?;
        db.sync_wal_ltx()
            .map_err(|e| store_errno(&self.store, db, "cannot sync LTX files", &e))
    }

    /// Reads `db`'s WAL from where `f` stopped and records each commit;
    /// returns the newest position recorded, if any.
    fn read_and_record(&self, db: &Db, f: &mut WalFollower) -> Result<Option<Position>, Stopped> {
        let read_error = |e: std::io::Error| {
            error!("db {}: cannot read the WAL: {e}", db.name());
            Stopped {
                errno: Errno::EIO,
                commit: None,
            }
        };
        // The WAL at its path now: a descriptor kept from before is of no
        // use if the file was replaced (`going` covers SQLite's own
        // deletions; this, anything else).
        let at_path = match std::fs::metadata(db.wal_path()) {
            Ok(md) => (md.dev(), md.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                f.forget(db);
                return Ok(None);
            }
            Err(e) => return Err(read_error(e)),
        };
        let kept = f.file.take().and_then(|file| {
            let md = file.metadata().ok()?;
            ((md.dev(), md.ino()) == at_path).then_some((file, md.len()))
        });
        let (file, len) = match kept {
            Some(kept) => kept,
            None => {
                let file = File::open(db.wal_path()).map_err(read_error)?;
                let len = file.metadata().map_err(read_error)?.len();
                (file, len)
            }
        };
        let file = f.file.insert(file);
        // A header that does not read as valid may be one SQLite is
        // writing: the cursor stays until a different valid one appears
        // (truncation and deletion, which come through litefs, reset it).
        let Some(header) = wal::read_header(file, len).map_err(read_error)? else {
            return Ok(None);
        };
        let cursor = match &mut f.cursor {
            Some(cursor) if cursor.header() == &header => {
                if let Some((at, recorded)) = f.last_commit {
                    let mut now = [0u8; FRAME_HEADER_SIZE as usize];
                    file.read_exact_at(&mut now, at).map_err(read_error)?;
                    let now = wal::parse_frame_header(&now);
                    if (now.salt1, now.salt2, now.checksum)
                        != (header.salt1, header.salt2, recorded)
                    {
                        if !f.taken_back {
                            taken_back(db, at);
                        }
                        f.taken_back = true;
                        return Err(Stopped {
                            errno: Errno::EIO,
                            commit: None,
                        });
                    }
                }
                cursor
            }
            // A new generation: SQLite starts the WAL over only once every
            // frame is in the database file (a checkpoint, which caught up
            // before its first write).
            _ => {
                db.wal_reset();
                f.last_commit = None;
                f.cursor.insert(WalCursor::new(header))
            }
        };
        // Every commit the WAL holds now, recorded together (up to
        // `MAX_BATCH`): one LTX file for a burst, so that creating files
        // does not bound the commit rate.
        let mut newest_recorded = None;
        loop {
            let mut ahead = cursor.clone();
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                let Some(commit) = ahead.read_commit(file, len).map_err(read_error)? else {
                    break;
                };
                ahead.consume(&commit);
                batch.push(commit);
            }
            let Some(newest) = batch.last() else {
                break;
            };
            let pos = self
                .record(db, file, ahead.header(), &batch)
                .map_err(|errno| Stopped {
                    errno,
                    commit: Some(batch[0].clone()),
                })?;
            let at = newest.end - FRAME_HEADER_SIZE - u64::from(header.page_size);
            if let Some(pos) = pos {
                f.last_batch = Some(Batch {
                    cursor: cursor.clone(),
                    last_commit: f.last_commit,
                    first: batch[0].clone(),
                    pos,
                    claimed: false,
                });
                newest_recorded = Some(pos);
            }
            f.last_commit = Some((at, newest.checksum));
            *cursor = ahead;
        }
        f.failed = None;
        Ok(newest_recorded)
    }

    /// Records `commits` (consecutive), read from the WAL open as `file`.
    fn record(
        &self,
        db: &Db,
        file: &File,
        header: &wal::WalHeader,
        commits: &[WalCommit],
    ) -> Result<Option<Position>, Errno> {
        let txns: Vec<WalTransaction<'_>> = commits
            .iter()
            .map(|commit| WalTransaction {
                page_size: header.page_size,
                commit: commit.commit,
                pages: &commit.pages,
                at: WalPosition {
                    salt1: header.salt1,
                    salt2: header.salt2,
                    offset: commit.start,
                    size: commit.end - commit.start,
                },
            })
            .collect();
        match db.commit_wal(file, &txns) {
            Ok(pos) => {
                if let Some(pos) = pos {
                    log::debug!("db {}: committed WAL TXID {pos}", db.name());
                    recorded(&self.store);
                }
                Ok(pos)
            }
            Err(e) => Err(store_errno(
                &self.store,
                db,
                "cannot record a WAL transaction",
                &e,
            )),
        }
    }

    /// Without passthrough: checks a write at `offset` to `db`'s WAL before
    /// it reaches the backing file. After a commit that could not be
    /// recorded, SQLite may write the rest of the commit frame again (it
    /// retries a short write, and the kernel splits large writes), which
    /// would complete the commit on disk with no LTX file: such writes get
    /// the commit's errno. The next transaction starts at the failed one's
    /// first frame (or a new WAL header), which ends this.
    pub fn write_allowed(&self, db: &Db, offset: u64) -> Result<(), Errno> {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        let (Some((first, errno)), Some(cursor)) = (f.failed, &f.cursor) else {
            return Ok(());
        };
        let start = wal::frame_offset(first, cursor.header().page_size);
        if offset == 0 || offset == start {
            f.failed = None;
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

    /// Without passthrough: a write to `db`'s WAL reached the backing file;
    /// records the transaction it commits, if any, before SQLite hears
    /// back. A commit that cannot be recorded fails, and its commit frame
    /// is invalidated (`invalidate_commit`).
    /// Returns the position of the commit this write completed, recorded
    /// now or by a catch-up since (see `Batch::claimed`), for its wait.
    pub fn written(&self, db: &Db, offset: u64, len: u64) -> Result<Option<Position>, Errno> {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        if !touches_commit_frame(&f, offset, len) {
            return Ok(None);
        }
        let stopped = match self.read_and_record(db, &mut f) {
            // The newest batch, recorded now or by a catch-up since the
            // write reached the file, once.
            Ok(_) => {
                return Ok(f.last_batch.as_mut().and_then(|batch| {
                    (!std::mem::replace(&mut batch.claimed, true)).then_some(batch.pos)
                }))
            }
            Err(stopped) => stopped,
        };
        if let (Some(commit), Some(cursor)) = (&stopped.commit, &f.cursor) {
            invalidate_commit(db, cursor, commit);
            let frame_len = FRAME_HEADER_SIZE + u64::from(cursor.header().page_size);
            let first = (commit.start - wal::WAL_HEADER_SIZE) / frame_len;
            f.failed = Some((first, stopped.errno));
        }
        Err(stopped.errno)
    }

    /// Without passthrough: takes back the newest batch of commits, which
    /// recorded `pos` (a synchronous commit whose replicas did not answer,
    /// `sync_commit.rs`): its LTX file goes (`Db::take_back`), its first
    /// commit frame is invalidated, and the follower reads the WAL again
    /// from before it; writes to its frames fail as after any commit that
    /// could not be recorded (`write_allowed`). Returns the position
    /// before it.
    pub fn take_back(&self, db: &Db, pos: Position) -> Result<Position, crate::store::Error> {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        let Some(batch) = f.last_batch.take().filter(|batch| batch.pos == pos) else {
            return Err(crate::store::Error::Changed {
                db: db.name().to_string(),
                reason: format!("TXID {pos} is not the newest batch of WAL commits recorded"),
            });
        };
        let before = db.take_back(pos)?;
        invalidate_commit(db, &batch.cursor, &batch.first);
        let frame_len = FRAME_HEADER_SIZE + u64::from(batch.cursor.header().page_size);
        let first = (batch.first.start - wal::WAL_HEADER_SIZE) / frame_len;
        f.failed = Some((first, Errno::EIO));
        f.cursor = Some(batch.cursor);
        f.last_commit = batch.last_commit;
        Ok(before)
    }

    /// `db`'s WAL goes (truncated to zero or deleted by `go`): what it
    /// committed is recorded and synced first, then it goes, then the
    /// follower starts over; all under the follower's lock, so that no
    /// catch-up reads the old WAL in between (from its start again, or
    /// through a descriptor of the deleted file).
    pub fn going(&self, db: &Db, go: impl FnOnce() -> Result<(), Errno>) -> Result<(), Errno> {
        let follower = self.follower(db);
        let mut f = follower.lock().unwrap_or_else(|e| e.into_inner());
        self.record_and_sync(db, &mut f)?;
        go()?;
        f.forget(db);
        Ok(())
    }

    /// `db` was deleted: its follower goes with it (a database created
    /// again under the name starts afresh).
    pub fn forget_db(&self, db: &str) {
        self.by_db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }
}

/// SQLite rewrote a commit frame litefs had already recorded: it took
/// that commit back (its fsync failed), so the LTX chain holds a
/// transaction the database does not, and the frames after it no longer
/// follow from what litefs read. Nothing more is recorded, and no
/// checkpoint may run, until litefs restarts, whose reconciliation removes
/// that LTX file and records the WAL's commits from the start.
fn taken_back(db: &Db, at: u64) {
    error!(
        "db {}: SQLite rewrote the recorded WAL commit frame at offset {at} (a commit it took \
         back, after an fsync error?); recording and checkpoints stop until litefs restarts \
         and reconciles the WAL with the LTX files",
        db.name()
    );
}

/// Whether a write of `len` bytes at `offset` to the WAL `f` follows may
/// complete a commit: it writes the header, or part of a frame whose
/// header is a commit frame's. Reading the WAL after every other write
/// would read a large transaction's frames again at each.
fn touches_commit_frame(f: &WalFollower, offset: u64, len: u64) -> bool {
    let (Some(cursor), Some(file)) = (&f.cursor, &f.file) else {
        return true;
    };
    if offset < wal::WAL_HEADER_SIZE {
        return true;
    }
    let frame_len = FRAME_HEADER_SIZE + u64::from(cursor.header().page_size);
    let first = (offset - wal::WAL_HEADER_SIZE) / frame_len;
    let last = (offset + len.max(1) - 1 - wal::WAL_HEADER_SIZE) / frame_len;
    (first..=last).any(|index| {
        let mut buf = [0u8; FRAME_HEADER_SIZE as usize];
        let at = wal::frame_offset(index, cursor.header().page_size);
        match file.read_exact_at(&mut buf, at) {
            Ok(()) => wal::parse_frame_header(&buf).commit != 0,
            Err(_) => true,
        }
    })
}

/// Whether `commit` is the last valid commit of the WAL open as `file`
/// (the one an fsync is completing).
fn is_last_commit(file: &File, cursor: &WalCursor, commit: &WalCommit) -> bool {
    let mut after = cursor.clone();
    after.consume(commit);
    let len = file.metadata().map_or(0, |m| m.len());
    matches!(after.read_commit(file, len), Ok(None))
}

/// A WAL transaction whose commit could not be recorded: its commit frame
/// is whole on disk, so SQLite's own recovery, or litefs's at start-up,
/// would take it for a commit SQLite's caller was told failed. Its salts
/// are zeroed there (an overwrite, which needs no room).
fn invalidate_commit(db: &Db, cursor: &WalCursor, commit: &WalCommit) {
    let frame_len = FRAME_HEADER_SIZE + u64::from(cursor.header().page_size);
    // The salts are bytes 8 to 16 of the frame header.
    let at = commit.end - frame_len + 8;
    // Synced: SQLite's caller hears the commit failed once this returns,
    // and the frame may have reached the disk whole already.
    let zeroed = std::fs::OpenOptions::new()
        .write(true)
        .open(db.wal_path())
        .and_then(|f| f.write_all_at(&[0u8; 8], at).and_then(|()| f.sync_data()));
    if let Err(e) = zeroed {
        error!(
            "db {}: cannot invalidate the unrecorded commit frame at {at} of {}: {e}; \
             a crash before SQLite overwrites it would keep that transaction",
            db.name(),
            db.wal_path().display()
        );
    }
}
