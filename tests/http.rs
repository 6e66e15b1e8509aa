//! Tests of replication over HTTP without FUSE: a primary store written
//! with rusqlite and committed by hand, a `Server` on a loopback port, and
//! replica stores pulling with `stream_from_primary` / `run_replica_loop`.
//! Covers catch-up, several and new databases, resuming, retention and
//! divergence snapshots, heartbeats, reconnecting, and a primary that stops
//! serving or shuts down. Bad input is elsewhere: what a replica does with
//! corrupted or cut streams, bad frames and dead links in
//! tests/http_replica_bad_input.rs, what the server does with bad requests
//! in tests/http_server_bad_requests.rs.

mod common;
mod http_common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::free_port;
use http_common::{
    connect, exec, fill, ltx_count, new_store, raw_request, start_server, temp_files, wait_synced,
    wait_until, Client,
};
use litefs::http::{self, run_replica_loop, Error, Receivers, Server};
use litefs::store::{Db, Store};

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
    let addr = format!("127.0.0.1:{}", free_port());
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
                    receive: &mut |db, p| db.apply_ltx(p),
                    delete: &mut |name| replica.delete_db(name).map(drop),
                },
                &stop,
            )
        })
    };
    // The loop retries until the primary comes up.
    let server = Server::start(&addr, primary.clone()).unwrap();
    wait_synced(&primary, &replica);
    // The primary goes away; the loop keeps trying and resumes once it is back.
    server.shutdown();
    fill(&primary, "a", 2);
    let server = Server::start(&addr, primary.clone()).unwrap();
    wait_synced(&primary, &replica);
    assert_eq!(server.stats().snapshots_sent, 0);
    assert_eq!(server.stats().ltx_files_sent, 2);
    stop.store(true, Ordering::SeqCst);
    loop_thread.join().unwrap();
    server.shutdown();
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
