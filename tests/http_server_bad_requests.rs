//! What the primary's HTTP server does with bad requests, without FUSE:
//! unknown paths and methods, malformed `/stream` bodies, garbage, a
//! request cut short and a replica that disconnects mid-stream each get a
//! clear answer and harm no other replica; a replica that never reads
//! blocks no one; an absurd Content-Length is refused with 413.
//!
//! What a replica does with bad input is in
//! tests/http_replica_bad_input.rs; the server's connection limits against
//! many hostile connections are in tests/http_server_limits.rs.

mod common;
mod http_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use http_common::{
    exec, fill, new_store, post_stream, raw_request, start_server, wait_synced, wait_until, Client,
};

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
    let pos = primary.db("a").unwrap().pos();
    assert!(
        body.starts_with(&format!(
            "{{\"primary\":true,\"primary_hostname\":null,\"lag_seconds\":0.000,\"streams\":1,\
             \"dbs\":{{\"a\":\"{pos}\"}},\"db_lag_seconds\":{{\"a\":0.000}},\"replicas\":[{{\"peer\":"
        )) && body.ends_with(&format!(
            ",\"sent\":{{\"a\":\"{pos}\"}}}}],\"acknowledged\":[],\
             \"sync\":{{\"replicas\":0,\"degraded\":false,\"in_sync_set\":null}},\"lease\":null}}\n"
        )),
        "{body}"
    );
    // Acknowledgements name the replica node and list positions.
    let (status, body) = raw_request(
        addr,
        b"POST /ack HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("node="), "{body}");
    let (status, body) = raw_request(
        addr,
        b"POST /ack?node=00000000000000aa HTTP/1.1\r\nContent-Length: 4\r\n\
          Connection: close\r\n\r\nxyz\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad position list"), "{body}");
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
