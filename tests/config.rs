//! Tests of the config module loading what it should: the seed examples,
//! both spellings, defaults, relative paths, environment expansion, reading
//! a file and the search path. Refusals are in tests/config_errors.rs; the
//! Go LiteFS v0.5.14 schema in tests/config_go_schema.rs.

mod config_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use config_common::{assert_mentions, hostname, parse, refuse, src};
use litefs::config::{self, Error, LeaseKind};

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
    assert_eq!(config.lost_keep, 10);
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
