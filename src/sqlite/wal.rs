//! SQLite's write-ahead log format (sqlite.org/fileformat2.html#walformat):
//! the 32-byte WAL header, 24-byte frame headers, the cumulative frame
//! checksums, and reading the committed transactions out of a WAL file
//! the way SQLite's own recovery does (valid frames up to the first bad
//! salt or checksum; a transaction counts once its commit frame is valid).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Error;

/// Size of the WAL header.
pub const WAL_HEADER_SIZE: u64 = 32;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: u64 = 24;
/// WAL magic with little-endian checksums; `| 1` means big-endian.
const WAL_MAGIC: u32 = 0x377f_0682;
/// The only WAL format version.
const WAL_VERSION: u32 = 3_007_000;

/// The fields of a WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Page size of the database.
    pub page_size: u32,
    /// Whether checksums read the data as big-endian words.
    pub big_endian: bool,
    /// Checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// Salts every frame of this generation of the WAL carries.
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum of the header's first 24 bytes; seeds the first frame's.
    pub checksum: (u32, u32),
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The page this frame holds.
    pub pgno: u32,
    /// Database size in pages after the transaction, for a commit frame;
    /// 0 otherwise.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

/// One committed transaction in a WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalCommit {
    /// Each page the transaction wrote, with the file offset of its newest
    /// content (the page data, after the frame header), ascending by page.
    pub pages: Vec<(u32, u64)>,
    /// Database size in pages after it.
    pub commit: u32,
    /// File offset just past its commit frame.
    pub end: u64,
}

/// Parses a WAL header; `None` when the bytes are not a valid header
/// (SQLite then treats the WAL as empty).
pub fn parse_header(buf: &[u8]) -> Option<WalHeader> {
    if buf.len() < WAL_HEADER_SIZE as usize {
        return None;
    }
    let magic = be(buf, 0);
    if magic & !1 != WAL_MAGIC || be(buf, 4) != WAL_VERSION {
        return None;
    }
    let page_size = match be(buf, 8) {
        1 => 65536,
        n => n,
    };
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return None;
    }
    let big_endian = magic & 1 == 1;
    let checksum = (be(buf, 24), be(buf, 28));
    if checksum_bytes(big_endian, &buf[..24], (0, 0)) != checksum {
        return None;
    }
    Some(WalHeader {
        page_size,
        big_endian,
        checkpoint_seq: be(buf, 12),
        salt1: be(buf, 16),
        salt2: be(buf, 20),
        checksum,
    })
}

/// Parses a frame header (no validation).
pub fn parse_frame_header(buf: &[u8]) -> FrameHeader {
    FrameHeader {
        pgno: be(buf, 0),
        commit: be(buf, 4),
        salt1: be(buf, 8),
        salt2: be(buf, 12),
        checksum: (be(buf, 16), be(buf, 20)),
    }
}

/// The offset of frame `index` (0-based) for `page_size`.
pub fn frame_offset(index: u64, page_size: u32) -> u64 {
    WAL_HEADER_SIZE + index * (FRAME_HEADER_SIZE + u64::from(page_size))
}

/// SQLite's WAL checksum of `data` (a multiple of 8 bytes) continuing
/// from `seed`.
pub fn checksum_bytes(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let bytes = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        s1 = s1.wrapping_add(word(&pair[..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(word(&pair[4..])).wrapping_add(s1);
    }
    (s1, s2)
}

/// Reads the committed transactions of the WAL file at `path`, in order:
/// `None` when the file is missing, empty or has no valid header.
pub fn read_commits(path: &Path) -> Result<Option<(WalHeader, Vec<WalCommit>)>, Error> {
    let read = || -> Result<Option<(WalHeader, Vec<WalCommit>)>, Error> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let len = file.metadata()?.len();
        let mut buf = [0u8; WAL_HEADER_SIZE as usize];
        if len < WAL_HEADER_SIZE {
            return Ok(None);
        }
        file.read_exact_at(&mut buf, 0)?;
        let Some(header) = parse_header(&buf) else {
            return Ok(None);
        };
        let page_size = u64::from(header.page_size);
        let mut frame = vec![0u8; (FRAME_HEADER_SIZE + page_size) as usize];
        let mut checksum = header.checksum;
        let mut commits = Vec::new();
        let mut pending: std::collections::BTreeMap<u32, u64> = Default::default();
        let mut index = 0;
        loop {
            let offset = frame_offset(index, header.page_size);
            if offset + frame.len() as u64 > len {
                break;
            }
            file.read_exact_at(&mut frame, offset)?;
            let fh = parse_frame_header(&frame);
            if fh.pgno == 0 || (fh.salt1, fh.salt2) != (header.salt1, header.salt2) {
                break;
            }
            let sum = checksum_bytes(header.big_endian, &frame[..8], checksum);
            let sum = checksum_bytes(header.big_endian, &frame[FRAME_HEADER_SIZE as usize..], sum);
            if sum != fh.checksum {
                break;
            }
            checksum = sum;
            pending.insert(fh.pgno, offset + FRAME_HEADER_SIZE);
            index += 1;
            if fh.commit != 0 {
                commits.push(WalCommit {
                    pages: std::mem::take(&mut pending).into_iter().collect(),
                    commit: fh.commit,
                    end: offset + frame.len() as u64,
                });
            }
        }
        Ok(Some((header, commits)))
    };
    read().map_err(|err| err.in_file(path))
}

fn be(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
