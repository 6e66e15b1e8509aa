//! What Go LiteFS config keys do in real litefs processes: `log.format`,
//! `data.retention-monitor-interval`, `fuse.allow-other`, `exit-on-error`,
//! and `lease.reconnect-delay` in the replica loop. (Parsing them is in
//! tests/config_go_schema.rs; the lease thread's options in
//! tests/lease.rs.)

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_backoff, is_mounted, mount_options, sqlite3_ok, temp_dir, wait_for, Node, DEADLINE,
};
use litefs::http::{run_replica_loop_with, RetryOptions};
use litefs::store::Store;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn log_format_json_writes_one_escaped_object_per_line() {
    let tmp = temp_dir("json-log");
    let mut node = Node::start_in(tmp.path(), "log:\n  format: json\n  timestamp: false\n");
    // A quote in a database name, which the start-up log names: the line
    // must escape it.
    sqlite3_ok(
        &node.db("we\"ird.db"),
        "CREATE TABLE t (x); INSERT INTO t VALUES (1);",
    );
    node.stop();
    node.restart();
    node.stop();

    let log = node.log_text();
    let mut messages = Vec::new();
    for line in log.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON object: {line}"
        );
        let value: serde_yaml::Value =
            serde_yaml::from_str(line).unwrap_or_else(|e| panic!("not parseable ({e}): {line}"));
        let map = value
            .as_mapping()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let keys: Vec<&str> = map.keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(keys, ["level", "target", "msg"], "{line}");
        let field = |name: &str| map.get(name).and_then(|v| v.as_str()).unwrap().to_string();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&field("level").as_str()),
            "{line}"
        );
        messages.push(field("msg"));
    }
    assert!(messages.len() >= 3, "too few lines: {log}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("database we\"ird.db: position")),
        "no line names the database: {log}"
    );
    assert!(messages.iter().any(|m| m.starts_with("unmounted")), "{log}");
}

/// The number of LTX files of `db` in `node`'s data directory.
fn ltx_count(node: &Node, db: &str) -> usize {
    node.ltx_files(db).len()
}

#[test]
fn retention_monitor_interval_sets_how_often_retention_runs() {
    let tmp = temp_dir("retention-interval");
    let interval = Duration::from_secs(2);
    // Files are old enough after 100ms; only the interval paces deletion
    // (the default for this retention would be every 50ms).
    let node = Node::start_in(
        tmp.path(),
        "data:\n  retention: 100ms\n  retention-monitor-interval: 2s\n",
    );
    let db = node.db("r.db");
    sqlite3_ok(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    assert!(ltx_count(&node, "r.db") >= 2);
    wait_for("the first retention run", DEADLINE, || {
        ltx_count(&node, "r.db") == 1
    });
    let first = Instant::now();
    sqlite3_ok(&db, "INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);");
    assert!(ltx_count(&node, "r.db") >= 2);
    wait_for("the second retention run", DEADLINE, || {
        ltx_count(&node, "r.db") == 1
    });
    let gap = first.elapsed();
    assert!(
        gap >= interval - Duration::from_millis(500)
            && gap <= interval + Duration::from_millis(1500),
        "retention ran again after {gap:?}, not every {interval:?}"
    );
}

#[test]
fn fuse_allow_other_sets_the_mount_option() {
    let tmp = temp_dir("allow-other");
    let mut off = Node::start_in(&tmp.path().join("off"), "fuse:\n  allow-other: false\n");
    let options = mount_options(&off.mount).expect("the mount is listed");
    assert!(!options.contains("allow_other"), "{options}");
    off.stop();
    if !is_root() {
        eprintln!("not root: allow_other needs user_allow_other in /etc/fuse.conf; skipped");
        return;
    }
    let mut on = Node::start_in(&tmp.path().join("on"), "fuse:\n  allow-other: true\n");
    let options = mount_options(&on.mount).expect("the mount is listed");
    assert!(options.contains("allow_other"), "{options}");
    on.stop();
}

#[test]
fn exit_on_error_stops_a_replica_the_primary_refuses() {
    let tmp = temp_dir("exit-on-error");
    // The harness's config ends in its `http:` block: this extends it.
    let mut primary = Node::start_in(&tmp.path().join("primary"), "  token: right\n");
    let yaml = format!(
        "  token: wrong\nexit-on-error: true\n{}",
        common::replica_yaml(&primary)
    );
    // Not waiting for the mount: the replica may be gone before it is seen.
    let mut replica = Node::spawn_in(&tmp.path().join("replica"), &yaml, &[]);
    let status = replica.wait_exit();
    let log = replica.log_text();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        log.contains("exit-on-error") && log.contains("401"),
        "{log}"
    );
    assert!(!is_mounted(&replica.mount), "the mount is left behind");
    // The primary is unharmed.
    assert!(primary.is_running());
    primary.stop();
}

#[test]
fn reconnect_delay_caps_the_replica_loops_backoff() {
    // A "primary" that accepts connections and hangs up at once, noting
    // when each came.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (accepted, stop) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted.lock().unwrap().push(Instant::now());
                        drop(conn);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let tmp = temp_dir("reconnect-delay");
    let store = Store::open(tmp.path()).unwrap();
    // The pauses between the first `count` connections.
    let pauses = |max_backoff: Duration, count: usize| {
        accepted.lock().unwrap().clear();
        let done = AtomicBool::new(false);
        let options = RetryOptions {
            max_backoff,
            ..RetryOptions::default()
        };
        thread::scope(|s| {
            s.spawn(|| {
                run_replica_loop_with(
                    || Some(url.clone()),
                    None,
                    &store,
                    &mut litefs::http::Receivers {
                        receive: &mut |db, p| db.apply_ltx(p),
                        delete: &mut |name| store.delete_db(name).map(drop),
                    },
                    &done,
                    &options,
                )
            });
            wait_for(&format!("{count} connections"), DEADLINE, || {
                accepted.lock().unwrap().len() >= count
            });
            done.store(true, Ordering::SeqCst);
        });
        let accepted = accepted.lock().unwrap();
        accepted[..count]
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect::<Vec<_>>()
    };
    // 100ms, then 150ms again and again.
    let short = Duration::from_millis(150);
    let short_pauses = pauses(short, 10);
    // The default doubles up to 5 s: 100, 200, 400, 800 ms so far, far
    // past 150ms.
    let default = RetryOptions::default().max_backoff;
    let default_pauses = pauses(default, 5);
    stop.store(true, Ordering::SeqCst);
    acceptor.join().unwrap();
    assert_backoff(&short_pauses, short);
    assert_eq!(default, Duration::from_secs(5));
    assert_backoff(&default_pauses, default);
}
