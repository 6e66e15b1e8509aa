//! Keeping diverged writes: before a replica applies a snapshot that
//! replaces a history the primary does not have, it saves its database
//! file and its own LTX files under `lost/` (`lost.rs`), so the rows of
//! a former primary's last transactions can still be recovered by hand.
//!
//! A replica cannot see why the primary sent a snapshot, nor where the two
//! histories split (a snapshot carries no history). So it decides from
//! what it has:
//! - its position is at or past the snapshot's TXID (and not equal to the
//!   snapshot's position): it is ahead or diverged, certainly;
//! - it is behind the snapshot and its newest LTX file was written by this
//!   node itself (it was the primary when it got there): it may have
//!   diverged, or only fallen behind retention; it saves, erring on the
//!   side of keeping;
//! - otherwise (behind, its newest transaction received from a primary)
//!   nothing of its own can be lost: nothing is saved.
//!
//! What is saved in `lost/<db>/<local txid>-<unix ms>/`: a copy of the
//! database file (fsynced; `sqlite3` opens it) and hard links to the LTX
//! files the snapshot replaces that are past the snapshot's TXID or at
//! the end of the history in a run written by this node. That run is a
//! superset of the diverged transactions (where the histories split is
//! unknown here); links cost no space, and the snapshot then only removes
//! the files' names from `ltx/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::db::State;
use super::{lost, sync_dir, Db, Error, Position};
use crate::ltx;

impl Db {
    /// Called with the state lock held before the snapshot `header` (whose
    /// post-apply checksum is `checksum`) is applied over the position in
    /// `state`: saves the database and this node's LTX files to `lost/`
    /// when the local history may not be part of the snapshot's (see the
    /// module comment). Returns the directory, if anything was saved.
    pub(super) fn keep_diverged(
        &self,
        state: &State,
        header: &ltx::Header,
        checksum: u64,
    ) -> Result<Option<PathBuf>, Error> {
        let local = state.pos;
        let snapshot = Position {
            txid: header.max_txid,
            checksum,
        };
        if local.txid == 0 || local == snapshot {
            return Ok(None);
        }
        let mut files = self.ltx_files()?;
        files.sort_by_key(|&(min, max, _)| (max, min));
        // This node's own files at the end of its history, newest first.
        let mut own = Vec::new();
        for (_, max, path) in files.iter().rev() {
            match ltx::read_header_and_trailer(path) {
                Ok((h, _)) if h.node_id == self.node_id => own.push((*max, path.clone())),
                _ => break,
            }
        }
        let ahead = local.txid >= snapshot.txid;
        if !ahead && own.is_empty() {
            return Ok(None);
        }
        let mut keep: Vec<PathBuf> = own.into_iter().map(|(_, p)| p).collect();
        for (_, max, path) in &files {
            if *max > snapshot.txid && !keep.contains(path) {
                keep.push(path.clone());
            }
        }
        keep.sort();
        let dir = lost::new_dir(&self.data_dir(), &self.name, local.txid)?;
        if File::open(&self.database_path).is_ok() {
            lost::copy_into(&dir, &self.database_path)?;
        }
        for path in &keep {
            link_into(&dir, path)?;
        }
        sync_dir(&dir)?;
        log::warn!(
            "database {}: its history {} the primary's (local position {local}, the \
             primary's snapshot is at {snapshot}); before taking the snapshot, its database \
             file and {} LTX files of its own history were saved to {} (open the database \
             there with sqlite3 to recover its rows)",
            self.name,
            if ahead {
                "is ahead of or diverged from"
            } else {
                "may have diverged from"
            },
            keep.len(),
            dir.display()
        );
        Ok(Some(dir))
    }
}

/// Hard-links `path` into `dir` under its own name (a copy when the
/// file system refuses the link).
fn link_into(dir: &Path, path: &Path) -> Result<(), Error> {
    let target = dir.join(path.file_name().unwrap_or_default());
    match fs::hard_link(path, &target) {
        Ok(()) => Ok(()),
        Err(_) => lost::copy_into(dir, path).map(|_| ()),
    }
}
