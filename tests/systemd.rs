//! litefs under systemd: the notify protocol read from a real Unix
//! datagram socket (what systemd itself reads), and the unit file checked
//! with `systemd-analyze verify` where that command exists. Needs root and
//! /dev/fuse.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{replica_yaml, sqlite3_ok, temp_dir, wait_caught_up, Node, DEADLINE};

/// The socket systemd would listen on, and what arrived on it.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// Reads datagrams until `count` of them contain `want` (or the
    /// deadline passes); returns the first such.
    fn wait_count(&mut self, want: &str, count: usize, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        let mut buf = vec![0u8; 4096];
        loop {
            let matching: Vec<&String> =
                self.received.iter().filter(|m| m.contains(want)).collect();
            if matching.len() >= count {
                return matching[0].clone();
            }
            assert!(
                Instant::now() < end,
                "fewer than {count} {want:?} from litefs; got {:?}",
                self.received
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.received
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Reads datagrams until one contains `want`.
    fn wait_for(&mut self, want: &str, deadline: Duration) -> String {
        self.wait_count(want, 1, deadline)
    }
}

#[test]
fn a_primary_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = temp_dir("sd-primary");
    let mut sock = NotifySocket::bind(dir.path());
    let path = sock.path.display().to_string();
    let mut node = Node::start_with_env(
        &dir.path().join("node"),
        |_| String::new(),
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "400000"),
            ("JOURNAL_STREAM", "8:1234"),
        ],
    );
    let ready = sock.wait_for("READY=1", DEADLINE);
    assert!(ready.contains("STATUS=primary"), "{ready}");
    // READY comes once the mount is up: a database works at once.
    sqlite3_ok(&node.db("sd.db"), "CREATE TABLE t(x);");
    // Watchdog pings at half of WATCHDOG_USEC: 3 more within 5 s.
    let pings = sock.received.iter().filter(|m| *m == "WATCHDOG=1").count();
    sock.wait_count("WATCHDOG=1", pings + 3, Duration::from_secs(5));
    node.signal_and_wait(libc::SIGTERM);
    sock.wait_for("STOPPING=1", DEADLINE);
    // Under systemd (JOURNAL_STREAM set) lines carry no timestamp.
    let log = node.log_text();
    let first = log.lines().next().unwrap_or("");
    assert!(
        first.starts_with("[INFO") || first.starts_with("[DEBUG"),
        "{first}"
    );
}

#[test]
fn a_replica_is_ready_once_caught_up_with_its_primary() {
    let dir = temp_dir("sd-replica");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    sqlite3_ok(
        &primary.db("big.db"),
        "CREATE TABLE t(b); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n \
         WHERE i < 2000) INSERT INTO t SELECT randomblob(1000) FROM n;",
    );
    for i in 0..50 {
        sqlite3_ok(
            &primary.db("big.db"),
            &format!("INSERT INTO t VALUES({i});"),
        );
    }
    let mut sock = NotifySocket::bind(dir.path());
    let path = sock.path.display().to_string();
    let replica = Node::start_with_env(
        &dir.path().join("replica"),
        |_| replica_yaml(&primary),
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    let ready = sock.wait_for("READY=1", DEADLINE);
    assert!(ready.contains("STATUS=replica of primary-host"), "{ready}");
    // Caught up when it said so: the position equals the primary's.
    assert_eq!(replica.pos("big.db"), primary.pos("big.db"));
    wait_caught_up(&primary, &replica, "big.db");
}

#[test]
fn the_unit_file_passes_systemd_analyze_where_it_exists() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/litefs.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("Type=notify"), "{text}");
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    else {
        eprintln!("systemd-analyze is not installed here; checked the unit's text only");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The binary path of the example may not exist on a test machine.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("/usr/local/bin/litefs") && !l.trim().is_empty())
        .collect();
    assert!(complaints.is_empty(), "{stderr}");
}

#[test]
fn lag_file_says_zero_on_the_primary_and_grows_on_a_replica_only_while_behind() {
    let dir = temp_dir("lag-file");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    sqlite3_ok(&primary.db("l.db"), "CREATE TABLE t(x);");
    assert_eq!(
        std::fs::read_to_string(primary.mount.join(".lag")).unwrap(),
        "0\n"
    );
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    wait_caught_up(&primary, &replica, "l.db");
    let lag = |node: &Node| -> f64 {
        std::fs::read_to_string(node.mount.join(".lag"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // Caught up: heartbeats keep it near zero.
    common::wait_for("a small lag", DEADLINE, || lag(&replica) < 1.5);
    assert!(std::fs::read_dir(&replica.mount)
        .unwrap()
        .any(|e| e.unwrap().file_name() == ".lag"));

    // A reader holds the replica, so what arrives waits: the lag grows.
    let reader = rusqlite::Connection::open_with_flags(
        replica.db("l.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    sqlite3_ok(&primary.db("l.db"), "INSERT INTO t VALUES(1);");
    common::wait_for("a lag over 2 s", DEADLINE, || lag(&replica) > 2.0);
    reader.execute_batch("COMMIT;").unwrap();
    drop(reader);
    wait_caught_up(&primary, &replica, "l.db");
    common::wait_for("the lag back near zero", DEADLINE, || lag(&replica) < 1.5);
}
