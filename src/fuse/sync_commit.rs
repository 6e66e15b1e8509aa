//! Synchronous replication at the mount (`replication.sync`), and the
//! bound of `replication.max-lag`: a
//! transaction litefs has recorded is answered to SQLite only once enough
//! replicas hold it durably (`store/acks.rs`). The wait is in the request
//! that ends the transaction, after its LTX file is recorded and the
//! streams are woken, before the request returns:
//!
//! - rollback-journal modes: the journal's end (`LitefsFs::commit`: its
//!   deletion, truncation, zeroed header, or the fsync after a zeroed
//!   header that passed through). SQLite still holds its EXCLUSIVE lock,
//!   so readers of that database wait as for a slow fsync; other
//!   databases do not.
//! - WAL: the write of the commit frame. The WAL does not pass through
//!   while `replication.sync` is set (`passthrough.rs`), so that write
//!   reaches litefs whatever `synchronous` says; the WAL index is not yet
//!   updated, so readers do not see the transaction and are not blocked.
//!
//! A wait that times out with `sync-fallback: fail` takes the transaction
//! back (`Db::take_back`) and answers EIO, which SQLite reports as an I/O
//! error and rolls back: the journal stays hot, or the WAL's commit frame
//! is invalidated (`WalFollowers::take_back`). With `async`, the commit
//! returns and the store degrades to asynchronous replication.
//!
//! Transactions recorded late (a journal zeroed with synchronous=OFF and
//! no fsync after it, found at the next transaction or when the journal
//! is closed) were already reported committed to SQLite: they are not
//! waited for.
//!
//! With `replication.max-lag` the same place refuses the commit, taken
//! back the same way, while no replica holds transactions older than the
//! bound (`store/acks/max_lag.rs`): at the commit rather than at the
//! transaction's first write, so that SQLite's rollback of a refused
//! transaction (its writes to the database file) is never refused.
//!
//! Locks: the waiting worker holds its `PrimaryGuard` (a step-down waits
//! for the commit, up to `sync-timeout`) and no other lock of litefs's.

use fuser::Errno;
use log::{debug, error, warn};

use super::LitefsFs;
use crate::store::{Db, Position};

/// Where the commit being refused was: a WAL commit that cannot be taken
/// back must stand (SQLite would otherwise write a recorded commit frame
/// again), a journal's is rolled back by SQLite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Journal,
    Wal,
}

impl LitefsFs {
    /// With `replication.max-lag`: whether the transaction just recorded
    /// at `pos` may stand, asked before its streams are woken where the
    /// caller can (a journal's); refused (taken back, EIO) while no
    /// replica holds transactions older than the bound. The refusal is
    /// logged once per episode (`store/acks/max_lag.rs`).
    pub(super) fn admit_commit(&self, db: &Db, pos: Position, kind: Kind) -> Result<(), Errno> {
        match self.store.acks().admit(db.name()) {
            Ok(()) => Ok(()),
            Err(exceeded) => self.refuse(db, pos, kind, &exceeded.to_string(), false),
        }
    }

    /// Waits until the replicas `replication.sync` asks for hold `pos` of
    /// `db`. On a timeout with `sync-fallback: fail`, takes the
    /// transaction back and returns EIO.
    pub(super) fn await_replicas(&self, db: &Db, pos: Position, kind: Kind) -> Result<(), Errno> {
        let newest = || self.store.positions();
        match self.store.acks().wait_for(db.name(), pos, &newest) {
            Ok(()) => Ok(()),
            Err(timed_out) => {
                let why = format!("{timed_out}; replication.sync-fallback is fail");
                self.refuse(db, pos, kind, &why, true)
            }
        }
    }

    /// Takes the transaction at `pos` back (`Db::take_back`, or for a WAL
    /// commit `WalFollowers::take_back`, which invalidates the commit frame
    /// too) and answers EIO (SQLite rolls back); `loud`:
    /// one WARN per commit (a max-lag refusal is logged once per episode
    /// by the store).
    fn refuse(
        &self,
        db: &Db,
        pos: Position,
        kind: Kind,
        why: &str,
        loud: bool,
    ) -> Result<(), Errno> {
        let taken_back = match kind {
            Kind::Journal => db.take_back(pos),
            Kind::Wal => self.wals.take_back(db, pos),
        };
        match taken_back {
            Ok(before) => {
                let message = format!(
                    "db {}: the commit of TXID {pos} failed: {why}: it is taken back (the \
                     database returns to TXID {before}) and SQLite reports an I/O error",
                    db.name()
                );
                if loud {
                    warn!("{message}");
                } else {
                    debug!("{message}");
                }
                // Streams that sent it find the replica ahead and send a
                // snapshot.
                self.recorded();
                Err(Errno::EIO)
            }
            Err(e) if kind == Kind::Wal => {
                // SQLite would write the recorded commit frame again: the
                // commit stands, so the replicas in sync may lack it.
                error!(
                    "db {}: the WAL commit of TXID {pos} cannot be taken back ({e}); it \
                     stands though {why}",
                    db.name()
                );
                self.store.acks().degrade(&format!(
                    "db {}: TXID {pos} stands without its replicas",
                    db.name()
                ));
                Ok(())
            }
            Err(e) => {
                error!(
                    "db {}: the commit of TXID {pos} failed ({why}) but cannot be taken \
                     back: {e}; SQLite rolls the transaction back and its rollback is \
                     recorded as the next transaction",
                    db.name()
                );
                Err(Errno::EIO)
            }
        }
    }

    /// With `replication.max-lag`: whether a write in place of `db` (one
    /// transaction, `store/raw_edit.rs`) may go on; EIO when no replica
    /// holds transactions older than the bound.
    pub(super) fn admit_write(&self, db: &Db) -> Result<(), Errno> {
        self.store.acks().admit(db.name()).map_err(|_| Errno::EIO)
    }
}
