//! Leader election: which node is primary, and this node's lease on it.
//!
//! A [`Leaser`] is the seam between the node and whatever decides the
//! primary. [`StaticLeaser`] takes the answer from the config (one fixed
//! primary, no external service); [`ConsulLeaser`] holds a lock on a Consul
//! KV key through a session with a TTL, so the primary moves when it stops
//! or dies. [`spawn_lease_thread`] runs a leaser on its own thread and tells
//! the node about role changes as [`LeaseEvent`]s over a channel.
//!
//! Timing, for a Consul lease with TTL `T`:
//!
//! - the holder renews its session every `T/3`;
//! - if it could not renew for `T/2` (Consul down, hung, or answering
//!   errors) it steps down, which is long before Consul could give the key
//!   to another node (Consul keeps a session at least `T` after its last
//!   renewal, and then the lock delay blocks the key);
//! - every renewal is bounded by a timeout that ends at that `T/2` deadline,
//!   so a hung Consul cannot hold the step-down back;
//! - on a clean stop the holder releases the key and destroys its session,
//!   so another candidate takes over at once (a crashed holder's key is
//!   freed only after the TTL plus the lock delay);
//! - nodes without the lease watch the key with Consul's blocking queries
//!   (`?index=`), so they learn of a new primary as soon as it is written.
//!
//! This file holds the seam (the [`Leaser`] trait, [`Lease`],
//! [`PrimaryInfo`], [`LeaseEvent`], the errors) and the static lease;
//! `lease/consul.rs` the Consul client (sessions, the KV key, Consul's
//! answers); `lease/driver.rs` the lease thread that turns a leaser into
//! role changes.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{LeaseConfig, LeaseKind};

mod consul;
mod driver;

pub use consul::{ConsulLeaser, SyncCandidate, SyncSet, SyncSetWriter};
pub use driver::{spawn_lease_thread, spawn_lease_thread_with, LeaseOptions};

/// How long one watch (a Consul blocking query) waits for a change before
/// it is issued again. A stop request is noticed within this time on a node
/// that does not hold the lease.
pub const WATCH_WAIT: Duration = Duration::from_secs(2);

/// How long a node that does not hold the lease keeps following the last
/// known primary while Consul cannot be asked, before it reports
/// [`LeaseEvent::NoPrimary`]. A primary that lost Consul too has stepped
/// down by then (half of the smallest TTL Consul allows, 10s).
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(5);

/// Who holds the lease: what a replica needs to find the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryInfo {
    /// The primary's hostname, shown in `.primary` on replicas.
    pub hostname: String,
    /// The URL replicas stream from, `http://host:port`.
    pub advertise_url: String,
}

/// A lease this node holds: proof that it is primary until it fails to
/// renew.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The Consul session that holds the key (`static` for a static lease).
    pub session: String,
    /// How long the lease lives without renewal; `None` never expires.
    pub ttl: Option<Duration>,
    /// When the lease was last known good: the moment the request that
    /// created or last renewed it was sent, so never later than the moment
    /// Consul restarted the session's TTL.
    pub renewed_at: Instant,
}

impl Lease {
    /// When the holder should renew next: a third of the TTL after the
    /// last renewal. `None` for a lease that never expires.
    pub fn renew_due(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl? / 3)
    }

    /// When a holder that could not renew must stop acting as primary: half
    /// the TTL after the last renewal, well before Consul could let another
    /// node take the key. `None` for a lease that never expires.
    pub fn step_down_at(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl? / 2)
    }
}

/// Decides who is primary. Implementations block (with timeouts); they are
/// meant to run on the lease thread.
pub trait Leaser: Send {
    /// Tries once to become primary: `Ok(Some(lease))` on success,
    /// `Ok(None)` when another node holds the lease (or may not be replaced
    /// yet).
    fn acquire(&mut self) -> Result<Option<Lease>, Error>;

    /// Extends the lease and records the renewal in `lease.renewed_at`.
    /// [`Error::Lost`] means the lease is gone for good; other errors mean
    /// the renewal could not be done and may be retried until
    /// [`Lease::step_down_at`].
    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error>;

    /// Gives the lease up (clean shutdown) so another candidate can take
    /// over at once.
    fn release(&mut self, lease: Lease) -> Result<(), Error>;

    /// The current primary, or `None` if no node holds the lease. With
    /// `index` from an earlier answer, blocks up to `wait` until something
    /// changes after it (unless `answer_never_changes`: then it answers at
    /// once); with `index` 0, answers at once. Returns the index to pass
    /// next time.
    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error>;

    /// True when `primary` never changes its answer (a static lease): the
    /// driver then waits itself, where it can see its stop flag, instead
    /// of blocking in `primary`.
    fn answer_never_changes(&self) -> bool {
        false
    }
}

/// Builds the leaser the config asks for; `config.hostname` and
/// `config.advertise_url` name the primary (static replica) or this node
/// (everything else).
pub fn leaser_from_config(config: &LeaseConfig) -> Box<dyn Leaser> {
    leaser_for_node(config, None)
}

/// `leaser_from_config`; a Consul candidate also reads the in-sync set
/// as `sync` before it takes the lease (`consul/sync_set.rs`).
pub fn leaser_for_node(config: &LeaseConfig, sync: Option<SyncCandidate>) -> Box<dyn Leaser> {
    let info = self_info(config);
    match (config.kind, &config.consul) {
        (LeaseKind::Consul, Some(consul)) => {
            let leaser = ConsulLeaser::new(consul, info);
            Box::new(match sync {
                Some(sync) => leaser.with_sync_candidate(sync),
                None => leaser,
            })
        }
        _ => Box::new(StaticLeaser::new(info, config.candidate)),
    }
}

/// The writer of this node's in-sync set when it is the primary of a
/// Consul lease; `None` for a static lease.
pub fn sync_set_writer(config: &LeaseConfig, node_id: String) -> Option<SyncSetWriter> {
    match (config.kind, &config.consul) {
        (LeaseKind::Consul, Some(consul)) => Some(SyncSetWriter::new(
            ConsulLeaser::new(consul, self_info(config)),
            node_id,
        )),
        _ => None,
    }
}

fn self_info(config: &LeaseConfig) -> PrimaryInfo {
    PrimaryInfo {
        hostname: config.hostname.clone(),
        advertise_url: config.advertise_url.clone(),
    }
}

/// Everything that can go wrong talking to Consul about the lease.
#[derive(Debug)]
pub enum Error {
    /// Consul could not be reached, or did not answer in time.
    Request {
        /// What was being done, e.g. "renew the Consul session".
        action: &'static str,
        url: String,
        message: String,
    },
    /// Consul answered with an HTTP status that was not expected.
    Status {
        action: &'static str,
        url: String,
        status: u16,
        /// The start of the answer's body, which usually says why.
        body: String,
    },
    /// Consul's answer could not be understood.
    BadResponse {
        action: &'static str,
        url: String,
        message: String,
    },
    /// The lease is gone: its session expired or was destroyed, or the key
    /// is no longer held by it.
    Lost {
        key: String,
        session: String,
        reason: String,
    },
    /// A renewal was not attempted because the step-down deadline passed.
    TooLate { key: String, session: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Request {
                action,
                url,
                message,
            } => write!(f, "cannot {action} at {url}: {message}"),
            Error::Status {
                action,
                url,
                status,
                body,
            } => write!(
                f,
                "cannot {action} at {url}: Consul answered HTTP {status}: {}",
                if body.is_empty() {
                    "(empty body)"
                } else {
                    body
                }
            ),
            Error::BadResponse {
                action,
                url,
                message,
            } => write!(
                f,
                "cannot {action} at {url}: Consul's answer is not understood: {message}"
            ),
            Error::Lost {
                key,
                session,
                reason,
            } => write!(
                f,
                "lost the lease on Consul key {key} (session {session}): {reason}"
            ),
            Error::TooLate { key, session } => write!(
                f,
                "could not renew the lease on Consul key {key} (session {session}) within half \
                 its TTL"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A lease decided by the config: the candidate node is always primary, the
/// others always follow the configured primary.
pub struct StaticLeaser {
    primary: PrimaryInfo,
    candidate: bool,
}

impl StaticLeaser {
    /// `primary` names the primary (this node when `candidate` is true).
    pub fn new(primary: PrimaryInfo, candidate: bool) -> StaticLeaser {
        StaticLeaser { primary, candidate }
    }
}

impl Leaser for StaticLeaser {
    fn acquire(&mut self) -> Result<Option<Lease>, Error> {
        if !self.candidate {
            return Ok(None);
        }
        Ok(Some(Lease {
            session: "static".to_string(),
            ttl: None,
            renewed_at: Instant::now(),
        }))
    }

    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error> {
        lease.renewed_at = Instant::now();
        Ok(())
    }

    fn release(&mut self, _lease: Lease) -> Result<(), Error> {
        Ok(())
    }

    fn primary(
        &mut self,
        _index: u64,
        _wait: Duration,
    ) -> Result<(Option<PrimaryInfo>, u64), Error> {
        Ok((Some(self.primary.clone()), 1))
    }

    fn answer_never_changes(&self) -> bool {
        true
    }
}

/// A role change reported by the lease thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This node holds the lease: it is the primary.
    Primary,
    /// Another node is primary; replicate from it.
    Replica(PrimaryInfo),
    /// No node is known to be primary (none holds the lease, or Consul
    /// cannot be asked). This node must not accept writes.
    NoPrimary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_deadlines_follow_the_ttl() {
        let now = Instant::now();
        let lease = Lease {
            session: "s".into(),
            ttl: Some(Duration::from_secs(12)),
            renewed_at: now,
        };
        assert_eq!(lease.renew_due(), Some(now + Duration::from_secs(4)));
        assert_eq!(lease.step_down_at(), Some(now + Duration::from_secs(6)));
        let forever = Lease { ttl: None, ..lease };
        assert_eq!(forever.renew_due(), None);
        assert_eq!(forever.step_down_at(), None);
    }
}
