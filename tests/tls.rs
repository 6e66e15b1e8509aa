//! TLS. A primary with `http.tls-cert`/`http.tls-key` speaks only TLS;
//! a replica with `http.tls-ca` and an `https://` advertise URL
//! replicates from it, and refuses (never falls back to plain HTTP,
//! never receives a byte) a primary whose certificate does not verify:
//! another CA, or a certificate for another host. `litefs export` works
//! over https with the config's CA. The TLS settings' mistakes are
//! config errors naming the key, the file and what is wrong.
//! Certificates are made here with rcgen. Needs root and /dev/fuse (but
//! the config tests).

#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    assert_identical, litefs_cli, output_text, replica_yaml_for, sqlite3_ok, temp_dir,
    wait_caught_up, wait_for, Node,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA certificate to `path`.
    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_path_buf()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by
    /// this CA: writes `<stem>.pem` and `<stem>.key` in `dir`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// The `http:` lines (the harness opens `http:` last) for a node.
fn http_tls(cert: Option<(&Path, &Path)>, ca: Option<&Path>) -> String {
    let mut yaml = String::new();
    if let Some((cert, key)) = cert {
        yaml.push_str(&format!(
            "  tls-cert: \"{}\"\n  tls-key: \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some(ca) = ca {
        yaml.push_str(&format!("  tls-ca: \"{}\"\n", ca.display()));
    }
    yaml
}

/// Sends `request` in plain text to the TLS port and reads what comes
/// back until the server closes (within the deadline).
fn plain_request(port: u16, request: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(request);
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    got
}

#[test]
fn a_replica_replicates_from_a_tls_primary_and_export_works_over_https() {
    let dir = temp_dir("tls");
    let ca = Ca::new("litefs test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = ca.issue(dir.path(), "primary", &["localhost", "127.0.0.1"]);
    // The primary has the CA too, for `litefs export -config` below.
    let primary = Node::start_in(
        &dir.path().join("primary"),
        &http_tls(Some((&cert, &key)), Some(&ca_file)),
    );
    assert!(
        primary.log_text().contains("TLS only"),
        "{}",
        primary.log_text()
    );
    sqlite3_ok(
        &primary.db("a.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    let url = format!("https://127.0.0.1:{}", primary.port);
    let replica = Node::start_in(
        &dir.path().join("replica"),
        &format!(
            "{}{}",
            http_tls(None, Some(&ca_file)),
            replica_yaml_for(&url)
        ),
    );
    wait_caught_up(&primary, &replica, "a.db");
    // Commits after the snapshot arrive as they happen, through TLS.
    for i in 0..20 {
        sqlite3_ok(&primary.db("a.db"), &format!("INSERT INTO t VALUES ({i});"));
    }
    wait_caught_up(&primary, &replica, "a.db");
    assert_identical(&primary, &replica, "a.db");
    assert_eq!(
        sqlite3_ok(&replica.db("a.db"), "SELECT count(*) FROM t;"),
        "23\n"
    );
    assert!(
        replica
            .log_text()
            .contains(&format!("replicating from {url}")),
        "{}",
        replica.log_text()
    );

    // A plain HTTP request to the TLS port gets no HTTP answer and no
    // database name: the handshake fails and the connection ends.
    let got = plain_request(primary.port, b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n");
    let shown = String::from_utf8_lossy(&got);
    assert!(
        !shown.contains("HTTP/1.") && !shown.contains("a.db"),
        "{shown:?}"
    );
    // litefs's own client over http:// fails the same way.
    let out_file = dir.path().join("copy.db");
    let plain_url = format!("http://127.0.0.1:{}", primary.port);
    let out = litefs_cli(&[
        "export",
        "-name",
        "a.db",
        "-url",
        &plain_url,
        out_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(!out_file.exists());

    // Export over https: from the replica's config (its CA) naming the
    // primary, and from the primary's own config (https://localhost).
    let replica_config = replica.config.to_str().unwrap();
    let out = litefs_cli(&[
        "export",
        "-name",
        "a.db",
        "-config",
        replica_config,
        "-url",
        &url,
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(sqlite3_ok(&out_file, "SELECT count(*) FROM t;"), "23\n");
    let own = dir.path().join("own.db");
    let out = litefs_cli(&[
        "export",
        "-name",
        "a.db",
        "-config",
        primary.config.to_str().unwrap(),
        own.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(sqlite3_ok(&own, "SELECT count(*) FROM t;"), "23\n");
    // https without a CA to verify against is refused before connecting.
    let out = litefs_cli(&["export", "-name", "a.db", "-url", &url, "/tmp/never.db"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("http.tls-ca"),
        "{}",
        output_text(&out)
    );
}

/// Waits until `node`'s log holds `what` and the replica has failed the
/// same way twice more (its debug lines), so a repeated WARN would be
/// there; returns the log.
fn log_after(node: &Node, what: &str) -> String {
    wait_for(what, Duration::from_secs(20), || {
        node.log_text().contains(what)
    });
    wait_for("two more failed attempts", Duration::from_secs(20), || {
        node.log_text().matches("failed again").count() >= 2
    });
    node.log_text()
}

#[test]
fn a_replica_refuses_a_primary_whose_certificate_does_not_verify() {
    let dir = temp_dir("tls-refused");
    let ca = Ca::new("the cluster's CA");
    let other = Ca::new("someone else's CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    // A primary whose certificate another CA signed, and one whose
    // certificate the right CA signed for another host.
    let (stranger_cert, stranger_key) =
        other.issue(dir.path(), "stranger", &["localhost", "127.0.0.1"]);
    let (elsewhere_cert, elsewhere_key) = ca.issue(dir.path(), "elsewhere", &["db.example.org"]);
    for (name, cert, key, reason) in [
        (
            "stranger",
            &stranger_cert,
            &stranger_key,
            "not signed by a CA in",
        ),
        (
            "elsewhere",
            &elsewhere_cert,
            &elsewhere_key,
            "does not name the URL's host",
        ),
    ] {
        let primary = Node::start_in(
            &dir.path().join(format!("{name}-primary")),
            &http_tls(Some((cert, key)), None),
        );
        sqlite3_ok(
            &primary.db("a.db"),
            "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        );
        let url = format!("https://127.0.0.1:{}", primary.port);
        let replica = Node::start_in(
            &dir.path().join(format!("{name}-replica")),
            &format!(
                "{}{}",
                http_tls(None, Some(&ca_file)),
                replica_yaml_for(&url)
            ),
        );
        let log = log_after(&replica, reason);
        // Logged once at WARN, naming the URL and the TLS reason; the
        // retries after it are debug lines.
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("replication from"))
            .collect();
        assert_eq!(warnings.len(), 1, "{name}: {warnings:#?}\n{log}");
        assert!(
            warnings[0].contains(&url) && warnings[0].contains(reason),
            "{name}: {}",
            warnings[0]
        );
        assert!(
            log.contains("failed again"),
            "{name}: the replica stopped retrying:\n{log}"
        );
        // Nothing was received: no database, no plain-HTTP fallback.
        assert!(!replica.db("a.db").exists(), "{name}: {log}");
        assert!(
            !log.contains(&format!("replicating from {url} (")),
            "{name}: {log}"
        );
        assert!(!replica.data.join("dbs").join("a.db").exists());
        assert!(
            !primary.log_text().contains("replica 127.0.0.1"),
            "{name}: the primary streamed:\n{}",
            primary.log_text()
        );
    }
}

/// A client that starts a TLS handshake and sends it a byte at a time is
/// cut off at the head deadline (5 s), as a slow plain request is.
#[test]
fn a_slow_tls_handshake_is_cut_off_at_the_head_deadline() {
    let dir = temp_dir("tls-slow");
    let ca = Ca::new("CA");
    let (cert, key) = ca.issue(dir.path(), "node", &["127.0.0.1"]);
    let primary = Node::start_in(
        &dir.path().join("primary"),
        &http_tls(Some((&cert, &key)), None),
    );
    let mut conn = TcpStream::connect(("127.0.0.1", primary.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // A handshake record header announcing 512 bytes, then a trickle.
    conn.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let started = Instant::now();
    let closed = loop {
        if conn.write_all(&[0]).is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server kept a trickling handshake open for 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        closed >= Duration::from_secs(4) && closed < Duration::from_secs(9),
        "closed after {closed:?}"
    );
}

mod config {
    use super::*;
    use litefs::config;

    /// Parses `yaml` as `<dir>/litefs.yml`; the error message if refused.
    fn load(dir: &Path, yaml: &str) -> Result<config::Config, String> {
        config::parse(yaml, &dir.join("litefs.yml")).map_err(|e| e.to_string())
    }

    fn refused(dir: &Path, yaml: &str, pieces: &[&str]) {
        let message = match load(dir, yaml) {
            Ok(config) => panic!("should be refused: {config:?}\n{yaml}"),
            Err(message) => message,
        };
        assert!(message.contains("litefs.yml"), "{message}");
        for piece in pieces {
            assert!(message.contains(piece), "no {piece:?} in: {message}");
        }
    }

    #[test]
    fn tls_settings_load_relative_to_the_config_file() {
        let dir = temp_dir("tls-config");
        let ca = Ca::new("CA");
        ca.write(&dir.path().join("ca.pem"));
        ca.issue(dir.path(), "node", &["node1"]);
        let config = load(
            dir.path(),
            "mount-dir: m\nhttp:\n  addr: \":20202\"\n  tls-cert: node.pem\n  \
             tls-key: node.key\n  tls-ca: ca.pem\nlease:\n  hostname: node1\n",
        )
        .unwrap();
        let tls = config.http_tls.as_ref().unwrap();
        assert_eq!(tls.cert_path(), dir.path().join("node.pem"));
        let ca = config.http_tls_ca.as_ref().unwrap();
        assert_eq!(ca.ca_path(), dir.path().join("ca.pem"));
        // A node that serves TLS advertises https by default.
        assert_eq!(config.lease.advertise_url, "https://node1:20202");
        // None of it: plain http, as before.
        let config = load(dir.path(), "mount-dir: m\nlease:\n  hostname: n\n").unwrap();
        assert!(config.http_tls.is_none() && config.http_tls_ca.is_none());
        assert!(config.lease.advertise_url.starts_with("http://"));
    }

    #[test]
    fn tls_mistakes_name_the_key_the_file_and_what_is_wrong() {
        let dir = temp_dir("tls-config-bad");
        let d = dir.path();
        let ca = Ca::new("CA");
        ca.write(&d.join("ca.pem"));
        ca.issue(d, "node", &["node1"]);
        ca.issue(d, "other", &["node2"]);
        std::fs::write(d.join("garbage.pem"), "not a certificate at all\n").unwrap();
        std::fs::write(
            d.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let base = "mount-dir: m\nlease:\n  hostname: node1\nhttp:\n";

        refused(
            d,
            &format!("{base}  tls-cert: node.pem\n"),
            &["http.tls-key", "is required with http.tls-cert"],
        );
        refused(
            d,
            &format!("{base}  tls-key: node.key\n"),
            &["http.tls-cert", "is required with http.tls-key"],
        );
        refused(
            d,
            &format!("{base}  tls-cert: missing.pem\n  tls-key: node.key\n"),
            &[
                "http.tls-cert",
                "missing.pem",
                "cannot read it",
                "No such file",
            ],
        );
        refused(
            d,
            &format!("{base}  tls-cert: garbage.pem\n  tls-key: node.key\n"),
            &["http.tls-cert", "garbage.pem", "no certificate"],
        );
        refused(
            d,
            &format!("{base}  tls-cert: broken.pem\n  tls-key: node.key\n"),
            &["http.tls-cert", "broken.pem", "not a valid PEM file"],
        );
        refused(
            d,
            &format!("{base}  tls-cert: node.pem\n  tls-key: garbage.pem\n"),
            &["http.tls-key", "garbage.pem", "no private key"],
        );
        refused(
            d,
            &format!("{base}  tls-cert: node.pem\n  tls-key: other.key\n"),
            &[
                "http.tls-key",
                "other.key",
                "does not belong to the certificate",
            ],
        );
        refused(
            d,
            &format!("{base}  tls-cert: \"\"\n  tls-key: node.key\n"),
            &["http.tls-cert", "is empty"],
        );
        refused(
            d,
            &format!("{base}  tls-ca: garbage.pem\n"),
            &["http.tls-ca", "garbage.pem", "no certificate"],
        );
        // The advertise URL must match what the node serves.
        refused(
            d,
            "mount-dir: m\nhttp:\n  tls-cert: node.pem\n  tls-key: node.key\n\
             lease:\n  advertise-url: \"http://node1:20202\"\n",
            &["lease.advertise-url", "serves only TLS", "https://"],
        );
        refused(
            d,
            "mount-dir: m\nlease:\n  advertise-url: \"https://node1:20202\"\n",
            &["lease.advertise-url", "serves plain HTTP", "http.tls-cert"],
        );
        // Verifying an https primary needs the CA.
        refused(
            d,
            "mount-dir: m\nlease:\n  type: static\n  candidate: false\n  \
             advertise-url: \"https://node1:20202\"\n",
            &["http.tls-ca", "is required", "https://node1:20202"],
        );
        // Consul stays plain http.
        refused(
            d,
            "mount-dir: m\nconsul:\n  url: \"https://127.0.0.1:8500\"\n  \
             advertise-url: \"http://node1:20202\"\n",
            &["consul.url", "Consul over https is not supported"],
        );
    }
}
