//! Reading SQLite's own on-disk formats: the 100-byte database header and
//! the rollback journal.
//!
//! The journal reader follows SQLite's `pager_playback` (sqlite3.c): a
//! journal is one or more segments, each a header padded to the sector size
//! followed by records of `pgno` + original page + checksum. It yields the
//! pages SQLite would restore in a hot-journal rollback, in journal order,
//! and stops where SQLite stops: at a segment header without the magic, at a
//! record that does not fit in the file, at page number 0 or the lock page,
//! or at the first record whose checksum fails. Records for pages past the
//! original database size are skipped, as SQLite skips them (the database is
//! truncated to that size instead). The name of a super-journal (a
//! transaction across ATTACHed databases), which SQLite appends to each
//! database's journal, is read on its own (`read_super_journal_name`).

pub mod wal;

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The 16 bytes every SQLite database file starts with.
pub const DATABASE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Size of the database header at the start of page 1.
pub const DATABASE_HEADER_SIZE: usize = 100;
/// The 8 bytes each rollback-journal segment header starts with.
pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
/// Bytes of a journal segment header that carry fields (the rest of the
/// sector is padding).
pub const JOURNAL_HEADER_SIZE: usize = 28;

/// Journal record count meaning "as many records as fit in the file"
/// (written by SQLite with `synchronous=OFF`).
const RECORD_COUNT_FROM_FILE_SIZE: u32 = 0xffff_ffff;
/// SQLite's pending byte: the page holding it (the lock page) is never used.
const PENDING_BYTE: u64 = 0x4000_0000;

/// An error reading a SQLite database header or rollback journal.
#[derive(Debug)]
pub enum Error {
    /// Reading failed.
    Io(io::Error),
    /// The bytes are not what SQLite writes; the message says what is wrong.
    Corrupt(String),
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
            Error::Corrupt(msg) => write!(f, "{msg}"),
            Error::File { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            Error::File { source, .. } => Some(source.as_ref()),
            Error::Corrupt(_) => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::Io(err)
    }
}

/// The fields of the database header (the first 100 bytes of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseHeader {
    /// Page size in bytes (the stored value 1 means 65536).
    pub page_size: u32,
    /// File format write version: 1 rollback journal, 2 WAL (offset 18).
    pub write_version: u8,
    /// File format read version: 1 rollback journal, 2 WAL (offset 19).
    pub read_version: u8,
    /// Bytes reserved at the end of each page (offset 20).
    pub reserved_bytes: u8,
    /// File change counter, bumped by every rollback-journal commit (offset 24).
    pub change_counter: u32,
    /// Database size in pages (offset 28).
    pub page_count: u32,
    /// First freelist trunk page (offset 32).
    pub freelist_trunk: u32,
    /// Number of freelist pages (offset 36).
    pub freelist_count: u32,
    /// Schema cookie (offset 40).
    pub schema_cookie: u32,
    /// Schema format number (offset 44).
    pub schema_format: u32,
    /// Text encoding: 1 UTF-8, 2 UTF-16le, 3 UTF-16be (offset 56).
    pub text_encoding: u32,
    /// `PRAGMA user_version` (offset 60).
    pub user_version: u32,
    /// Change counter value for which `page_count` is valid (offset 92).
    pub version_valid_for: u32,
    /// `SQLITE_VERSION_NUMBER` of the last writer (offset 96).
    pub sqlite_version: u32,
}

impl DatabaseHeader {
    /// Whether the database is in WAL mode (file format version 2).
    pub fn is_wal(&self) -> bool {
        self.write_version == 2 || self.read_version == 2
    }

    /// Whether SQLite itself would trust `page_count` (it is non-zero and was
    /// written by the same commit as the change counter, as SQLite ≥ 3.7.0 does).
    pub fn page_count_is_valid(&self) -> bool {
        self.page_count != 0 && self.version_valid_for == self.change_counter
    }
}

/// Parses the database header from the first 100 (or more) bytes of a file.
pub fn parse_database_header(buf: &[u8]) -> Result<DatabaseHeader, Error> {
    if buf.len() < DATABASE_HEADER_SIZE {
        return Err(Error::Corrupt(format!(
            "database header needs {DATABASE_HEADER_SIZE} bytes, got {}",
            buf.len()
        )));
    }
    if &buf[0..16] != DATABASE_MAGIC {
        return Err(Error::Corrupt(format!(
            "not a SQLite database: the file starts with {:?}, expected \"SQLite format 3\\0\"",
            String::from_utf8_lossy(&buf[0..16])
        )));
    }
    let raw_page_size = u16::from_be_bytes([buf[16], buf[17]]);
    let page_size = if raw_page_size == 1 {
        65536
    } else {
        u32::from(raw_page_size)
    };
    if !is_valid_page_size(page_size) {
        return Err(Error::Corrupt(format!(
            "database header page size {raw_page_size} is not a power of two from 512 to 32768 \
             (or 1 for 65536)"
        )));
    }
    Ok(DatabaseHeader {
        page_size,
        write_version: buf[18],
        read_version: buf[19],
        reserved_bytes: buf[20],
        change_counter: be_u32(buf, 24),
        page_count: be_u32(buf, 28),
        freelist_trunk: be_u32(buf, 32),
        freelist_count: be_u32(buf, 36),
        schema_cookie: be_u32(buf, 40),
        schema_format: be_u32(buf, 44),
        text_encoding: be_u32(buf, 56),
        user_version: be_u32(buf, 60),
        version_valid_for: be_u32(buf, 92),
        sqlite_version: be_u32(buf, 96),
    })
}

/// Reads and parses the header of the database file at `path`.
pub fn read_database_header(path: &Path) -> Result<DatabaseHeader, Error> {
    let read = || -> Result<DatabaseHeader, Error> {
        let mut file = File::open(path)?;
        let mut buf = Vec::with_capacity(DATABASE_HEADER_SIZE);
        (&mut file)
            .take(DATABASE_HEADER_SIZE as u64)
            .read_to_end(&mut buf)?;
        parse_database_header(&buf)
    };
    read().map_err(|err| err.in_file(path))
}

/// Checks that the file at `path` is a whole SQLite database, as `litefs
/// import` and a copy-in need it: a valid header, a
/// length that is a whole number of pages, and at least as many pages as
/// the header says. Returns the header and the number of pages the
/// database has (what SQLite itself would read).
pub fn check_database_file(path: &Path) -> Result<(DatabaseHeader, u32), Error> {
    let check = || -> Result<(DatabaseHeader, u32), Error> {
        let header = read_database_header(path)?;
        let len = std::fs::metadata(path)?.len();
        let page_size = u64::from(header.page_size);
        if len % page_size != 0 {
            return Err(Error::Corrupt(format!(
                "the file is {len} bytes, not a whole number of {page_size}-byte pages: \
                 it is truncated or not a database file"
            )));
        }
        let in_file = len / page_size;
        let pages = if header.page_count_is_valid() {
            if u64::from(header.page_count) > in_file {
                return Err(Error::Corrupt(format!(
                    "the header says {} pages but the file holds only {in_file}: it is truncated",
                    header.page_count
                )));
            }
            header.page_count
        } else {
            u32::try_from(in_file).map_err(|_| {
                Error::Corrupt(format!(
                    "the file holds {in_file} pages, more than SQLite allows"
                ))
            })?
        };
        Ok((header, pages))
    };
    check().map_err(|err| err.in_file(path))
}

/// Whether `page_size` is a page size SQLite allows.
fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (512..=65536).contains(&page_size)
}

/// The header of a rollback-journal segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    /// Records in the segment as stored (0xFFFFFFFF: "up to the end of the file").
    pub record_count: u32,
    /// The checksum initializer of the segment's records.
    pub nonce: u32,
    /// Database size in pages when the transaction started.
    pub initial_page_count: u32,
    /// Sector size of the writer: each segment header fills one sector.
    pub sector_size: u32,
    /// Database page size.
    pub page_size: u32,
}

/// SQLite's journal record checksum (`pager_cksum`): the nonce plus the page
/// bytes at offsets `page_size-200`, `page_size-400`, ... above 0, wrapping.
pub fn journal_checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len() as i64 - 200;
    while i > 0 {
        sum = sum.wrapping_add(u32::from(page[i as usize]));
        i -= 200;
    }
    sum
}

/// Splits a super-journal's file name, `<main database>-mj` and nine
/// hexadecimal digits as SQLite makes it (`-mj%06X9%02X`, vdbeaux.c), into
/// the main database's name and the digits' value; `None` for any other
/// name.
pub fn split_super_journal_name(name: &str) -> Option<(&str, u64)> {
    let at = name.len().checked_sub(12)?;
    if at == 0 || !name.is_char_boundary(at) {
        return None;
    }
    let (main, tail) = name.split_at(at);
    let digits = tail.strip_prefix("-mj")?;
    if !digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    Some((main, u64::from_str_radix(digits, 16).ok()?))
}

/// The super-journal a rollback journal names, as SQLite's pager reads it
/// (`readSuperJournal`): a transaction across ATTACHed databases appends
/// `[name][length: u32][checksum: u32][journal magic]` to each database's
/// journal. `None` when there is none, or its checksum does not add up
/// (SQLite then rolls the journal back as usual).
pub fn read_super_journal_name(path: &Path) -> Result<Option<PathBuf>, Error> {
    let read = || -> io::Result<Option<PathBuf>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let len = file.metadata()?.len();
        if len < 16 {
            return Ok(None);
        }
        let mut tail = [0u8; 16];
        file.read_exact_at(&mut tail, len - 16)?;
        let name_len = u64::from(be_u32(&tail, 0));
        let checksum = be_u32(&tail, 4);
        if tail[8..16] != JOURNAL_MAGIC || name_len == 0 || name_len > len - 16 {
            return Ok(None);
        }
        let mut name = vec![0u8; name_len as usize];
        file.read_exact_at(&mut name, len - 16 - name_len)?;
        // SQLite sums the name's bytes as C `char`s: signed on x86,
        // unsigned on ARM, as the SQLite that wrote them.
        let sum = name.iter().fold(0u32, |sum, &b| {
            sum.wrapping_add(b as libc::c_char as i32 as u32)
        });
        if sum != checksum {
            return Ok(None);
        }
        Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(name))))
    };
    read().map_err(|err| Error::from(err).in_file(path))
}

/// Reads the original pages out of a rollback journal, segment by segment,
/// one record at a time.
pub struct JournalReader<R: Read + Seek> {
    reader: R,
    /// Where `reader` is positioned, to avoid needless seeks.
    position: u64,
    file_len: u64,
    header: JournalHeader,
    /// Offset of the current segment's header.
    segment_offset: u64,
    segments: u32,
    nonce: u32,
    records_left: u64,
    /// Offset of the next record.
    next_offset: u64,
    done: bool,
}

impl<R: Read + Seek> JournalReader<R> {
    /// Reads the first segment header. Ok(None) when the journal is not hot:
    /// empty, shorter than one header sector, zeroed header (PERSIST or
    /// not yet synced) or wrong magic.
    pub fn new(mut reader: R, file_len: u64) -> Result<Option<Self>, Error> {
        if file_len < JOURNAL_HEADER_SIZE as u64 {
            return Ok(None);
        }
        let mut buf = [0u8; JOURNAL_HEADER_SIZE];
        reader.seek(SeekFrom::Start(0))?;
        reader.read_exact(&mut buf)?;
        if buf[0..8] != JOURNAL_MAGIC {
            return Ok(None);
        }
        let header = JournalHeader {
            record_count: be_u32(&buf, 8),
            nonce: be_u32(&buf, 12),
            initial_page_count: be_u32(&buf, 16),
            sector_size: be_u32(&buf, 20),
            page_size: be_u32(&buf, 24),
        };
        if !is_valid_page_size(header.page_size) {
            return Err(Error::Corrupt(format!(
                "journal header page size {} is not a power of two from 512 to 65536",
                header.page_size
            )));
        }
        let sector_size = header.sector_size;
        if !sector_size.is_power_of_two() || !(32..=65536).contains(&sector_size) {
            return Err(Error::Corrupt(format!(
                "journal header sector size {sector_size} is not a power of two from 32 to 65536"
            )));
        }
        if file_len < u64::from(sector_size) {
            log::debug!(
                "journal of {file_len} bytes is shorter than its {sector_size}-byte header: not hot"
            );
            return Ok(None);
        }
        let mut journal = JournalReader {
            reader,
            position: JOURNAL_HEADER_SIZE as u64,
            file_len,
            header,
            segment_offset: 0,
            segments: 1,
            nonce: header.nonce,
            records_left: 0,
            next_offset: u64::from(sector_size),
            done: false,
        };
        journal.records_left = journal.segment_record_count(header.record_count);
        Ok(Some(journal))
    }

    /// The header of the first segment (page size, original size, ...).
    pub fn header(&self) -> &JournalHeader {
        &self.header
    }

    /// How many segment headers have been read so far.
    pub fn segments_read(&self) -> u32 {
        self.segments
    }

    /// Reads the next original page into `page` (resized to the page size)
    /// and returns its number; Ok(None) where SQLite's playback would stop.
    pub fn next_record(&mut self, page: &mut Vec<u8>) -> Result<Option<u32>, Error> {
        let page_size = self.header.page_size;
        let record_size = u64::from(page_size) + 8;
        page.resize(page_size as usize, 0);
        loop {
            if self.done {
                return Ok(None);
            }
            if self.records_left == 0 {
                self.next_segment()?;
                continue;
            }
            let offset = self.next_offset;
            if offset + record_size > self.file_len {
                log::debug!("journal record at byte {offset} is cut off by the end of the file");
                self.done = true;
                continue;
            }
            let mut word = [0u8; 4];
            self.read_at(offset, &mut word)?;
            let pgno = u32::from_be_bytes(word);
            self.read_at(offset + 4, page)?;
            self.read_at(offset + 4 + u64::from(page_size), &mut word)?;
            let stored = u32::from_be_bytes(word);
            self.next_offset = offset + record_size;
            self.records_left -= 1;
            if pgno == 0 || pgno == lock_pgno(page_size) {
                log::debug!("journal record at byte {offset} has invalid page number {pgno}: end");
                self.done = true;
                continue;
            }
            if pgno > self.header.initial_page_count {
                // SQLite skips these without checking them: truncation removes the page.
                continue;
            }
            let computed = journal_checksum(self.nonce, page);
            if computed != stored {
                log::debug!(
                    "journal record for page {pgno} at byte {offset}: checksum {stored:08x}, \
                     computed {computed:08x}: end of playback"
                );
                self.done = true;
                continue;
            }
            return Ok(Some(pgno));
        }
    }

    /// Moves to the next segment header (at the next sector boundary), or
    /// marks the end when there is none.
    fn next_segment(&mut self) -> Result<(), Error> {
        let sector = u64::from(self.header.sector_size);
        let offset = self.next_offset.div_ceil(sector) * sector;
        if offset + sector > self.file_len {
            self.done = true;
            return Ok(());
        }
        let mut buf = [0u8; JOURNAL_HEADER_SIZE];
        self.read_at(offset, &mut buf)?;
        if buf[0..8] != JOURNAL_MAGIC {
            log::debug!("journal segment header at byte {offset} has no magic: end");
            self.done = true;
            return Ok(());
        }
        self.segment_offset = offset;
        self.segments += 1;
        self.nonce = be_u32(&buf, 12);
        self.next_offset = offset + sector;
        self.records_left = self.segment_record_count(be_u32(&buf, 8));
        Ok(())
    }

    /// The number of records in the current segment given its stored count.
    fn segment_record_count(&self, stored: u32) -> u64 {
        if stored != RECORD_COUNT_FROM_FILE_SIZE {
            return u64::from(stored);
        }
        let record_size = u64::from(self.header.page_size) + 8;
        let start = self.segment_offset + u64::from(self.header.sector_size);
        self.file_len.saturating_sub(start) / record_size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if self.position != offset {
            self.reader.seek(SeekFrom::Start(offset))?;
        }
        self.position = offset;
        self.reader.read_exact(buf).map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                Error::Corrupt(format!(
                    "journal ends before byte {} although it was {} bytes long: \
                     it changed while being read",
                    offset + buf.len() as u64,
                    self.file_len
                ))
            } else {
                Error::Io(err)
            }
        })?;
        self.position = offset + buf.len() as u64;
        Ok(())
    }
}

/// Original pages from a journal: page number and content, in journal order.
pub type JournalPages = Vec<(u32, Vec<u8>)>;

/// The first `JOURNAL_HEADER_SIZE` bytes of the journal at `path` (zeros
/// past its end) and how many of them the file has; `None` when it cannot
/// be read (most often: it does not exist).
pub fn read_journal_head(path: &Path) -> Option<([u8; JOURNAL_HEADER_SIZE], usize)> {
    read_journal_head_from(&File::open(path).ok()?)
}

/// [`read_journal_head`] of a journal already open.
pub fn read_journal_head_from(file: &File) -> Option<([u8; JOURNAL_HEADER_SIZE], usize)> {
    let mut head = [0u8; JOURNAL_HEADER_SIZE];
    let mut len = 0;
    while len < head.len() {
        match file.read_at(&mut head[len..], len as u64).ok()? {
            0 => break,
            n => len += n,
        }
    }
    Some((head, len))
}

/// The first segment's header and every page a rollback of the journal at
/// `path` would restore, in journal order; Ok(None) when the journal does not
/// exist or is not hot. Holds all pages in memory.
pub fn read_journal_pages(path: &Path) -> Result<Option<(JournalHeader, JournalPages)>, Error> {
    let read = || -> Result<Option<(JournalHeader, JournalPages)>, Error> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::Io(err)),
        };
        let file_len = file.metadata()?.len();
        let reader = BufReader::with_capacity(64 * 1024, file);
        let mut journal = match JournalReader::new(reader, file_len)? {
            Some(journal) => journal,
            None => return Ok(None),
        };
        let mut pages = Vec::new();
        let mut page = Vec::new();
        while let Some(pgno) = journal.next_record(&mut page)? {
            pages.push((pgno, std::mem::take(&mut page)));
        }
        Ok(Some((*journal.header(), pages)))
    };
    read().map_err(|err| err.in_file(path))
}

/// The page number of SQLite's lock page (the page holding byte 1 GiB).
fn lock_pgno(page_size: u32) -> u32 {
    (PENDING_BYTE / u64::from(page_size)) as u32 + 1
}

fn be_u32(buf: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}
