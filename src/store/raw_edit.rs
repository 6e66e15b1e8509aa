//! A database edited in place without SQLite: a program that opens the
//! file read-write (a write-only or truncating open is a copy-in, see
//! `fuse/copy_in.rs`) and writes to it, such as a patch of the header's
//! change counter (Tcl's `open RDWR`, Python's `open('r+b')`). The mount
//! tells it from SQLite by its open flags, and any write of part of a
//! page is one too, as SQLite writes whole pages only (`fuse/writes.rs`).
//! Outside a SQLite transaction each such write becomes a transaction of
//! its own, recorded before the write returns, and replicates like any
//! commit. What it writes is the writer's business, as on any file system:
//! a database it corrupts is replicated corrupt. SQLite's own whole-page
//! writes outside a transaction (`journal_mode=OFF`) stay refused.
//!
//! Order, each step durable before the next: the old content of every page
//! the write touches goes to the undo log; the write reaches the database
//! file; the LTX file is written and the position moves (`commit_locked`).
//! Killed or cut before the LTX file is durable, start-up finds the file
//! different from the position and puts the undo log's pages back
//! (`recovery.rs`); after it, the file holds the edit. A write the commit
//! refuses (a header it cannot read) is undone from the pages kept in
//! memory before the error returns.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::commit::UndoHolds;
use super::{io_error, is_lock_page, page_offset, Db, Error, Position};
use crate::sqlite;

impl Db {
    /// Whether a write of `len` bytes at `offset` to the database file
    /// covers part of a page: no SQLite writes such a thing.
    pub fn is_partial_page_write(&self, offset: u64, len: usize) -> bool {
        match self.page_size() {
            Some(page_size) => {
                let size = u64::from(page_size);
                len > 0 && (offset % size != 0 || len as u64 % size != 0)
            }
            None => false,
        }
    }

    /// Writes `data` at `offset` into the database file, outside any
    /// SQLite transaction, and records it as one transaction (see the
    /// module comment). The write must stay within the database's pages
    /// and leave page 1's header readable, with the same page size and
    /// journal mode.
    pub fn edit_in_place(&self, offset: u64, data: &[u8]) -> Result<Position, Error> {
        let mut state = self.lock();
        if data.is_empty() {
            return Ok(state.pos);
        }
        let refuse = |reason: String| Error::InvalidWrite {
            db: self.name.clone(),
            offset,
            len: data.len(),
            reason,
        };
        let Some(page_size) = state.page_size else {
            return Err(refuse("the database has no pages yet".to_string()));
        };
        if state.wal_mode {
            return Err(refuse(
                "a database in WAL mode is changed only by SQLite; to replace it, copy a \
                 whole database file over it (cp)"
                    .to_string(),
            ));
        }
        if !state.dirty.is_empty() || state.rescan || state.pending_page_size.is_some() {
            return Err(refuse(
                "a SQLite transaction is writing the database; write when it has ended".to_string(),
            ));
        }
        let size = u64::from(page_size);
        let end = offset + data.len() as u64;
        let committed = u64::from(state.checksums.page_count()) * size;
        if end > committed {
            return Err(refuse(format!(
                "a write in place must stay within the database's {committed} bytes; to \
                 replace the database, copy a whole database file over it (cp)"
            )));
        }
        let path = &self.database_path;
        let write_error = |what: &str| io_error(format!("{what} database {}", self.name), path);
        let database = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(write_error("opening"))?;
        let first = (offset / size + 1) as u32;
        let last = end.div_ceil(size) as u32;
        // The lock page is never part of the database (its checksum is not
        // counted): bytes written there are kept, not recorded or saved.
        let pages: BTreeSet<u32> = (first..=last)
            .filter(|&pgno| !is_lock_page(pgno, page_size))
            .collect();
        let mut saved = Vec::new();
        for &pgno in &pages {
            let mut page = vec![0u8; page_size as usize];
            self.read_page(&database, pgno, &mut page)?;
            saved.push((pgno, page));
        }
        if offset < sqlite::DATABASE_HEADER_SIZE as u64 {
            let mut header = saved[0].1[..sqlite::DATABASE_HEADER_SIZE].to_vec();
            let from = offset as usize;
            let to = (end as usize).min(header.len());
            header[from..to].copy_from_slice(&data[..to - from]);
            let old = sqlite::parse_database_header(&saved[0].1)
                .map_err(|err| refuse(format!("page 1's header is not readable: {err}")))?;
            match sqlite::parse_database_header(&header) {
                Ok(new) if new.page_size == old.page_size && new.is_wal() == old.is_wal() => {}
                Ok(_) => {
                    return Err(refuse(
                        "it changes the page size or the journal mode in the header".to_string(),
                    ))
                }
                Err(err) => {
                    return Err(refuse(format!(
                        "page 1 must keep a SQLite database header: {err}"
                    )))
                }
            }
        }
        let base = state.pos;
        let saving = saved
            .iter()
            .try_for_each(|(pgno, page)| state.undo.append(base, *pgno, page))
            .and_then(|()| state.undo.sync());
        if let Err(err) = saving {
            // Nothing was written: forget the partial records.
            state.end_transaction(&self.name);
            return Err(io_error(
                format!("saving pages of database {} to the undo log", self.name),
                &self.undo_path,
            )(err));
        }
        let write = database
            .write_all_at(data, offset)
            .and_then(|()| database.sync_data());
        let recorded = match write {
            Ok(()) => self.commit_locked(&mut state, &pages, UndoHolds::EditedPages),
            Err(err) => Err(write_error("writing in place")(err)),
        };
        match recorded {
            Ok(commit) => {
                match commit.position {
                    Some(pos) => log::info!(
                        "database {}: {} bytes at offset {offset} written in place without \
                         SQLite, recorded as TXID {:016x}",
                        self.name,
                        data.len(),
                        pos.txid
                    ),
                    None => log::info!(
                        "database {}: {} bytes at offset {offset} written in place without \
                         SQLite changed nothing",
                        self.name,
                        data.len()
                    ),
                }
                Ok(state.pos)
            }
            Err(err) => {
                let undone = saved.iter().try_for_each(|(pgno, page)| {
                    database.write_all_at(page, page_offset(*pgno, page_size))
                });
                match undone.and_then(|()| database.sync_data()) {
                    Ok(()) => state.end_transaction(&self.name),
                    Err(undo_err) => {
                        // The file may hold the edit: its pages count as
                        // written, so no other edit runs and the next
                        // commit records them, or puts them back from the
                        // undo log if they are all that differs; start-up
                        // puts them back too.
                        state.dirty.extend(pages.iter().copied());
                        log::error!(
                            "database {}: cannot undo a refused write in place: {undo_err}; \
                             its pages are recorded by the next commit or put back from \
                             the undo log",
                            self.name
                        );
                    }
                }
                Err(err)
            }
        }
    }
}
