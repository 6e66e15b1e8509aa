//! The accept loop survives running out of descriptors: with the
//! process at its open-file limit, `accept` fails with EMFILE; the
//! server logs that once, retries with a backoff instead of spinning or
//! exiting, and serves the waiting connection as soon as a descriptor
//! is free again.
//!
//! A test binary of its own: it lowers its own RLIMIT_NOFILE, which would
//! starve any test running beside it.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for;
use litefs::http::Server;
use litefs::store::Store;

/// Keeps every log line of litefs's HTTP server.
struct Captured(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Captured {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("litefs::http")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = (record.level(), record.args().to_string());
            self.0.lock().unwrap().push(line);
        }
    }

    fn flush(&self) {}
}

static LOG: Captured = Captured(Mutex::new(Vec::new()));

fn lines(level: log::Level, containing: &str) -> Vec<String> {
    LOG.0
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, m)| *l == level && m.contains(containing))
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn the_accept_loop_outlives_emfile() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let server = Server::start("127.0.0.1:0", store).unwrap();
    let addr = server.local_addr();

    // A limit a little above what is open now, then every descriptor but
    // one taken.
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = open_now + 20;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut filler = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        filler.push(file);
    }
    assert!(filler.len() >= 10, "{}", filler.len());
    filler.pop();

    // The client takes the last descriptor; the server cannot accept.
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for("the warning about accept", Duration::from_secs(10), || {
        !lines(log::Level::Warn, "cannot accept connections").is_empty()
    });
    let failing_since = Instant::now();
    // Let the backoff run for a while: a spinning loop would retry
    // thousands of times meanwhile, and log each time.
    wait_for("time to pass", Duration::from_secs(5), || {
        failing_since.elapsed() >= Duration::from_millis(1500)
    });
    drop(filler);

    // The waiting connection is served once descriptors are free.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let warnings = lines(log::Level::Warn, "cannot accept connections");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("Too many open files"),
        "{}",
        warnings[0]
    );
    let recovered = lines(log::Level::Info, "accepting connections again");
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    let attempts: u64 = recovered[0]
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    // 10, 20, 40 ... 640 ms, then 1 s: about 8 attempts in 1.5 s.
    assert!((2..=20).contains(&attempts), "{}", recovered[0]);
    server.shutdown();
}
