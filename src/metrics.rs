//! Prometheus metrics: a process-wide registry of plain counters that the
//! commit path, the replica's apply, the lease, the replication stream, the
//! HTTP server and the mount count into, and [`render`], which writes them
//! in Prometheus's text exposition format (0.0.4) for `GET /metrics`.
//!
//! What the store already knows (a database's TXID and size, the replica's
//! lag, the role) is not tracked here: the HTTP server reads it at render
//! time and passes it in as a [`Snapshot`], so this module depends on
//! nothing else in litefs and every layer may count into it.
//!
//! Counting costs one relaxed atomic add (FUSE requests, lease, replica
//! connections) or one short mutex (a commit, an apply, an HTTP request,
//! each of which costs an fsync or a network round trip anyway). Nothing
//! is logged. README.md ("Metrics") lists the series and what to alert on.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds, in seconds, of the apply-duration histogram's buckets
/// (an apply is typically a millisecond; `+Inf` is implied).
const APPLY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The paths the HTTP server serves; any other path is counted as `other`,
/// so a client cannot add series by asking for made-up paths.
const HTTP_PATHS: [&str; 6] = ["/stream", "/info", "/metrics", "/import", "/export", "/ack"];

/// Defines [`FuseOp`] and `FUSE_OPS`, each kind's label (`op as usize`).
macro_rules! fuse_ops {
    ($($op:ident = $label:literal),* $(,)?) => {
        /// The kinds of FUSE request the mount answers, counted per kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum FuseOp { $($op),* }
        const FUSE_OPS: [&str; [$($label),*].len()] = [$($label),*];
    };
}

fuse_ops! {
    Lookup = "lookup", Getattr = "getattr", Setattr = "setattr", Mknod = "mknod",
    Mkdir = "mkdir", Unlink = "unlink", Rmdir = "rmdir", Symlink = "symlink",
    Rename = "rename", Link = "link", Open = "open", Read = "read", Write = "write",
    Flush = "flush", Release = "release", Fsync = "fsync", Readdir = "readdir",
    Fsyncdir = "fsyncdir", Statfs = "statfs", Getxattr = "getxattr",
    Listxattr = "listxattr", Opendir = "opendir", Access = "access", Create = "create",
    Ioctl = "ioctl", Fallocate = "fallocate", Lseek = "lseek",
    CopyFileRange = "copy_file_range",
}

/// The errnos the mount answers with, by name; any other is `other`.
const ERRNOS: [(i32, &str); 12] = [
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EACCES, "EACCES"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EROFS, "EROFS"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::EBUSY, "EBUSY"),
];

/// A database's counters.
#[derive(Debug, Default)]
struct DbCounters {
    commits: u64,
    ltx_bytes: u64,
    apply: Histogram,
}

/// A histogram over [`APPLY_BUCKETS`]; `buckets[i]` counts the durations
/// in `(bound[i-1], bound[i]]` (made cumulative when rendered).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; APPLY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = APPLY_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Its `_bucket`, `_sum` and `_count` samples, each with `labels`.
    fn samples(&self, w: &mut Exposition, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        for (le, n) in APPLY_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let le = le.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            w.sample("_bucket", &with_le, cumulative);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        w.sample("_bucket", &with_le, self.count);
        w.sample("_sum", labels, self.sum);
        w.sample("_count", labels, self.count);
    }
}

static DBS: Mutex<BTreeMap<String, DbCounters>> = Mutex::new(BTreeMap::new());
/// Requests by (path label, status).
static HTTP: Mutex<BTreeMap<(&'static str, u16), u64>> = Mutex::new(BTreeMap::new());
static LEASE_RENEWALS: AtomicU64 = AtomicU64::new(0);
static LEASE_RENEWAL_FAILURES: AtomicU64 = AtomicU64::new(0);
static REPLICA_CONNECTS: AtomicU64 = AtomicU64::new(0);
/// Synchronous replication: how long commits waited for replicas.
static SYNC_WAIT: Mutex<Histogram> = Mutex::new(Histogram {
    buckets: [0; APPLY_BUCKETS.len()],
    count: 0,
    sum: 0.0,
});
static SYNC_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static SYNC_DEGRADATIONS: AtomicU64 = AtomicU64::new(0);
static SYNC_DEGRADED: AtomicU64 = AtomicU64::new(0);
static MAX_LAG_REFUSALS: AtomicU64 = AtomicU64::new(0);
static REPLICA_STREAM_FAILURES: AtomicU64 = AtomicU64::new(0);
static FUSE_REQUESTS: [AtomicU64; FUSE_OPS.len()] = [const { AtomicU64::new(0) }; FUSE_OPS.len()];
/// Errors by operation and errno (the last slot is `other`).
static FUSE_ERRORS: [[AtomicU64; ERRNOS.len() + 1]; FUSE_OPS.len()] =
    [const { [const { AtomicU64::new(0) }; ERRNOS.len() + 1] }; FUSE_OPS.len()];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_db(db: &str, f: impl FnOnce(&mut DbCounters)) {
    let mut dbs = lock(&DBS);
    match dbs.get_mut(db) {
        Some(counters) => f(counters),
        None => f(dbs.entry(db.to_string()).or_default()),
    }
}

/// Counts a transaction committed on the primary and its LTX file's size.
pub fn commit(db: &str, ltx_bytes: u64) {
    with_db(db, |c| {
        c.commits += 1;
        c.ltx_bytes += ltx_bytes;
    });
}

/// Records how long applying one received LTX file took on a replica.
pub fn apply(db: &str, took: Duration) {
    with_db(db, |c| c.apply.observe(took));
}

/// Records how long a synchronous commit waited for its replicas.
pub fn sync_wait(took: Duration) {
    lock(&SYNC_WAIT).observe(took);
}

/// Counts a synchronous commit whose replicas did not answer in time.
pub fn sync_timeout() {
    SYNC_TIMEOUTS.fetch_add(1, Relaxed);
}

/// Counts a write refused for `replication.max-lag`.
pub fn max_lag_refusal() {
    MAX_LAG_REFUSALS.fetch_add(1, Relaxed);
}

/// The primary degraded to asynchronous replication (`true`, counted), or
/// is back to synchronous.
pub fn sync_degraded(degraded: bool) {
    if degraded {
        SYNC_DEGRADATIONS.fetch_add(1, Relaxed);
    }
    SYNC_DEGRADED.store(u64::from(degraded), Relaxed);
}

/// Counts a lease renewal, successful or not, and passes its result on.
pub fn lease_renewal<T, E>(result: Result<T, E>) -> Result<T, E> {
    let counter = match result {
        Ok(_) => &LEASE_RENEWALS,
        Err(_) => &LEASE_RENEWAL_FAILURES,
    };
    counter.fetch_add(1, Relaxed);
    result
}

/// Counts a replication stream this replica opened to its primary.
pub fn replica_connected() {
    REPLICA_CONNECTS.fetch_add(1, Relaxed);
}

/// Counts a replication stream that failed or could not be opened.
pub fn replica_stream_failed() {
    REPLICA_STREAM_FAILURES.fetch_add(1, Relaxed);
}

/// Counts an HTTP request answered with `status`; `path` is the request's
/// path (without the query), counted as `other` unless the server serves it.
pub fn http_request(path: &str, status: u16) {
    let label = HTTP_PATHS
        .iter()
        .find(|p| **p == path)
        .copied()
        .unwrap_or("other");
    *lock(&HTTP).entry((label, status)).or_default() += 1;
}

/// Counts a FUSE request of kind `op`.
pub fn fuse_op(op: FuseOp) {
    FUSE_REQUESTS[op as usize].fetch_add(1, Relaxed);
}

/// Counts a FUSE request of kind `op` answered with the error `errno`.
pub fn fuse_error(op: FuseOp, errno: i32) {
    let slot = ERRNOS
        .iter()
        .position(|(code, _)| *code == errno)
        .unwrap_or(ERRNOS.len());
    FUSE_ERRORS[op as usize][slot].fetch_add(1, Relaxed);
}

/// What the node knows at render time and this module does not track.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Whether this node is the primary.
    pub primary: bool,
    /// The replica's lag (the mount's `.lag`); zero on the primary.
    pub lag: Duration,
    /// Replication streams this node serves now, and since it started.
    pub streams_active: u64,
    pub streams_served: u64,
    /// Every database of the store.
    pub dbs: Vec<DbState>,
    /// Replica nodes that hold the newest position of every database
    /// (synchronous replication's in-sync set).
    pub replicas_in_sync: u64,
    /// With `replication.max-lag`: the age of the oldest transaction no
    /// replica has acknowledged.
    pub unacknowledged: Duration,
}

/// A database's position and size, read from the store.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    pub name: String,
    pub txid: u64,
    pub size_bytes: u64,
    /// Seconds since the database was last caught up (0 on the primary).
    pub lag_seconds: f64,
}

/// Every metric in the text exposition format: per database, then per node.
pub fn render(snapshot: &Snapshot) -> String {
    let mut w = Exposition::default();
    let counters = lock(&DBS);
    // The store's databases, and any counted that the store no longer has.
    let mut dbs: BTreeMap<&str, (Option<&DbState>, Option<&DbCounters>)> = BTreeMap::new();
    for db in &snapshot.dbs {
        dbs.entry(&db.name).or_default().0 = Some(db);
    }
    for (name, c) in counters.iter() {
        dbs.entry(name).or_default().1 = Some(c);
    }

    w.family("litefs_db_txid", "gauge", "TXID of the newest transaction.");
    for (db, (state, _)) in &dbs {
        if let Some(state) = state {
            w.sample("", &[("db", db)], state.txid);
        }
    }
    let help = "Database size (page size times page count) as of its newest transaction.";
    w.family("litefs_db_size_bytes", "gauge", help);
    for (db, (state, _)) in &dbs {
        if let Some(state) = state {
            w.sample("", &[("db", db)], state.size_bytes);
        }
    }
    let help = "Seconds since this database last had applied everything its primary had \
                sent; 0 on the primary.";
    w.family("litefs_db_replication_lag_seconds", "gauge", help);
    for (db, (state, _)) in &dbs {
        if let Some(state) = state {
            w.sample("", &[("db", db)], state.lag_seconds);
        }
    }
    let help = "Transactions committed on this node while it was the primary.";
    w.family("litefs_db_commits_total", "counter", help);
    for (db, (_, c)) in &dbs {
        w.sample("", &[("db", db)], c.map_or(0, |c| c.commits));
    }
    let help = "Bytes of LTX files written for transactions committed on this node.";
    w.family("litefs_db_ltx_written_bytes_total", "counter", help);
    for (db, (_, c)) in &dbs {
        w.sample("", &[("db", db)], c.map_or(0, |c| c.ltx_bytes));
    }
    let help = "Time to apply one LTX file received from the primary (SQLite's locks held).";
    w.family("litefs_db_apply_duration_seconds", "histogram", help);
    for (db, (_, c)) in &dbs {
        let empty = Histogram::default();
        let h = c.map_or(&empty, |c| &c.apply);
        if snapshot.primary && h.count == 0 {
            continue;
        }
        h.samples(&mut w, &[("db", db)]);
    }
    drop(counters);

    let help = "1 when this node is the primary, 0 when it is a replica or read-only.";
    w.family("litefs_primary", "gauge", help);
    w.sample("", &[], u8::from(snapshot.primary));
    let help = "Seconds since this replica last had applied everything its primary had \
                sent (the mount's .lag); 0 on the primary.";
    w.family("litefs_replication_lag_seconds", "gauge", help);
    let lag = if snapshot.primary {
        Duration::ZERO
    } else {
        snapshot.lag
    };
    w.sample("", &[], lag.as_secs_f64());
    let help = "Lease renewals that succeeded.";
    w.family("litefs_lease_renewals_total", "counter", help);
    w.sample("", &[], LEASE_RENEWALS.load(Relaxed));
    let help = "Lease renewals that failed (Consul unreachable or the session lost).";
    w.family("litefs_lease_renewal_failures_total", "counter", help);
    w.sample("", &[], LEASE_RENEWAL_FAILURES.load(Relaxed));
    let help = "Replication streams served to replicas now.";
    w.family("litefs_streams_active", "gauge", help);
    w.sample("", &[], snapshot.streams_active);
    let help = "Replication streams served to replicas since the start.";
    w.family("litefs_streams_served_total", "counter", help);
    w.sample("", &[], snapshot.streams_served);
    let help = "Replication streams this replica opened to a primary (more than one: reconnects).";
    w.family("litefs_replica_connects_total", "counter", help);
    w.sample("", &[], REPLICA_CONNECTS.load(Relaxed));
    let help = "Replication streams to a primary that failed or could not be opened.";
    w.family("litefs_replica_stream_failures_total", "counter", help);
    w.sample("", &[], REPLICA_STREAM_FAILURES.load(Relaxed));

    let help = "Time synchronous commits waited for their replicas (replication.sync).";
    w.family("litefs_sync_wait_seconds", "histogram", help);
    lock(&SYNC_WAIT).samples(&mut w, &[]);
    let help = "Synchronous commits whose replicas did not acknowledge within \
                replication.sync-timeout.";
    w.family("litefs_sync_timeouts_total", "counter", help);
    w.sample("", &[], SYNC_TIMEOUTS.load(Relaxed));
    let help = "Times the primary degraded to asynchronous replication \
                (replication.sync-fallback: async).";
    w.family("litefs_sync_degradations_total", "counter", help);
    w.sample("", &[], SYNC_DEGRADATIONS.load(Relaxed));
    let help = "1 while the primary replicates asynchronously after a timeout.";
    w.family("litefs_sync_degraded", "gauge", help);
    w.sample("", &[], SYNC_DEGRADED.load(Relaxed));
    let help = "Replica nodes that acknowledged the newest transaction of every database.";
    w.family("litefs_replicas_in_sync", "gauge", help);
    w.sample("", &[], snapshot.replicas_in_sync);

    let help = "Writes refused because no replica acknowledged transactions older than \
                replication.max-lag.";
    w.family("litefs_max_lag_refusals_total", "counter", help);
    w.sample("", &[], MAX_LAG_REFUSALS.load(Relaxed));
    let help = "With replication.max-lag: seconds since the oldest transaction no replica \
                has acknowledged was committed (0: none).";
    w.family("litefs_unacknowledged_seconds", "gauge", help);
    w.sample("", &[], snapshot.unacknowledged.as_secs_f64());

    let help = "HTTP requests answered, by path (other: any path not served) and status.";
    w.family("litefs_http_requests_total", "counter", help);
    for ((path, status), n) in lock(&HTTP).iter() {
        w.sample("", &[("path", path), ("status", &status.to_string())], *n);
    }
    let help = "FUSE requests answered by the mount, by operation.";
    w.family("litefs_fuse_operations_total", "counter", help);
    for (op, n) in FUSE_OPS.iter().zip(&FUSE_REQUESTS) {
        w.sample("", &[("op", op)], n.load(Relaxed));
    }
    let help = "FUSE requests answered with an error, by operation and errno.";
    w.family("litefs_fuse_errors_total", "counter", help);
    for (op, errors) in FUSE_OPS.iter().zip(&FUSE_ERRORS) {
        let errnos = ERRNOS.iter().map(|(_, name)| *name).chain(["other"]);
        for (errno, n) in errnos.zip(errors) {
            let n = n.load(Relaxed);
            if n > 0 {
                w.sample("", &[("op", op), ("errno", errno)], n);
            }
        }
    }
    w.out
}

/// The text being written, and the metric whose samples follow.
#[derive(Default)]
struct Exposition {
    out: String,
    name: &'static str,
}

impl Exposition {
    /// Starts a metric: its `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self.name = name;
    }

    /// One sample of the current metric (its name + `suffix`, for a
    /// histogram's series): `name{label="value",...} value`.
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Display) {
        let out = &mut self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        for (i, (label, value)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and
/// newline escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut w = Exposition::default();
        w.family("m", "gauge", "a \\ and a\nnewline");
        w.sample("", &[("db", "q\"\n")], 1);
        let want = "# HELP m a \\\\ and a\\nnewline\n# TYPE m gauge\nm{db=\"q\\\"\\n\"} 1\n";
        assert_eq!(w.out, want);
    }

    /// The value of the sample `series` (name and labels) in `text`, 0
    /// when it is not there; the sample must appear at most once.
    fn sample_value(text: &str, series: &str) -> u64 {
        let values: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(values.len() <= 1, "{series} appears twice: {text}");
        values.first().copied().unwrap_or(0)
    }

    #[test]
    fn fuse_ops_are_counted_under_their_label() {
        // The counters are the process's, so changes are compared (no
        // other test counts copy_file_range).
        let op = "litefs_fuse_operations_total{op=\"copy_file_range\"}";
        let errnos: Vec<&str> = ERRNOS
            .iter()
            .map(|(_, name)| *name)
            .chain(["other"])
            .collect();
        let errors = |text: &str| -> Vec<u64> {
            let series = |errno| {
                format!("litefs_fuse_errors_total{{op=\"copy_file_range\",errno=\"{errno}\"}}")
            };
            errnos
                .iter()
                .map(|e| sample_value(text, &series(e)))
                .collect()
        };
        let text = render(&Snapshot::default());
        let (ops_before, errors_before) = (sample_value(&text, op), errors(&text));
        fuse_op(FuseOp::CopyFileRange);
        fuse_op(FuseOp::CopyFileRange);
        fuse_error(FuseOp::CopyFileRange, libc::ENOSYS);
        fuse_error(FuseOp::CopyFileRange, libc::E2BIG);
        let text = render(&Snapshot::default());
        assert_eq!(sample_value(&text, op) - ops_before, 2, "{text}");
        // One ENOSYS, one E2BIG (not named: `other`), no other errno.
        let changed: BTreeMap<&str, u64> = errnos
            .iter()
            .zip(errors(&text).iter().zip(&errors_before))
            .map(|(errno, (after, before))| (*errno, after - before))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            changed,
            BTreeMap::from([("ENOSYS", 1), ("other", 1)]),
            "{text}"
        );
    }

    #[test]
    fn the_apply_histogram_is_cumulative() {
        let db = "metrics-unit-test.db";
        apply(db, Duration::from_micros(100));
        apply(db, Duration::from_millis(20));
        apply(db, Duration::from_secs(60));
        let text = render(&Snapshot::default());
        let line = |le: &str| {
            format!("litefs_db_apply_duration_seconds_bucket{{db=\"{db}\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 1\n", line("0.0005"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("0.025"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("5"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", line("+Inf"))), "{text}");
        assert!(text.contains(&format!(
            "litefs_db_apply_duration_seconds_count{{db=\"{db}\"}} 3\n"
        )));
    }

    #[test]
    fn unknown_http_paths_share_one_label() {
        http_request("/no/such/path?x", 404);
        http_request("/another", 404);
        let text = render(&Snapshot::default());
        assert!(text.contains("litefs_http_requests_total{path=\"other\",status=\"404\"}"));
        assert!(!text.contains("/no/such/path"));
    }
}
