//! The replication wire format, shared by the server and the client: the
//! position list a replica sends, the frames the primary answers with, and
//! the limits both sides enforce. ARCHITECTURE.md ("Replication stream")
//! describes the same thing for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::ltx;
use crate::store::{self, Position};

/// The `Content-Type` of a replication stream.
pub const CONTENT_TYPE: &str = "application/x-litefs-stream";
/// The stream response's header by which a primary with synchronous
/// replication asks the replica to acknowledge each received file at once
/// (`POST /ack`), with the value [`ACK_AT_ONCE`].
pub const ACK_HEADER: &str = "litefs-ack";
pub const ACK_AT_ONCE: &str = "at-once";
/// How long the primary lets a stream stay silent before sending a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a replica waits for any byte (a heartbeat at least) before it
/// declares the link dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body (position list) the primary accepts.
pub const MAX_REQUEST_BODY: usize = 1 << 20;
/// The longest database name a frame may carry.
pub const MAX_NAME_LEN: usize = 255;
/// The largest LTX file a frame may carry (16 GiB).
pub const MAX_LTX_LEN: u64 = 16 << 30;
/// The smallest possible LTX file: header, the zero page number, trailer.
pub const MIN_LTX_LEN: u64 = (ltx::HEADER_SIZE + ltx::PAGE_HEADER_SIZE + ltx::TRAILER_SIZE) as u64;
/// The largest database a replica accepts (commit pages times page size):
/// 1 TiB, far beyond what litefs is for, and a bound on what a hostile
/// header can make a replica allocate or write.
pub const MAX_DATABASE_SIZE: u64 = 1 << 40;

/// Frame type: one LTX file follows.
pub const FRAME_LTX: u8 = b'L';
/// Frame type: a heartbeat, no payload.
pub const FRAME_HEARTBEAT: u8 = b'H';
/// Frame type: the primary cannot go on; a message follows, then the end.
pub const FRAME_ERROR: u8 = b'E';
/// Frame type: a database was deleted on the primary; its name follows.
pub const FRAME_DELETE: u8 = b'D';

/// The request body listing a replica's positions: one line
/// `<txid 16 hex>/<checksum 16 hex> <name>\n` per database.
pub fn format_positions<'a>(dbs: impl IntoIterator<Item = (&'a str, Position)>) -> String {
    let mut body = String::new();
    for (name, pos) in dbs {
        // Writing to a String cannot fail.
        let _ = writeln!(body, "{pos} {name}");
    }
    body
}

/// Parses a request body made by [`format_positions`]. The error says which
/// line is wrong and why. A missing final newline is accepted.
pub fn parse_positions(body: &[u8]) -> Result<BTreeMap<String, Position>, String> {
    let text = std::str::from_utf8(body).map_err(|err| {
        format!(
            "the body is not UTF-8 (invalid byte at offset {})",
            err.valid_up_to()
        )
    })?;
    let mut positions = BTreeMap::new();
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(positions);
    }
    for (i, line) in text.split('\n').enumerate() {
        let number = i + 1;
        let bad = |why: String| Err(format!("line {number}: {why}"));
        let Some((pos, name)) = line.split_once(' ') else {
            return bad(format!(
                "expected `<txid>/<checksum> <name>`, got {:?}",
                shorten(line)
            ));
        };
        let Some(pos) = parse_position(pos) else {
            return bad(format!(
                "the position {:?} is not `<txid>/<checksum>` with 16 hex digits each",
                shorten(pos)
            ));
        };
        if let Err(err) = store::validate_name(name) {
            return bad(err.to_string());
        }
        if positions.insert(name.to_string(), pos).is_some() {
            return bad(format!("database {name:?} is listed twice"));
        }
    }
    Ok(positions)
}

/// Parses `%016x/%016x` (either case of hex digits), a TXID of at most
/// `ltx::MAX_TXID`.
pub fn parse_position(s: &str) -> Option<Position> {
    let (txid, checksum) = s.split_once('/')?;
    let txid = parse_hex16(txid).filter(|t| *t <= ltx::MAX_TXID)?;
    Some(Position {
        txid,
        checksum: parse_hex16(checksum)?,
    })
}

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// At most 60 characters of `s`, for error messages about bad input.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// Checks the first bytes of an LTX frame's file (its 100-byte header),
/// before any byte of the frame is written anywhere, against the frame's
/// length `len` and the position `received` the replica has received for
/// that database (0/0 for a database it lacks): a valid header (page size,
/// flags, TXIDs, checksums), a database of at most `MAX_DATABASE_SIZE`,
/// a length that is the header, whole page frames (no more than `commit`
/// pages; all of them for a snapshot) and the trailer, and TXIDs that
/// follow `received` (min TXID one past it, from its checksum) unless it
/// is a snapshot. The error names the field.
pub fn check_ltx_header(
    head: &[u8; ltx::HEADER_SIZE],
    len: u64,
    received: Position,
) -> Result<ltx::Header, String> {
    let header = ltx::Header::decode(head).map_err(|err| format!("invalid header: {err}"))?;
    let page_size = u64::from(header.page_size);
    let commit = u64::from(header.commit);
    let size = commit * page_size;
    if size > MAX_DATABASE_SIZE {
        return Err(format!(
            "commit {commit} pages of {page_size} bytes makes a database of {size} bytes, \
             more than the limit of {MAX_DATABASE_SIZE} bytes (1 TiB)"
        ));
    }
    let frame = ltx::PAGE_HEADER_SIZE as u64 + page_size;
    let body = len.checked_sub(MIN_LTX_LEN).ok_or_else(|| {
        format!("length {len} is shorter than the smallest LTX file ({MIN_LTX_LEN} bytes)")
    })?;
    if body % frame != 0 {
        return Err(format!(
            "length {len} is not the header, whole page frames of {frame} bytes (page size \
             {page_size}) and the trailer"
        ));
    }
    let pages = body / frame;
    if pages > commit {
        return Err(format!(
            "length {len} holds {pages} pages, but commit is {commit} pages"
        ));
    }
    if header.is_snapshot() {
        let lock_page = u64::from(ltx::lock_pgno(header.page_size));
        let all = commit - u64::from(lock_page <= commit);
        if pages != all {
            return Err(format!(
                "a snapshot (min TXID 1) of commit {commit} pages must hold {all} pages, \
                 its length {len} holds {pages}"
            ));
        }
        return Ok(header);
    }
    if header.min_txid != received.txid + 1 {
        return Err(format!(
            "min TXID {:016x} does not follow the received position {received} (the next \
             is {:016x}), and the file is not a snapshot (min TXID 1)",
            header.min_txid,
            received.txid + 1
        ));
    }
    if header.pre_apply_checksum != received.checksum {
        return Err(format!(
            "pre-apply checksum {:016x} is not the received checksum at TXID {:016x} \
             ({:016x})",
            header.pre_apply_checksum, received.txid, received.checksum
        ));
    }
    Ok(header)
}

/// The header of an `L` frame: type byte, name length, name, payload length.
pub fn ltx_frame_header(name: &str, len: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + 2 + name.len() + 8);
    buf.push(FRAME_LTX);
    buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf
}

/// A whole `D` frame: type byte, name length, name.
pub fn delete_frame(name: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + 2 + name.len());
    buf.push(FRAME_DELETE);
    buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf
}

/// A whole `E` frame carrying `message` (cut to 65535 bytes at a character
/// boundary).
pub fn error_frame(message: &str) -> Vec<u8> {
    let mut end = message.len().min(u16::MAX as usize);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let mut buf = Vec::with_capacity(3 + message.len());
    buf.push(FRAME_ERROR);
    buf.extend_from_slice(&(message.len() as u16).to_be_bytes());
    buf.extend_from_slice(message.as_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let a = Position {
            txid: 5,
            checksum: 0x8000_0000_0000_00ff,
        };
        let body = format_positions([("a b", a), ("c", Position::default())]);
        assert_eq!(
            body,
            "0000000000000005/80000000000000ff a b\n0000000000000000/0000000000000000 c\n"
        );
        let parsed = parse_positions(body.as_bytes()).unwrap();
        assert_eq!(parsed["a b"], a);
        assert_eq!(parsed["c"], Position::default());
        assert!(parse_positions(b"").unwrap().is_empty());
        assert_eq!(
            parse_positions(b"0000000000000001/8000000000000000 x").unwrap()["x"].txid,
            1
        );
    }

    #[test]
    fn bad_positions_name_the_line() {
        let ok = "0000000000000001/8000000000000000 x\n";
        let cases: [(&[u8], &str); 8] = [
            (b"\xff\n", "not UTF-8"),
            (b"garbage\n", "line 1: expected"),
            (
                b"0000000000000001/800000000000000 x\n",
                "line 1: the position",
            ),
            (
                b"000000000000000g/8000000000000000 x\n",
                "line 1: the position",
            ),
            (
                b"0000000000000001/8000000000000000 x-wal\n",
                "line 1: invalid",
            ),
            (b"0000000000000001/8000000000000000 \n", "line 1: invalid"),
            (b"\n\n", "line 1: expected"),
            // The replica's next TXID would wrap to 0.
            (
                b"ffffffffffffffff/8000000000000000 x\n",
                "line 1: the position",
            ),
        ];
        for (body, want) in cases {
            let err = parse_positions(body).unwrap_err();
            assert!(err.contains(want), "{body:?}: {err}");
        }
        let twice = format!("{ok}{ok}");
        let err = parse_positions(twice.as_bytes()).unwrap_err();
        assert!(err.starts_with("line 2:") && err.contains("twice"), "{err}");
    }

    #[test]
    fn frames() {
        assert_eq!(
            ltx_frame_header("db", 300),
            [b'L', 0, 2, b'd', b'b', 0, 0, 0, 0, 0, 0, 1, 44]
        );
        assert_eq!(error_frame("no"), [b'E', 0, 2, b'n', b'o']);
        let long = "é".repeat(40_000);
        let frame = error_frame(&long);
        let len = u16::from_be_bytes([frame[1], frame[2]]) as usize;
        assert_eq!(len, 65534);
        assert!(std::str::from_utf8(&frame[3..]).is_ok());
    }
}
