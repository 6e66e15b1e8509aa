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
//! **The in-sync set** (with a Consul lease: a [`Publisher`] is set). So
//! that failover keeps what was acknowledged, the primary names in Consul
//! the replicas that hold every transaction it acknowledged
//! (`lease/consul/sync_set.rs`); a candidate outside that set does not
//! take the lease. The set is N nodes chosen among those that hold every
//! database's newest position (`members`), and a commit waits for those N
//! in particular, so that each of them holds it. A member that does not
//! acknowledge within `sync-timeout` is replaced by nodes that did and
//! hold everything else, and the new set is published before the commit
//! returns; a node joins a set short of N once it holds every newest
//! position, in memory first (commits wait for it at once) and published
//! after. So the published set is always one whose every node holds every
//! acknowledged transaction. Degrading to asynchronous publishes an empty
//! set (only the primary holds everything). Without a publisher (a static
//! lease) a commit waits for any N nodes.
//!
//! Locks: `publisher` is held while the set is changed and published (a
//! request to Consul), so publications happen in the order the set
//! changed; it is taken before `state`. `state` is a leaf otherwise: taken
//! to record or read, and while a commit waits on `changed` (which
//! releases it). The waiting FUSE worker holds no other lock of litefs's
//! (see `fuse/sync_commit.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Position;
use crate::config::{ReplicationConfig, SyncFallback};

mod max_lag;

pub use max_lag::LagExceeded;

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
    /// With a publisher: the nodes commits wait for (the in-sync set; see
    /// the module comment).
    members: BTreeSet<String>,
    /// With a publisher: this node, as primary, has published a set since
    /// it became primary; until then no commit can be acknowledged.
    published: bool,
    /// With `max-lag`: each database's transactions recorded here that no
    /// replica has acknowledged yet, oldest first, with when
    /// (`acks/max_lag.rs`).
    unheld: BTreeMap<String, VecDeque<(Position, Instant)>>,
    /// Writes are being refused for `max-lag` (logged once per episode).
    refusing: bool,
}

/// Publishes the in-sync set where failover candidates read it (Consul),
/// naming this node the primary; the error says why it could not.
/// Its `bool`: the first publication since this node became primary,
/// which replaces whatever another primary published.
pub type Publisher = Box<dyn Fn(&BTreeSet<String>, bool) -> Result<(), String> + Send + Sync>;

/// Replicas' acknowledgements and the synchronous commits that wait for
/// them (see the module comment).
#[derive(Default)]
pub struct Acks {
    state: Mutex<State>,
    changed: Condvar,
    /// `max-lag` is set: recorded transactions are tracked.
    bounds_lag: std::sync::atomic::AtomicBool,
    /// Where the in-sync set is published; held while it changes.
    publisher: Mutex<Option<Publisher>>,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks").field("state", &self.state).finish()
    }
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
        self.bounds_lag.store(
            !config.max_lag.is_zero(),
            std::sync::atomic::Ordering::SeqCst,
        );
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
    /// acknowledge each file as soon as it is queued.
    pub fn synchronous(&self) -> bool {
        self.lock().config.is_some_and(|c| c.sync > 0)
    }

    /// Whether every write to a WAL must reach litefs (synchronous
    /// replication, `max-lag`): the WAL must not pass through.
    pub fn wal_through_litefs(&self) -> bool {
        self.lock().config.is_some_and(|c| c.wal_through_litefs())
    }

    /// Publishes the in-sync set through `publisher` from now on (a
    /// Consul lease), at the next promotion and whenever it changes.
    pub fn set_publisher(&self, publisher: Publisher) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(publisher);
    }

    /// This node became the primary: the in-sync set starts empty and is
    /// published (naming this node the primary) before any commit can be
    /// acknowledged. Replicas join it as they show they hold everything.
    pub fn promoted(&self) {
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        state.members.clear();
        state.published = false;
        state.unheld.clear();
        state.degraded = false;
        crate::metrics::sync_degraded(false);
        let Some(publish) = publisher.as_ref() else {
            return;
        };
        drop(state);
        let result = publish(&BTreeSet::new(), true);
        let mut state = self.lock();
        match result {
            Ok(()) => state.published = true,
            Err(e) => log::warn!(
                "synchronous replication: cannot publish this node as the primary with no \
                 replica in sync yet ({e}); commits wait until it can"
            ),
        }
    }

    /// Records what replica node `node` (at `peer`) holds: `dbs`, the
    /// newest position of each database it names. `newest` is this node's
    /// newest position of each database: a node that holds all of them may
    /// join the in-sync set, or end the degraded mode.
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
            state.release_held(&name, pos);
            let Some(entry) = state.nodes.get_mut(node) else {
                continue;
            };
            match entry.dbs.get_mut(&name) {
                Some(held) if pos.txid < held.0.txid => {}
                Some(held) => *held = (pos, now),
                None => {
                    entry.dbs.insert(name, (pos, now));
                }
            }
        }
        let join = state.config.is_some_and(|config| {
            (state.degraded || state.members.len() < config.sync as usize)
                && !state.members.contains(node)
                && holds_all(&state.nodes, node, newest)
        });
        self.changed.notify_all();
        drop(state);
        if join {
            self.join(newest);
        }
        self.changed.notify_all();
    }

    /// Adds the nodes that hold every position of `newest` to the in-sync
    /// set while it is short (up to `replication.sync`), and publishes
    /// it; ends the degraded mode once it is full again.
    fn join(&self, newest: &[(String, Position)]) {
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        let Some(config) = state.config else {
            return;
        };
        let needed = config.sync as usize;
        let ready: Vec<String> = state
            .nodes
            .keys()
            .filter(|node| !state.members.contains(*node) && holds_all(&state.nodes, node, newest))
            .cloned()
            .collect();
        if state.degraded {
            if state.members.len() + ready.len() < needed {
                return;
            }
            state.degraded = false;
            crate::metrics::sync_degraded(false);
            log::info!(
                "synchronous replication resumed: {needed} replicas hold the newest transaction \
                 of every database"
            );
        }
        // In memory first: commits wait for the new members at once.
        for node in ready {
            if state.members.len() >= needed {
                break;
            }
            state.members.insert(node);
        }
        let members = state.members.clone();
        drop(state);
        if let Some(publish) = publisher.as_ref() {
            match publish(&members, false) {
                Ok(()) => self.lock().published = true,
                Err(e) => log::warn!(
                    "synchronous replication: cannot publish the replicas in sync {members:?} \
                     ({e}); failover may wait for the ones published before"
                ),
            }
        }
    }

    /// Waits until `pos` of database `db`, recorded at `recorded_at`, is
    /// held by `replication.sync` nodes (the in-sync set, with a
    /// publisher). Returns at once when replication is asynchronous (or
    /// degraded). `newest` gives every database's newest position, read
    /// only when the wait times out: then members that did not answer are
    /// replaced by nodes that did, or per `sync-fallback` the primary
    /// degrades and this returns `Ok`, or it returns `Err`.
    pub fn wait_for(
        &self,
        db: &str,
        pos: Position,
        recorded_at: Instant,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) -> Result<(), SyncTimedOut> {
        let has_publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let mut state = self.lock();
        let Some(config) = state.config.filter(|c| c.sync > 0 && !state.degraded) else {
            return Ok(());
        };
        let start = Instant::now();
        let deadline = start + config.sync_timeout;
        loop {
            if state.degraded || enough(&state, db, pos, recorded_at, has_publisher) {
                crate::metrics::sync_wait(start.elapsed());
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(state);
        let result = self.timed_out(db, pos, recorded_at, start, newest);
        crate::metrics::sync_wait(start.elapsed());
        result
    }

    /// `wait_for` after `sync-timeout`: the members that did not answer
    /// are replaced, or the fallback applies.
    fn timed_out(
        &self,
        db: &str,
        pos: Position,
        recorded_at: Instant,
        start: Instant,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) -> Result<(), SyncTimedOut> {
        let newest = newest();
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.lock();
        let Some(config) = state.config else {
            return Ok(());
        };
        if state.degraded || enough(&state, db, pos, recorded_at, publisher.is_some()) {
            return Ok(());
        }
        let needed = config.sync as usize;
        let held = holding(&state.nodes, db, pos, Some(recorded_at));
        if let Some(publish) = publisher.as_ref() {
            // Members that answered, then others that hold this and every
            // newest position.
            let mut replaced: BTreeSet<String> =
                state.members.intersection(&held).cloned().collect();
            for node in &held {
                if replaced.len() >= needed {
                    break;
                }
                if holds_all(&state.nodes, node, &others(&newest, db)) {
                    replaced.insert(node.clone());
                }
            }
            if replaced.len() >= needed {
                drop(state);
                match publish(&replaced, false) {
                    Ok(()) => {
                        let mut state = self.lock();
                        log::warn!(
                            "db {db}: TXID {pos}: the replicas in sync {:?} did not all \
                             acknowledge it within {} ms; the in-sync set is now {replaced:?}",
                            state.members,
                            config.sync_timeout.as_millis()
                        );
                        state.members = replaced;
                        state.published = true;
                        return Ok(());
                    }
                    Err(e) => log::warn!(
                        "db {db}: TXID {pos}: cannot publish the new in-sync set {replaced:?} \
                         ({e})"
                    ),
                }
                state = self.lock();
            }
        }
        crate::metrics::sync_timeout();
        let timed_out = SyncTimedOut {
            held: held.len(),
            needed: config.sync,
            waited: start.elapsed(),
        };
        if config.sync_fallback == SyncFallback::Fail {
            return Err(timed_out);
        }
        state.degraded = true;
        state.members.clear();
        crate::metrics::sync_degraded(true);
        log::warn!(
            "db {db}: TXID {pos}: {timed_out}; replication.sync-fallback is async: commits no \
             longer wait for replicas until {} hold the newest transaction of every database",
            config.sync
        );
        drop(state);
        if let Some(publish) = publisher.as_ref() {
            if let Err(e) = publish(&BTreeSet::new(), false) {
                log::error!(
                    "synchronous replication degraded, but the empty in-sync set cannot be \
                     published ({e}): a replica published before may take over without the \
                     newest transactions"
                );
            }
        }
        Ok(())
    }

    /// The in-sync set (with a publisher): the nodes commits wait for.
    pub fn members(&self) -> Vec<String> {
        self.lock().members.iter().cloned().collect()
    }

    /// `replication.sync` (0: asynchronous), whether degraded, and the
    /// in-sync set when one is published (a Consul lease).
    pub fn sync_status(&self) -> (u32, bool, Option<Vec<String>>) {
        let published = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let state = self.lock();
        let members = published.then(|| state.members.iter().cloned().collect());
        (state.config.map_or(0, |c| c.sync), state.degraded, members)
    }

    /// The nodes that hold every position of `newest` (this node's newest
    /// position of each database): the replicas in sync, by node id.
    pub fn in_sync(&self, newest: &[(String, Position)]) -> Vec<String> {
        let state = self.lock();
        state
            .nodes
            .keys()
            .filter(|node| holds_all(&state.nodes, node, newest))
            .cloned()
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

/// Whether `pos` of `db` is held as a commit needs: by every member of a
/// published in-sync set of `replication.sync` nodes (`by_members`), or
/// by any `replication.sync` nodes.
fn enough(state: &State, db: &str, pos: Position, since: Instant, by_members: bool) -> bool {
    let Some(config) = state.config else {
        return true;
    };
    let held = holding(&state.nodes, db, pos, Some(since));
    if by_members {
        state.published
            && state.members.len() >= config.sync as usize
            && state.members.is_subset(&held)
    } else {
        held.len() >= config.sync as usize
    }
}

/// The nodes of `nodes` that hold `pos` of `db`: acknowledged it, or
/// (when `since` is given) a later TXID at or after `since`.
fn holding(
    nodes: &BTreeMap<String, Acked>,
    db: &str,
    pos: Position,
    since: Option<Instant>,
) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, acked)| match acked.dbs.get(db) {
            Some((held, _)) if *held == pos => true,
            Some((held, at)) => held.txid > pos.txid && since.is_some_and(|since| *at >= since),
            None => false,
        })
        .map(|(node, _)| node.clone())
        .collect()
}

/// Whether `node` acknowledged every position of `newest` (a database
/// with no transaction yet needs nothing).
fn holds_all(nodes: &BTreeMap<String, Acked>, node: &str, newest: &[(String, Position)]) -> bool {
    let Some(acked) = nodes.get(node) else {
        return false;
    };
    newest.iter().all(|(name, pos)| {
        pos.txid == 0 || acked.dbs.get(name).is_some_and(|(held, _)| *held == *pos)
    })
}

/// `newest` without database `db`.
fn others(newest: &[(String, Position)], db: &str) -> Vec<(String, Position)> {
    newest
        .iter()
        .filter(|(name, _)| name != db)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
