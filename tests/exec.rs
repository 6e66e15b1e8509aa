//! `exec`: litefs starts an application once the node is ready, forwards
//! SIGINT/SIGTERM to it, and when it exits shuts down (lease released,
//! mount removed) and exits with its status. Real litefs processes, real
//! child processes.

mod common;

use std::path::Path;

use common::{is_mounted, sqlite3_ok, temp_dir, wait_for, Node, DEADLINE};

/// `path` quoted for sh.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Reads the backing database of an unmounted node with the sqlite3 CLI.
fn query_backing(node: &Node, db: &str, sql: &str) -> String {
    sqlite3_ok(&node.data_db(db), sql)
}

/// Asserts litefs exited with `code` and left no mount behind.
fn assert_exited(node: &mut Node, code: i32) {
    let status = node.wait_exit();
    assert_eq!(status.code(), Some(code), "log:\n{}", node.log_text());
    assert!(!is_mounted(&node.mount), "the mount is left behind");
}

#[test]
fn a_command_after_double_dash_runs_and_its_status_is_litefs_status() {
    let tmp = temp_dir("exec-cli");
    let dir = tmp.path().join("n");
    let db = dir.join("mnt").join("app.db");
    let script = format!(
        "sqlite3 {} 'CREATE TABLE t (x); INSERT INTO t VALUES (42);' && exit 7",
        sh_quote(&db)
    );
    let mut node = Node::spawn_in(&dir, "", &["--", "sh", "-c", &script]);
    assert_exited(&mut node, 7);
    assert_eq!(query_backing(&node, "app.db", "SELECT x FROM t;"), "42\n");
    // The write was a replicated transaction, not a stray file.
    assert!(!node.ltx_files("app.db").is_empty());
    let log = node.log_text();
    assert!(
        log.contains("exec: started") && log.contains("exited 7"),
        "{log}"
    );
}

#[test]
fn sigterm_reaches_the_application_and_litefs_exits_with_its_status() {
    let tmp = temp_dir("exec-sigterm");
    let dir = tmp.path().join("n");
    std::fs::create_dir_all(&dir).unwrap();
    let started = dir.join("started");
    let marker = dir.join("got-term");
    let script = format!(
        "trap 'echo term > {}; exit 3' TERM; echo up > {}; while :; do sleep 0.05; done",
        sh_quote(&marker),
        sh_quote(&started)
    );
    let mut node = Node::spawn_in(&dir, "", &["--", "sh", "-c", &script]);
    wait_for("the application to start", DEADLINE, || started.exists());
    assert!(node.is_running(), "litefs stops only once the child exits");
    let status = node.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(3), "log:\n{}", node.log_text());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
    assert!(!is_mounted(&node.mount), "the mount is left behind");
    assert!(node.log_text().contains("forwarding SIGTERM"));
}

#[test]
fn an_application_killed_by_the_signal_gives_128_plus_the_signal() {
    let tmp = temp_dir("exec-sigint");
    // A program run as given (no shell), so that once litefs has started
    // it, it is the program that gets the signal.
    let mut node = Node::spawn_in(&tmp.path().join("n"), "", &["--", "sleep", "60"]);
    wait_for("the application to start", DEADLINE, || {
        node.log_text().contains("exec: started")
    });
    let status = node.signal_and_wait(libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGINT),
        "log:\n{}",
        node.log_text()
    );
    assert!(!is_mounted(&node.mount));
}

#[test]
fn the_exec_key_runs_its_entries_in_order() {
    let tmp = temp_dir("exec-key");
    let dir = tmp.path().join("n");
    let db = sh_quote(&dir.join("mnt").join("app.db"));
    // A migration, then the application; the string and list forms.
    let yaml = format!(
        "exec:\n\
         \x20 - cmd: \"sqlite3 {db} 'CREATE TABLE m (v); INSERT INTO m VALUES (1);'\"\n\
         \x20   if-candidate: true\n\
         \x20 - \"sqlite3 {db} 'INSERT INTO m VALUES (2);'\"\n\
         \x20 - cmd: \"sqlite3 {db} 'INSERT INTO m VALUES (3);'; exit 0\"\n"
    );
    let mut node = Node::spawn_in(&dir, &yaml, &[]);
    assert_exited(&mut node, 0);
    assert_eq!(
        query_backing(&node, "app.db", "SELECT group_concat(v) FROM m;"),
        "1,2,3\n"
    );

    // A failing entry stops the rest, and its status is litefs's.
    let dir = tmp.path().join("failing");
    std::fs::create_dir_all(&dir).unwrap();
    let never = dir.join("never");
    let yaml = format!(
        "exec:\n  - cmd: \"exit 5\"\n  - cmd: \"touch {}\"\n",
        sh_quote(&never)
    );
    let mut node = Node::spawn_in(&dir, &yaml, &[]);
    assert_exited(&mut node, 5);
    assert!(!never.exists(), "the entry after a failure ran");

    // The string form; a command line given with `--` replaces the key.
    let dir = tmp.path().join("string");
    let mut node = Node::spawn_in(&dir, "exec: \"exit 4\"\n", &[]);
    assert_exited(&mut node, 4);
    let dir = tmp.path().join("override");
    let mut node = Node::spawn_in(&dir, "exec: \"exit 4\"\n", &["--", "sh", "-c", "exit 6"]);
    assert_exited(&mut node, 6);
}

#[test]
fn on_a_replica_the_application_starts_once_caught_up() {
    let tmp = temp_dir("exec-replica");
    let mut primary = Node::start_in(&tmp.path().join("primary"), "");
    let mut sql = String::from("CREATE TABLE t (x);");
    for i in 0..200 {
        sql.push_str(&format!("INSERT INTO t VALUES ({i});"));
    }
    sqlite3_ok(&primary.db("app.db"), &sql);
    let want = sqlite3_ok(&primary.db("app.db"), "SELECT count(*), sum(x) FROM t;");

    let dir = tmp.path().join("replica");
    std::fs::create_dir_all(&dir).unwrap();
    let seen = dir.join("seen");
    let skipped = dir.join("skipped");
    let db = sh_quote(&dir.join("mnt").join("app.db"));
    let yaml = format!(
        "exec-wait: caught-up\n\
         exec:\n\
         \x20 - cmd: \"touch {}\"\n\
         \x20   if-candidate: true\n\
         \x20 - cmd: \"sqlite3 -cmd '.timeout 5000' {db} 'SELECT count(*), sum(x) FROM t;' > {}\"\n\
         {}",
        sh_quote(&skipped),
        sh_quote(&seen),
        common::replica_yaml(&primary)
    );
    let mut replica = Node::spawn_in(&dir, &yaml, &[]);
    assert_exited(&mut replica, 0);
    // The application's first query saw everything the primary had.
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), want);
    assert!(!skipped.exists(), "an if-candidate entry ran on a replica");
    assert!(replica.log_text().contains("skipping"));
    primary.stop();
}
