//! What a replica does with bad input from its primary or its config,
//! over HTTP without FUSE, into a real replica store:
//! - corrupted and cut streams (through a mangling proxy) leave it at its
//!   last good position;
//! - malformed frames from a fake primary are refused with a reason;
//! - each LTX frame's header is checked before a byte is written: a
//!   crafted frame is refused with a protocol error naming the database
//!   and the field, and nothing reaches the data directory (no database,
//!   no directory, no file in `incoming/`), and an existing database
//!   keeps its position and files;
//! - a dead link is noticed within seconds;
//! - bad primary URLs are refused.
//!
//! What the primary's server does with bad requests is in
//! tests/http_server_bad_requests.rs.

mod common;
mod http_common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::free_port;
use http_common::{
    fill, ltx_count, new_store, start_fake_primary, start_server, temp_files, wait_synced, Client,
};
use litefs::http::{Error, MAX_DATABASE_SIZE};
use litefs::ltx::{self, Header, HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE};
use litefs::store::{Position, Store};

/// One stream into `store` from a fake primary sending `frames`; what
/// the replica's client returned.
fn stream(store: &Arc<Store>, frames: Vec<u8>) -> Result<(), Error> {
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-litefs-stream\r\n\
                         Connection: close\r\n\r\n"
        .to_vec();
    response.extend_from_slice(&frames);
    let addr = start_fake_primary(response);
    Client::start(&format!("http://{addr}"), store).join()
}

/// The start of an `L` frame: type, name length, name, file length.
fn frame_head(name: &str, len: u64) -> Vec<u8> {
    let mut out = vec![b'L'];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// An `L` frame for `name` announcing `len` bytes, carrying `header` and
/// as many bytes after it as `sent` says (the rest never comes).
fn frame(name: &str, len: u64, header: &Header, sent: usize) -> Vec<u8> {
    let mut out = frame_head(name, len);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&vec![0u8; sent]);
    out
}

/// The length of an LTX file of `pages` pages of `page_size` bytes.
fn ltx_len(pages: u64, page_size: u32) -> u64 {
    (HEADER_SIZE + PAGE_HEADER_SIZE + TRAILER_SIZE) as u64
        + pages * (PAGE_HEADER_SIZE as u64 + u64::from(page_size))
}

fn header(page_size: u32, commit: u32, min: u64, max: u64, pre: u64) -> Header {
    Header {
        page_size,
        commit,
        min_txid: min,
        max_txid: max,
        timestamp: 1,
        pre_apply_checksum: pre,
        node_id: 7,
        ..Header::default()
    }
}

/// Every file of the data directory but the node id and the empty next
/// LTX file a primary's commit has made ahead (`ltx/next`, made after the
/// commit returns, by another thread).
fn data_files(store: &Store) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![store.data_dir().to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.file_name() != Some("id".as_ref())
                && !(path.ends_with("ltx/next") && path.metadata().unwrap().len() == 0)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found.sort();
    found
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

#[test]
fn malformed_frames_are_refused_with_a_reason() {
    let (_r, replica) = new_store();
    // A whole frame of garbage for a new database: 200 bytes announced
    // and sent.
    let mut garbage = b"L\x00\x05ghost\x00\x00\x00\x00\x00\x00\x00\xc8".to_vec();
    garbage.extend_from_slice(&[0x5a; 200]);
    let cases: [(&[u8], &str); 9] = [
        // A frame header for a new database and 3 bytes, then silence.
        (
            b"L\x00\x05ghost\x00\x00\x00\x00\x00\x00\x00\xc8abc",
            "not even a heartbeat",
        ),
        (
            &garbage,
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
        // A message that would forge a log line is kept on one.
        (
            b"E\x00\x10a\n[ERROR] forged",
            "ended the replication stream: a\\n[ERROR] forged",
        ),
    ];
    for (frames, want) in cases {
        let err = stream(&replica, frames.to_vec()).unwrap_err();
        assert!(err.to_string().contains(want), "{frames:?}: {err}");
    }
    // Nothing was created for the bad frames, not even a directory.
    assert!(replica.dbs().is_empty());
    assert!(!replica.data_dir().join("dbs").join("ghost").exists());

    // Not a stream at all.
    let addr =
        start_fake_primary(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>".to_vec());
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
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-litefs-stream\r\n\r\nH".to_vec(),
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
fn bad_headers_are_refused_before_anything_is_written() {
    let (_dir, store) = new_store();
    let flag = ltx::CHECKSUM_FLAG;
    let mut page_1000 = header(4096, 1, 1, 1, 0).encode();
    page_1000[8..12].copy_from_slice(&1000u32.to_be_bytes());
    let raw_page_1000 = {
        let mut out = frame_head("new.db", ltx_len(1, 4096));
        out.extend_from_slice(&page_1000);
        out
    };
    let huge_commit = (MAX_DATABASE_SIZE / 65536 + 1) as u32;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw_page_1000, "page size 1000"),
        (
            frame(
                "new.db",
                ltx_len(0, 65536),
                &header(65536, huge_commit, 1, 1, 0),
                0,
            ),
            "more than the limit of 1099511627776 bytes",
        ),
        (
            frame("new.db", ltx_len(3, 4096), &header(4096, 2, 2, 2, flag), 10),
            "holds 3 pages, but commit is 2 pages",
        ),
        (
            frame(
                "new.db",
                ltx_len(1, 4096) + 7,
                &header(4096, 1, 1, 1, 0),
                10,
            ),
            "whole page frames of 4100 bytes",
        ),
        (
            frame("new.db", ltx_len(1, 4096), &header(4096, 3, 1, 1, 0), 10),
            "a snapshot (min TXID 1) of commit 3 pages must hold 3 pages",
        ),
        (
            frame("new.db", ltx_len(1, 4096), &header(4096, 3, 5, 5, flag), 10),
            "min TXID 0000000000000005 does not follow the received position \
             0000000000000000/0000000000000000",
        ),
    ];
    for (frames, want) in cases {
        let err = stream(&store, frames).unwrap_err().to_string();
        assert!(
            err.contains("database new.db: refused an LTX frame before writing it")
                && err.contains(want),
            "want {want:?}, got: {err}"
        );
        assert!(store.dbs().is_empty());
        assert_eq!(data_files(&store), Vec::<String>::new(), "after {want:?}");
        assert!(!store.data_dir().join("dbs/new.db").exists());
    }
}

#[test]
fn a_frame_that_does_not_follow_leaves_the_database_untouched() {
    let (_dir, store) = new_store();
    let db = store.create_db("old.db").unwrap();
    let conn = rusqlite::Connection::open(db.database_path()).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES(1);")
        .unwrap();
    drop(conn);
    while db.commit().unwrap().is_some() {}
    let pos: Position = db.pos();
    assert!(pos.txid >= 1);
    let before = data_files(&store);

    let cases = [
        (
            header(4096, 2, pos.txid + 2, pos.txid + 2, pos.checksum),
            format!("min TXID {:016x} does not follow", pos.txid + 2),
        ),
        (
            header(4096, 2, pos.txid + 1, pos.txid + 1, pos.checksum ^ 1),
            format!(
                "pre-apply checksum {:016x} is not the received checksum",
                pos.checksum ^ 1
            ),
        ),
    ];
    for (h, want) in cases {
        let err = stream(&store, frame("old.db", ltx_len(1, 4096), &h, 10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database old.db: refused an LTX frame before writing it")
                && err.contains(&want),
            "want {want:?}, got: {err}"
        );
        assert_eq!(db.pos(), pos);
        assert_eq!(db.received_pos(), pos);
        assert_eq!(data_files(&store), before);
    }
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
    let port = free_port();
    let err = Client::start(&format!("http://127.0.0.1:{port}/"), &replica)
        .join()
        .unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err}");
}
