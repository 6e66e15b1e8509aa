//! The `replication:` keys: synchronous replication (`sync`,
//! `sync-timeout`, `sync-fallback`, `sync-failover`) and the time-bounded
//! asynchronous mode (`max-lag`, `max-lag-txns`, `max-lag-wait`). What each mode promises
//! is in README.md ("Guarantees"); how commits wait and writes are held,
//! in `store/acks.rs`.

use std::path::Path;
use std::time::Duration;

use super::raw::RawReplication;
use super::{duration_in, invalid, one_of, whole_number, Error};

/// Default `replication.sync-timeout`.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Range of `replication.sync-timeout`.
pub const SYNC_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// The longest `replication.max-lag` and `max-lag-wait`.
pub const MAX_LAG_LIMIT: Duration = Duration::from_secs(86_400);
/// The most replicas `replication.sync` may ask for.
pub const MAX_SYNC: u32 = 64;

/// How commits wait for replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// How many replicas must hold a commit durably before it returns
    /// (`replication.sync`); 0: asynchronous.
    pub sync: u32,
    /// How long a commit waits for them (`replication.sync-timeout`).
    pub sync_timeout: Duration,
    /// What a commit that waited that long does (`replication.sync-fallback`).
    pub sync_fallback: SyncFallback,
    /// What a Consul candidate left out of the in-sync set does
    /// (`replication.sync-failover`).
    pub sync_failover: SyncFailover,
    /// The oldest a transaction no replica holds may get before new
    /// writes are refused (`replication.max-lag`); zero: unbounded.
    pub max_lag: Duration,
    /// How long a write refused for `max_lag` first waits for a replica
    /// (`replication.max-lag-wait`).
    pub max_lag_wait: Duration,
    /// The most transactions of a database no replica holds before new
    /// commits are refused too (`replication.max-lag-txns`); 0: no bound.
    pub max_lag_txns: u64,
}

impl ReplicationConfig {
    /// Whether every write to a WAL must reach litefs: a synchronous
    /// commit waits at its commit frame, and `max-lag` refuses frames.
    pub fn wal_through_litefs(&self) -> bool {
        self.sync > 0 || self.bounds_lag()
    }

    /// Whether `max-lag` or `max-lag-txns` bounds asynchronous replication.
    pub fn bounds_lag(&self) -> bool {
        !self.max_lag.is_zero() || self.max_lag_txns > 0
    }
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            sync: 0,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            sync_fallback: SyncFallback::Fail,
            sync_failover: SyncFailover::Wait,
            max_lag: Duration::ZERO,
            max_lag_wait: Duration::ZERO,
            max_lag_txns: 0,
        }
    }
}

/// What a synchronous commit does when its replicas do not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFallback {
    /// The commit fails (SQLite reports an I/O error) and is taken back.
    Fail,
    /// The commit returns, and the primary replicates asynchronously
    /// until enough replicas hold its newest transactions again.
    Async,
}

/// What a candidate for a Consul lease does when the last primary's
/// in-sync set leaves it out (`lease/consul/sync_set.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFailover {
    /// It does not take the lease while a node of the set may.
    Wait,
    /// It takes the lease after one session TTL, logging an ERROR that
    /// names what may be lost.
    TakeOver,
}

/// Resolves the `replication:` section.
pub(super) fn replication_config(
    source: &Path,
    raw: Option<RawReplication>,
) -> Result<ReplicationConfig, Error> {
    let raw = raw.unwrap_or_default();
    let mut config = ReplicationConfig::default();
    if let Some(value) = raw.sync {
        let expected =
            format!("how many replicas must hold each commit, 0 to {MAX_SYNC} (0: asynchronous)");
        let n = whole_number(
            source,
            "replication.sync",
            &value,
            u64::from(MAX_SYNC),
            &expected,
        )?;
        config.sync = n as u32;
    }
    if let Some(value) = raw.sync_timeout {
        let (min, max) = SYNC_TIMEOUT_RANGE;
        config.sync_timeout = duration_in(source, "replication.sync-timeout", &value, min, max)?;
    }
    config.sync_fallback = one_of(
        source,
        "replication.sync-fallback",
        raw.sync_fallback.as_deref(),
        SyncFallback::Fail,
        "a fallback",
        &[("fail", SyncFallback::Fail), ("async", SyncFallback::Async)],
    )?;
    config.sync_failover = one_of(
        source,
        "replication.sync-failover",
        raw.sync_failover.as_deref(),
        SyncFailover::Wait,
        "a failover policy",
        &[
            ("wait", SyncFailover::Wait),
            ("take-over", SyncFailover::TakeOver),
        ],
    )?;
    if let Some(value) = raw.max_lag {
        config.max_lag = duration_in(
            source,
            "replication.max-lag",
            &value,
            Duration::ZERO,
            MAX_LAG_LIMIT,
        )?;
    }
    if let Some(value) = raw.max_lag_txns {
        let expected = "a whole number of transactions (0: no bound)";
        config.max_lag_txns = whole_number(
            source,
            "replication.max-lag-txns",
            &value,
            u64::MAX,
            expected,
        )?;
    }
    if config.sync > 0 && config.bounds_lag() {
        return Err(invalid(
            source,
            "replication.max-lag",
            "bounds asynchronous replication (so does max-lag-txns); with replication.sync \
             set every commit waits for its replicas already: leave one of them out",
        ));
    }
    if let Some(value) = raw.max_lag_wait {
        config.max_lag_wait = duration_in(
            source,
            "replication.max-lag-wait",
            &value,
            Duration::ZERO,
            MAX_LAG_LIMIT,
        )?;
    }
    Ok(config)
}
