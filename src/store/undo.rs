//! The undo log: the old content of free-list pages a transaction
//! overwrites.
//!
//! SQLite does not journal a free-list leaf page it reuses: it knows the
//! old bytes are garbage, so it never reads or saves them. A rollback (a
//! `ROLLBACK`, or a hot journal played back after a crash) therefore leaves
//! the new bytes in such pages. The database is logically unchanged, but
//! its checksum is not, and replicas would no longer be byte-identical. So
//! before such a page is first overwritten in a transaction, the store
//! appends its old content here (`dbs/<name>/undo`), and puts it back when
//! the transaction turns out to be rolled back.
//!
//! A record is a 32-byte header (magic `LFUN`, pgno, page size, 4 zero
//! bytes, then the TXID and checksum of the position the transaction started
//! from), the page, and the CRC64 of header and page. Records of another
//! position, and a torn record at the end, are ignored, so a stale log is
//! harmless. Each transaction writes its records from the start of the
//! file, over those of earlier ones (see [`UndoLog::clear`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::write_back::Handed;
use super::Position;
use crate::ltx;

const RECORD_MAGIC: &[u8; 4] = b"LFUN";
const RECORD_HEADER_SIZE: usize = 32;
const RECORD_TRAILER_SIZE: usize = 8;

/// How long the undo log may stay between transactions (see
/// [`UndoLog::clear`]): the records of 16,384 pages of 4 KiB.
const KEEP_BYTES: u64 = 64 << 20;

/// The undo log of the running transaction.
#[derive(Debug)]
pub(super) struct UndoLog {
    path: PathBuf,
    file: Option<File>,
    /// Bytes written so far (the file may be longer with stale data).
    len: u64,
    /// Bytes known to be on disk.
    synced_len: u64,
    /// The file's length as far as this log wrote it (old records may
    /// follow `len`).
    file_len: u64,
    /// How far the records were handed to the disk (`write_back.rs`).
    written_back: Handed,
    /// The length of the records in the file (one page size at a time).
    record_len: u64,
    /// Page number to the offset of its saved content.
    pages: BTreeMap<u32, u64>,
}

impl UndoLog {
    pub(super) fn new(path: PathBuf) -> UndoLog {
        UndoLog {
            path,
            file: None,
            len: 0,
            synced_len: 0,
            file_len: 0,
            written_back: Handed::default(),
            record_len: 0,
            pages: BTreeMap::new(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether page `pgno` was saved in this transaction.
    pub(super) fn contains(&self, pgno: u32) -> bool {
        self.pages.contains_key(&pgno)
    }

    /// Saves the old content of page `pgno` for a transaction that started
    /// at `base`.
    pub(super) fn append(&mut self, base: Position, pgno: u32, page: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(RECORD_HEADER_SIZE + page.len() + RECORD_TRAILER_SIZE);
        record.extend_from_slice(RECORD_MAGIC);
        record.extend_from_slice(&pgno.to_be_bytes());
        record.extend_from_slice(&(page.len() as u32).to_be_bytes());
        record.extend_from_slice(&[0u8; 4]);
        record.extend_from_slice(&base.txid.to_be_bytes());
        record.extend_from_slice(&base.checksum.to_be_bytes());
        record.extend_from_slice(page);
        let crc = ltx::crc64(&record);
        record.extend_from_slice(&crc.to_be_bytes());
        if self.len == 0 && self.file_len > 0 && self.record_len != record.len() as u64 {
            // Another page size than the records behind: empty the file,
            // so that every record in it has the same length and a scan
            // never reads from the middle of an old one.
            self.open()?.set_len(0)?;
            self.file_len = 0;
        }
        self.record_len = record.len() as u64;
        let offset = self.len;
        let end = offset + record.len() as u64;
        let file = open_log(&mut self.file, &self.path)?;
        file.write_all_at(&record, offset)?;
        // The disk writes these while SQLite goes on, so the sync before
        // the database's (`sync`) finds little left to do.
        self.written_back.written(file, end);
        self.len = end;
        self.file_len = self.file_len.max(end);
        self.pages.insert(pgno, offset + RECORD_HEADER_SIZE as u64);
        Ok(())
    }

    /// Reads the saved content of page `pgno` into `page`; false if not saved.
    pub(super) fn read_page(&mut self, pgno: u32, page: &mut [u8]) -> io::Result<bool> {
        let Some(&offset) = self.pages.get(&pgno) else {
            return Ok(false);
        };
        self.open()?.read_exact_at(page, offset)?;
        Ok(true)
    }

    /// Whether the records written so far are durable.
    pub(super) fn is_synced(&self) -> bool {
        self.synced_len == self.len
    }

    /// Makes the records written so far durable.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if self.synced_len == self.len {
            return Ok(());
        }
        self.open()?.sync_data()?;
        self.synced_len = self.len;
        Ok(())
    }

    /// Forgets the transaction's records. The next transaction writes its
    /// records over them from the start of the file, which is emptied only
    /// once it has grown past [`KEEP_BYTES`]: truncating a file of many
    /// pages frees their blocks (milliseconds for a bulk insert's worth),
    /// and at the end of a transaction that is on the commit's path.
    ///
    /// Leaving old records behind the new ones is safe: recovery uses only
    /// records that name the position it recovers to (`read_saved_pages`),
    /// and a record of that position from an earlier transaction holds the
    /// page exactly as it is at that position, because the position's
    /// checksum covers every page.
    pub(super) fn clear(&mut self) -> io::Result<()> {
        self.pages.clear();
        self.len = 0;
        self.synced_len = 0;
        self.written_back = Handed::default();
        if self.file_len <= KEEP_BYTES {
            return Ok(());
        }
        self.open()?.set_len(0)?;
        self.file_len = 0;
        Ok(())
    }

    /// Empties the file whatever it holds (at start-up, once recovered).
    pub(super) fn reset(&mut self) -> io::Result<()> {
        self.pages.clear();
        self.len = 0;
        self.synced_len = 0;
        self.file_len = 0;
        self.written_back = Handed::default();
        match OpenOptions::new().write(true).open(&self.path) {
            Ok(file) => file.set_len(0),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn open(&mut self) -> io::Result<&File> {
        open_log(&mut self.file, &self.path)
    }
}

/// The log's file, opened (created if need be) at first use.
fn open_log<'a>(file: &'a mut Option<File>, path: &Path) -> io::Result<&'a File> {
    match file {
        Some(file) => Ok(file),
        None => Ok(file.insert(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?,
        )),
    }
}

/// Reads the undo log at `path` left by a crash and calls `restore(pgno,
/// page)` for the first intact record of each page saved by a transaction
/// that started at `base`: the records from the start of the file up to
/// the first broken one or one of another position. Returns how many
/// pages were passed on.
pub(super) fn read_saved_pages(
    path: &Path,
    base: Position,
    mut restore: impl FnMut(u32, &[u8]) -> io::Result<()>,
) -> io::Result<usize> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut seen = std::collections::BTreeSet::new();
    let mut header = [0u8; RECORD_HEADER_SIZE];
    loop {
        if !read_full(&mut reader, &mut header)? || &header[0..4] != RECORD_MAGIC {
            break;
        }
        let pgno = be_u32(&header[4..8]);
        let page_size = be_u32(&header[8..12]);
        if !ltx::is_valid_page_size(page_size) {
            break;
        }
        let mut body = vec![0u8; page_size as usize + RECORD_TRAILER_SIZE];
        if !read_full(&mut reader, &mut body)? {
            break;
        }
        let (page, trailer) = body.split_at(page_size as usize);
        let mut digest = crc64fast::Digest::new();
        digest.write(&header);
        digest.write(page);
        if digest.sum64() != be_u64(trailer) {
            break;
        }
        let record_base = Position {
            txid: be_u64(&header[16..24]),
            checksum: be_u64(&header[24..32]),
        };
        if record_base != base {
            // The transaction's records come first in the file; this one,
            // and whatever follows, an earlier transaction left.
            break;
        }
        if pgno > 0 && seen.insert(pgno) {
            restore(pgno, page)?;
        }
    }
    Ok(seen.len())
}

/// Fills `buf`; false if the reader ends first.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}
