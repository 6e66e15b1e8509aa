//! Parsing a Go LiteFS v0.5.14 config: every key of that schema is
//! implemented, accepted when switched off, or refused by name. What the
//! implemented keys do in a running litefs is in
//! tests/config_go_effects.rs.

mod config_common;

use std::path::PathBuf;
use std::time::Duration;

use config_common::{assert_mentions, parse, refuse};
use litefs::config::{Error, ExecCommand, ExecWait, LeaseKind, LogFormat, Program};

/// A config as an operator of the Go LiteFS v0.5.14 writes it, with every
/// key litefs implements and the unsupported ones switched off.
const GO_CONFIG: &str = r#"
exec:
  - cmd: "myapp migrate"
    if-candidate: true
  - cmd: "myapp -addr :8081"
exit-on-error: true
skip-sync: false
strict-verify: false
fuse:
  dir: "/litefs"
  allow-other: true
  debug: true
data:
  dir: "/var/lib/litefs"
  compress: false
  retention: "20m"
  retention-monitor-interval: "30s"
http:
  addr: ":20202"
lease:
  type: "consul"
  hostname: "node-1"
  advertise-url: "http://node-1:20202"
  candidate: true
  promote: false
  reconnect-delay: "2s"
  demote-delay: "15s"
  databases: []
  consul:
    url: "http://consul:8500"
    key: "litefs/app"
    ttl: "20s"
    lock-delay: "2s"
log:
  format: "json"
  timestamp: false
  debug: true
tracing:
  enabled: false
"#;

#[test]
fn a_go_litefs_config_with_every_implemented_key_loads() {
    let config = parse(GO_CONFIG);
    assert_eq!(config.mount_dir, PathBuf::from("/litefs"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/litefs"));
    assert_eq!(config.retention, Duration::from_secs(1200));
    assert_eq!(
        config.retention_monitor_interval,
        Some(Duration::from_secs(30))
    );
    assert_eq!(config.retention_interval(), Duration::from_secs(30));
    assert!(config.exit_on_error);
    assert_eq!(config.fuse.allow_other, Some(true));
    assert!(config.fuse.debug);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.timestamp, Some(false));
    assert!(config.log.debug);
    assert_eq!(config.lease.kind, LeaseKind::Consul);
    assert_eq!(config.lease.hostname, "node-1");
    assert_eq!(config.lease.reconnect_delay, Some(Duration::from_secs(2)));
    assert_eq!(config.lease.demote_delay, Duration::from_secs(15));
    let consul = config.lease.consul.unwrap();
    assert_eq!(consul.key, "litefs/app");
    assert_eq!(consul.ttl, Duration::from_secs(20));
    assert_eq!(
        config.exec,
        vec![
            ExecCommand {
                program: Program::Shell("myapp migrate".into()),
                if_candidate: true,
            },
            ExecCommand {
                program: Program::Shell("myapp -addr :8081".into()),
                if_candidate: false,
            },
        ]
    );
    assert_eq!(config.exec_wait, ExecWait::Ready);
}

#[test]
fn exec_is_a_command_or_a_list_of_entries() {
    let shell = |line: &str| ExecCommand {
        program: Program::Shell(line.into()),
        if_candidate: false,
    };
    assert_eq!(
        parse("mount-dir: /m\nexec: \"app serve --port 8081\"\n").exec,
        vec![shell("app serve --port 8081")]
    );
    assert_eq!(
        parse("mount-dir: /m\nexec:\n  - \"a\"\n  - cmd: b\n    if-candidate: false\n").exec,
        vec![shell("a"), shell("b")]
    );
    assert!(parse("mount-dir: /m\nexec:\n").exec.is_empty());
    assert!(parse("mount-dir: /m\nexec: \"\"\n").exec.is_empty());
    assert!(parse("mount-dir: /m\n").exec.is_empty());
    assert_eq!(
        parse("mount-dir: /m\nexec-wait: caught-up\n").exec_wait,
        ExecWait::CaughtUp
    );

    let (err, message) = refuse("mount-dir: /m\nexec:\n  - cmdd: a\n");
    assert!(matches!(err, Error::UnknownKey { ref key, .. } if key == "exec[0].cmdd"));
    assert_mentions(&message, &["`exec[0].cmdd`", "`cmd`", "`if-candidate`"]);
    let (_, message) = refuse("mount-dir: /m\nexec:\n  - cmd: a\n  - if-candidate: true\n");
    assert_mentions(&message, &["exec[1].cmd", "required"]);
    let (_, message) = refuse("mount-dir: /m\nexec:\n  - cmd: a\n    if-candidate: maybe\n");
    assert_mentions(&message, &["exec[0].if-candidate", "true or false"]);
    let (_, message) = refuse("mount-dir: /m\nexec: 5\n");
    assert_mentions(&message, &["exec", "a list of entries"]);
    let (_, message) = refuse("mount-dir: /m\nexec-wait: later\n");
    assert_mentions(
        &message,
        &["exec-wait", "`later`", "`ready`", "`caught-up`"],
    );
}

#[test]
fn new_keys_have_the_old_behaviour_as_default() {
    let config = parse("mount-dir: /m\ndata:\n  retention: 1m\n");
    assert_eq!(config.retention_monitor_interval, None);
    assert_eq!(config.retention_interval(), Duration::from_secs(15));
    assert_eq!(
        parse("mount-dir: /m\ndata:\n  retention: 1s\n").retention_interval(),
        Duration::from_millis(250)
    );
    assert!(!config.exit_on_error);
    assert_eq!(config.fuse.allow_other, None);
    assert!(!config.fuse.debug);
    assert!(config.fuse.passthrough);
    assert!(config.fuse.keep_cpus_awake);
    assert!(
        !parse("mount-dir: /m\nfuse:\n  keep-cpus-awake: false\n")
            .fuse
            .keep_cpus_awake
    );
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.timestamp, None);
    assert!(!config.log.debug);
    assert_eq!(config.lease.reconnect_delay, None);
    assert_eq!(config.lease.demote_delay, Duration::ZERO);
    assert_eq!(
        parse("mount-dir: /m\nlog:\n  format: text\n").log.format,
        LogFormat::Text
    );
}

#[test]
fn each_unsupported_go_key_is_refused_by_name() {
    let cases = [
        ("skip-sync: true\n", "skip-sync"),
        ("strict-verify: true\n", "strict-verify"),
        ("data:\n  compress: true\n", "data.compress"),
        ("http:\n  snapshot-timeout: 1m\n", "http.snapshot-timeout"),
        ("lease:\n  promote: true\n", "lease.promote"),
        ("lease:\n  databases: [\"a.db\"]\n", "lease.databases"),
        (
            "proxy:\n  addr: \":8080\"\n  target: \"localhost:8081\"\n",
            "proxy.addr",
        ),
        ("proxy:\n  passthrough: [\"*.png\"]\n", "proxy.passthrough"),
        ("proxy:\n  max-lag: 10s\n", "proxy.max-lag"),
        ("proxy:\n  idle-timeout: 30s\n", "proxy.idle-timeout"),
        ("backup:\n  type: file\n  path: /b\n", "backup.type"),
        ("backup:\n  auth-token: x\n", "backup.auth-token"),
        ("tracing:\n  path: /var/log/trace.log\n", "tracing.path"),
        ("tracing:\n  enabled: true\n", "tracing.enabled"),
        ("tracing:\n  max-size: 64\n", "tracing.max-size"),
    ];
    for (yaml, key) in cases {
        let (err, message) = refuse(&format!("mount-dir: /m\n{yaml}"));
        assert!(
            matches!(err, Error::Unsupported { key: ref k, .. } if k == key),
            "{key}: {message}"
        );
        assert_mentions(&message, &[&format!("`{key}`"), "not supported"]);
        assert_eq!(message.lines().count(), 1, "one line: {message}");
    }
    // The message says what to do instead.
    let (_, message) = refuse("mount-dir: /m\nproxy:\n  addr: \":8080\"\n");
    assert_mentions(&message, &[".primary", "remove the `proxy` block"]);
    let (_, message) = refuse("mount-dir: /m\nlease:\n  promote: true\n");
    assert_mentions(&message, &["SIGTERM", "set it to false"]);
}

#[test]
fn typos_in_go_keys_are_still_unknown_keys() {
    for (yaml, key, allowed) in [
        ("log:\n  formt: json\n", "log.formt", "`format`"),
        (
            "lease:\n  reconnect-dealy: 1s\n",
            "lease.reconnect-dealy",
            "`reconnect-delay`",
        ),
        ("proxy:\n  adr: \":8080\"\n", "proxy.adr", "`addr`"),
        ("exit-on-eror: true\n", "exit-on-eror", "`exit-on-error`"),
        (
            "data:\n  retention-monitor-intervall: 1m\n",
            "data.retention-monitor-intervall",
            "`retention-monitor-interval`",
        ),
    ] {
        let (err, message) = refuse(&format!("mount-dir: /m\n{yaml}"));
        assert!(
            matches!(err, Error::UnknownKey { key: ref k, .. } if k == key),
            "{key}: {message}"
        );
        assert_mentions(&message, &[&format!("unknown key `{key}`"), allowed]);
    }
}

#[test]
fn bad_values_of_go_keys_are_refused() {
    let (_, message) = refuse("mount-dir: /m\nlog:\n  format: xml\n");
    assert_mentions(&message, &["log.format", "`xml`", "`text`", "`json`"]);

    let (_, message) = refuse("mount-dir: /m\ndata:\n  retention-monitor-interval: 10ms\n");
    assert_mentions(
        &message,
        &["data.retention-monitor-interval", "at least 50ms"],
    );

    let (_, message) = refuse("mount-dir: /m\nlease:\n  reconnect-delay: 1h\n");
    assert_mentions(&message, &["lease.reconnect-delay", "at most 600s"]);

    let (_, message) = refuse("mount-dir: /m\nlease:\n  demote-delay: -1s\n");
    assert_mentions(&message, &["lease.demote-delay", "negative"]);

    let (_, message) = refuse("mount-dir: /m\nexit-on-error: yes please\n");
    assert_mentions(&message, &["exit-on-error"]);

    let (_, message) = refuse("mount-dir: /m\nfuse:\n  allow-other: 1\n");
    assert_mentions(&message, &["fuse.allow-other"]);
}
