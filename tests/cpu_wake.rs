//! Awake CPUs while databases are written (`src/cpu_wake.rs`): the primary
//! holds a request on the kernel's `/dev/cpu_dma_latency` (read back from
//! the device, the value the kernel applies) while transactions commit,
//! lets it go once writes stop, and never takes it with
//! `fuse.keep-cpus-awake: false`. Needs root and /dev/fuse.
//!
//! One test only: the device is the whole machine's, and `cargo test` runs
//! test binaries one at a time, so no other litefs node asks meanwhile (a
//! runner that runs binaries in parallel would make it fail).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{temp_dir, wait_for, Node};

const DEVICE: &str = "/dev/cpu_dma_latency";

/// The CPU wake-up latency (microseconds) the kernel applies now.
fn applied_latency() -> i32 {
    let bytes = std::fs::read(DEVICE).unwrap_or_else(|e| panic!("reading {DEVICE}: {e}"));
    let value: [u8; 4] = bytes[..4]
        .try_into()
        .unwrap_or_else(|_| panic!("{DEVICE} gave {} bytes", bytes.len()));
    i32::from_ne_bytes(value)
}

/// Commits single-row transactions on `conn` until `stop`; returns how
/// many.
fn writer(conn: rusqlite::Connection, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut commits = 0;
        while !stop.load(Ordering::Relaxed) {
            conn.execute("INSERT INTO t(v) VALUES('row')", []).unwrap();
            commits += 1;
        }
        commits
    })
}

/// Waits until the request is let go, back to `before`.
fn wait_released(before: i32) {
    wait_for(
        "the primary to let the request go once writes stop",
        Duration::from_secs(10),
        || applied_latency() == before,
    );
}

#[test]
fn the_primary_keeps_cpus_awake_only_while_it_writes() {
    let before = applied_latency();
    assert!(
        before > 0,
        "{DEVICE} already reads {before} before any node runs: something else holds it"
    );
    let dir = temp_dir("cpu-wake");
    let mut node = Node::start_in(dir.path(), "");

    // Creating the database writes it; once idle, nothing is held.
    let conn = rusqlite::Connection::open(node.db("awake.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    wait_released(before);

    // Commits in a loop: taken again (polled, as the writer and this
    // thread share the CPUs), and let go after the last one.
    let stop = Arc::new(AtomicBool::new(false));
    let handle = writer(conn, stop.clone());
    wait_for(
        "the primary to ask for awake CPUs while it commits",
        Duration::from_secs(20),
        || applied_latency() == 0,
    );
    stop.store(true, Ordering::Relaxed);
    assert!(handle.join().unwrap() > 0, "the writer never committed");
    wait_released(before);

    // Turned off: never taken, sampled after each of 300 commits.
    node.stop();
    drop(node);
    let dir = temp_dir("cpu-wake-off");
    let node = Node::start_in(dir.path(), "fuse:\n  keep-cpus-awake: false\n");
    let conn = rusqlite::Connection::open(node.db("off.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    for i in 0..300 {
        conn.execute("INSERT INTO t(v) VALUES('row')", []).unwrap();
        let now = applied_latency();
        assert_eq!(
            now, before,
            "commit {i} with fuse.keep-cpus-awake: false: {DEVICE} reads {now}"
        );
    }
}
