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
    /// content (the page data, after the frame header).
    pub pages: std::collections::BTreeMap<u32, u64>,
    /// Database size in pages after it.
    pub commit: u32,
    /// File offset of its first frame.
    pub start: u64,
    /// File offset just past its commit frame.
    pub end: u64,
    /// The running checksum after its commit frame.
    pub checksum: (u32, u32),
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

/// Bytes at the start of a WAL index (`-shm`) that `empty_wal_index`
/// fills: both copies of the index header (48 bytes each) and the
/// checkpoint information after them (wal.c's `WalCkptInfo`).
pub const WAL_INDEX_HEAD_SIZE: usize = 136;
/// The WAL-index format version (wal.c's `WALINDEX_MAX_VERSION`).
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// A read mark no reader uses (wal.c's `READMARK_NOT_USED`).
const READ_MARK_NOT_USED: u32 = 0xffff_ffff;

/// The start of a WAL index for a WAL without frames, as SQLite's own
/// recovery writes it (no frames, the database's size taken from its
/// file, no reader), but with the change counter `change` and the salts
/// `salts`. SQLite drops a connection's cached pages when the header
/// differs from the one it last read; recovering an empty WAL always gives
/// the same header, so only a new counter tells a connection that the
/// database file changed. The salts are those the next WAL generation
/// starts from (SQLite copies them into its header unless it draws new
/// ones); recovery would leave them zero, and litefs tells generations
/// apart by their salts. The index is in the machine's byte order.
pub fn empty_wal_index(change: u32, salts: (u32, u32)) -> [u8; WAL_INDEX_HEAD_SIZE] {
    let mut header = [0u8; 48];
    header[0..4].copy_from_slice(&WAL_INDEX_VERSION.to_ne_bytes());
    header[8..12].copy_from_slice(&change.to_ne_bytes());
    header[12] = 1; // isInit
    header[32..36].copy_from_slice(&salts.0.to_ne_bytes());
    header[36..40].copy_from_slice(&salts.1.to_ne_bytes());
    let (c1, c2) = checksum_bytes(cfg!(target_endian = "big"), &header[..40], (0, 0));
    header[40..44].copy_from_slice(&c1.to_ne_bytes());
    header[44..48].copy_from_slice(&c2.to_ne_bytes());
    let mut head = [0u8; WAL_INDEX_HEAD_SIZE];
    head[..48].copy_from_slice(&header);
    head[48..96].copy_from_slice(&header);
    // Checkpoint information: nothing backfilled, read mark 0 at frame 0,
    // the other four unused; bytes 120..128 are SQLite's lock bytes.
    for mark in 1..5 {
        let at = 100 + 4 * mark;
        head[at..at + 4].copy_from_slice(&READ_MARK_NOT_USED.to_ne_bytes());
    }
    head
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
        let Some(header) = read_header(&file, len)? else {
            return Ok(None);
        };
        let mut cursor = WalCursor::new(header);
        let mut commits = Vec::new();
        while let Some(commit) = cursor.read_commit(&file, len)? {
            cursor.consume(&commit);
            commits.push(commit);
        }
        Ok(Some((header, commits)))
    };
    read().map_err(|err| err.in_file(path))
}

/// The header of the WAL open as `file` (`len` bytes long); `None` when it
/// is too short or not a valid header.
pub fn read_header(file: &File, len: u64) -> io::Result<Option<WalHeader>> {
    if len < WAL_HEADER_SIZE {
        return Ok(None);
    }
    let mut buf = [0u8; WAL_HEADER_SIZE as usize];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => Ok(parse_header(&buf)),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads one WAL generation's committed transactions incrementally, by
/// SQLite's recovery rules (valid salts and an unbroken checksum chain up
/// to a commit frame), for a WAL that SQLite may be writing meanwhile.
///
/// Frames after the last commit read belong to a transaction under way, or
/// to one rolled back, which the next transaction overwrites in place (a
/// shorter one only in part), as is a page written twice in one
/// transaction before its checksums are rewritten at commit (wal.c's
/// walRewriteChecksums). So nothing is remembered of them: each read
/// starts again after the last commit.
#[derive(Debug, Clone)]
pub struct WalCursor {
    header: WalHeader,
    /// Index of the first frame after the last commit consumed.
    next: u64,
    /// The running checksum at `next` (the header's for frame 0).
    checksum: (u32, u32),
    /// Valid frames after the last commit found by the last read.
    open_frames: u64,
}

impl WalCursor {
    /// A cursor at the start of the generation `header` begins.
    pub fn new(header: WalHeader) -> WalCursor {
        WalCursor {
            header,
            next: 0,
            checksum: header.checksum,
            open_frames: 0,
        }
    }

    /// The generation's header.
    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// How many valid frames of a transaction not yet committed the last
    /// `read_commit` found (what reading it again costs).
    pub fn open_frames(&self) -> u64 {
        self.open_frames
    }

    /// Reads the transaction after the last one consumed from `file` (`len`
    /// bytes long): `None` until its commit frame is valid. The cursor
    /// stays where it is until `consume` is called with it.
    pub fn read_commit(&mut self, file: &File, len: u64) -> io::Result<Option<WalCommit>> {
        let page_size = self.header.page_size;
        let frame_len = FRAME_HEADER_SIZE + u64::from(page_size);
        let mut checksum = self.checksum;
        let mut pages = std::collections::BTreeMap::new();
        let mut frame = vec![0u8; frame_len as usize];
        let mut index = self.next;
        self.open_frames = 0;
        loop {
            let offset = frame_offset(index, page_size);
            if offset + frame_len > len {
                return Ok(None);
            }
            file.read_exact_at(&mut frame, offset)?;
            let fh = parse_frame_header(&frame);
            if fh.pgno == 0 || (fh.salt1, fh.salt2) != (self.header.salt1, self.header.salt2) {
                return Ok(None);
            }
            let big_endian = self.header.big_endian;
            let sum = checksum_bytes(big_endian, &frame[..8], checksum);
            let sum = checksum_bytes(big_endian, &frame[FRAME_HEADER_SIZE as usize..], sum);
            if sum != fh.checksum {
                return Ok(None);
            }
            checksum = sum;
            pages.insert(fh.pgno, offset + FRAME_HEADER_SIZE);
            index += 1;
            if fh.commit != 0 {
                return Ok(Some(WalCommit {
                    pages,
                    commit: fh.commit,
                    start: self.end(),
                    end: offset + frame_len,
                    checksum,
                }));
            }
            self.open_frames += 1;
        }
    }

    /// Offset just past the last commit consumed (of the first frame).
    pub fn end(&self) -> u64 {
        frame_offset(self.next, self.header.page_size)
    }

    /// Moves the cursor past `commit`, which `read_commit` returned.
    pub fn consume(&mut self, commit: &WalCommit) {
        let frame_len = FRAME_HEADER_SIZE + u64::from(self.header.page_size);
        self.next = (commit.end - WAL_HEADER_SIZE) / frame_len;
        self.checksum = commit.checksum;
        self.open_frames = 0;
    }
}

fn be(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
