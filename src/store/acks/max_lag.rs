//! The time-bounded asynchronous mode (`replication.max-lag`): at most
//! `max-lag` of acknowledged transactions can be lost with the primary.
//!
//! The primary notes each transaction it records (`Db::commit`,
//! `Db::commit_wal`, through `Acks::note_recorded`) and forgets it once
//! some replica acknowledges it or a later one (each acknowledged
//! position is one recorded here: a file the primary sent, or a run of
//! them merged). While the oldest
//! transaction no replica holds is older than `max-lag`, a new commit is
//! refused ([`Acks::admit`], asked by the mount where a synchronous
//! commit would wait, `fuse/sync_commit.rs`: the commit is taken back),
//! after waiting up to `max-lag-wait` for a replica; so is a write in
//! place by a program other than SQLite. SQLite reports the refusal as
//! "disk I/O error" and rolls back; the log says why once per episode,
//! `/metrics` counts the refusals and shows the age of the oldest
//! unacknowledged transaction.
//!
//! A transaction imported over HTTP (`POST /import`) is not counted.

use std::time::{Duration, Instant};

use super::{Acks, State};
use crate::store::Position;

/// A write refused because no replica holds transactions older than
/// `max-lag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagExceeded {
    /// The oldest transaction no replica holds, its database and age.
    pub db: String,
    pub pos: Position,
    pub age: Duration,
    pub max_lag: Duration,
}

impl std::fmt::Display for LagExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no replica has acknowledged TXID {} of database {}, committed {:.1} s ago \
             (replication.max-lag is {:.1} s)",
            self.pos,
            self.db,
            self.age.as_secs_f64(),
            self.max_lag.as_secs_f64()
        )
    }
}

impl State {
    /// A replica acknowledged `held` of `db`: every transaction up to it
    /// is held, when it is one this node recorded (a position of another
    /// history, a diverged replica's, releases nothing).
    pub(super) fn release_held(&mut self, db: &str, held: Position) {
        if let Some(unheld) = self.unheld.get_mut(db) {
            if let Some(i) = unheld.iter().position(|(pos, _)| *pos == held) {
                unheld.drain(..=i);
            }
        }
    }

    /// The oldest transaction no replica holds: its database, position
    /// and when it was recorded.
    fn oldest_unheld(&self) -> Option<(&str, Position, Instant)> {
        self.unheld
            .iter()
            .filter_map(|(db, unheld)| unheld.front().map(|(pos, at)| (db.as_str(), *pos, *at)))
            .min_by_key(|(_, _, at)| *at)
    }
}

impl Acks {
    fn bounds_lag(&self) -> bool {
        self.bounds_lag.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The primary recorded `pos` of `db` (nothing without `max-lag`).
    pub fn note_recorded(&self, db: &str, pos: Position) {
        if self.bounds_lag() {
            let mut state = self.lock();
            let unheld = state.unheld.entry(db.to_string()).or_default();
            unheld.push_back((pos, Instant::now()));
        }
    }

    /// The newest transaction of `db`, at `pos`, was taken back.
    pub fn note_taken_back(&self, db: &str, pos: Position) {
        if self.bounds_lag() {
            let mut state = self.lock();
            if let Some(unheld) = state.unheld.get_mut(db) {
                if unheld.back().is_some_and(|(back, _)| *back == pos) {
                    unheld.pop_back();
                }
            }
        }
    }

    /// How long the oldest transaction no replica holds has waited
    /// (zero when every one is held, or without `max-lag`).
    pub fn unacknowledged_for(&self) -> Duration {
        self.lock()
            .oldest_unheld()
            .map_or(Duration::ZERO, |(_, _, at)| at.elapsed())
    }

    /// Whether a commit of `db` may stand (see the module comment): waits
    /// up to `max-lag-wait` for the oldest unacknowledged transaction to
    /// be held when it is older than `max-lag`.
    pub fn admit(&self, db: &str) -> Result<(), LagExceeded> {
        if !self.bounds_lag() {
            return Ok(());
        }
        let mut state = self.lock();
        let Some(config) = state.config else {
            return Ok(());
        };
        let deadline = Instant::now() + config.max_lag_wait;
        loop {
            let exceeded = match state.oldest_unheld() {
                Some((oldest, pos, at)) if at.elapsed() > config.max_lag => LagExceeded {
                    db: oldest.to_string(),
                    pos,
                    age: at.elapsed(),
                    max_lag: config.max_lag,
                },
                _ => {
                    if state.refusing {
                        state.refusing = false;
                        log::info!(
                            "db {db}: commits admitted again: replicas hold every transaction \
                             older than replication.max-lag"
                        );
                    }
                    return Ok(());
                }
            };
            let now = Instant::now();
            if now >= deadline {
                crate::metrics::max_lag_refusal();
                if !state.refusing {
                    state.refusing = true;
                    log::warn!(
                        "db {db}: refusing commits: {exceeded}; SQLite reports \"disk I/O \
                         error\" until a replica catches up"
                    );
                }
                return Err(exceeded);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
