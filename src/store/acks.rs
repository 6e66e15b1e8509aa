//! What replicas hold durably, and synchronous commits waiting for it.
//!
//! A replica acknowledges the newest position of each database it has
//! queued durably (`POST /ack`, `http/server/ack.rs`; the replica's side is
//! `node/replica.rs`). The primary keeps, per replica node, each
//! database's acknowledged position and when it came. With
//! `replication.sync: N` (N > 0), a commit that litefs has recorded waits
//! in [`Acks::wait_for`] until N nodes hold it, up to `sync-timeout`; then,
//! per `sync-fallback`, it fails (the caller takes the transaction back,
//! `Db::take_back`) or the primary degrades to asynchronous replication
//! (one WARN) until N nodes hold the newest position of every database
//! again (one INFO).
//!
//! A node holds position P of a database when it acknowledged P itself
//! (same TXID, same checksum), or a later TXID after P was recorded: a
//! later TXID acknowledged before then belongs to another history (a
//! transaction taken back, an earlier primary's).
//!
//! Locks: `state` is a leaf mutex, taken to record or read and while a
//! commit waits on `changed` (which releases it); the waiting FUSE worker
//! holds no other lock of litefs's (see `fuse/sync_commit.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Position;
use crate::config::{ReplicationConfig, SyncFallback};

/// How long an acknowledgement is shown after the last one from its node:
/// a replica that stopped acknowledging is gone or no longer follows.
const SHOWN_FOR: Duration = Duration::from_secs(60);

/// One replica node's acknowledgements.
#[derive(Debug, Clone)]
struct Acked {
    /// Where the last one came from.
    peer: SocketAddr,
    /// When the last one came.
    at: Instant,
    /// The newest position acknowledged for each database, and when.
    dbs: BTreeMap<String, (Position, Instant)>,
}

#[derive(Debug, Default)]
struct State {
    config: Option<ReplicationConfig>,
    /// Every replica node's acknowledgements, by node id.
    nodes: BTreeMap<String, Acked>,
    /// A synchronous commit timed out with `sync-fallback: async`: commits
    /// do not wait until enough nodes hold every database's newest
    /// position.
    degraded: bool,
}

/// Replicas' acknowledgements and the synchronous commits that wait for
/// them (see the module comment).
#[derive(Debug, Default)]
pub struct Acks {
    state: Mutex<State>,
    changed: Condvar,
}

/// A synchronous commit whose replicas did not answer in time, with
/// `sync-fallback: fail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTimedOut {
    /// How many nodes held the position, and how many were needed.
    pub held: usize,
    pub needed: u32,
    pub waited: Duration,
}

impl std::fmt::Display for SyncTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of the {} replicas replication.sync asks for acknowledged it within {} ms",
            self.held,
            self.needed,
            self.waited.as_millis()
        )
    }
}

impl Acks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how commits wait (`replication:`), once at start-up.
    pub fn configure(&self, config: ReplicationConfig) {
        self.lock().config = Some(config);
    }

    /// How many replicas a commit waits for now: `replication.sync`, or 0
    /// while degraded to asynchronous.
    pub fn waits_for(&self) -> u32 {
        let state = self.lock();
        match state.config {
            Some(config) if !state.degraded => config.sync,
            _ => 0,
        }
    }

    /// Whether synchronous replication is configured: replicas should
    /// acknowledge each file as soon as it is queued, and the WAL must
    /// not pass through (`fuse/sync_commit.rs`).
    pub fn synchronous(&self) -> bool {
        self.lock().config.is_some_and(|c| c.sync > 0)
    }

    /// Records what replica node `node` (at `peer`) holds: `dbs`, the
    /// newest position of each database it names. `newest` gives this
    /// node's newest position of a database, to tell whether a degraded
    /// primary is back in sync.
    pub fn record(
        &self,
        node: &str,
        peer: SocketAddr,
        dbs: BTreeMap<String, Position>,
        newest: &[(String, Position)],
    ) {
        let mut state = self.lock();
        let now = Instant::now();
        let entry = state
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| Acked {
                peer,
                at: now,
                dbs: BTreeMap::new(),
            });
        entry.peer = peer;
        entry.at = now;
        for (name, pos) in dbs {
            match entry.dbs.get_mut(&name) {
                Some(held) if pos.txid < held.0.txid => {}
                Some(held) => *held = (pos, now),
                None => {
                    entry.dbs.insert(name, (pos, now));
                }
            }
        }
        if state.degraded {
            if let Some(config) = state.config {
                let back = newest.iter().all(|(name, pos)| {
                    pos.txid == 0 || holders(&state.nodes, name, *pos, None) >= config.sync as usize
                });
                if back {
                    state.degraded = false;
                    crate::metrics::sync_degraded(false);
                    log::info!(
                        "synchronous replication resumed: {} replicas hold the newest \
                         transaction of every database",
                        config.sync
                    );
                }
            }
        }
        self.changed.notify_all();
    }

    /// Waits until `replication.sync` nodes hold `pos` of database `db`,
    /// recorded at `recorded_at`. Returns at once when replication is
    /// asynchronous (or degraded). On timeout: with `sync-fallback: async`
    /// degrades and returns `Ok`; with `fail`, `Err`.
    pub fn wait_for(
        &self,
        db: &str,
        pos: Position,
        recorded_at: Instant,
    ) -> Result<(), SyncTimedOut> {
        let mut state = self.lock();
        let Some(config) = state.config.filter(|c| c.sync > 0 && !state.degraded) else {
            return Ok(());
        };
        let needed = config.sync as usize;
        let start = Instant::now();
        let deadline = start + config.sync_timeout;
        loop {
            let held = holders(&state.nodes, db, pos, Some(recorded_at));
            if held >= needed {
                crate::metrics::sync_wait(start.elapsed());
                return Ok(());
            }
            if state.degraded {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                crate::metrics::sync_wait(start.elapsed());
                crate::metrics::sync_timeout();
                let timed_out = SyncTimedOut {
                    held,
                    needed: config.sync,
                    waited: now - start,
                };
                if config.sync_fallback == SyncFallback::Async {
                    state.degraded = true;
                    crate::metrics::sync_degraded(true);
                    log::warn!(
                        "db {db}: TXID {pos}: {timed_out}; replication.sync-fallback is async: \
                         commits no longer wait for replicas until {} hold the newest \
                         transaction of every database",
                        config.sync
                    );
                    return Ok(());
                }
                return Err(timed_out);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The nodes that hold every position of `newest` (this node's newest
    /// position of each database): the replicas in sync, by node id.
    pub fn in_sync(&self, newest: &[(String, Position)]) -> Vec<String> {
        let state = self.lock();
        state
            .nodes
            .iter()
            .filter(|(_, acked)| {
                newest.iter().all(|(name, pos)| {
                    pos.txid == 0 || acked.dbs.get(name).is_some_and(|(held, _)| *held == *pos)
                })
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Whether commits are degraded to asynchronous (`sync-fallback: async`).
    pub fn degraded(&self) -> bool {
        self.lock().degraded
    }

    /// Each node heard from within `SHOWN_FOR`.
    pub fn recent(&self) -> Vec<NodeAcks> {
        let state = self.lock();
        state
            .nodes
            .iter()
            .filter(|(_, acked)| acked.at.elapsed() < SHOWN_FOR)
            .map(|(node, acked)| NodeAcks {
                node: node.clone(),
                peer: acked.peer,
                age: acked.at.elapsed(),
                dbs: acked
                    .dbs
                    .iter()
                    .map(|(name, (pos, _))| (name.clone(), *pos))
                    .collect(),
            })
            .collect()
    }
}

/// What one replica node acknowledged (`Acks::recent`).
#[derive(Debug, Clone)]
pub struct NodeAcks {
    /// Its node id.
    pub node: String,
    /// Where its last acknowledgement came from, and how long ago.
    pub peer: SocketAddr,
    pub age: Duration,
    /// The newest position of each database it acknowledged.
    pub dbs: Vec<(String, Position)>,
}

/// How many nodes of `nodes` hold `pos` of `db`: acknowledged it, or
/// (when `since` is given) a later TXID at or after `since`.
fn holders(
    nodes: &BTreeMap<String, Acked>,
    db: &str,
    pos: Position,
    since: Option<Instant>,
) -> usize {
    nodes
        .values()
        .filter(|acked| match acked.dbs.get(db) {
            Some((held, _)) if *held == pos => true,
            Some((held, at)) => held.txid > pos.txid && since.is_some_and(|since| *at >= since),
            None => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, checksum: u64) -> Position {
        Position { txid, checksum }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!())
    }

    fn acks(sync: u32, fallback: SyncFallback) -> Acks {
        let acks = Acks::default();
        acks.configure(ReplicationConfig {
            sync,
            sync_timeout: Duration::from_millis(50),
            sync_fallback: fallback,
        });
        acks
    }

    fn ack(acks: &Acks, node: &str, db: &str, p: Position) {
        let dbs = BTreeMap::from([(db.to_string(), p)]);
        acks.record(node, peer(), dbs, &[(db.to_string(), p)]);
    }

    #[test]
    fn a_commit_waits_for_the_nodes_it_needs() {
        let acks = std::sync::Arc::new(acks(2, SyncFallback::Fail));
        let at = Instant::now();
        ack(&acks, "a", "db", pos(3, 33));
        let waiter = {
            let acks = acks.clone();
            std::thread::spawn(move || acks.wait_for("db", pos(3, 33), at))
        };
        ack(&acks, "b", "db", pos(3, 33));
        assert_eq!(waiter.join().ok(), Some(Ok(())));
    }

    #[test]
    fn another_history_does_not_count() {
        let acks = acks(1, SyncFallback::Fail);
        // The same TXID with another checksum, and a later TXID
        // acknowledged before the commit was recorded.
        ack(&acks, "a", "db", pos(3, 99));
        ack(&acks, "b", "db", pos(4, 44));
        let err = acks.wait_for("db", pos(3, 33), Instant::now());
        assert_eq!(err.map_err(|e| (e.held, e.needed)), Err((0, 1)));
        // A later TXID acknowledged after it counts.
        let at = Instant::now();
        ack(&acks, "a", "db", pos(5, 55));
        assert!(acks.wait_for("db", pos(3, 33), at).is_ok());
    }

    #[test]
    fn async_fallback_degrades_until_a_replica_catches_up() {
        let acks = acks(1, SyncFallback::Async);
        assert_eq!(acks.waits_for(), 1);
        assert!(acks.wait_for("db", pos(1, 11), Instant::now()).is_ok());
        assert!(acks.degraded());
        assert_eq!(acks.waits_for(), 0);
        // An old position is not enough to leave the degraded mode.
        let newest = [("db".to_string(), pos(2, 22))];
        acks.record(
            "a",
            peer(),
            BTreeMap::from([("db".into(), pos(1, 11))]),
            &newest,
        );
        assert!(acks.degraded());
        acks.record(
            "a",
            peer(),
            BTreeMap::from([("db".into(), pos(2, 22))]),
            &newest,
        );
        assert!(!acks.degraded());
        assert_eq!(acks.in_sync(&newest), vec!["a".to_string()]);
    }

    #[test]
    fn asynchronous_replication_never_waits() {
        let acks = Acks::default();
        assert!(acks.wait_for("db", pos(1, 1), Instant::now()).is_ok());
        let acks = self::acks(0, SyncFallback::Fail);
        assert!(acks.wait_for("db", pos(1, 1), Instant::now()).is_ok());
        assert!(!acks.synchronous());
    }
}
