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

use std::time::Instant;

use fuser::Errno;
use log::{error, warn};

use super::LitefsFs;
use crate::store::{Db, Position};

impl LitefsFs {
    /// Waits until the replicas `replication.sync` asks for hold `pos` of
    /// `db`, recorded at `recorded_at` (before its LTX file could be
    /// sent). On a timeout with `sync-fallback: fail`, takes the
    /// transaction back with `take_back` (`Db::take_back`, or
    /// `WalFollowers::take_back`) and returns EIO.
    pub(super) fn await_replicas(
        &self,
        db: &Db,
        pos: Position,
        recorded_at: Instant,
        take_back: impl FnOnce(&Db, Position) -> Result<Position, crate::store::Error>,
    ) -> Result<(), Errno> {
        let newest = || self.store.positions();
        let acks = self.store.acks();
        let why = match acks.admit(db.name()) {
            Err(exceeded) => format!("{exceeded}; replication.max-lag refuses commits"),
            Ok(()) => match acks.wait_for(db.name(), pos, recorded_at, &newest) {
                Ok(()) => return Ok(()),
                Err(timed_out) => format!("{timed_out}; replication.sync-fallback is fail"),
            },
        };
        match take_back(db, pos) {
            Ok(before) => {
                warn!(
                    "db {}: the commit of TXID {pos} failed: {why}: it is taken back (the \
                     database returns to TXID {before}) and SQLite reports an I/O error",
                    db.name()
                );
                // Streams that sent it find the replica ahead and send a
                // snapshot.
                self.recorded();
            }
            Err(e) => error!(
                "db {}: the commit of TXID {pos} failed ({why}) but cannot be taken \
                 back: {e}; SQLite rolls the transaction back and its rollback is recorded \
                 as the next transaction",
                db.name()
            ),
        }
        Err(Errno::EIO)
    }

    /// With `replication.max-lag`: whether a write in place of `db` (one
    /// transaction, `store/raw_edit.rs`) may go on; EIO when no replica
    /// holds transactions older than the bound.
    pub(super) fn admit_write(&self, db: &Db) -> Result<(), Errno> {
        self.store.acks().admit(db.name()).map_err(|_| Errno::EIO)
    }
}
