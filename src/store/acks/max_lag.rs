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
//! Imports (`litefs import`, a `cp` over a database) count as commits;
//! they are never refused.

use std::time::{Duration, Instant};

use super::{Acks, State};
use crate::store::Position;

/// A commit refused because no replica holds transactions older than
/// `max-lag`, or that many (`max-lag-txns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagExceeded {
    /// The oldest transaction no replica holds, its database and age.
    pub db: String,
    pub pos: Position,
    pub age: Duration,
    /// How many transactions of `db` no replica holds.
    pub txns: u64,
    /// Which bound, said for people.
    pub bound: String,
}

impl std::fmt::Display for LagExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no replica has acknowledged the {} newest transactions of database {}, the \
             oldest TXID {} committed {:.1} s ago ({})",
            self.txns,
            self.db,
            self.pos,
            self.age.as_secs_f64(),
            self.bound
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

    /// How many transactions of `db` no replica holds: from the first
    /// unheld file's TXID (a WAL batch counts as its newest) to the newest.
    fn unheld_txns(&self, db: &str) -> u64 {
        self.unheld
            .get(db)
            .map_or(0, |unheld| match (unheld.front(), unheld.back()) {
                (Some((front, _)), Some((back, _))) => back.txid.saturating_sub(front.txid) + 1,
                _ => 0,
            })
    }

    /// Why a commit of `db` is refused now, if it is.
    fn exceeded(&self, db: &str) -> Option<LagExceeded> {
        let config = self.config?;
        let (oldest, pos, at) = self.oldest_unheld()?;
        let age = at.elapsed();
        let txns = self.unheld_txns(db);
        let bound = if !config.max_lag.is_zero() && age > config.max_lag {
            format!(
                "replication.max-lag is {:.1} s",
                config.max_lag.as_secs_f64()
            )
        } else if config.max_lag_txns > 0 && txns > config.max_lag_txns {
            format!("replication.max-lag-txns is {}", config.max_lag_txns)
        } else {
            return None;
        };
        Some(LagExceeded {
            db: oldest.to_string(),
            pos,
            age,
            txns,
            bound,
        })
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
            let exceeded = match state.exceeded(db) {
                Some(exceeded) => exceeded,
                None => {
                    if state.refusing {
                        state.refusing = false;
                        log::info!(
                            "db {db}: commits admitted again: replicas are back within \
                             replication.max-lag"
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
