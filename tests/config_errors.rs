//! Tests of the config module refusing mistakes: unknown keys, bad
//! durations, URLs, lease and HTTP settings, both spellings at once, YAML
//! syntax errors, empty tokens and dangerous data directories, each with a
//! message that names the file and the problem.

mod config_common;

use std::time::Duration;

use config_common::{assert_mentions, parse, refuse};
use litefs::config::{self, Error};

#[test]
fn unknown_top_level_key_is_named() {
    let (err, message) = refuse("mount-dir: /m\nmount-dri: /n\n");
    assert!(matches!(err, Error::UnknownKey { ref key, .. } if key == "mount-dri"));
    assert_mentions(
        &message,
        &["unknown key `mount-dri`", "`mount-dir`", "`fuse`"],
    );
}

#[test]
fn unknown_nested_key_is_named_with_its_path() {
    let (err, message) = refuse("mount-dir: /m\nhttp:\n  adr: \":1\"\n");
    assert!(matches!(err, Error::UnknownKey { ref key, .. } if key == "http.adr"));
    assert_mentions(&message, &["`http.adr`", "line 3", "`addr`"]);

    let (_, message) = refuse(
        "fuse:\n  dir: /m\nlease:\n  type: consul\n  consul:\n    url: http://a:1\n    tll: 10s\n",
    );
    assert_mentions(&message, &["`lease.consul.tll`", "`ttl`"]);

    let (_, message) = refuse("fuse:\n  dir: /m\n  allow-others: true\n");
    assert_mentions(&message, &["`fuse.allow-others`", "`allow-other`"]);
}

#[test]
fn bad_durations_are_refused() {
    let (_, message) = refuse("mount-dir: /m\nconsul:\n  url: http://localhost:8500\n  ttl: 10x\n");
    assert_mentions(&message, &["consul.ttl", "`10x`", "unit", "1m30s"]);

    let (_, message) = refuse("mount-dir: /m\ndata:\n  retention: 10\n");
    assert_mentions(&message, &["data.retention", "no unit", "10s"]);

    let (_, message) = refuse("mount-dir: /m\ndata:\n  retention: -5m\n");
    assert_mentions(&message, &["data.retention", "negative"]);

    let (_, message) =
        refuse("fuse:\n  dir: /m\nlease:\n  consul:\n    url: http://a:1\n    lock-delay: [1]\n");
    assert_mentions(&message, &["lease.consul.lock-delay", "duration"]);
}

#[test]
fn missing_mount_dir_is_refused() {
    let (err, message) = refuse("http:\n  addr: \":20202\"\n");
    assert!(matches!(err, Error::Invalid { ref key, .. } if key == "mount-dir"));
    assert_mentions(&message, &["mount-dir", "required", "fuse.dir"]);

    let (_, message) = refuse("");
    assert_mentions(&message, &["mount-dir", "required"]);

    let (_, message) = refuse("mount-dir: \"\"\n");
    assert_mentions(&message, &["mount-dir", "empty"]);

    let (_, message) = refuse("fuse:\n  dir: /\n");
    assert_mentions(&message, &["fuse.dir", "no final directory name"]);
}

#[test]
fn malformed_urls_are_refused() {
    let (_, message) = refuse("mount-dir: /m\nconsul:\n  url: localhost:8500\n");
    assert_mentions(
        &message,
        &["consul.url", "localhost:8500", "http://host[:port]"],
    );

    let (_, message) = refuse(
        "mount-dir: /m\nconsul:\n  url: http://localhost:8500\n  advertise-url: \"https://n1:20202\"\n",
    );
    // https needs TLS built in and a certificate on this node (tests/tls.rs).
    let needs = if litefs::tls::BUILT {
        "http.tls-cert"
    } else {
        "built without TLS"
    };
    assert_mentions(&message, &["consul.advertise-url", "https", needs]);

    let (_, message) = refuse("mount-dir: /m\nlease:\n  advertise-url: \"http://n1:port\"\n");
    assert_mentions(
        &message,
        &["lease.advertise-url", "port", "http://host[:port]"],
    );
}

/// An advertise URL with a path works (the replica
/// requests `<path>/stream`, see tests/advertise_path.rs); what cannot
/// take a suffix is refused at load.
#[test]
fn advertise_url_with_a_path_is_kept_and_a_query_is_refused() {
    let config = parse(
        "mount-dir: /m\nlease:\n  type: static\n  candidate: false\n  \
         advertise-url: \"http://proxy.lan:8080/litefs/primary//\"\n",
    );
    assert_eq!(
        config.lease.advertise_url,
        "http://proxy.lan:8080/litefs/primary"
    );
    assert_eq!(config.lease.hostname, "proxy.lan");

    for (url, piece) in [
        ("http://n1:20202/litefs?node=1", "query or fragment"),
        ("http://n1:20202/litefs#top", "query or fragment"),
        ("http://n1:20202/lite fs", "space or control character"),
    ] {
        let (_, message) = refuse(&format!(
            "mount-dir: /m\nlease:\n  advertise-url: \"{url}\"\n"
        ));
        assert_mentions(
            &message,
            &["lease.advertise-url", piece, "http://host[:port][/path]"],
        );
    }
}

#[test]
fn missing_consul_url_is_refused() {
    let (_, message) = refuse("mount-dir: /m\nconsul:\n  advertise-url: http://n:1\n");
    assert_mentions(&message, &["consul.url", "required"]);

    let (_, message) = refuse("fuse:\n  dir: /m\nlease:\n  type: consul\n");
    assert_mentions(&message, &["lease.consul.url", "required"]);
}

#[test]
fn consul_ttl_under_ten_seconds_is_refused() {
    let (err, message) =
        refuse("mount-dir: /m\nconsul:\n  url: http://localhost:8500\n  ttl: 5s\n");
    assert!(matches!(err, Error::Invalid { ref key, .. } if key == "consul.ttl"));
    assert_mentions(&message, &["consul.ttl", "5s", "10s to 24h"]);

    let (_, message) =
        refuse("fuse:\n  dir: /m\nlease:\n  consul:\n    url: http://a:1\n    ttl: 9999ms\n");
    assert_mentions(&message, &["lease.consul.ttl", "10s"]);

    // Exactly 10s is allowed.
    let config = parse("mount-dir: /m\nconsul:\n  url: http://a:1\n  ttl: 10s\n");
    assert_eq!(config.lease.consul.unwrap().ttl, Duration::from_secs(10));
}

#[test]
fn lock_delay_over_a_minute_is_refused() {
    let (_, message) =
        refuse("mount-dir: /m\nconsul:\n  url: http://localhost:8500\n  lock-delay: 2m\n");
    assert_mentions(&message, &["consul.lock-delay", "120s", "0s to 60s"]);
}

#[test]
fn both_spellings_at_once_are_refused() {
    let cases = [
        ("mount-dir: /a\nfuse:\n  dir: /b\n", "mount-dir", "fuse.dir"),
        (
            "mount-dir: /a\ndata-dir: /d\ndata:\n  dir: /e\n",
            "data-dir",
            "data.dir",
        ),
        (
            "mount-dir: /a\nconsul:\n  url: http://a:1\nlease:\n  consul:\n    url: http://b:1\n",
            "consul.url",
            "lease.consul.url",
        ),
        (
            "mount-dir: /a\nconsul:\n  url: http://a:1\n  advertise-url: http://n:1\nlease:\n  advertise-url: http://n:2\n",
            "consul.advertise-url",
            "lease.advertise-url",
        ),
        (
            "mount-dir: /a\nconsul:\n  url: http://a:1\n  ttl: 10s\nlease:\n  consul:\n    ttl: 20s\n",
            "consul.ttl",
            "lease.consul.ttl",
        ),
    ];
    for (text, first, second) in cases {
        let (err, message) = refuse(text);
        assert!(matches!(err, Error::Conflict { .. }), "{message}");
        assert_mentions(&message, &[first, second, "keep only one"]);
    }
}

#[test]
fn bad_lease_settings_are_refused() {
    let (_, message) = refuse("mount-dir: /m\nlease:\n  type: etcd\n");
    assert_mentions(&message, &["lease.type", "`etcd`", "`consul`", "`static`"]);

    let (_, message) =
        refuse("mount-dir: /m\nlease:\n  type: static\nconsul:\n  url: http://a:1\n");
    assert_mentions(&message, &["consul", "static"]);

    let (_, message) =
        refuse("mount-dir: /m\nconsul:\n  url: http://a:1\n  key: /litefs/primary\n");
    assert_mentions(&message, &["consul.key", "leading"]);

    let (_, message) = refuse("mount-dir: /m\nlease:\n  candidate: maybe\n");
    assert_mentions(&message, &["lease.candidate", "boolean"]);
}

#[test]
fn bad_http_addr_is_refused() {
    for addr in ["20202", ":http", "host:99999", ""] {
        let (_, message) = refuse(&format!("mount-dir: /m\nhttp:\n  addr: \"{addr}\"\n"));
        assert_mentions(&message, &["http.addr", ":20202"]);
    }
    let config = parse("mount-dir: /m\nhttp:\n  addr: \"[::1]:9000\"\n");
    assert_eq!(config.http_bind_addr(), "[::1]:9000");
    assert_eq!(config.http_port(), 9000);
}

#[test]
fn data_dir_inside_mount_is_refused() {
    let (_, message) = refuse("mount-dir: /m\ndata-dir: /m/data\n");
    assert_mentions(&message, &["data-dir", "inside the mount directory"]);
}

#[test]
fn yaml_syntax_errors_name_the_file() {
    let (err, message) = refuse("mount-dir: [unclosed\n");
    assert!(matches!(err, Error::Yaml { .. }), "{message}");
    assert_mentions(&message, &["line"]);

    let (_, message) = refuse("- just\n- a list\n");
    assert_mentions(&message, &["invalid type"]);
}

#[test]
fn http_token_is_read_and_an_empty_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("litefs.yml");
    std::env::set_var("LITEFS_TEST_TOKEN_X", "from-env");
    std::fs::write(
        &path,
        "mount-dir: /mnt/x\nhttp:\n  addr: \":20202\"\n  token: \"${LITEFS_TEST_TOKEN_X}\"\n",
    )
    .unwrap();
    let config = litefs::config::load(&path).unwrap();
    assert_eq!(config.http_token.as_deref(), Some("from-env"));

    std::fs::write(
        &path,
        "mount-dir: /mnt/x\nhttp:\n  token: \"${LITEFS_TEST_TOKEN_UNSET_Y}\"\n",
    )
    .unwrap();
    let err = litefs::config::load(&path).unwrap_err().to_string();
    assert!(err.contains("http.token") && err.contains("empty"), "{err}");
}

#[test]
fn data_dir_of_root_or_around_the_mount_and_huge_files_are_refused() {
    let (_, message) = refuse("mount-dir: /srv/mnt\ndata-dir: /\n");
    assert!(message.contains("root directory"), "{message}");
    let (_, message) = refuse("mount-dir: /srv/data/mnt\ndata-dir: /srv/data\n");
    assert!(
        message.contains("contains the mount directory"),
        "{message}"
    );
    let (_, message) = refuse("mount-dir: /srv/mnt\ndata-dir: /srv/mnt/data\n");
    assert!(message.contains("inside the mount directory"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("litefs.yml");
    let mut text = String::from("mount-dir: /srv/mnt\n");
    while text.len() <= 1 << 20 {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let err = config::load(&path).unwrap_err().to_string();
    assert!(err.contains("larger than 1024 KiB"), "{err}");
}

/// Built without the `tls` feature, the TLS keys are refused, saying so.
#[cfg(not(feature = "tls"))]
#[test]
fn tls_keys_are_refused_without_the_tls_feature() {
    for key in ["tls-cert: c.pem\n  tls-key: k.pem", "tls-ca: ca.pem"] {
        let (_, message) = refuse(&format!("mount-dir: /m\nhttp:\n  {key}\n"));
        assert_mentions(
            &message,
            &["http.tls-", "built without TLS", "--features tls"],
        );
    }
}

#[test]
fn lost_keep_is_a_whole_number() {
    assert_eq!(parse("mount-dir: /m\ndata:\n  lost-keep: 0\n").lost_keep, 0);
    assert_eq!(parse("mount-dir: /m\ndata:\n  lost-keep: 3\n").lost_keep, 3);
    for bad in ["-1", "2.5", "\"ten\"", "10s"] {
        let (_, message) = refuse(&format!("mount-dir: /m\ndata:\n  lost-keep: {bad}\n"));
        assert_mentions(&message, &["data.lost-keep", "whole number"]);
    }
}

#[test]
fn replication_settings_are_checked() {
    let config = parse(
        "mount-dir: /m\nreplication:\n  sync: 2\n  sync-timeout: 250ms\n  sync-fallback: async\n  \
         sync-failover: take-over\n",
    );
    let r = config.replication;
    assert_eq!((r.sync, r.sync_timeout), (2, Duration::from_millis(250)));
    assert_eq!(r.sync_fallback, config::SyncFallback::Async);
    assert_eq!(r.sync_failover, config::SyncFailover::TakeOver);
    assert!(r.wal_through_litefs());
    let r = parse("mount-dir: /m\nreplication:\n  max-lag: 10s\n  max-lag-txns: 500\n").replication;
    assert_eq!(
        (r.sync, r.max_lag, r.max_lag_txns),
        (0, Duration::from_secs(10), 500)
    );
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  max-lag-txns: lots\n");
    assert_mentions(&message, &["replication.max-lag-txns", "whole number"]);
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync: 1\n  max-lag-txns: 5\n");
    assert_mentions(&message, &["replication.max-lag", "replication.sync"]);
    assert!(!parse("mount-dir: /m\n").replication.wal_through_litefs());

    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync: -1\n");
    assert_mentions(&message, &["replication.sync", "0 to 64"]);
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync: 1\n  sync-timeout: 0s\n");
    assert_mentions(&message, &["replication.sync-timeout"]);
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync-fallback: later\n");
    assert_mentions(
        &message,
        &["replication.sync-fallback", "`fail`", "`async`"],
    );
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync-failover: now\n");
    assert_mentions(
        &message,
        &["replication.sync-failover", "`wait`", "`take-over`"],
    );
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  sync: 1\n  max-lag: 5s\n");
    assert_mentions(&message, &["replication.max-lag", "replication.sync"]);
    let (_, message) = refuse("mount-dir: /m\nreplication:\n  synch: 1\n");
    assert_mentions(&message, &["`replication.synch`", "`sync`"]);
}
