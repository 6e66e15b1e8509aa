//! An advertise URL with a path: a replica reaches a primary behind a
//! reverse proxy that serves it under a path prefix, by requesting
//! `<advertise-url>/stream`. The proxy here forwards only requests
//! under its prefix, with the prefix stripped, to a real `Server`; the
//! replica is a real store pulling with `stream_from_primary`.

mod common;
mod http_common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http_common::Client;
use litefs::http::Server;
use litefs::store::Store;

/// A reverse proxy on a loopback port: a request for `<prefix>/x` goes to
/// `upstream` as `/x`; anything else gets 404. Records the request lines
/// it received.
fn start_proxy(
    prefix: &'static str,
    upstream: SocketAddr,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let log = log.clone();
            thread::spawn(move || proxy_one(conn, prefix, upstream, &log));
        }
    });
    (addr, seen)
}

fn proxy_one(client: TcpStream, prefix: &str, upstream: SocketAddr, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    log.lock().unwrap().push(line.trim_end().to_string());
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Some(rest) = target.strip_prefix(prefix) else {
        let mut client = client;
        let _ = client.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let mut server = TcpStream::connect(upstream).unwrap();
    server
        .write_all(format!("{method} {rest} {version}").as_bytes())
        .unwrap();
    // The rest of the request (headers, body) as it comes, then the answer back.
    let buffered = reader.buffer().to_vec();
    server.write_all(&buffered).unwrap();
    let mut to_server = server.try_clone().unwrap();
    let mut from_client = client.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from_client.read(&mut buf) {
            if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut client = client;
    let _ = std::io::copy(&mut server, &mut client);
}

#[test]
fn a_replica_reaches_a_primary_under_a_path_prefix() {
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = Arc::new(Store::open(primary_dir.path()).unwrap());
    let db = primary.create_db("p.db").unwrap();
    let conn = rusqlite::Connection::open(db.database_path()).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES('through the proxy');",
    )
    .unwrap();
    drop(conn);
    let pages: BTreeSet<u32> = (1..=2).collect();
    let pos = db.commit_pages(&pages).unwrap().unwrap();
    let server = Server::start("127.0.0.1:0", primary.clone()).unwrap();
    let (proxy, seen) = start_proxy("/litefs/primary", server.local_addr());

    let replica_dir = tempfile::tempdir().unwrap();
    let replica = Arc::new(Store::open(replica_dir.path()).unwrap());
    // The advertise URL as an operator writes it, trailing `/` and all.
    let client = Client::start(&format!("http://{proxy}/litefs/primary/"), &replica);
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.db("p.db").map(|d| d.pos()) != Some(pos) {
        assert!(
            !client.handle.is_finished(),
            "the replica stopped: {:?}",
            client.join()
        );
        assert!(Instant::now() < deadline, "the replica did not catch up");
        thread::sleep(Duration::from_millis(10));
    }
    client.stop().unwrap();
    assert_eq!(
        std::fs::read(replica.db("p.db").unwrap().database_path()).unwrap(),
        std::fs::read(db.database_path()).unwrap()
    );
    // The stream request names the replica's node (`?node=`).
    let first = seen.lock().unwrap().first().cloned().unwrap_or_default();
    assert!(
        first.starts_with("POST /litefs/primary/stream?node=") && first.ends_with(" HTTP/1.1"),
        "{first}"
    );
}
