//! Tests of replication over HTTP without FUSE against bad input: corrupted
//! and cut streams (through a mangling proxy), malformed frames from a fake
//! primary, dead links, bad and absurd requests, a replica that never
//! reads, and bad URLs.

mod common;
mod http_common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::free_port;
use http_common::{
    exec, fill, ltx_count, new_store, post_stream, raw_request, start_fake_primary, start_server,
    temp_files, wait_synced, wait_until, Client,
};
use litefs::http::Error;

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
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-litefs-stream\r\n\
                Connection: close\r\n\r\n";
    // A whole frame of garbage for a new database: 200 bytes announced
    // and sent.
    let mut garbage = b"L\x00\x05ghost\x00\x00\x00\x00\x00\x00\x00\xc8".to_vec();
    garbage.extend_from_slice(&[0x5a; 200]);
    let cases: [(&[u8], &str); 8] = [
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
    ];
    for (frames, want) in cases {
        let mut response = head.as_bytes().to_vec();
        response.extend_from_slice(frames);
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
    let port = free_port();
    let err = Client::start(&format!("http://127.0.0.1:{port}/"), &replica)
        .join()
        .unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err}");
}
