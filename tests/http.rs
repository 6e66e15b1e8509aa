//! Tests of replication over HTTP without FUSE: a primary store written
//! with rusqlite and committed by hand, a `Server` on a loopback port, and
//! replica stores pulling with `stream_from_primary` / `run_replica_loop`.
//! Covers catch-up, several and new databases, resuming, retention and
//! divergence snapshots, corrupted and cut streams (through a mangling
//! proxy), bad requests, heartbeats and dead links.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use litefs::http::{self, run_replica_loop, stream_from_primary, Error, Receivers, Server};
use litefs::store::{Db, Position, Store};
use rusqlite::Connection;
use tempfile::TempDir;

/// How long any condition may take to become true.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds; panics with `what` after `DEADLINE`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn new_store() -> (TempDir, Arc<Store>) {
    // RUST_LOG=debug shows what the server and client did.
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = TempDir::new().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    (dir, store)
}

/// A SQLite connection on a database's file, journal_mode=DELETE.
fn connect(db: &Db) -> Connection {
    let conn = Connection::open(db.database_path()).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    conn
}

/// Commits whatever changed in `db`'s file (passing every page as dirty)
/// and wakes the streams.
fn commit(store: &Store, db: &Db) -> Option<Position> {
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
fn try_exec(store: &Store, name: &str, sql: &str) -> Option<Position> {
    let db = store.create_db(name).unwrap();
    let conn = connect(&db);
    conn.execute_batch(sql).unwrap();
    drop(conn);
    commit(store, &db)
}

/// Runs `sql` on `name` in `store`, which must change the database.
fn exec(store: &Store, name: &str, sql: &str) -> Position {
    try_exec(store, name, sql).expect("the statement changed the database")
}

/// A few transactions on `name`: a table and `rows` inserts, one per TXID.
fn fill(store: &Store, name: &str, rows: usize) -> Position {
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
fn in_sync(primary: &Store, replica: &Store) -> bool {
    primary
        .dbs()
        .iter()
        .filter(|db| db.pos().txid > 0)
        .all(|db| replica.db(db.name()).is_some_and(|r| r.pos() == db.pos()))
}

/// Waits until `replica` caught up with `primary`, then checks that the
/// database files are byte-identical.
fn wait_synced(primary: &Store, replica: &Store) {
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
struct Client {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), Error>>,
}

impl Client {
    fn start(url: &str, store: &Arc<Store>) -> Client {
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
                    apply: &mut |db, p| db.apply_ltx(p),
                    delete: &mut |name| store.delete_db(name).map(drop),
                },
                &thread_stop,
            )
        });
        Client { stop, handle }
    }

    /// Stops the client and returns what it returned.
    fn stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }

    /// Waits for the client to end on its own and returns its result.
    fn join(self) -> Result<(), Error> {
        self.handle.join().unwrap()
    }
}

fn start_server(store: &Arc<Store>) -> (Server, String) {
    let server = Server::start("127.0.0.1:0", store.clone()).unwrap();
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

fn ltx_count(db: &Db) -> usize {
    db.ltx_files().unwrap().len()
}

fn temp_files(db: &Db) -> Vec<String> {
    fs::read_dir(db.ltx_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn replica_catches_up_then_follows_commits() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    let pos = fill(&primary, "a", 5);
    assert_eq!(pos.txid, 6);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    for i in 0..20 {
        exec(
            &primary,
            "a",
            &format!("UPDATE t SET v = 'update {i}' WHERE id = 3"),
        );
    }
    wait_synced(&primary, &replica);
    assert_eq!(replica.db("a").unwrap().pos().txid, 26);
    let stats = server.stats();
    assert_eq!(stats.snapshots_sent, 0);
    assert_eq!(stats.ltx_files_sent, 26);
    assert_eq!(stats.streams_active, 1);
    client.stop().unwrap();
    assert_eq!(temp_files(&replica.db("a").unwrap()), Vec::<String>::new());
    server.shutdown();
}

#[test]
fn commits_reach_the_replica_without_notification() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 1);
    let (_server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    // Commit without notify_change: the stream notices on its next round.
    let db = primary.db("a").unwrap();
    connect(&db)
        .execute_batch("INSERT INTO t(v) VALUES ('quiet')")
        .unwrap();
    assert!(db.commit_pages(&(1..=8).collect()).unwrap().is_some());
    wait_synced(&primary, &replica);
    client.stop().unwrap();
}

#[test]
fn several_databases_share_one_stream_and_new_ones_appear() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 3);
    fill(&primary, "b with space", 2);
    // A database that exists but has no transaction yet is not sent.
    primary.create_db("empty").unwrap();
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    assert!(replica.db("empty").is_none());
    fill(&primary, "c", 4);
    exec(&primary, "a", "DELETE FROM t WHERE id = 1");
    wait_synced(&primary, &replica);
    assert_eq!(replica.db("c").unwrap().pos().txid, 5);
    assert_eq!(server.stats().streams_started, 1);
    assert_eq!(server.stats().snapshots_sent, 0);
    client.stop().unwrap();
}

#[test]
fn restarted_replica_resumes_from_its_position() {
    let (_p, primary) = new_store();
    let (r, replica) = new_store();
    fill(&primary, "a", 4);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    client.stop().unwrap();
    // The old stream notices the replica left at its next heartbeats.
    wait_until("the old stream to end", || {
        server.stats().streams_active == 0
    });
    let sent = server.stats().ltx_files_sent;
    assert_eq!(sent, 5);

    // More commits while the replica is away; the replica restarts with a
    // freshly opened store (as after a restart of the process).
    let after = fill(&primary, "a", 3);
    assert_eq!(after.txid, 8);
    drop(replica);
    let replica = Arc::new(Store::open(r.path()).unwrap());
    assert_eq!(replica.db("a").unwrap().pos().txid, 5);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    let stats = server.stats();
    assert_eq!(stats.snapshots_sent, 0, "resuming must not need a snapshot");
    // Exactly the missing files (the CREATE TABLE IF NOT EXISTS was a no-op).
    assert_eq!(stats.ltx_files_sent, sent + 3);
    assert_eq!(stats.streams_started, 2);
    client.stop().unwrap();
}

/// Makes every LTX file of `db` look an hour old.
fn age_ltx_files(db: &Db) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for (_, _, path) in db.ltx_files().unwrap() {
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

#[test]
fn retention_removed_position_gives_a_snapshot() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    let (_f, fresh) = new_store();
    fill(&primary, "a", 2);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    client.stop().unwrap();

    fill(&primary, "a", 4);
    let db = primary.db("a").unwrap();
    age_ltx_files(&db);
    assert_eq!(db.enforce_retention(Duration::from_secs(60)).unwrap(), 6);
    assert_eq!(ltx_count(&db), 1);

    // The replica that was away and a brand new one both get a snapshot.
    let client = Client::start(&url, &replica);
    let fresh_client = Client::start(&url, &fresh);
    wait_synced(&primary, &replica);
    wait_synced(&primary, &fresh);
    assert_eq!(server.stats().snapshots_sent, 2);
    // The snapshot replaced the replica's old LTX files.
    let replica_db = replica.db("a").unwrap();
    assert_eq!(ltx_count(&replica_db), 1);

    // And they go on with ordinary files.
    let files = server.stats().ltx_files_sent;
    exec(
        &primary,
        "a",
        "INSERT INTO t(v) VALUES ('after the snapshot')",
    );
    wait_synced(&primary, &replica);
    wait_synced(&primary, &fresh);
    assert_eq!(server.stats().ltx_files_sent, files + 2);
    assert_eq!(server.stats().snapshots_sent, 2);
    assert_eq!(
        temp_files(&db),
        Vec::<String>::new(),
        "snapshot temp files left"
    );
    client.stop().unwrap();
    fresh_client.stop().unwrap();
}

#[test]
fn diverged_replicas_get_snapshots() {
    let (_p, primary) = new_store();
    let (r, replica) = new_store();
    // Behind and diverged: same TXID 1, different TXID 2, primary at 3.
    fill(&primary, "behind", 2);
    exec(
        &replica,
        "behind",
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)",
    );
    exec(
        &replica,
        "behind",
        "INSERT INTO t(v) VALUES ('written on the replica')",
    );
    // Same TXID, different content.
    exec(&primary, "same", "CREATE TABLE t(x)");
    exec(&primary, "same", "INSERT INTO t VALUES (1)");
    exec(&replica, "same", "CREATE TABLE u(y)");
    exec(&replica, "same", "INSERT INTO u VALUES (2)");
    // The replica is ahead of the primary.
    exec(&primary, "ahead", "CREATE TABLE t(x)");
    for i in 0..3 {
        exec(&replica, "ahead", &format!("CREATE TABLE u{i}(y)"));
    }
    // Reopen the replica's store so no state of the writes above lingers.
    drop(replica);
    let replica = Arc::new(Store::open(r.path()).unwrap());
    for name in ["behind", "same", "ahead"] {
        assert_ne!(
            replica.db(name).unwrap().pos(),
            primary.db(name).unwrap().pos()
        );
    }
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().snapshots_sent, 3);
    assert_eq!(server.stats().ltx_files_sent, 0);
    // After the snapshot the replica follows normally.
    exec(&primary, "same", "INSERT INTO t VALUES (3)");
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().snapshots_sent, 3);
    assert_eq!(server.stats().ltx_files_sent, 1);
    client.stop().unwrap();
}

/// What the mangling proxy does to the first LTX frame.
#[derive(Clone, Copy)]
enum Mangle {
    /// Flips one bit in the middle of the payload.
    Flip,
    /// Forwards half the payload, then closes both connections.
    Cut,
}

fn read_n(from: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    from.read_exact(&mut buf).unwrap();
    buf
}

/// A TCP proxy for one connection to `upstream` that mangles the first LTX
/// frame of the response. Returns its address.
fn start_proxy(upstream: SocketAddr, mangle: Mangle) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut server = TcpStream::connect(upstream).unwrap();
        let mut to_server = server.try_clone().unwrap();
        let mut from_client = client.try_clone().unwrap();
        thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
        });
        // The response head.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.extend(read_n(&mut server, 1));
        }
        client.write_all(&head).unwrap();
        loop {
            let kind = read_n(&mut server, 1);
            if kind[0] != b'L' {
                client.write_all(&kind).unwrap();
                continue;
            }
            let name_len = read_n(&mut server, 2);
            let name = read_n(
                &mut server,
                u16::from_be_bytes([name_len[0], name_len[1]]) as usize,
            );
            let len_bytes = read_n(&mut server, 8);
            let len = u64::from_be_bytes(len_bytes.clone().try_into().unwrap()) as usize;
            let mut payload = read_n(&mut server, len);
            for part in [&kind, &name_len, &name, &len_bytes] {
                client.write_all(part).unwrap();
            }
            match mangle {
                Mangle::Flip => {
                    payload[len / 2] ^= 0x10;
                    client.write_all(&payload).unwrap();
                    let _ = std::io::copy(&mut server, &mut client);
                }
                Mangle::Cut => {
                    client.write_all(&payload[..len / 2]).unwrap();
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                }
            }
            return;
        }
    });
    addr
}

#[test]
fn corrupted_or_cut_streams_leave_the_replica_at_its_last_good_position() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 2);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    client.stop().unwrap();
    fill(&primary, "a", 3);

    let db = replica.db("a").unwrap();
    let good_pos = db.pos();
    let good_bytes = fs::read(db.database_path()).unwrap();
    let good_files = ltx_count(&db);

    for mangle in [Mangle::Flip, Mangle::Cut] {
        let proxy = start_proxy(server.local_addr(), mangle);
        let err = Client::start(&format!("http://{proxy}"), &replica)
            .join()
            .unwrap_err();
        let message = err.to_string();
        match mangle {
            // Verified as it arrives, before it reaches the database.
            Mangle::Flip => assert!(
                matches!(&err, Error::Protocol { .. })
                    && message.contains("database a")
                    && message.contains("corrupt LTX file"),
                "{message}"
            ),
            Mangle::Cut => assert!(
                matches!(err, Error::Protocol { .. })
                    && message.contains("database a")
                    && message.contains("stream ended after"),
                "{message}"
            ),
        }
        assert_eq!(db.pos(), good_pos, "{message}");
        assert_eq!(fs::read(db.database_path()).unwrap(), good_bytes);
        assert_eq!(ltx_count(&db), good_files);
        assert_eq!(temp_files(&db), Vec::<String>::new());
    }

    // A clean connection then resumes from the good position.
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().snapshots_sent, 0);
    client.stop().unwrap();
}

/// A fake primary that sends `response` to every connection and then
/// stays silent (keeping the connection open) until the test ends.
fn start_fake_primary(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let _ = conn.write_all(response);
            open.push(conn);
        }
    });
    addr
}

#[test]
fn malformed_frames_are_refused_with_a_reason() {
    let (_r, replica) = new_store();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-litefs-stream\r\n\
                Connection: close\r\n\r\n";
    // A whole frame of garbage for a new database: 200 bytes announced
    // and sent.
    let mut garbage = b"L\x00\x05ghost\x00\x00\x00\x00\x00\x00\x00\xc8".to_vec();
    garbage.extend_from_slice(&[0x5a; 200]);
    let garbage: &'static [u8] = Box::leak(garbage.into_boxed_slice());
    let cases: [(&[u8], &str); 8] = [
        // A frame header for a new database and 3 bytes, then silence.
        (
            b"L\x00\x05ghost\x00\x00\x00\x00\x00\x00\x00\xc8abc",
            "not even a heartbeat",
        ),
        (
            garbage,
            "database ghost: refused an LTX frame before writing it: invalid header",
        ),
        (b"HHX", "unknown frame type byte 0x58 (frame 3)"),
        (b"L\x01\x00", "database name of 256 bytes"),
        (b"L\x00\x02a/", "names no valid database"),
        (
            b"L\x00\x01a\x00\x00\x00\x05\x00\x00\x00\x00",
            "database a: an LTX frame announces 21474836480 bytes",
        ),
        (
            b"L\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x05",
            "announces 5 bytes",
        ),
        (
            b"E\x00\x0fnot the primary",
            "ended the replication stream: not the primary",
        ),
    ];
    for (frames, want) in cases {
        let mut response = head.as_bytes().to_vec();
        response.extend_from_slice(frames);
        let response: &'static [u8] = Box::leak(response.into_boxed_slice());
        let addr = start_fake_primary(response);
        let err = Client::start(&format!("http://{addr}"), &replica)
            .join()
            .unwrap_err();
        assert!(err.to_string().contains(want), "{frames:?}: {err}");
    }
    // Nothing was created for the bad frames, not even a directory.
    assert!(replica.dbs().is_empty());
    assert!(!replica.data_dir().join("dbs").join("ghost").exists());

    // Not a stream at all.
    let addr = start_fake_primary(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>");
    let err = Client::start(&format!("http://{addr}"), &replica)
        .join()
        .unwrap_err();
    assert!(
        err.to_string().contains("not a replication stream"),
        "{err}"
    );
}

#[test]
fn a_dead_link_is_noticed_within_seconds() {
    let (_r, replica) = new_store();
    let addr = start_fake_primary(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-litefs-stream\r\n\r\nH",
    );
    let started = Instant::now();
    let err = Client::start(&format!("http://{addr}"), &replica)
        .join()
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::IdleTimeout { .. }), "{err}");
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
}

#[test]
fn an_idle_stream_gets_heartbeats() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 1);
    let (_server, url) = start_server(&primary);

    // A raw stream of a replica that has everything sees only heartbeats.
    let addr = url.trim_start_matches("http://");
    let mut raw = TcpStream::connect(addr).unwrap();
    let body = http::format_positions([("a", primary.db("a").unwrap().pos())]);
    write!(
        raw,
        "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(3500)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_millis(3200) {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) => panic!("{err}"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    let (head, frames) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/x-litefs-stream"), "{head}");
    assert!(
        frames.len() >= 2 && frames.bytes().all(|b| b == b'H'),
        "{frames:?}"
    );

    // A real client stays connected through 3 s of silence.
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    let idle_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < idle_until {
        assert!(
            !client.handle.is_finished(),
            "the client gave up while idle"
        );
        thread::sleep(Duration::from_millis(100));
    }
    exec(&primary, "a", "INSERT INTO t(v) VALUES ('after the pause')");
    wait_synced(&primary, &replica);
    client.stop().unwrap();
}

/// Sends `request` on a new connection and returns the status and body.
fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
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

fn post_stream(body: &str) -> Vec<u8> {
    format!(
        "POST /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn bad_requests_get_clear_answers_and_harm_no_one() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 2);
    let (server, url) = start_server(&primary);
    let addr = server.local_addr();

    let (status, body) = raw_request(addr, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!((status, body.as_str()), (404, "not found: /nope\n"));
    let (status, body) = raw_request(addr, b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405, "{body}");
    let (status, _) = raw_request(addr, b"DELETE /info HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405);
    let good = "0000000000000001/8000000000000000 a\n";
    let cases = [
        (format!("{good}badline\n"), "line 2: expected"),
        (
            "000000000000000z/8000000000000000 a\n".to_string(),
            "line 1: the position",
        ),
        (
            format!("{good}{good}"),
            "line 2: database \"a\" is listed twice",
        ),
        (
            "0000000000000001/8000000000000000 a/b\n".to_string(),
            "line 1: invalid database name",
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = raw_request(addr, &post_stream(&body));
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(want), "{body:?}: {answer}");
    }

    // Garbage, then a disconnect.
    let (status, _) = raw_request(addr, b"\x00\x01\x02 garbage \xff\r\n\r\n");
    assert!(status == 400 || status == 0, "{status}");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"POST /stream HTTP/1.1\r\nContent-Le")
        .unwrap();
    drop(conn);

    // A replica that disconnects in the middle of its stream.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(&post_stream("")).unwrap();
    let mut first = [0u8; 100];
    conn.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200 OK"));
    drop(conn);

    // Another replica is served fine, and the dropped stream ends.
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    wait_until("the dropped stream to end", || {
        server.stats().streams_active == 1
    });
    exec(&primary, "a", "INSERT INTO t(v) VALUES ('still going')");
    wait_synced(&primary, &replica);

    let (status, body) = raw_request(addr, b"GET /info HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            "{{\"primary\":true,\"dbs\":{{\"a\":\"{}\"}}}}\n",
            primary.db("a").unwrap().pos()
        )
    );
    client.stop().unwrap();
}

#[test]
fn a_replica_that_never_reads_blocks_no_one() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 1);
    let (server, url) = start_server(&primary);
    // Asks for everything, then never reads a byte.
    let mut stuck = TcpStream::connect(server.local_addr()).unwrap();
    stuck.write_all(&post_stream("")).unwrap();
    let client = Client::start(&url, &replica);
    // About 8 MB of commits: far more than the socket buffers hold.
    let blob = "y".repeat(1 << 20);
    for _ in 0..8 {
        exec(
            &primary,
            "a",
            &format!("INSERT INTO t(v) VALUES ('{blob}')"),
        );
    }
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().streams_active, 2);
    client.stop().unwrap();
    drop(stuck);
}

#[test]
fn a_node_that_stops_being_primary_ends_its_streams() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 1);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    server.set_serving(false);
    let err = client.join().unwrap_err();
    assert!(
        matches!(&err, Error::PrimaryError { message, .. } if message == "not the primary"),
        "{err}"
    );
    let err = Client::start(&url, &replica).join().unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 503, message, .. } if message == "not the primary"),
        "{err}"
    );
    let (status, body) = raw_request(
        server.local_addr(),
        b"GET /info HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(body.starts_with("{\"primary\":false,"), "{body}");
    server.set_serving(true);
    let client = Client::start(&url, &replica);
    exec(&primary, "a", "INSERT INTO t(v) VALUES ('serving again')");
    wait_synced(&primary, &replica);
    client.stop().unwrap();
}

#[test]
fn the_replica_loop_reconnects_and_resumes() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 2);
    // A port nobody listens on yet.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = {
        let stop = stop.clone();
        let replica = replica.clone();
        thread::spawn(move || {
            run_replica_loop(
                || Some(url.clone()),
                None,
                &replica,
                &mut Receivers {
                    apply: &mut |db, p| db.apply_ltx(p),
                    delete: &mut |name| replica.delete_db(name).map(drop),
                },
                &stop,
            )
        })
    };
    // The loop retries until the primary comes up.
    let server = Server::start(&addr.to_string(), primary.clone()).unwrap();
    wait_synced(&primary, &replica);
    // The primary goes away; the loop keeps trying and resumes once it is back.
    server.shutdown();
    fill(&primary, "a", 2);
    let server = Server::start(&addr.to_string(), primary.clone()).unwrap();
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().snapshots_sent, 0);
    assert_eq!(server.stats().ltx_files_sent, 2);
    stop.store(true, Ordering::SeqCst);
    loop_thread.join().unwrap();
    server.shutdown();
}

#[test]
fn an_absurd_content_length_harms_no_one() {
    let (_p, primary) = new_store();
    let (server, _url) = start_server(&primary);
    let addr = server.local_addr();
    // 1 MiB + 1, and far more than any machine's memory.
    for (path, len) in [("/stream", 1_048_577u64), ("/nope", 999_999_999_999_999)] {
        let mut conn = TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nContent-Length: {len}\r\n\r\nabc"
        )
        .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 413", "{path}");
        drop(conn);
    }
    let (status, _) = raw_request(addr, b"GET /info HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn bad_urls_are_refused() {
    let (_r, replica) = new_store();
    // An https URL without a CA to verify it against (tests/tls.rs has
    // the rest of TLS).
    let https = if litefs::tls::BUILT {
        "http.tls-ca"
    } else {
        "built without TLS"
    };
    for (url, want) in [
        ("ftp://primary:20202", "http://"),
        ("https://primary:20202", https),
        ("http://", "no host"),
        ("http://primary:20202/litefs?x=1", "without a query"),
        ("http://user@primary:20202", "user name"),
    ] {
        let err = Client::start(url, &replica).join().unwrap_err();
        assert!(
            matches!(err, Error::BadUrl { .. }) && err.to_string().contains(want),
            "{url}: {err}"
        );
    }
    // Nobody listening: a request error, quickly.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = Client::start(&format!("http://{addr}/"), &replica)
        .join()
        .unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err}");
}

#[test]
fn server_shutdown_ends_streams_with_a_reason() {
    let (_p, primary) = new_store();
    let (_r, replica) = new_store();
    fill(&primary, "a", 1);
    let (server, url) = start_server(&primary);
    let client = Client::start(&url, &replica);
    wait_synced(&primary, &replica);
    server.shutdown();
    let err = client.join().unwrap_err();
    assert!(
        matches!(&err, Error::PrimaryError { message, .. } if message.contains("shutting down")),
        "{err}"
    );
}
