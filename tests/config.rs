//! Tests of the config module: both spellings, defaults, environment
//! expansion, the search path, and an error for each kind of mistake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use litefs::config::{self, Config, Error, ExecCommand, ExecWait, LeaseKind, LogFormat, Program};

fn src() -> &'static Path {
    Path::new("/etc/litefs/litefs.yml")
}

fn parse(text: &str) -> Config {
    match config::parse(text, src()) {
        Ok(config) => config,
        Err(e) => panic!("config should parse, got: {e}\n---\n{text}"),
    }
}

/// Parses text that must be refused; returns the error and its message.
fn refuse(text: &str) -> (Error, String) {
    match config::parse(text, src()) {
        Ok(config) => panic!("config should be refused, got {config:?}\n---\n{text}"),
        Err(e) => {
            let message = e.to_string();
            (e, message)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Asserts that `message` names the file and contains every piece.
fn assert_mentions(message: &str, pieces: &[&str]) {
    assert!(
        message.contains("/etc/litefs/litefs.yml"),
        "message does not name the file: {message}"
    );
    for piece in pieces {
        assert!(
            message.contains(piece),
            "message does not mention {piece:?}: {message}"
        );
    }
}

#[test]
fn seed_example_loads_as_written() {
    let config = parse(
        r#"mount-dir: "/path/to/mnt"
http:
  addr: ":20202"
consul:
  url: "http://localhost:8500"
  advertise-url: "http://localhost:20202"
"#,
    );
    assert_eq!(config.mount_dir, PathBuf::from("/path/to/mnt"));
    assert_eq!(config.data_dir, PathBuf::from("/path/to/.mnt"));
    assert_eq!(config.http_addr, ":20202");
    assert_eq!(config.http_bind_addr(), "0.0.0.0:20202");
    assert_eq!(config.http_port(), 20202);
    assert_eq!(config.lease.kind, LeaseKind::Consul);
    assert!(config.lease.candidate);
    assert_eq!(config.lease.hostname, hostname());
    assert_eq!(config.lease.advertise_url, "http://localhost:20202");
    let consul = config.lease.consul.expect("consul settings");
    assert_eq!(consul.url, "http://localhost:8500");
    assert_eq!(consul.key, "litefs/primary");
    assert_eq!(consul.ttl, Duration::from_secs(10));
    assert_eq!(consul.lock_delay, Duration::from_secs(1));
    assert_eq!(config.retention, Duration::from_secs(600));
}

#[test]
fn seed_second_node_example_loads() {
    let config = parse(
        r#"mount-dir: "/path/to/another_mnt"
http:
  addr: ":30303"
consul:
  url: "http://localhost:8500"
  advertise-url: "http://localhost:30303"
"#,
    );
    assert_eq!(config.mount_dir, PathBuf::from("/path/to/another_mnt"));
    assert_eq!(config.data_dir, PathBuf::from("/path/to/.another_mnt"));
    assert_eq!(config.http_bind_addr(), "0.0.0.0:30303");
    assert_eq!(config.lease.advertise_url, "http://localhost:30303");
}

#[test]
fn seed_spelling_with_every_consul_key() {
    let config = parse(
        r#"mount-dir: /mnt/db
data-dir: /var/lib/litefs
http:
  addr: "127.0.0.1:4000"
consul:
  url: "http://consul.internal:8500/"
  advertise-url: "http://node1:4000/"
  key: "apps/blog/primary"
  ttl: 30s
  lock-delay: 500ms
"#,
    );
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/litefs"));
    assert_eq!(config.http_bind_addr(), "127.0.0.1:4000");
    assert_eq!(config.lease.advertise_url, "http://node1:4000");
    let consul = config.lease.consul.unwrap();
    assert_eq!(consul.url, "http://consul.internal:8500");
    assert_eq!(consul.key, "apps/blog/primary");
    assert_eq!(consul.ttl, Duration::from_secs(30));
    assert_eq!(consul.lock_delay, Duration::from_millis(500));
}

#[test]
fn go_litefs_spelling_loads() {
    let config = parse(
        r#"fuse:
  dir: "/litefs"
data:
  dir: "/var/lib/litefs"
  retention: "1h30m"
http:
  addr: ":20202"
lease:
  type: "consul"
  candidate: false
  hostname: "node-2"
  advertise-url: "http://node-2:20202"
  consul:
    url: "http://localhost:8500"
    key: "litefs/primary-x"
    ttl: "1m"
    lock-delay: "5s"
"#,
    );
    assert_eq!(config.mount_dir, PathBuf::from("/litefs"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/litefs"));
    assert_eq!(config.retention, Duration::from_secs(5400));
    assert_eq!(config.lease.kind, LeaseKind::Consul);
    assert!(!config.lease.candidate);
    assert_eq!(config.lease.hostname, "node-2");
    assert_eq!(config.lease.advertise_url, "http://node-2:20202");
    let consul = config.lease.consul.unwrap();
    assert_eq!(consul.url, "http://localhost:8500");
    assert_eq!(consul.key, "litefs/primary-x");
    assert_eq!(consul.ttl, Duration::from_secs(60));
    assert_eq!(consul.lock_delay, Duration::from_secs(5));
}

#[test]
fn defaults_are_a_static_primary() {
    let config = parse("mount-dir: /srv/mnt\n");
    assert_eq!(config.mount_dir, PathBuf::from("/srv/mnt"));
    assert_eq!(config.data_dir, PathBuf::from("/srv/.mnt"));
    assert_eq!(config.http_addr, ":20202");
    assert_eq!(config.http_bind_addr(), "0.0.0.0:20202");
    assert_eq!(config.retention, Duration::from_secs(600));
    assert_eq!(config.lease.kind, LeaseKind::Static);
    assert!(config.lease.candidate);
    assert_eq!(config.lease.hostname, hostname());
    assert_eq!(
        config.lease.advertise_url,
        format!("http://{}:20202", hostname())
    );
    assert_eq!(config.lease.consul, None);
}

#[test]
fn default_advertise_url_uses_the_http_port() {
    let config = parse("mount-dir: /srv/mnt\nhttp:\n  addr: \":4444\"\n");
    assert_eq!(
        config.lease.advertise_url,
        format!("http://{}:4444", hostname())
    );
}

#[test]
fn lease_consul_block_alone_means_consul() {
    let config = parse("fuse:\n  dir: /x/y\nlease:\n  consul:\n    url: http://127.0.0.1:8500\n");
    assert_eq!(config.lease.kind, LeaseKind::Consul);
    assert_eq!(config.lease.consul.unwrap().url, "http://127.0.0.1:8500");
}

#[test]
fn static_replica_names_its_primary() {
    let config = parse(
        "mount-dir: /m\nlease:\n  type: static\n  candidate: false\n  advertise-url: http://primary.lan:20202\n",
    );
    assert_eq!(config.lease.kind, LeaseKind::Static);
    assert!(!config.lease.candidate);
    assert_eq!(config.lease.hostname, "primary.lan");
    assert_eq!(config.lease.advertise_url, "http://primary.lan:20202");

    let (_, message) = refuse("mount-dir: /m\nlease:\n  type: static\n  candidate: false\n");
    assert_mentions(&message, &["lease.advertise-url", "required"]);
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let config = config::parse(
        "mount-dir: ./mnt\ndata-dir: ../data/./x\n",
        Path::new("/opt/app/conf/litefs.yml"),
    )
    .unwrap();
    assert_eq!(config.mount_dir, PathBuf::from("/opt/app/conf/mnt"));
    assert_eq!(config.data_dir, PathBuf::from("/opt/app/data/x"));

    // A bare file name is relative to the current directory.
    let config = config::parse("mount-dir: mnt\n", Path::new("litefs.yml")).unwrap();
    assert_eq!(
        config.mount_dir,
        std::env::current_dir().unwrap().join("mnt")
    );
}

#[test]
fn environment_variables_are_expanded() {
    std::env::set_var("LITEFS_TEST_CFG_MNT", "/data/mnt");
    std::env::set_var("LITEFS_TEST_CFG_PORT", "5555");
    std::env::remove_var("LITEFS_TEST_CFG_UNSET");
    let config = parse(
        "mount-dir: \"${LITEFS_TEST_CFG_MNT}\"\n\
         data-dir: /d/$LITEFS_TEST_CFG_UNSET/x${LITEFS_TEST_CFG_UNSET}y\n\
         http:\n  addr: \":$LITEFS_TEST_CFG_PORT\"\n\
         lease:\n  hostname: \"cost$$5\"\n",
    );
    assert_eq!(config.mount_dir, PathBuf::from("/data/mnt"));
    assert_eq!(config.data_dir, PathBuf::from("/d/xy"));
    assert_eq!(config.http_addr, ":5555");
    assert_eq!(config.lease.hostname, "cost$5");
}

#[test]
fn expansion_rules() {
    let lookup = |name: &str| match name {
        "A" => Some("1".to_string()),
        "B_2" => Some("two".to_string()),
        _ => None,
    };
    let expand = |text: &str| config::expand_with(text, src(), lookup).unwrap();
    assert_eq!(expand("$A ${A} $B_2${B_2}"), "1 1 twotwo");
    assert_eq!(expand("$$A $$ $"), "$A $ $");
    assert_eq!(expand("x$NOPE-y ${NOPE}z"), "x-y z");
    assert_eq!(expand("a $ b $\"c"), "a $ b $\"c");

    let err = config::expand_with("a: 1\nb: ${A\n", src(), lookup).unwrap_err();
    assert!(matches!(err, Error::Expand { .. }));
    assert_mentions(&err.to_string(), &["line 2", "${"]);
}

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

/// Issue 11, item 8: an advertise URL with a path works (the replica
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
fn load_reads_a_file_and_names_it_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("litefs.yml");
    std::fs::write(&path, "mount-dir: ./mnt\n").unwrap();
    let config = config::load(&path).unwrap();
    assert_eq!(config.mount_dir, dir.path().join("mnt"));
    assert_eq!(config.data_dir, dir.path().join(".mnt"));

    let missing = dir.path().join("nope.yml");
    let err = config::load(&missing).unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));

    std::fs::write(&path, "mount-dir: /m\nbogus: 1\n").unwrap();
    let message = config::load(&path).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("`bogus`"), "{message}");
}

#[test]
fn search_finds_the_first_existing_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yml");
    let b = dir.path().join("b.yml");
    let c = dir.path().join("c.yml");
    std::fs::write(&b, "").unwrap();
    std::fs::write(&c, "").unwrap();
    let candidates = vec![a.clone(), b.clone(), c.clone()];
    assert_eq!(config::find_first(&candidates).unwrap(), b);

    let err = config::find_first(std::slice::from_ref(&a)).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    let message = err.to_string();
    assert!(message.contains(&a.display().to_string()), "{message}");
    assert!(message.contains("-config"), "{message}");
}

#[test]
fn default_search_paths_are_cwd_home_etc() {
    let paths = config::search_paths();
    assert_eq!(paths.first().unwrap(), &PathBuf::from("./litefs.yml"));
    assert_eq!(paths.last().unwrap(), &PathBuf::from("/etc/litefs.yml"));
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        assert_eq!(paths[1], PathBuf::from(home).join("litefs.yml"));
    }
}

#[test]
fn repository_example_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = config::load(&root.join("litefs.yml")).unwrap();
    assert_eq!(config.mount_dir, root.join(".local/mnt"));
    assert_eq!(config.data_dir, root.join(".local/data"));
    assert_eq!(config.lease.kind, LeaseKind::Static);
    assert!(config.lease.candidate);
    assert_eq!(config.http_bind_addr(), "127.0.0.1:20202");
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

// ---------------------------------------------------------------------------
// The Go LiteFS v0.5.14 schema: every key implemented, accepted when off,
// or refused by name.

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
