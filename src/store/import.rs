//! Loading a whole SQLite database file into a database as one transaction
//! (`litefs import`): the file becomes an LTX file holding every page, the
//! transaction after the current position, which is then applied and
//! replicated like any other.
//!
//! The caller holds SQLite's locks on the database through the mount (see
//! `Applier::import`), so no commit moves the position while the file is
//! written and applied.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::db::LTX_BUFFER;
use super::{io_error, is_lock_page, now_ms, page_offset, Db, Error};
use crate::{ltx, sqlite};

impl Db {
    /// Writes to `out` an LTX file that turns this database into a copy of
    /// the SQLite database at `src` (checked with
    /// `sqlite::check_database_file`). Page 1's change counter and schema
    /// cookie are set past both the current database's and the file's, so
    /// every connection that cached pages or the schema of the old
    /// database reads them again (equal cookies would let a connection
    /// keep the old schema: "no such table").
    pub fn write_import_ltx(&self, src: &Path, out: &Path) -> Result<ltx::Header, Error> {
        let invalid = |reason: String| Error::InvalidDatabase {
            db: self.name.clone(),
            path: src.to_path_buf(),
            reason,
        };
        let (header, page_count) =
            sqlite::check_database_file(src).map_err(|err| invalid(err.to_string()))?;
        let (current_counter, current_cookie) = sqlite::read_database_header(&self.database_path)
            .map(|h| (h.change_counter, h.schema_cookie))
            .unwrap_or((0, 0));
        let counter = current_counter.max(header.change_counter).wrapping_add(1);
        let cookie = current_cookie.max(header.schema_cookie).wrapping_add(1);
        let pos = self.pos();
        let ltx_header = ltx::Header {
            page_size: header.page_size,
            commit: page_count,
            min_txid: pos.txid + 1,
            max_txid: pos.txid + 1,
            timestamp: now_ms(),
            pre_apply_checksum: if pos.txid == 0 { 0 } else { pos.checksum },
            node_id: self.node_id,
            ..ltx::Header::default()
        };
        let ltx_error = self.ltx_error(out);
        let source = File::open(src).map_err(io_error("opening the file to import", src))?;
        let target = File::create(out).map_err(io_error("creating an LTX file", out))?;
        let mut encoder =
            ltx::LtxEncoder::new(BufWriter::with_capacity(LTX_BUFFER, target), &ltx_header)
                .map_err(&ltx_error)?;
        let mut page = vec![0u8; header.page_size as usize];
        let mut checksum = ltx::CHECKSUM_FLAG;
        for pgno in 1..=page_count {
            if is_lock_page(pgno, header.page_size) {
                continue;
            }
            source
                .read_exact_at(&mut page, page_offset(pgno, header.page_size))
                .map_err(io_error("reading the file to import", src))?;
            if pgno == 1 {
                // Change counter, in-header size, schema cookie and the
                // counter the size is valid for (offsets 24, 28, 40, 92).
                page[24..28].copy_from_slice(&counter.to_be_bytes());
                page[28..32].copy_from_slice(&page_count.to_be_bytes());
                page[40..44].copy_from_slice(&cookie.to_be_bytes());
                page[92..96].copy_from_slice(&counter.to_be_bytes());
            }
            checksum = ltx::checksum_replace(checksum, 0, ltx::page_checksum(pgno, &page));
            encoder.encode_page(pgno, &page).map_err(&ltx_error)?;
        }
        let (writer, _) = encoder.finish(checksum).map_err(&ltx_error)?;
        let file = writer
            .into_inner()
            .map_err(|err| io_error("writing an LTX file", out)(err.into_error()))?;
        file.sync_all()
            .map_err(io_error("syncing an LTX file", out))?;
        Ok(ltx_header)
    }

    /// After the import of `src` (already applied), puts the bytes of
    /// `src` past the imported pages at the end of this node's database
    /// file, so the file is as long as what was copied, as `cp` leaves it.
    /// A copy taken in the middle of a transaction has pages past its
    /// header's page count; SQLite never reads them, so they are not part
    /// of the database: not in the LTX file, not replicated, not synced
    /// (a power loss may drop them and nothing is lost).
    pub fn keep_tail_of(&self, src: &Path) -> Result<(), Error> {
        let path = &self.database_path;
        let len = std::fs::metadata(path)
            .map_err(io_error(
                format!("reading the size of database {}", self.name),
                path,
            ))?
            .len();
        let mut source = File::open(src).map_err(io_error("opening the imported file", src))?;
        let src_len = source
            .metadata()
            .map_err(io_error("reading the size of the imported file", src))?
            .len();
        if src_len <= len {
            return Ok(());
        }
        let mut database = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(format!("opening database {}", self.name), path))?;
        source
            .seek(SeekFrom::Start(len))
            .and_then(|_| database.seek(SeekFrom::Start(len)))
            .and_then(|_| std::io::copy(&mut source, &mut database))
            .map_err(io_error(
                format!(
                    "copying the pages past the header's count into database {}",
                    self.name
                ),
                path,
            ))?;
        Ok(())
    }
}
