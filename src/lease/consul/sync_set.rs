//! The in-sync set in Consul: which replicas hold every transaction the
//! primary acknowledged with synchronous replication (`store/acks.rs`
//! decides it), so that failover keeps them.
//!
//! The primary writes `<lease key>-sync` (a plain key, no session: it must
//! outlive the primary it describes) as JSON: `{"primary": "<node id>",
//! "primary_hostname": "...", "in_sync": ["<node id>", ...]}`. It writes
//! with check-and-set on the index of its own previous write, so a primary
//! that was deposed cannot overwrite its successor's set; its first write
//! after a promotion takes over whatever is there.
//!
//! A candidate reads the key before it tries to take the lease
//! ([`ConsulLeaser::may_take_lease`]): the primary named there and the
//! nodes of its set may; any other waits (`replication.sync-failover:
//! wait`), or with `take-over` tries after one session TTL of waiting,
//! giving the set's nodes the first chance, and logs an ERROR naming what
//! may be lost. A missing key, as with asynchronous replication, leaves
//! every candidate free; a primary without synchronous replication
//! deletes it when it takes the lease.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use log::{error, warn};
use serde::Deserialize;

use super::{decode_base64, encode_path, ConsulLeaser, KvEntry};
use crate::config::SyncFailover;
use crate::lease::Error;

/// The key's value.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SyncSet {
    /// The node id of the primary that wrote it.
    pub primary: String,
    #[serde(default)]
    pub primary_hostname: String,
    /// The node ids of the replicas that hold everything it acknowledged.
    #[serde(default)]
    pub in_sync: Vec<String>,
}

/// A candidate's part: its node id and what it does when left out.
#[derive(Debug, Clone)]
pub struct SyncCandidate {
    pub node_id: String,
    pub failover: SyncFailover,
    /// Since when it has been left out of the set (`take-over`'s wait),
    /// and whether that was logged.
    pub(super) left_out_since: Option<Instant>,
}

impl SyncCandidate {
    pub fn new(node_id: String, failover: SyncFailover) -> SyncCandidate {
        SyncCandidate {
            node_id,
            failover,
            left_out_since: None,
        }
    }
}

impl ConsulLeaser {
    fn sync_key(&self) -> String {
        format!("{}-sync", self.key)
    }

    fn sync_key_url(&self) -> String {
        format!("{}/v1/kv/{}", self.url, encode_path(&self.sync_key()))
    }

    /// The in-sync set and the key's modify index; `None` when there is
    /// no key.
    pub(super) fn read_sync_set(&self) -> Result<Option<(SyncSet, u64)>, Error> {
        let url = self.sync_key_url();
        let action = "read the in-sync set";
        let answer = self.call(action, &url, None, self.request_timeout)?;
        match answer.status {
            404 => Ok(None),
            200 => {
                let entries: Vec<KvEntry> = answer.parse_json()?;
                let key = self.sync_key();
                let Some(entry) = entries.into_iter().find(|e| e.key == key) else {
                    return Err(answer.bad(format!("no entry for key {key}")));
                };
                let bytes = decode_base64(entry.value.as_deref().unwrap_or("")).map_err(|m| {
                    answer.bad(format!("the value of key {key} is not base64: {m}"))
                })?;
                let set: SyncSet = serde_yaml::from_slice(&bytes).map_err(|e| {
                    answer.bad(format!("the value of key {key} is not an in-sync set: {e}"))
                })?;
                Ok(Some((set, entry.modify_index)))
            }
            _ => Err(answer.status_error()),
        }
    }

    /// Whether this candidate may try to take the lease now (see the
    /// module comment); `Ok(true)` without synchronous replication.
    pub(super) fn may_take_lease(&mut self) -> Result<bool, Error> {
        let Some(candidate) = &self.sync_candidate else {
            return Ok(true);
        };
        let me = candidate.node_id.clone();
        let set = self.read_sync_set()?;
        let Some(candidate) = self.sync_candidate.as_mut() else {
            return Ok(true);
        };
        let Some((set, _)) = set else {
            candidate.left_out_since = None;
            return Ok(true);
        };
        if set.primary == me || set.in_sync.contains(&me) {
            candidate.left_out_since = None;
            return Ok(true);
        }
        let since = match candidate.left_out_since {
            Some(since) => since,
            None => {
                let take_over = candidate.failover == SyncFailover::TakeOver;
                warn!(
                    "lease: not taking the lease: the last primary, node {} ({}), named only {:?} \
                     as holding every transaction it acknowledged, and this node ({me}) is not \
                     one of them; {}",
                    set.primary,
                    set.primary_hostname,
                    set.in_sync,
                    if take_over {
                        "replication.sync-failover is take-over: trying after one session TTL"
                    } else {
                        "waiting for one of them (replication.sync-failover: take-over would \
                         take it anyway)"
                    }
                );
                *candidate.left_out_since.insert(Instant::now())
            }
        };
        if candidate.failover == SyncFailover::Wait || since.elapsed() < self.ttl {
            return Ok(false);
        }
        error!(
            "lease: taking the lease though the last primary, node {} ({}), named only {:?} as \
             holding every transaction it acknowledged: transactions it acknowledged after this \
             node's positions may be lost (replication.sync-failover: take-over)",
            set.primary, set.primary_hostname, set.in_sync
        );
        Ok(true)
    }
}

/// The primary's writer of the in-sync set (`store::Publisher`).
pub struct SyncSetWriter {
    consul: ConsulLeaser,
    node_id: String,
    /// The modify index of this node's last write since its promotion.
    last_index: Mutex<Option<u64>>,
}

impl SyncSetWriter {
    pub fn new(consul: ConsulLeaser, node_id: String) -> SyncSetWriter {
        SyncSetWriter {
            consul,
            node_id,
            last_index: Mutex::new(None),
        }
    }

    /// Writes `in_sync` as this primary's set. `first`: the first write
    /// since this node became primary, which replaces whatever is there.
    pub fn publish(&self, in_sync: &BTreeSet<String>, first: bool) -> Result<(), String> {
        let mut last = self.last_index.lock().unwrap_or_else(|e| e.into_inner());
        if first {
            *last = None;
        }
        let index = match *last {
            Some(index) => index,
            None => match self.consul.read_sync_set() {
                Ok(None) => 0,
                Ok(Some((_, index))) if first => index,
                Ok(Some((set, index))) if set.primary == self.node_id => index,
                Ok(Some((set, _))) => {
                    return Err(format!(
                        "node {} ({}) has written its set since this node became primary",
                        set.primary, set.primary_hostname
                    ))
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        let value = format!(
            "{{\"primary\":{},\"primary_hostname\":{},\"in_sync\":[{}]}}",
            crate::json::string(&self.node_id),
            crate::json::string(&self.consul.me.hostname),
            in_sync
                .iter()
                .map(|node| crate::json::string(node))
                .collect::<Vec<_>>()
                .join(",")
        );
        let url = format!("{}?cas={index}", self.consul.sync_key_url());
        let written = self
            .consul
            .call(
                "write the in-sync set",
                &url,
                Some(&value),
                self.consul.request_timeout,
            )
            .and_then(|answer| {
                answer.expect_status(200)?;
                answer.parse_bool()
            })
            .map_err(|e| e.to_string())?;
        if !written {
            // Read again at the next write: this node's own, or another's.
            *last = None;
            return Err(format!(
                "key {} changed since this node last read it",
                self.consul.sync_key()
            ));
        }
        // The index of this write, for the next check-and-set.
        match self.consul.read_sync_set() {
            Ok(Some((set, index))) if set.primary == self.node_id => *last = Some(index),
            Ok(_) => *last = None,
            Err(e) => {
                *last = None;
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    /// Deletes the key: this primary does not replicate synchronously, so
    /// no candidate should wait for a set.
    pub fn delete(&self) -> Result<(), String> {
        let answer = self
            .consul
            .delete(&self.consul.sync_key_url())
            .map_err(|e| e.to_string())?;
        answer.expect_status(200).map_err(|e| e.to_string())
    }
}
