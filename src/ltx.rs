//! The LTX file format: one file per transaction, a run of consecutive
//! transactions (`merge.rs`), or a snapshot of a whole database. The
//! format is shared with other LTX tools and must not change;
//! ARCHITECTURE.md ("LTX file") lays out every field.
//!
//! A file is a 100-byte header, a block of page frames (`pgno` + page) in
//! strictly ascending page order ended by a zero `pgno`, and a 16-byte
//! trailer holding the post-apply database checksum and the CRC64 of every
//! byte before it. All integers are big-endian.
//!
//! [`LtxEncoder`] and [`LtxDecoder`] stream: neither ever holds more than
//! one page. The decoder checks every field and checksum, but it can only
//! know that a file is intact once [`LtxDecoder::finish`] succeeded, so a
//! consumer must not apply pages before that (verify first, then apply).
//!
//! As in SQLite, the lock page (the page holding byte offset 1 GiB, which
//! SQLite never writes) never appears in an LTX file; a snapshot holds
//! every other page from 1 to `commit`, and its post-apply checksum is
//! verified against the pages it holds (so the database checksum never
//! includes the lock page).

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

mod merge;

pub use merge::merge;

/// The four bytes every LTX file starts with.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of the trailer in bytes.
pub const TRAILER_SIZE: usize = 16;
/// Bit 63, set on every database and file checksum.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// The largest TXID a header, file name or position may hold: one less
/// than `u64::MAX`, so that the TXID after any valid one (`txid + 1`,
/// computed throughout) is a number, never a wrap to 0.
pub const MAX_TXID: u64 = u64::MAX - 1;
/// Size of the `pgno` field in front of each page.
pub const PAGE_HEADER_SIZE: usize = 4;

/// SQLite's pending byte: the page holding it (the lock page) is never used.
const PENDING_BYTE: u64 = 0x4000_0000;

/// An error reading or writing an LTX file.
#[derive(Debug)]
pub enum Error {
    /// The underlying reader or writer failed.
    Io(io::Error),
    /// The bytes do not form a valid LTX file; the message says what broke.
    Corrupt(String),
    /// The file ended early: `offset` is where it ended, `reading` what was
    /// being read there.
    Truncated { offset: u64, reading: String },
    /// The caller asked for something the format cannot hold (for example a
    /// page of the wrong length, or pages out of order, given to the encoder).
    Invalid(String),
    /// An error in the named file.
    File { path: PathBuf, source: Box<Error> },
}

impl Error {
    /// Attaches the path of the file the error happened in.
    pub fn in_file(self, path: &Path) -> Error {
        match self {
            Error::File { .. } => self,
            other => Error::File {
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(err) => write!(f, "I/O error: {err}"),
            Error::Corrupt(msg) => write!(f, "corrupt LTX file: {msg}"),
            Error::Truncated { offset, reading } => write!(
                f,
                "truncated LTX file: it ends at byte {offset} while reading {reading}"
            ),
            Error::Invalid(msg) => write!(f, "invalid LTX data: {msg}"),
            Error::File { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            Error::File { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::Io(err)
    }
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

/// The 100-byte header at the start of every LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Must be 0: no flags are defined.
    pub flags: u32,
    /// Database page size, a power of two from 512 to 65536.
    pub page_size: u32,
    /// Database size in pages after applying this file.
    pub commit: u32,
    /// First TXID this file covers.
    pub min_txid: u64,
    /// Last TXID this file covers.
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch when the file was written.
    pub timestamp: u64,
    /// Database checksum before applying (0 for a snapshot).
    pub pre_apply_checksum: u64,
    /// WAL offset (0 in rollback-journal mode).
    pub wal_offset: u64,
    /// WAL size (0 in rollback-journal mode).
    pub wal_size: u64,
    /// First WAL salt (0 in rollback-journal mode).
    pub wal_salt1: u32,
    /// Second WAL salt (0 in rollback-journal mode).
    pub wal_salt2: u32,
    /// Node id of the writer.
    pub node_id: u64,
}

impl Header {
    /// Whether this file is a snapshot (starts at TXID 1 and holds every page).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// The header as the 100 bytes stored in the file.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut buf = [0u8; HEADER_SIZE];
        buf[0..4].copy_from_slice(MAGIC);
        buf[4..8].copy_from_slice(&self.flags.to_be_bytes());
        buf[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        buf[12..16].copy_from_slice(&self.commit.to_be_bytes());
        buf[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        buf[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        buf[32..40].copy_from_slice(&self.timestamp.to_be_bytes());
        buf[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        buf[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        buf[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        buf[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        buf[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        buf[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        buf
    }

    /// Parses and validates the 100 header bytes of a file.
    pub fn decode(buf: &[u8; HEADER_SIZE]) -> Result<Header, Error> {
        if &buf[0..4] != MAGIC {
            return Err(corrupt(format!(
                "bad magic {:02x?} in header, expected {:?}",
                &buf[0..4],
                "LTX1"
            )));
        }
        if let Some(i) = buf[80..].iter().position(|&b| b != 0) {
            return Err(corrupt(format!(
                "header byte {} is {:#04x}, bytes 80..100 must be zero",
                80 + i,
                buf[80 + i]
            )));
        }
        let header = Header {
            flags: be_u32(&buf[4..8]),
            page_size: be_u32(&buf[8..12]),
            commit: be_u32(&buf[12..16]),
            min_txid: be_u64(&buf[16..24]),
            max_txid: be_u64(&buf[24..32]),
            timestamp: be_u64(&buf[32..40]),
            pre_apply_checksum: be_u64(&buf[40..48]),
            wal_offset: be_u64(&buf[48..56]),
            wal_size: be_u64(&buf[56..64]),
            wal_salt1: be_u32(&buf[64..68]),
            wal_salt2: be_u32(&buf[68..72]),
            node_id: be_u64(&buf[72..80]),
        };
        header.validate().map_err(|err| match err {
            Error::Invalid(msg) => Error::Corrupt(msg),
            other => other,
        })?;
        Ok(header)
    }

    /// Checks that the fields form a valid header (an `Error::Invalid` says
    /// which field is wrong).
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::Invalid(msg));
        if self.flags != 0 {
            return invalid(format!(
                "header flags are {:#x}, must be 0 (no flags are defined)",
                self.flags
            ));
        }
        if !is_valid_page_size(self.page_size) {
            return invalid(format!(
                "page size {} is not a power of two from 512 to 65536",
                self.page_size
            ));
        }
        if self.commit == 0 {
            return invalid("commit is 0, a database has at least 1 page".to_string());
        }
        if self.min_txid == 0 {
            return invalid("min TXID is 0, TXIDs start at 1".to_string());
        }
        if self.min_txid > self.max_txid {
            return invalid(format!(
                "min TXID {:016x} is after max TXID {:016x}",
                self.min_txid, self.max_txid
            ));
        }
        if self.max_txid > MAX_TXID {
            return invalid(format!(
                "max TXID {:016x} is past the largest TXID, {MAX_TXID:016x}",
                self.max_txid
            ));
        }
        if self.is_snapshot() && self.pre_apply_checksum != 0 {
            return invalid(format!(
                "snapshot (min TXID 1) has pre-apply checksum {:016x}, must be 0",
                self.pre_apply_checksum
            ));
        }
        if !self.is_snapshot() && self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return invalid(format!(
                "pre-apply checksum {:016x} lacks the checksum flag (bit 63)",
                self.pre_apply_checksum
            ));
        }
        Ok(())
    }
}

/// The 16-byte trailer at the end of every LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after applying this file.
    pub post_apply_checksum: u64,
    /// CRC64 of every byte of the file before this field, with bit 63 set.
    pub file_checksum: u64,
}

/// CRC-64/XZ of `data` (crc64fast): `crc64(b"123456789") == 0x995dc9bbdf1939fa`.
pub fn crc64(data: &[u8]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    digest.write(data);
    digest.sum64()
}

/// The checksum of one page: CRC64 of the big-endian `pgno` followed by the
/// page, without the checksum flag. The database checksum is the XOR of these
/// over all pages, with [`CHECKSUM_FLAG`] set.
pub fn page_checksum(pgno: u32, page: &[u8]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    digest.write(&pgno.to_be_bytes());
    digest.write(page);
    digest.sum64()
}

/// Updates a database checksum when one page changes from a page with
/// checksum `old_page` to one with `new_page`: `(sum ^ old ^ new) | flag`.
/// Pass 0 as `old_page` for a page added at the end, or as `new_page` for a
/// page removed by truncation.
pub fn checksum_replace(sum: u64, old_page: u64, new_page: u64) -> u64 {
    (sum ^ old_page ^ new_page) | CHECKSUM_FLAG
}

/// The page number of SQLite's lock page for `page_size`: the page holding
/// byte offset 1 GiB, which SQLite never writes and LTX files never hold.
pub fn lock_pgno(page_size: u32) -> u32 {
    (PENDING_BYTE / u64::from(page_size.max(1))) as u32 + 1
}

/// Whether `page_size` is a page size SQLite (and LTX) allows.
pub fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (512..=65536).contains(&page_size)
}

/// The page that must follow `last` in a snapshot (skipping the lock page).
fn next_snapshot_pgno(last: u32, page_size: u32) -> u32 {
    let next = last + 1;
    if next == lock_pgno(page_size) {
        next + 1
    } else {
        next
    }
}

/// Whether a snapshot whose last page is `last` holds every page up to `commit`.
fn snapshot_is_complete(last: u32, commit: u32, page_size: u32) -> bool {
    last == commit || (commit == lock_pgno(page_size) && last + 1 == commit)
}

/// Writes an LTX file: the header on creation, then pages in ascending
/// order, then the trailer in [`LtxEncoder::finish`]. Give it a buffered
/// writer: it writes each frame in two small pieces.
pub struct LtxEncoder<W: Write> {
    writer: W,
    header: Header,
    digest: crc64fast::Digest,
    last_pgno: u32,
    snapshot_checksum: u64,
}

impl<W: Write> LtxEncoder<W> {
    /// Validates `header` and writes it.
    pub fn new(writer: W, header: &Header) -> Result<Self, Error> {
        header.validate()?;
        let mut encoder = LtxEncoder {
            writer,
            header: *header,
            digest: crc64fast::Digest::new(),
            last_pgno: 0,
            snapshot_checksum: 0,
        };
        encoder.write(&header.encode())?;
        Ok(encoder)
    }

    /// The header this encoder writes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Writes one page frame. Pages must come in strictly ascending order,
    /// be at most `commit`, never be the lock page, and (in a snapshot) be
    /// every page from 1 up; `page.len()` must be the page size.
    pub fn encode_page(&mut self, pgno: u32, page: &[u8]) -> Result<(), Error> {
        let header = &self.header;
        if page.len() != header.page_size as usize {
            return Err(Error::Invalid(format!(
                "page {pgno} is {} bytes long, the page size is {}",
                page.len(),
                header.page_size
            )));
        }
        if pgno == 0 {
            return Err(Error::Invalid("page number 0 is not a page".to_string()));
        }
        if pgno <= self.last_pgno {
            return Err(Error::Invalid(format!(
                "page {pgno} out of order after page {}",
                self.last_pgno
            )));
        }
        if pgno > header.commit {
            return Err(Error::Invalid(format!(
                "page {pgno} is beyond the commit size of {} pages",
                header.commit
            )));
        }
        if pgno == lock_pgno(header.page_size) {
            return Err(Error::Invalid(format!(
                "page {pgno} is the lock page (byte offset 1 GiB), which SQLite never writes"
            )));
        }
        if header.is_snapshot() {
            let expected = next_snapshot_pgno(self.last_pgno, header.page_size);
            if pgno != expected {
                return Err(Error::Invalid(format!(
                    "snapshot must hold every page: page {expected} is missing before page {pgno}"
                )));
            }
            self.snapshot_checksum ^= page_checksum(pgno, page);
        }
        self.write(&pgno.to_be_bytes())?;
        self.write(page)?;
        self.last_pgno = pgno;
        Ok(())
    }

    /// Ends the page block, writes the trailer with `post_apply_checksum`,
    /// flushes, and returns the writer and the trailer written.
    pub fn finish(mut self, post_apply_checksum: u64) -> Result<(W, Trailer), Error> {
        if post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(Error::Invalid(format!(
                "post-apply checksum {post_apply_checksum:016x} lacks the checksum flag (bit 63)"
            )));
        }
        let header = self.header;
        if header.is_snapshot() {
            if !snapshot_is_complete(self.last_pgno, header.commit, header.page_size) {
                return Err(Error::Invalid(format!(
                    "snapshot ends at page {} but the database has {} pages",
                    self.last_pgno, header.commit
                )));
            }
            let computed = self.snapshot_checksum | CHECKSUM_FLAG;
            if computed != post_apply_checksum {
                return Err(Error::Invalid(format!(
                    "snapshot post-apply checksum {post_apply_checksum:016x} does not match \
                     its pages' checksum {computed:016x}"
                )));
            }
        }
        self.write(&0u32.to_be_bytes())?;
        self.write(&post_apply_checksum.to_be_bytes())?;
        let file_checksum = self.digest.sum64() | CHECKSUM_FLAG;
        self.writer.write_all(&file_checksum.to_be_bytes())?;
        self.writer.flush()?;
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum,
        };
        Ok((self.writer, trailer))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer.write_all(bytes)?;
        self.digest.write(bytes);
        Ok(())
    }
}

/// What the decoder was reading, for truncation errors.
enum Part {
    Header,
    FramePgno { after: u32 },
    PageData { pgno: u32 },
    Trailer,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => write!(f, "the header"),
            Part::FramePgno { after: 0 } => write!(f, "the first page number"),
            Part::FramePgno { after } => write!(f, "the page number after page {after}"),
            Part::PageData { pgno } => write!(f, "the data of page {pgno}"),
            Part::Trailer => write!(f, "the trailer"),
        }
    }
}

/// Reads an LTX file one page at a time, checking everything. Give it a
/// buffered reader.
pub struct LtxDecoder<R: Read> {
    reader: R,
    header: Header,
    digest: crc64fast::Digest,
    offset: u64,
    last_pgno: u32,
    page_block_done: bool,
    snapshot_checksum: u64,
}

impl<R: Read> LtxDecoder<R> {
    /// Reads and validates the header.
    pub fn new(reader: R) -> Result<Self, Error> {
        let mut decoder = LtxDecoder {
            reader,
            header: Header::default(),
            digest: crc64fast::Digest::new(),
            offset: 0,
            last_pgno: 0,
            page_block_done: false,
            snapshot_checksum: 0,
        };
        let mut buf = [0u8; HEADER_SIZE];
        decoder.read_part(&mut buf, Part::Header)?;
        decoder.header = Header::decode(&buf)?;
        Ok(decoder)
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next page into buf (len == page_size); Ok(None) at the end of
    /// the page block. The page is only known to be intact after `finish()`.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, Error> {
        if self.page_block_done {
            return Ok(None);
        }
        let header = self.header;
        if buf.len() != header.page_size as usize {
            return Err(Error::Invalid(format!(
                "page buffer is {} bytes long, the page size is {}",
                buf.len(),
                header.page_size
            )));
        }
        let frame_offset = self.offset;
        let mut pgno_buf = [0u8; PAGE_HEADER_SIZE];
        self.read_part(
            &mut pgno_buf,
            Part::FramePgno {
                after: self.last_pgno,
            },
        )?;
        let pgno = u32::from_be_bytes(pgno_buf);
        if pgno == 0 {
            self.page_block_done = true;
            self.check_page_block_end()?;
            return Ok(None);
        }
        if pgno <= self.last_pgno {
            return Err(corrupt(format!(
                "page {pgno} out of order after page {} (frame at byte {frame_offset})",
                self.last_pgno
            )));
        }
        if pgno > header.commit {
            return Err(corrupt(format!(
                "page {pgno} is beyond the commit size of {} pages (frame at byte {frame_offset})",
                header.commit
            )));
        }
        if pgno == lock_pgno(header.page_size) {
            return Err(corrupt(format!(
                "page {pgno} is the lock page, which SQLite never writes (frame at byte {frame_offset})"
            )));
        }
        if header.is_snapshot() {
            let expected = next_snapshot_pgno(self.last_pgno, header.page_size);
            if pgno != expected {
                return Err(corrupt(format!(
                    "snapshot is missing page {expected}: page {pgno} follows page {} \
                     (frame at byte {frame_offset})",
                    self.last_pgno
                )));
            }
        }
        self.read_part(buf, Part::PageData { pgno })?;
        if header.is_snapshot() {
            self.snapshot_checksum ^= page_checksum(pgno, buf);
        }
        self.last_pgno = pgno;
        Ok(Some(pgno))
    }

    /// Reads the trailer, verifies file checksum and that nothing follows;
    /// returns it. Pages not yet read with `next_page` are read and checked.
    pub fn finish(mut self) -> Result<Trailer, Error> {
        if !self.page_block_done {
            let mut scratch = vec![0u8; self.header.page_size as usize];
            while self.next_page(&mut scratch)?.is_some() {}
        }
        let trailer_offset = self.offset;
        let mut buf = [0u8; TRAILER_SIZE];
        // Read the trailer without hashing: only its first half is covered.
        read_or_truncated(&mut self.reader, &mut buf, self.offset, Part::Trailer)?;
        self.offset += TRAILER_SIZE as u64;
        self.digest.write(&buf[0..8]);
        let trailer = Trailer {
            post_apply_checksum: be_u64(&buf[0..8]),
            file_checksum: be_u64(&buf[8..16]),
        };
        let computed = self.digest.sum64() | CHECKSUM_FLAG;
        if trailer.file_checksum != computed {
            return Err(corrupt(format!(
                "file checksum mismatch: stored {:016x}, computed {computed:016x}",
                trailer.file_checksum
            )));
        }
        if trailer.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(corrupt(format!(
                "post-apply checksum {:016x} at byte {trailer_offset} lacks the checksum flag (bit 63)",
                trailer.post_apply_checksum
            )));
        }
        if self.header.is_snapshot() {
            let pages = self.snapshot_checksum | CHECKSUM_FLAG;
            if pages != trailer.post_apply_checksum {
                return Err(corrupt(format!(
                    "snapshot post-apply checksum {:016x} does not match its pages' checksum {pages:016x}",
                    trailer.post_apply_checksum
                )));
            }
        }
        let mut extra = [0u8; 1];
        loop {
            match self.reader.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(corrupt(format!(
                        "unexpected data after the trailer, at byte {}",
                        self.offset
                    )))
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::Io(err)),
            }
        }
        Ok(trailer)
    }

    /// Checks, once the zero page number was read, that the page block is complete.
    fn check_page_block_end(&self) -> Result<(), Error> {
        let header = &self.header;
        if header.is_snapshot()
            && !snapshot_is_complete(self.last_pgno, header.commit, header.page_size)
        {
            return Err(corrupt(format!(
                "snapshot ends at page {} but the database has {} pages",
                self.last_pgno, header.commit
            )));
        }
        Ok(())
    }

    fn read_part(&mut self, buf: &mut [u8], part: Part) -> Result<(), Error> {
        read_or_truncated(&mut self.reader, buf, self.offset, part)?;
        self.offset += buf.len() as u64;
        self.digest.write(buf);
        Ok(())
    }
}

/// Fills `buf` or fails with `Error::Truncated` saying where the data ended.
fn read_or_truncated<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    offset: u64,
    part: Part,
) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    offset: offset + filled as u64,
                    reading: part.to_string(),
                })
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::Io(err)),
        }
    }
    Ok(())
}

/// Decodes a whole file, checking everything, without holding it in memory.
pub fn verify_file(path: &Path) -> Result<(Header, Trailer), Error> {
    let verify = || -> Result<(Header, Trailer), Error> {
        let file = File::open(path)?;
        let mut decoder = LtxDecoder::new(BufReader::with_capacity(64 * 1024, file))?;
        let header = *decoder.header();
        let mut page = vec![0u8; header.page_size as usize];
        while decoder.next_page(&mut page)?.is_some() {}
        let trailer = decoder.finish()?;
        Ok((header, trailer))
    };
    verify().map_err(|err| err.in_file(path))
}

/// Reads header (start) and trailer (last 16 bytes) of a file cheaply, without
/// verifying pages. Checks the header, that the file size fits whole page
/// frames, and the checksum flags in the trailer.
pub fn read_header_and_trailer(path: &Path) -> Result<(Header, Trailer), Error> {
    let read = || -> Result<(Header, Trailer), Error> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut buf = [0u8; HEADER_SIZE];
        read_or_truncated(&mut file, &mut buf, 0, Part::Header)?;
        let header = Header::decode(&buf)?;
        let fixed = (HEADER_SIZE + PAGE_HEADER_SIZE + TRAILER_SIZE) as u64;
        if len < fixed {
            return Err(Error::Truncated {
                offset: len,
                reading: "the page block or trailer".to_string(),
            });
        }
        let frame_size = PAGE_HEADER_SIZE as u64 + u64::from(header.page_size);
        if (len - fixed) % frame_size != 0 {
            return Err(corrupt(format!(
                "file size {len} is not a whole number of {frame_size}-byte page frames \
                 plus header and trailer"
            )));
        }
        file.seek(SeekFrom::Start(len - TRAILER_SIZE as u64))?;
        let mut buf = [0u8; TRAILER_SIZE];
        read_or_truncated(
            &mut file,
            &mut buf,
            len - TRAILER_SIZE as u64,
            Part::Trailer,
        )?;
        let trailer = Trailer {
            post_apply_checksum: be_u64(&buf[0..8]),
            file_checksum: be_u64(&buf[8..16]),
        };
        if trailer.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(corrupt(format!(
                "post-apply checksum {:016x} lacks the checksum flag (bit 63)",
                trailer.post_apply_checksum
            )));
        }
        if trailer.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(corrupt(format!(
                "file checksum {:016x} lacks the checksum flag (bit 63)",
                trailer.file_checksum
            )));
        }
        Ok((header, trailer))
    };
    read().map_err(|err| err.in_file(path))
}

/// The file name for the TXID range: `%016x-%016x.ltx`.
pub fn filename(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses a name made by [`filename`]: exactly 16 lowercase hex digits, `-`,
/// 16 more, `.ltx`, with 1 <= min <= max. Anything else gives `None`.
pub fn parse_filename(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (min, max) = stem.split_once('-')?;
    let min_txid = parse_txid_hex(min)?;
    let max_txid = parse_txid_hex(max)?;
    if min_txid == 0 || min_txid > max_txid || max_txid > MAX_TXID {
        return None;
    }
    Some((min_txid, max_txid))
}

fn parse_txid_hex(s: &str) -> Option<u64> {
    let well_formed = s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}
