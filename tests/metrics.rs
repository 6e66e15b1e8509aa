//! `GET /metrics` end to end: real litefs processes (a primary and a
//! replica, and a Consul-leased node), their metrics checked against what
//! the nodes show elsewhere (`-pos`, the LTX files, the database file) and
//! fed to `promtool check metrics` (Debian's prometheus package, unpacked
//! by scripts/setup.sh). Needs root (or /dev/fuse access), the sqlite3 CLI,
//! promtool and Consul.

mod common;
#[path = "common/consul.rs"]
mod consul;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{
    http_request, replica_yaml, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node, CATCH_UP,
    DEADLINE,
};
use consul::ConsulAgent;

/// A database name the labels must escape (a quote and a backslash).
const ODD_DB: &str = "q\"uote\\back.db";

/// A node's metrics: the text, checked to be a 200 in the exposition
/// format, and its samples by `name{labels}`.
fn scrape(node: &Node) -> (String, BTreeMap<String, f64>) {
    let (status, content_type, text) = http_request(node.port, "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            (series.to_string(), value)
        })
        .collect();
    (text, samples)
}

/// The value of one series; fails naming the series when it is missing.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

/// The promtool to run: `$LITEFS_PROMTOOL`, else the one scripts/setup.sh
/// unpacks, else `promtool` on PATH.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("LITEFS_PROMTOOL") {
        return PathBuf::from(path);
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/prometheus/usr/bin/promtool");
    if local.exists() {
        return local;
    }
    PathBuf::from("promtool")
}

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); run scripts/setup.sh"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn assert_promtool_accepts(text: &str) {
    let (ok, said) = promtool_check(text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics complained:\n{said}\n--- the metrics ---\n{text}"
    );
}

#[test]
fn promtool_is_not_a_rubber_stamp() {
    // A counter without `_total` and a duplicate series: both must fail,
    // or the acceptance below would prove nothing.
    let (ok, said) = promtool_check("# HELP x_count A.\n# TYPE x_count counter\nx_count 1\n");
    assert!(!ok, "promtool accepted a counter without _total: {said}");
    let (ok, said) = promtool_check("# TYPE y gauge\ny 1\ny 2\n");
    assert!(!ok, "promtool accepted a duplicate series: {said}");
}

#[test]
fn a_primary_and_its_replica_report_what_they_did() {
    let dir = temp_dir("metrics");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    sqlite3_ok(
        &primary.db("m.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(1); INSERT INTO t VALUES(2); \
         INSERT INTO t VALUES(3);",
    );
    sqlite3_ok(&primary.db(ODD_DB), "CREATE TABLE t(x);");
    let err = std::fs::create_dir(primary.mount.join("dir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    wait_caught_up(&primary, &replica, "m.db");
    wait_caught_up(&primary, &replica, ODD_DB);
    let (status, _, _) = http_request(primary.port, "GET", "/no/such/path", None);
    assert_eq!(status, 404);

    let (text, p) = scrape(&primary);
    assert_promtool_accepts(&text);
    let txid = common::txid(&primary, "m.db") as f64;
    assert_eq!(txid, 4.0);
    assert_eq!(value(&p, r#"litefs_db_txid{db="m.db"}"#), txid);
    assert_eq!(value(&p, r#"litefs_db_commits_total{db="m.db"}"#), txid);
    let ltx_bytes: u64 = primary
        .ltx_files("m.db")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let written = r#"litefs_db_ltx_written_bytes_total{db="m.db"}"#;
    assert_eq!(value(&p, written), ltx_bytes as f64);
    let size = std::fs::metadata(primary.data_db("m.db")).unwrap().len();
    assert_eq!(value(&p, r#"litefs_db_size_bytes{db="m.db"}"#), size as f64);
    let odd = r#"litefs_db_txid{db="q\"uote\\back.db"}"#;
    assert_eq!(value(&p, odd), common::txid(&primary, ODD_DB) as f64);
    assert_eq!(value(&p, "litefs_primary"), 1.0);
    assert_eq!(value(&p, "litefs_replication_lag_seconds"), 0.0);
    assert_eq!(
        value(&p, r#"litefs_db_replication_lag_seconds{db="m.db"}"#),
        0.0
    );
    assert_eq!(value(&p, "litefs_streams_active"), 1.0);
    assert!(value(&p, "litefs_streams_served_total") >= 1.0);
    assert_eq!(value(&p, "litefs_replica_connects_total"), 0.0);
    let stream_ok = r#"litefs_http_requests_total{path="/stream",status="200"}"#;
    assert!(value(&p, stream_ok) >= 1.0);
    let other = r#"litefs_http_requests_total{path="other",status="404"}"#;
    assert_eq!(value(&p, other), 1.0);
    assert!(!text.contains("/no/such/path"), "{text}");
    for op in ["lookup", "create", "write", "fsync"] {
        let ops = format!("litefs_fuse_operations_total{{op=\"{op}\"}}");
        assert!(value(&p, &ops) > 0.0, "{ops}");
    }
    assert_eq!(
        value(&p, r#"litefs_fuse_operations_total{op="mkdir"}"#),
        1.0
    );
    let mkdir = r#"litefs_fuse_errors_total{op="mkdir",errno="EPERM"}"#;
    assert_eq!(value(&p, mkdir), 1.0);
    // No apply on the primary, so no histogram series either.
    assert!(!text.contains("litefs_db_apply_duration_seconds_count"));

    let (text, r) = scrape(&replica);
    assert_promtool_accepts(&text);
    assert_eq!(value(&r, r#"litefs_db_txid{db="m.db"}"#), txid);
    assert_eq!(value(&r, r#"litefs_db_commits_total{db="m.db"}"#), 0.0);
    let size_on_replica = std::fs::metadata(replica.data_db("m.db")).unwrap().len();
    assert_eq!(size_on_replica, size);
    assert_eq!(value(&r, r#"litefs_db_size_bytes{db="m.db"}"#), size as f64);
    let count = r#"litefs_db_apply_duration_seconds_count{db="m.db"}"#;
    let applied = value(&r, count);
    assert!(applied > 0.0 && applied <= txid, "{applied} applies");
    let inf = r#"litefs_db_apply_duration_seconds_bucket{db="m.db",le="+Inf"}"#;
    assert_eq!(value(&r, inf), applied);
    assert!(value(&r, r#"litefs_db_apply_duration_seconds_sum{db="m.db"}"#) > 0.0);
    assert_eq!(value(&r, "litefs_primary"), 0.0);
    let lag = value(&r, "litefs_replication_lag_seconds");
    assert!((0.0..CATCH_UP.as_secs_f64()).contains(&lag), "lag {lag}");
    let db_lag = value(&r, r#"litefs_db_replication_lag_seconds{db="m.db"}"#);
    assert!(
        (0.0..CATCH_UP.as_secs_f64()).contains(&db_lag),
        "lag {db_lag}"
    );
    assert_eq!(value(&r, "litefs_streams_active"), 0.0);
    assert!(value(&r, "litefs_replica_connects_total") >= 1.0);
    // The applier takes SQLite's locks through the replica's own mount.
    assert!(value(&r, r#"litefs_fuse_operations_total{op="open"}"#) > 0.0);

    // One more transaction: one more commit there, one more apply here.
    sqlite3_ok(&primary.db("m.db"), "INSERT INTO t VALUES(4);");
    wait_caught_up(&primary, &replica, "m.db");
    let (_, p) = scrape(&primary);
    assert_eq!(
        value(&p, r#"litefs_db_commits_total{db="m.db"}"#),
        txid + 1.0
    );
    let (_, r) = scrape(&replica);
    assert_eq!(value(&r, r#"litefs_db_txid{db="m.db"}"#), txid + 1.0);
    assert_eq!(value(&r, count), applied + 1.0);
    // Scrapes count too.
    let scrapes = r#"litefs_http_requests_total{path="/metrics",status="200"}"#;
    assert!(value(&r, scrapes) >= 1.0);
}

#[test]
fn with_a_token_metrics_need_it_too() {
    let dir = temp_dir("metrics-token");
    let node = Node::start_in(&dir.path().join("node"), "  token: \"s3cret\"\n");
    for token in [None, Some("wrong")] {
        let (status, _, body) = http_request(node.port, "GET", "/metrics", token);
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains("litefs_"), "{body}");
    }
    // A request is counted just after its answer is sent, so a scrape
    // right after the second refusal may not show it yet.
    let refused = r#"litefs_http_requests_total{path="/metrics",status="401"} 2"#;
    wait_for("both refusals to be counted", CATCH_UP, || {
        let (status, _, body) = http_request(node.port, "GET", "/metrics", Some("s3cret"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\nlitefs_primary 1\n"), "{body}");
        body.contains(refused)
    });
    let (status, _, _) = http_request(node.port, "POST", "/metrics", Some("s3cret"));
    assert_eq!(status, 405);
}

#[test]
fn lease_renewals_and_their_failures_are_counted() {
    let consul = ConsulAgent::start();
    let dir = temp_dir("metrics-lease");
    let node = Node::start_with(&dir.path().join("node"), |port| {
        format!(
            "lease:\n  type: consul\n  hostname: node\n  advertise-url: \
             \"http://127.0.0.1:{port}\"\n  consul:\n    url: \"{}\"\n    key: \
             \"litefs/metrics\"\n    ttl: 10s\n    lock-delay: 1s\n",
            consul.url
        )
    });
    let metric = |series: &str| scrape(&node).1.get(series).copied().unwrap_or(-1.0);
    // Renewals come every third of the TTL.
    wait_for("a lease renewal", DEADLINE, || {
        metric("litefs_lease_renewals_total") >= 1.0
    });
    assert_eq!(metric("litefs_primary"), 1.0);
    assert_eq!(metric("litefs_lease_renewal_failures_total"), 0.0);
    drop(consul);
    wait_for("a failed lease renewal", DEADLINE, || {
        metric("litefs_lease_renewal_failures_total") >= 1.0
    });
    // Half the TTL without a renewal: the node steps down.
    wait_for("the step-down", DEADLINE, || {
        metric("litefs_primary") == 0.0
    });
    let (text, _) = scrape(&node);
    assert_promtool_accepts(&text);
}
