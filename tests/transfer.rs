//! `litefs import`, `litefs export` and `litefs status` against real
//! litefs processes: a file loaded into a running primary as one
//! transaction that replicates, copies taken from any node, bad files or
//! wrong nodes refused with nothing changed, and what each node says it
//! is. Needs root and /dev/fuse.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    assert_identical, litefs_cli, output_text, replica_yaml, sqlite3_ok, temp_dir, txid,
    wait_caught_up, Node, CATCH_UP,
};

fn config(node: &Node) -> &str {
    node.config.to_str().unwrap()
}

/// A plain SQLite file (not on any mount) made by the sqlite3 CLI.
/// `litefs <verb> -name NAME -config CONFIG FILE` (`import` or `export`).
fn transfer(verb: &str, name: &str, config: &str, file: &Path) -> Output {
    litefs_cli(&[
        verb,
        "-name",
        name,
        "-config",
        config,
        file.to_str().unwrap(),
    ])
}

fn make_file(path: &Path, sql: &str) {
    let _ = std::fs::remove_file(path);
    sqlite3_ok(path, sql);
}

#[test]
fn import_replaces_a_database_in_one_replicated_transaction() {
    let dir = temp_dir("import");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    let file = dir.path().join("source.db");
    make_file(
        &file,
        "PRAGMA page_size=1024; CREATE TABLE src(x);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000)
         INSERT INTO src SELECT 'row ' || i FROM n;",
    );

    // A new database.
    let out = transfer("import", "new.db", config(&primary), &file);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("imported new.db"),
        "{}",
        output_text(&out)
    );
    assert_eq!(txid(&primary, "new.db"), 1);
    assert_eq!(
        sqlite3_ok(&primary.db("new.db"), "SELECT count(*) FROM src;"),
        "2000\n"
    );
    wait_caught_up(&primary, &replica, "new.db");
    assert_identical(&primary, &replica, "new.db");

    // Over a live database with history and an open, idle connection
    // (page size 4096 before, 1024 after).
    for n in 0..3 {
        sqlite3_ok(
            &primary.db("live.db"),
            &format!("CREATE TABLE IF NOT EXISTS old(y); INSERT INTO old VALUES({n});"),
        );
    }
    let conn = rusqlite::Connection::open(primary.db("live.db")).unwrap();
    let old: i64 = conn
        .query_row("SELECT count(*) FROM old", [], |r| r.get(0))
        .unwrap();
    assert_eq!(old, 3);
    let before = txid(&primary, "live.db");
    let out = litefs_cli(&[
        "import",
        "--name=live.db",
        "--config",
        config(&primary),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(txid(&primary, "live.db"), before + 1, "one transaction");
    // The open connection notices (the change counter moved).
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM src", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2000);
    drop(conn);
    assert_eq!(
        sqlite3_ok(&primary.db("live.db"), "PRAGMA integrity_check;"),
        "ok\n"
    );
    // Writes go on afterwards, and everything replicates.
    sqlite3_ok(&primary.db("live.db"), "INSERT INTO src VALUES('after');");
    wait_caught_up(&primary, &replica, "live.db");
    assert_identical(&primary, &replica, "live.db");
    assert_eq!(
        sqlite3_ok(&replica.db("live.db"), "SELECT count(*) FROM src;"),
        "2001\n"
    );
    let out = common::sqlite3(&replica.db("live.db"), "SELECT count(*) FROM old;");
    assert!(
        !out.status.success(),
        "the old table is gone on the replica too"
    );

    // On a replica: refused, naming the primary.
    let out = transfer("import", "new.db", config(&replica), &file);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("replica") && output_text(&out).contains("primary-host"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn bad_files_are_refused_and_change_nothing() {
    let dir = temp_dir("import-bad");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    sqlite3_ok(
        &primary.db("a.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(1);",
    );
    let pos = primary.pos("a.db");

    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(&not_sqlite, vec![b'x'; 8192]).unwrap();
    let truncated = dir.path().join("truncated.db");
    make_file(
        &truncated,
        "CREATE TABLE t(x); INSERT INTO t VALUES(randomblob(20000));",
    );
    let len = std::fs::metadata(&truncated).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap();
    f.set_len(len - 4096 - 100).unwrap();
    for (file, why) in [
        (&not_sqlite, "not a SQLite database"),
        (&truncated, "not a whole number"),
        (&dir.path().join("missing.db"), "No such file"),
    ] {
        let out = transfer("import", "a.db", config(&primary), file);
        assert!(!out.status.success(), "{}", file.display());
        assert!(
            output_text(&out).contains(why),
            "{}: {}",
            file.display(),
            output_text(&out)
        );
    }
    assert_eq!(primary.pos("a.db"), pos);
    assert_eq!(sqlite3_ok(&primary.db("a.db"), "SELECT x FROM t;"), "1\n");

    // A database file in WAL mode is whole (its WAL folded in at close),
    // and stays in WAL mode.
    let wal = dir.path().join("wal.db");
    make_file(&wal, "PRAGMA journal_mode=WAL; CREATE TABLE w(x);");
    let out = transfer("import", "w.db", config(&primary), &wal);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        sqlite3_ok(
            &primary.db("w.db"),
            "PRAGMA journal_mode; SELECT count(*) FROM w;"
        ),
        "wal\n0\n"
    );

    // Bad command lines.
    for args in [
        vec!["import", "a.db"],
        vec!["export", "-name", "a.db"],
        vec!["import", "-name", "a.db", "-bogus", "x", "f"],
    ] {
        let out = litefs_cli(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&out)
        );
    }
}

#[test]
fn export_writes_a_verified_copy_from_any_node() {
    let dir = temp_dir("export");
    let token = "s3cret-token";
    let cluster_yaml = format!("  token: \"{token}\"\n");
    // The token goes under http:, which the harness opens last in the
    // config's first lines; the lease follows for the replica.
    let primary = Node::start_in(&dir.path().join("primary"), &cluster_yaml);
    let replica = Node::start_in(
        &dir.path().join("replica"),
        &format!("{cluster_yaml}{}", replica_yaml(&primary)),
    );
    sqlite3_ok(
        &primary.db("e.db"),
        "CREATE TABLE t(x);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<500)
         INSERT INTO t SELECT randomblob(300) FROM n;",
    );
    wait_caught_up(&primary, &replica, "e.db");
    let checksum = primary.pos("e.db")[17..33].to_string();
    for node in [&primary, &replica] {
        let out_file = dir.path().join(format!("copy-{}.db", node.port));
        let out = transfer("export", "e.db", config(node), &out_file);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(sqlite3_ok(&out_file, "PRAGMA integrity_check;"), "ok\n");
        assert_eq!(sqlite3_ok(&out_file, "SELECT count(*) FROM t;"), "500\n");
        let sum = litefs_cli(&["ltx", "checksum", out_file.to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&sum.stdout).trim(), checksum);
    }
    // A symlink planted at the temporary name is not followed.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let out_file = dir.path().join("linked.db");
    std::os::unix::fs::symlink(&victim, dir.path().join("linked.db.litefs-export.tmp")).unwrap();
    let out = transfer("export", "e.db", config(&primary), &out_file);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(sqlite3_ok(&out_file, "SELECT count(*) FROM t;"), "500\n");
    // Unknown database, wrong token: refused, nothing written.
    let nothing = dir.path().join("nothing.db");
    let out = transfer("export", "nope.db", config(&primary), &nothing);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("no database nope.db"),
        "{}",
        output_text(&out)
    );
    let url = format!("http://127.0.0.1:{}", primary.port);
    let out = litefs_cli(&[
        "export",
        "-name",
        "e.db",
        "-url",
        &url,
        nothing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("401"), "{}", output_text(&out));
    assert!(!nothing.exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

/// A network namespace joined to this one by a veth pair: this side has
/// `host_ip`, the namespace `ns_ip`. Deleted (with the pair) when dropped.
struct Netns {
    name: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 200 + 20;
        let name = format!("litefs-test-{}", std::process::id());
        let (host_if, ns_if) = (format!("lfa{id}"), format!("lfb{id}"));
        let host_ip = format!("10.213.{id}.1");
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", output_text(&out));
        };
        ip(&["netns", "add", &name]);
        let netns = Netns {
            name: name.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let ns_ip = format!("10.213.{id}.2/30");
        ip(&["-n", &name, "addr", "add", &ns_ip, "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        netns
    }

    /// Sends `request` to `host_ip:port` from inside the namespace (a
    /// thread that joins it) and returns the whole response.
    fn http(&self, port: u16, request: String) -> String {
        let path = format!("/run/netns/{}", self.name);
        let addr = format!("{}:{port}", self.host_ip);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a descriptor we own; it moves this thread only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut conn = std::net::TcpStream::connect(&addr).unwrap();
            conn.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).unwrap();
            response
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and the pair.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn without_a_token_imports_come_only_from_this_host() {
    let dir = temp_dir("import-origin");
    let netns = Netns::new();
    // Listening on every interface: started once, then again so.
    let mut node = Node::start_in(dir.path(), "");
    node.stop();
    let yaml = std::fs::read_to_string(&node.config).unwrap();
    let yaml = yaml.replace("addr: \"127.0.0.1:", "addr: \":");
    std::fs::write(&node.config, yaml).unwrap();
    node.restart();
    assert!(
        node.log_text()
            .contains("imports are accepted only from this host"),
        "{}",
        node.log_text()
    );
    let file = dir.path().join("in.db");
    make_file(&file, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    let body = std::fs::read(&file).unwrap();

    // From another host (the namespace): refused, nothing changes.
    let request = format!(
        "POST /import?name=a.db HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut raw = request.into_bytes();
    raw.extend_from_slice(&body);
    let response = netns.http(node.port, String::from_utf8_lossy(&raw).into_owned());
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("set http.token"), "{response}");
    assert!(!node.db("a.db").exists());
    // Reads from there are not refused (the WARN says so).
    let info = netns.http(
        node.port,
        "GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
    );
    assert!(info.starts_with("HTTP/1.1 200"), "{info}");

    // From this host: imported.
    let out = transfer("import", "a.db", config(&node), &file);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(sqlite3_ok(&node.db("a.db"), "SELECT x FROM t;"), "1\n");
}

#[test]
fn status_says_what_each_node_is_and_holds() {
    let dir = temp_dir("status");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    sqlite3_ok(
        &primary.db("app.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(1);",
    );
    wait_caught_up(&primary, &replica, "app.db");
    let pos = primary.pos("app.db");
    let (txid, checksum) = pos.trim().split_once('/').unwrap();

    // The replica's acknowledgement of what it holds comes on its own
    // thread, a moment after the files themselves (at most ten a second).
    let node_id = std::fs::read_to_string(replica.data.join("id")).unwrap();
    let acknowledged = format!("  replica node {} (127.0.0.1:", node_id.trim());
    let mut text = String::new();
    common::wait_for(
        "the replica's acknowledgement in the status",
        CATCH_UP,
        || {
            let out = litefs_cli(&["status", "-config", config(&primary)]);
            assert!(out.status.success(), "{}", output_text(&out));
            text = output_text(&out);
            text.contains(&acknowledged) && text.contains("): holds the newest of every database (")
        },
    );
    assert!(text.contains(": primary, 1 replication stream\n"), "{text}");
    assert!(text.contains("  lease: static, held by "), "{text}");
    assert!(
        text.contains(&format!("  app.db  TXID {txid}  checksum {checksum}\n")),
        "{text}"
    );
    assert!(
        text.contains("  replica 127.0.0.1:") && text.ends_with(": sent everything\n"),
        "{text}"
    );

    let out = litefs_cli(&["status", "-config", config(&replica)]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains(": replica of primary-host, "), "{text}");
    assert!(
        text.contains("  lease: static, held by primary-host\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  app.db  TXID {txid}  checksum {checksum}  ")),
        "{text}"
    );

    let url = format!("http://127.0.0.1:{}", replica.port);
    let out = litefs_cli(&["status", "-url", &url, "-json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.starts_with("{\"primary\":false,"), "{text}");
    assert!(
        text.contains(&format!("\"app.db\":\"{pos}\"", pos = pos.trim())),
        "{text}"
    );

    // A node that is not there: a clear error, exit status 1.
    let out = litefs_cli(&["status", "-url", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("is litefs running there?"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn long_work_logs_its_start_and_end() {
    let dir = temp_dir("progress");
    let mut primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    // 72 MiB: over the size from which work logs its start and end.
    let file = dir.path().join("big.db");
    make_file(
        &file,
        "PRAGMA page_size=65536; CREATE TABLE t(v);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<72)
         INSERT INTO t SELECT randomblob(1048576) FROM n;",
    );
    let out = transfer("import", "big.db", config(&primary), &file);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_caught_up(&primary, &replica, "big.db");
    let copy = dir.path().join("copy.db");
    let out = transfer("export", "big.db", config(&primary), &copy);
    assert!(out.status.success(), "{}", output_text(&out));

    let log = primary.log_text();
    for line in [
        "import of big.db from 127.0.0.1",
        "database big.db: sending an LTX file to 127.0.0.1",
        "database big.db: export to 127.0.0.1",
    ] {
        assert!(log.contains(line), "no {line:?} in the primary's log");
    }
    assert_eq!(log.matches(": started, 7").count(), 3, "{log}");
    assert_eq!(log.matches(": done, 7").count(), 3, "{log}");
    let replica_log = replica.log_text();
    assert!(replica_log.contains("database big.db: receiving an LTX file from"));
    assert!(replica_log.contains(": done, 7"));

    // Start-up checks a large database's pages.
    primary.stop();
    primary.restart();
    let log = primary.log_text();
    assert!(
        log.contains("database big.db: checking its pages: started, 7"),
        "{log}"
    );
    assert!(
        log.contains("database big.db: checking its pages: done, 7"),
        "{log}"
    );
}
