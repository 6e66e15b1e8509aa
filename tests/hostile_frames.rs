//! A replica checks each LTX frame's header before it writes a byte: a
//! fake primary sends crafted frames to a real replica store through
//! `stream_from_primary`; each is refused with a protocol error naming
//! the database and the field, and nothing reaches the data directory:
//! no database, no directory, no file in `incoming/`, and an existing
//! database keeps its position and files.

mod common;
mod http_common;

use std::sync::Arc;

use http_common::{new_store, start_fake_primary, Client};
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

/// Every file under the data directory except the node id.
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
