//! Helpers shared by the tests of replication over HTTP without FUSE:
//! stores written with rusqlite and committed by hand, a `Server` on a
//! loopback port, a replica client in a thread, raw HTTP requests, and a
//! fake primary that sends what the test says.
//!
//! Include it with `mod http_common;` beside `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use litefs::http::{stream_from_primary, Error, Receivers, Server};
use litefs::store::{Db, Position, Store};
use rusqlite::Connection;
use tempfile::TempDir;

use crate::common::wait_for;

/// How long any condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds; panics with `what` after `DEADLINE`.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, DEADLINE, cond)
}

pub fn new_store() -> (TempDir, Arc<Store>) {
    // RUST_LOG=debug shows what the server and client did.
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = TempDir::new().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    (dir, store)
}

/// A SQLite connection on a database's file, journal_mode=DELETE.
pub fn connect(db: &Db) -> Connection {
    let conn = Connection::open(db.database_path()).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    conn
}

/// Commits whatever changed in `db`'s file (passing every page as dirty)
/// and wakes the streams.
pub fn commit(store: &Store, db: &Db) -> Option<Position> {
    let file = fs::read(db.database_path()).unwrap();
    let page_size = match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65536,
        n => usize::from(n),
    };
    let pages: BTreeSet<u32> = (1..=(file.len() / page_size) as u32).collect();
    let pos = db.commit_pages(&pages).unwrap();
    store.notify_change();
    pos
}

/// Runs `sql` on `name` (created if needed) in `store` and commits it;
/// `None` when nothing changed.
pub fn try_exec(store: &Store, name: &str, sql: &str) -> Option<Position> {
    let db = store.create_db(name).unwrap();
    let conn = connect(&db);
    conn.execute_batch(sql).unwrap();
    drop(conn);
    commit(store, &db)
}

/// Runs `sql` on `name` in `store`, which must change the database.
pub fn exec(store: &Store, name: &str, sql: &str) -> Position {
    try_exec(store, name, sql).expect("the statement changed the database")
}

/// A few transactions on `name`: a table and `rows` inserts, one per TXID.
pub fn fill(store: &Store, name: &str, rows: usize) -> Position {
    let mut pos = try_exec(
        store,
        name,
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .unwrap_or_else(|| store.db(name).unwrap().pos());
    for i in 0..rows {
        pos = exec(
            store,
            name,
            &format!(
                "INSERT INTO t(v) VALUES ('{name} row {i} {}')",
                "x".repeat(200)
            ),
        );
    }
    pos
}

/// Whether every database of `primary` is on `replica` at the same position.
pub fn in_sync(primary: &Store, replica: &Store) -> bool {
    primary
        .dbs()
        .iter()
        .filter(|db| db.pos().txid > 0)
        .all(|db| replica.db(db.name()).is_some_and(|r| r.pos() == db.pos()))
}

/// Waits until `replica` caught up with `primary`, then checks that the
/// database files are byte-identical.
pub fn wait_synced(primary: &Store, replica: &Store) {
    wait_until("the replica to catch up", || in_sync(primary, replica));
    for db in primary.dbs().iter().filter(|db| db.pos().txid > 0) {
        let other = replica.db(db.name()).unwrap();
        assert_eq!(
            fs::read(db.database_path()).unwrap(),
            fs::read(other.database_path()).unwrap(),
            "database {} differs at {}",
            db.name(),
            db.pos()
        );
    }
}

/// A replica client running `stream_from_primary` in a thread.
pub struct Client {
    pub stop: Arc<AtomicBool>,
    pub handle: JoinHandle<Result<(), Error>>,
}

impl Client {
    pub fn start(url: &str, store: &Arc<Store>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let url = url.to_string();
        let store = store.clone();
        let thread_stop = stop.clone();
        let handle = thread::spawn(move || {
            stream_from_primary(
                &url,
                None,
                &store,
                &mut Receivers {
                    receive: &mut |db, p| db.apply_ltx(p),
                    delete: &mut |name| store.delete_db(name).map(drop),
                },
                &thread_stop,
            )
        });
        Client { stop, handle }
    }

    /// Stops the client and returns what it returned.
    pub fn stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }

    /// Waits for the client to end on its own and returns its result.
    pub fn join(self) -> Result<(), Error> {
        self.handle.join().unwrap()
    }
}

pub fn start_server(store: &Arc<Store>) -> (Server, String) {
    let server = Server::start("127.0.0.1:0", store.clone()).unwrap();
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

pub fn ltx_count(db: &Db) -> usize {
    db.ltx_files().unwrap().len()
}

pub fn temp_files(db: &Db) -> Vec<String> {
    fs::read_dir(db.ltx_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// Sends `request` on a new connection and returns the status and body.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn post_stream(body: &str) -> Vec<u8> {
    format!(
        "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A fake primary on a loopback port that sends `response` (the HTTP
/// answer, head and body) to every connection and then stays silent,
/// keeping the connection open, until the test ends. Returns its address.
pub fn start_fake_primary(response: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let _ = conn.write_all(&response);
            open.push(conn);
        }
    });
    addr
}
