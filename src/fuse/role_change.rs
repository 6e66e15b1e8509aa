//! The mount's part in a role change. Step-down: a write transaction
//! left open is dropped, a WAL folded into the database and sealed, a
//! journal that passes through sealed, each under SQLite's own locks taken
//! through the mount, within `STEP_DOWN_WAIT`. Promotion: the WAL and
//! journal made writable again and a replica's empty WAL companions
//! removed. `node.rs` (`Roles`) decides when; `store/seal.rs` and
//! `store/recovery.rs` do the store's part.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use fuser::INodeNo;
use log::{info, warn};

use super::apply::{set_ofd_lock, Applier, DatabaseLock, WAL_READ_LOCKS, WAL_READ_LOCK_COUNT};
use super::inodes::{FileKind, ROOT_INO};
use crate::sqlite::wal::WAL_HEADER_SIZE;
use crate::store::{self, Db, Position};

/// SQLite's WAL write lock: byte 120 of `-shm` (WAL_WRITE_LOCK in wal.c).
const WAL_WRITE_LOCK: i64 = 120;
/// How long a step-down waits for a WAL writer, then for WAL readers, to
/// end their transactions.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(5);

impl Applier {
    /// Drops a write transaction left open when this node stopped being
    /// the primary (see `Db::abandon_transaction`), then the kernel's
    /// cached pages of the database, which may hold that transaction's
    /// uncommitted writes, and its cached view of the journal.
    pub fn abandon_transaction(&self, db: &Db) -> Result<Position, store::Error> {
        let (db_ino, journal_ino) = (
            self.ino(db, FileKind::Database),
            self.ino(db, FileKind::Journal),
        );
        // WAL mode first: the database file is complete only once the WAL
        // is folded into it, and a rollback journal is only a journal's.
        self.step_down_wal(db);
        let result = db.abandon_transaction();
        self.seal_journal(db, journal_ino);
        self.journals.update(db.name(), |j| j.active = false);
        self.invalidate(db_ino, db.name());
        self.invalidate(journal_ino, db.name());
        let notifier = self.notifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = notifier.as_ref() {
            let journal = format!("{}{}", db.name(), FileKind::Journal.suffix());
            if let Err(e) = n.inval_entry(INodeNo(ROOT_INO), OsStr::new(&journal)) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!(
                        "db {}: cannot invalidate the kernel's entry for {journal}: {e}",
                        db.name()
                    );
                }
            }
        }
        result
    }

    /// A primary stepping down: a journal open in passthrough (`journal.rs`)
    /// is sealed like the WAL, so that the connection holding it cannot
    /// begin a transaction in it on a replica (its header would make the
    /// journal look hot to every reader here).
    fn seal_journal(&self, db: &Db, journal_ino: u64) {
        if !self.passthrough.is_registered(journal_ino) {
            return;
        }
        match db.seal_journal() {
            Ok(true) => match db.end_sealed_journal() {
                Ok(false) => {}
                Ok(true) => warn!(
                    "db {}: ended a transaction a connection from before the step-down had \
                     just begun in the journal (nothing of it reached the database)",
                    db.name()
                ),
                Err(e) => warn!(
                    "db {}: cannot end the transaction begun in the sealed journal: {e}",
                    db.name()
                ),
            },
            Ok(false) => warn!(
                "db {}: cannot make the journal read-only (no immutable flag on the data \
                 directory's file system, or no CAP_LINUX_IMMUTABLE): a connection opened \
                 while this node was primary could still write to it; close it",
                db.name()
            ),
            Err(e) => warn!("db {}: cannot make the journal read-only: {e}", db.name()),
        }
    }

    /// A primary stepping down, for a database in WAL mode: what the WAL
    /// committed is recorded, then copied into the database file (so the
    /// replica's applies land on the position), and the WAL sealed against
    /// connections opened while this node was primary (their writes pass
    /// through to it, see `Db::seal_wal`); every connection then finds a
    /// new WAL index (`reset_wal_index`).
    ///
    /// Locks, each taken within `STEP_DOWN_WAIT` (past it the step-down
    /// goes on without, with a WARN): SQLite's WAL write lock, so that no
    /// transaction is half written meanwhile (a writer's later writes fail
    /// once the WAL is sealed); then the read-mark locks, so that no read
    /// transaction is open while pages its snapshot reads from the WAL are
    /// overwritten in the database file and the WAL emptied. The kernel's
    /// cached pages of the database file are dropped before the WAL index
    /// is renewed: a reader finding the new index reads the database file
    /// alone, and must read the folded pages, not those cached from before.
    fn step_down_wal(&self, db: &Db) {
        if !db.wal_path().exists() {
            return;
        }
        let _writer_lock = self.step_down_lock(db, WAL_WRITE_LOCK, 1, "WAL writer");
        self.wals.catch_up_quietly(db);
        // A WAL without frames has nothing to fold, so readers need not
        // wait (no writer can add one while the write lock is held).
        let has_frames = std::fs::metadata(db.wal_path()).is_ok_and(|m| m.len() > WAL_HEADER_SIZE);
        let _readers_lock = if has_frames || _writer_lock.is_none() {
            self.step_down_lock(db, WAL_READ_LOCKS, WAL_READ_LOCK_COUNT, "WAL reader")
        } else {
            None
        };
        let folded = db.fold_wal();
        self.wals.reset(db);
        match folded {
            Ok(true) => {
                self.invalidate(self.ino(db, FileKind::Database), db.name());
                self.invalidate(self.ino(db, FileKind::Wal), db.name());
                self.reset_wal_index(db);
                info!(
                    "db {}: moved the WAL into the database file at step-down",
                    db.name()
                );
            }
            Ok(false) => {}
            Err(e) => warn!("db {}: cannot fold the WAL at step-down: {e}", db.name()),
        }
        match db.seal_wal() {
            Ok(true) => {}
            Ok(false) => warn!(
                "db {}: cannot make the WAL read-only (no immutable flag on the data \
                 directory's file system, or no CAP_LINUX_IMMUTABLE): connections opened \
                 while this node was primary could still write to it; close them",
                db.name()
            ),
            Err(e) => warn!("db {}: cannot make the WAL read-only: {e}", db.name()),
        }
    }

    /// SQLite's WAL lock bytes `start..start + len` of `db`'s `-shm`, taken
    /// through the mount within `STEP_DOWN_WAIT`; `None` (with a WARN) when
    /// there is no `-shm` or a `holder` keeps them longer. The range is
    /// taken whole or not at all, so readers are kept out only once it is
    /// held: from then until the fold ends. The descriptor is the one
    /// `lock` uses for applies; locks on one open file description never
    /// conflict, which is safe because no apply runs during a step-down
    /// (the replica task starts after it).
    fn step_down_lock(
        &self,
        db: &Db,
        start: i64,
        len: i64,
        holder: &str,
    ) -> Option<DatabaseLock<'_>> {
        if !db.shm_path().exists() {
            return None;
        }
        let without = |why: String| {
            warn!(
                "db {}: step-down without SQLite's {holder} locks: {why}",
                db.name()
            );
            None
        };
        let file = match self.mount_file(db, FileKind::Shm) {
            Ok(file) => file,
            Err(e) => return without(e),
        };
        let deadline = Instant::now() + STEP_DOWN_WAIT;
        loop {
            match set_ofd_lock(&file, libc::F_WRLCK, start, len, false) {
                Ok(true) => {
                    return Some(DatabaseLock {
                        applier: self,
                        db: db.name().to_string(),
                        key: format!("{}{}", db.name(), FileKind::Shm.suffix()),
                        file,
                        start,
                        len,
                    })
                }
                // F_OFD_SETLKW has no timeout: a connection may keep its
                // transaction open for ever, and a step-down must end.
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(false) => {
                    return without(format!(
                        "a {holder} held its transaction for {}s",
                        STEP_DOWN_WAIT.as_secs()
                    ))
                }
                Err(e) => return without(e.to_string()),
            }
        }
    }

    /// On promotion: makes the WAL and journal writable again (`seal.rs`), and
    /// removes the empty `-wal` and `-shm` a replica gave a
    /// database that is no longer in WAL mode, so that new connections
    /// use the rollback journal the header names (with `-wal` present,
    /// SQLite would open the WAL whatever the header says).
    pub fn drop_wal_companions(&self, db: &Db) {
        // Sealed at step-down; the primary's connections write them.
        if let Err(e) = db.unseal_companions() {
            warn!(
                "db {}: cannot make the WAL and journal writable again: {e}",
                db.name()
            );
        }
        let wal = db.in_wal_mode();
        let empty = |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
        if wal || !empty(db.wal_path()) {
            return;
        }
        for kind in [FileKind::Wal, FileKind::Shm] {
            let path = match kind {
                FileKind::Wal => db.wal_path(),
                _ => db.shm_path(),
            };
            if path.exists() && std::fs::remove_file(path).is_ok() {
                self.invalidate_name(db.name(), kind);
            }
        }
    }
}
