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
//! (same TXID, same checksum): while a commit waits no later transaction
//! of its database is recorded, so a later TXID belongs to another
//! history (a diverged replica, a transaction taken back). A node's
//! acknowledged position may go back (it dropped received files it
//! could not apply); a member of the in-sync set that does leaves it.
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
//! returns (both sets waited for meanwhile); a node joins a set short of N
//! once it holds every newest position, in memory first (commits wait for
//! it at once), published once the members hold every newest position
//! read after the change (so every transaction acknowledged before it).
//! A member leaves after a set without it is published. So the published
//! set is always one whose every node holds every acknowledged
//! transaction. Degrading to asynchronous publishes an empty set first
//! (only the primary holds everything; should Consul not answer, an ERROR
//! says that a replica published before may take over without the
//! newest transactions). Without a publisher (a static
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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The newest position acknowledged for each database.
    dbs: BTreeMap<String, Position>,
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
    /// Commits are being refused for `max-lag` (logged once per episode).
    refusing: bool,
    /// `members` changed in memory and is not published yet: it will be
    /// once every member holds every newest position (`publish_if_held`).
    unpublished: bool,
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
    bounds_lag: AtomicBool,
    /// A publisher is set: commits wait for the in-sync set's members.
    has_publisher: AtomicBool,
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
        self.bounds_lag.store(config.bounds_lag(), Ordering::SeqCst);
        self.lock().config = Some(config);
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
        *self.publisher() = Some(publisher);
        self.has_publisher.store(true, Ordering::SeqCst);
    }

    fn publisher(&self) -> MutexGuard<'_, Option<Publisher>> {
        self.publisher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `members` with `publish` (its lock held by the caller):
    /// the first publication since the promotion replaces whatever is
    /// there, until one succeeds.
    fn publish(&self, publish: &Publisher, members: &BTreeSet<String>) -> Result<(), String> {
        let first = !self.lock().published;
        publish(members, first)?;
        self.lock().published = true;
        Ok(())
    }

    /// This node became the primary: what replicas acknowledged before
    /// is forgotten, and the in-sync set starts empty, published (naming
    /// this node the primary) before any commit can be acknowledged;
    /// replicas join it as they show they hold everything.
    pub fn promoted(&self) {
        let publisher = self.publisher();
        self.stepped_down();
        {
            let mut state = self.lock();
            state.nodes.clear();
            state.degraded = false;
        }
        crate::metrics::sync_degraded(false);
        if let Some(publish) = publisher.as_ref() {
            if let Err(e) = self.publish(publish, &BTreeSet::new()) {
                log::warn!(
                    "synchronous replication: cannot publish this node as the primary with no \
                     replica in sync yet ({e}); commits time out until it can"
                );
            }
        }
    }

    /// Database `db` was deleted: what replicas held of it, and its
    /// unacknowledged transactions (`max-lag`), are forgotten.
    pub fn forget_db(&self, db: &str) {
        let mut state = self.lock();
        state.unheld.remove(db);
        for acked in state.nodes.values_mut() {
            acked.dbs.remove(db);
        }
    }

    /// This node is no longer the primary: it waits for nothing.
    pub fn stepped_down(&self) {
        let mut state = self.lock();
        state.members.clear();
        state.published = false;
        state.unpublished = false;
        state.unheld.clear();
        state.refusing = false;
    }

    /// Records what replica node `node` (at `peer`) holds: `dbs`, the
    /// newest position of each database it names (which may go back: a
    /// replica that dropped files it could not apply says so). `newest`
    /// reads this node's newest position of each database: a node that
    /// holds all of them may join the in-sync set, or end the degraded
    /// mode; a member that went back leaves it.
    pub fn record(
        &self,
        node: &str,
        peer: SocketAddr,
        dbs: BTreeMap<String, Position>,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) {
        let mut state = self.lock();
        let now = Instant::now();
        let mut went_back = false;
        for (name, pos) in dbs {
            state.release_held(&name, pos);
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
            let before = entry.dbs.insert(name, pos);
            went_back |= before.is_some_and(|held| held.txid > pos.txid);
        }
        let member = state.members.contains(node);
        let join = state.config.is_some_and(|config| {
            !member && (state.degraded || state.members.len() < config.sync as usize)
        });
        let republish = state.unpublished;
        self.changed.notify_all();
        drop(state);
        if went_back && member {
            self.leave(node);
        }
        if join {
            self.join(newest);
        } else if republish {
            let publisher = self.publisher();
            self.publish_if_held(publisher.as_ref(), newest);
        }
        self.changed.notify_all();
    }

    /// What replica node `node` listed when its stream began (`/stream
    /// ?node=`): recorded only for databases it has not acknowledged
    /// before, since its own acknowledgements (`record`) may be newer or
    /// older than the listing and arrive in any order with it.
    pub fn record_listing(
        &self,
        node: &str,
        peer: SocketAddr,
        mut dbs: BTreeMap<String, Position>,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) {
        if let Some(acked) = self.lock().nodes.get(node) {
            dbs.retain(|name, _| !acked.dbs.contains_key(name));
        }
        self.record(node, peer, dbs, newest);
    }

    /// A member of the in-sync set no longer holds what it acknowledged:
    /// the set without it is published first, then commits stop waiting
    /// for it.
    fn leave(&self, node: &str) {
        let publisher = self.publisher();
        let mut without = self.lock().members.clone();
        if !without.remove(node) {
            return;
        }
        if let Some(publish) = publisher.as_ref() {
            if let Err(e) = self.publish(publish, &without) {
                log::warn!(
                    "synchronous replication: replica node {node} went back, but the in-sync \
                     set without it cannot be published ({e}); commits wait for it"
                );
                return;
            }
        }
        log::warn!(
            "synchronous replication: replica node {node} no longer holds what it acknowledged \
             (it dropped received files); it leaves the in-sync set"
        );
        self.lock().members = without;
    }

    /// Adds the nodes that hold every newest position to the in-sync set
    /// while it is short (up to `replication.sync`), or ends the degraded
    /// mode once enough do: in memory first (commits wait for them at
    /// once), published once they hold everything (`publish_if_held`).
    fn join(&self, newest: &dyn Fn() -> Vec<(String, Position)>) {
        let publisher = self.publisher();
        let positions = newest();
        {
            let mut state = self.lock();
            let Some(config) = state.config else {
                return;
            };
            let needed = config.sync as usize;
            let ready: Vec<String> = state
                .nodes
                .keys()
                .filter(|node| {
                    !state.members.contains(*node) && holds_all(&state.nodes, node, &positions)
                })
                .cloned()
                .collect();
            if state.degraded {
                if state.members.len() + ready.len() < needed {
                    return;
                }
                state.degraded = false;
                crate::metrics::sync_degraded(false);
                log::info!(
                    "synchronous replication resumed: {needed} replicas hold the newest \
                     transaction of every database"
                );
            }
            for node in ready {
                if state.members.len() >= needed {
                    break;
                }
                state.members.insert(node);
                state.unpublished = true;
            }
        }
        self.changed.notify_all();
        self.publish_if_held(publisher.as_ref(), newest);
    }

    /// Publishes the in-sync set held in memory once every member holds
    /// every newest position read now: each transaction acknowledged
    /// before a member joined is at or before those (later ones wait for
    /// it). With `publisher`'s lock held by the caller.
    fn publish_if_held(
        &self,
        publisher: Option<&Publisher>,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) {
        let positions = newest();
        let members = {
            let state = self.lock();
            if !state.unpublished
                || !state
                    .members
                    .iter()
                    .all(|node| holds_all(&state.nodes, node, &positions))
            {
                return;
            }
            state.members.clone()
        };
        let Some(publish) = publisher else {
            self.lock().unpublished = false;
            return;
        };
        match self.publish(publish, &members) {
            Ok(()) => self.lock().unpublished = false,
            Err(e) => log::warn!(
                "synchronous replication: cannot publish the replicas in sync {members:?} \
                 ({e}); failover waits for the ones published before"
            ),
        }
    }

    /// Waits until `pos` of database `db` (its newest: the writer still
    /// holds SQLite's lock) is held by `replication.sync` nodes, the
    /// members of the in-sync set with a publisher. Returns at once when
    /// replication is asynchronous (or degraded). `newest` reads every
    /// database's newest position, when the wait times out: then members
    /// that did not answer are replaced by nodes that did, or per
    /// `sync-fallback` the primary degrades and this returns `Ok`, or it
    /// returns `Err`.
    pub fn wait_for(
        &self,
        db: &str,
        pos: Position,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) -> Result<(), SyncTimedOut> {
        let by_members = self.has_publisher.load(Ordering::SeqCst);
        let mut state = self.lock();
        let Some(config) = state.config.filter(|c| c.sync > 0 && !state.degraded) else {
            return Ok(());
        };
        let start = Instant::now();
        let deadline = start + config.sync_timeout;
        loop {
            if state.degraded || enough(&state, db, pos, by_members) {
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
        let result = self.timed_out(db, pos, start, newest);
        crate::metrics::sync_wait(start.elapsed());
        result
    }

    /// `wait_for` after `sync-timeout`: the members that did not answer
    /// are replaced, or the fallback applies.
    fn timed_out(
        &self,
        db: &str,
        pos: Position,
        start: Instant,
        newest: &dyn Fn() -> Vec<(String, Position)>,
    ) -> Result<(), SyncTimedOut> {
        let publisher = self.publisher();
        let positions = newest();
        let mut state = self.lock();
        let Some(config) = state.config else {
            return Ok(());
        };
        if state.degraded || enough(&state, db, pos, publisher.is_some()) {
            return Ok(());
        }
        let needed = config.sync as usize;
        let held = holding(&state.nodes, db, pos);
        if let Some(publish) = publisher.as_ref() {
            // Members that answered, then others that hold this and every
            // newest position.
            let old = state.members.clone();
            let mut replaced: BTreeSet<String> = old.intersection(&held).cloned().collect();
            for node in &held {
                if replaced.len() >= needed {
                    break;
                }
                if holds_all(&state.nodes, node, &others(&positions, db)) {
                    replaced.insert(node.clone());
                }
            }
            if replaced.len() >= needed {
                // Both sets are waited for while the new one is published.
                state.members = old.union(&replaced).cloned().collect();
                drop(state);
                let published = self.publish(publish, &replaced);
                state = self.lock();
                match published {
                    Ok(()) => {
                        log::warn!(
                            "db {db}: TXID {pos}: the replicas in sync {old:?} did not all \
                             acknowledge it within {} ms; the in-sync set is now {replaced:?}",
                            config.sync_timeout.as_millis()
                        );
                        state.members = replaced;
                        state.unpublished = false;
                        return Ok(());
                    }
                    Err(e) => {
                        log::warn!(
                            "db {db}: TXID {pos}: cannot publish the new in-sync set \
                             {replaced:?} ({e})"
                        );
                        state.members = old;
                    }
                }
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
        drop(state);
        self.degrade_with(
            publisher.as_ref(),
            &format!("db {db}: TXID {pos}: {timed_out}; replication.sync-fallback is async"),
        );
        Ok(())
    }

    /// Replication degrades to asynchronous for `why` (logged): a WAL
    /// commit that timed out but could not be taken back stands, held by
    /// fewer replicas than the in-sync set promises.
    pub fn degrade(&self, why: &str) {
        let publisher = self.publisher();
        if self.lock().config.is_some_and(|c| c.sync > 0) {
            self.degrade_with(publisher.as_ref(), why);
        }
    }

    /// Degrades (`publisher`'s lock held by the caller): only this node
    /// holds everything once commits stop waiting, so the empty set is
    /// published first.
    fn degrade_with(&self, publisher: Option<&Publisher>, why: &str) {
        if let Some(publish) = publisher {
            if let Err(e) = self.publish(publish, &BTreeSet::new()) {
                log::error!(
                    "synchronous replication degrades, but the empty in-sync set cannot be \
                     published ({e}): a replica published before may take over without the \
                     newest transactions"
                );
            }
        }
        let mut state = self.lock();
        state.degraded = true;
        state.members.clear();
        state.unpublished = false;
        crate::metrics::sync_degraded(true);
        log::warn!(
            "{why}: commits no longer wait for replicas until {} hold the newest transaction \
             of every database",
            state.config.map_or(0, |c| c.sync)
        );
        self.changed.notify_all();
    }

    /// The in-sync set (with a publisher): the nodes commits wait for.
    pub fn members(&self) -> Vec<String> {
        self.lock().members.iter().cloned().collect()
    }

    /// `replication.sync` (0: asynchronous), whether degraded, and the
    /// in-sync set when one is published (a Consul lease).
    pub fn sync_status(&self) -> (u32, bool, Option<Vec<String>>) {
        let published = self.has_publisher.load(Ordering::SeqCst);
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
                    .map(|(name, pos)| (name.clone(), *pos))
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
fn enough(state: &State, db: &str, pos: Position, by_members: bool) -> bool {
    let Some(config) = state.config else {
        return true;
    };
    let held = holding(&state.nodes, db, pos);
    if by_members {
        state.published
            && state.members.len() >= config.sync as usize
            && state.members.is_subset(&held)
    } else {
        held.len() >= config.sync as usize
    }
}

/// The nodes of `nodes` that acknowledged `pos` of `db` itself. A later
/// TXID does not count: no later transaction of `db` is recorded while a
/// commit waits (its writer holds SQLite's lock), so one would belong to
/// another history (a diverged replica, a transaction taken back).
fn holding(nodes: &BTreeMap<String, Acked>, db: &str, pos: Position) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, acked)| acked.dbs.get(db) == Some(&pos))
        .map(|(node, _)| node.clone())
        .collect()
}

/// Whether `node` acknowledged every position of `newest` (a database
/// with no transaction yet needs nothing).
fn holds_all(nodes: &BTreeMap<String, Acked>, node: &str, newest: &[(String, Position)]) -> bool {
    let Some(acked) = nodes.get(node) else {
        return false;
    };
    newest
        .iter()
        .all(|(name, pos)| pos.txid == 0 || acked.dbs.get(name) == Some(pos))
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
