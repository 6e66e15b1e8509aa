//! Shared by the failover and step-down tests: litefs candidates on one
//! Consul key, probes of a node's role and position, and [`Proxy`], a
//! network partition between processes on one machine without network
//! namespaces (a TCP forwarder the test cuts and heals).
//!
//! Include it with `#[path = "common/cluster.rs"] mod cluster;` beside
//! `mod common;`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{Node, CATCH_UP};

/// The session TTL every node asks for (the smallest Consul accepts).
pub const TTL: Duration = Duration::from_secs(10);
pub const LOCK_DELAY: Duration = Duration::from_secs(1);
/// How long a replica may take to catch up, or a first primary to appear.
/// The longest a dead primary's lease can outlive it: Consul invalidates a
/// session between one and two TTLs after its last renewal, then the lock
/// delay holds the key.
pub const DEAD_LEASE_MAX: Duration = Duration::from_secs(2 * 10 + 1);

/// The Go LiteFS spelling of a Consul lease for one node.
pub fn consul_lease_yaml(
    hostname: &str,
    advertise_url: &str,
    consul_url: &str,
    key: &str,
) -> String {
    format!(
        "lease:\n  type: consul\n  candidate: true\n  hostname: {hostname}\n  \
         advertise-url: \"{advertise_url}\"\n  consul:\n    url: \"{consul_url}\"\n    \
         key: \"{key}\"\n    ttl: {}s\n    lock-delay: {}s\n",
        TTL.as_secs(),
        LOCK_DELAY.as_secs()
    )
}

/// Starts a candidate that advertises its own HTTP address.
pub fn start_consul_node(dir: &Path, hostname: &str, consul_url: &str, key: &str) -> Node {
    Node::start_with(dir, |port| {
        consul_lease_yaml(
            hostname,
            &format!("http://127.0.0.1:{port}"),
            consul_url,
            key,
        )
    })
}

/// Runs `sql` in a fresh connection (a connection opened on a replica
/// falls back to read-only for good, so each try opens its own).
pub fn try_write(db: &Path, sql: &str) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    conn.execute_batch(sql).map_err(|e| e.to_string())
}

/// Tries `sql` on `db` every `every` until it succeeds. Returns how long
/// after `since` it first succeeded, and the distinct errors of the tries
/// that failed. Panics after `timeout`.
pub fn write_when_writable(
    db: &Path,
    sql: &str,
    since: Instant,
    timeout: Duration,
    every: Duration,
) -> (Duration, BTreeSet<String>) {
    let mut errors = BTreeSet::new();
    loop {
        match try_write(db, sql) {
            Ok(()) => return (since.elapsed(), errors),
            Err(e) => {
                errors.insert(e);
            }
        }
        assert!(
            since.elapsed() < timeout,
            "no write on {} succeeded within {timeout:?}; errors: {errors:?}",
            db.display()
        );
        thread::sleep(every);
    }
}

/// Runs `sql` on `db` once the node accepts writes (trying every 20 ms,
/// for at most `CATCH_UP`); what `write_when_writable` returns.
pub fn write_once_writable(db: &Path, sql: &str) -> (Duration, BTreeSet<String>) {
    write_when_writable(db, sql, Instant::now(), CATCH_UP, Duration::from_millis(20))
}

/// Every refused write must have been refused as read-only, not failed in
/// some other way (an I/O error would mean a half-applied role change).
pub fn assert_refused_as_read_only(errors: &BTreeSet<String>) {
    for e in errors {
        assert!(
            e.contains("readonly"),
            "a write failed with {e:?}, not as a read-only refusal"
        );
    }
}

/// Whether the mount lets `db` be opened for writing: a probe of the role
/// that writes nothing (a replica refuses with EROFS).
pub fn opens_for_writing(node: &Node, db: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node.db(db))
    {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => false,
        Err(e) => panic!("opening {} failed: {e}", node.db(db).display()),
    }
}

/// `<db>-pos` as (TXID, checksum).
pub fn position(node: &Node, db: &str) -> (u64, u64) {
    let text = node.pos(db);
    let (txid, sum) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("bad position {text:?}"));
    (
        u64::from_str_radix(txid, 16).unwrap(),
        u64::from_str_radix(sum, 16).unwrap(),
    )
}

/// The port of a `http://127.0.0.1:<port>` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TCP forwarder on a loopback port to another loopback port, which the
/// test can cut (every open connection is shut down and new ones are
/// closed at once) and heal: a network partition between two processes.
pub struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: u16,
    cut: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every forwarded connection, to shut down on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Forwards a fresh loopback port to `upstream`.
    pub fn start(upstream: u16) -> Proxy {
        Proxy::serve(TcpListener::bind("127.0.0.1:0").unwrap(), upstream)
    }

    /// Forwards loopback `port` (which must be free) to `upstream`.
    pub fn start_on(port: u16, upstream: u16) -> Proxy {
        Proxy::serve(TcpListener::bind(("127.0.0.1", port)).unwrap(), upstream)
    }

    fn serve(listener: TcpListener, upstream: u16) -> Proxy {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            upstream,
            cut: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = thread::spawn(move || accept_loop(listener, &accept_shared));
        Proxy {
            port,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Shuts every forwarded connection down; when this returns, no byte
    /// passes until `heal`.
    pub fn cut(&self) {
        let mut open = self.shared.open.lock().unwrap();
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `closing`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: &ProxyShared) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: closed at once
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
            continue;
        };
        let mut open = shared.open.lock().unwrap();
        if shared.cut.load(Ordering::SeqCst) {
            continue;
        }
        open.push(client.try_clone().unwrap());
        open.push(server.try_clone().unwrap());
        forward(client.try_clone().unwrap(), server.try_clone().unwrap());
        forward(server, client);
    }
}

/// Copies `from` to `to` on a thread until either side ends.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
