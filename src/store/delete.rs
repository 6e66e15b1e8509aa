//! Deleting a database, on the primary (the application removed the file
//! through the mount) and on a replica (the primary said so), and the
//! tombstones that carry a deletion to replicas that were away.
//!
//! A tombstone is an empty file `deleted/<name>` in the data directory. The
//! primary's stream tells a replica to delete every database the replica
//! lists that the primary does not have *and* holds a tombstone for; a
//! database that is merely unknown (never replicated here) is left alone.
//! Creating a database of the same name removes its tombstone, and the new
//! database starts a fresh chain: a replica still holding the old one is
//! then brought over by a snapshot, as for any diverged history.
//!
//! Order on disk, so that a crash at any point either deletes or keeps the
//! whole database: the tombstone is written and its directory synced, then
//! `dbs/<name>` is renamed into `trash/` and `dbs/` synced, then the trash
//! is removed. Creating removes the tombstone (synced) before it creates
//! `dbs/<name>`, so at start-up a tombstone beside a database directory
//! can only mean a deletion that a crash interrupted: it is completed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{io_error, sync_dir, Error, Position, Store};

/// Tombstones of deleted databases, one empty file per name.
pub(super) const DELETED_DIR: &str = "deleted";
/// Database directories being removed; emptied at start-up.
pub(super) const TRASH_DIR: &str = "trash";

impl Store {
    /// Deletes the database `name` and its LTX files, leaving a tombstone
    /// so replicas delete it too. Returns its last position. Handles still
    /// open on it read what it held; writes through them fail.
    pub fn delete_db(&self, name: &str) -> Result<Position, Error> {
        let mut dbs = self.lock();
        let Some(db) = dbs.get(name).cloned() else {
            return Err(Error::Refused {
                db: name.to_string(),
                path: self.dbs_dir.join(name),
                reason: "there is no such database".to_string(),
            });
        };
        // The state lock waits for a commit or an apply in progress.
        let state = db.lock();
        let pos = state.pos;
        // A replica's WAL and journal may be sealed (`seal.rs`): they must
        // go too.
        if let Err(err) = db.unseal_companions() {
            log::warn!("database {name}: cannot make its files removable: {err}");
        }
        write_tombstone(&self.data_dir, name)?;
        let trash = self.data_dir.join(TRASH_DIR);
        fs::create_dir_all(&trash).map_err(io_error("creating the trash directory", &trash))?;
        let doomed = trash.join(format!("{name}.{}", db.instance()));
        fs::rename(db.dir(), &doomed).map_err(io_error(
            format!("moving database {name} to the trash"),
            db.dir(),
        ))?;
        sync_dir(&self.dbs_dir)?;
        db.deleted.store(true, Ordering::SeqCst);
        db.clear_queue();
        self.acks.forget_db(name);
        dbs.remove(name);
        drop(state);
        drop(dbs);
        remove_trash(&doomed);
        self.deletions.fetch_add(1, Ordering::SeqCst);
        log::info!("deleted database {name} at position {pos}");
        self.notify_change();
        Ok(pos)
    }

    /// How many databases were deleted since the store opened: a reader
    /// of tombstones looks again only when it changed.
    pub fn deletions(&self) -> u64 {
        self.deletions.load(Ordering::SeqCst)
    }

    /// Whether `name` was deleted here (or on the primary this node
    /// followed) and not created again since.
    pub fn is_deleted(&self, name: &str) -> bool {
        tombstone_path(&self.data_dir, name).exists()
    }
}

/// Removes the tombstone of `name`, if any, durably: called before a
/// database of that name is created again.
pub(super) fn remove_tombstone(data_dir: &Path, name: &str) -> Result<(), Error> {
    let path = tombstone_path(data_dir, name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(&data_dir.join(DELETED_DIR)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::Io {
            what: format!("removing the tombstone of database {name}"),
            path,
            source: err,
        }),
    }
}

/// Completes what a crash interrupted: empties `trash/`, and deletes every
/// database directory that has a tombstone (see the module comment).
pub(super) fn finish_deletions(data_dir: &Path, dbs_dir: &Path) -> Result<(), Error> {
    remove_trash(&data_dir.join(TRASH_DIR));
    let deleted = data_dir.join(DELETED_DIR);
    let entries = match fs::read_dir(&deleted) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("listing the tombstones", &deleted)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("listing the tombstones", &deleted))?;
        let dir = dbs_dir.join(entry.file_name());
        if dir.is_dir() {
            log::warn!(
                "completing the deletion of database {:?}, interrupted by a crash",
                entry.file_name()
            );
            fs::remove_dir_all(&dir).map_err(io_error("removing a deleted database", &dir))?;
            sync_dir(dbs_dir)?;
        }
    }
    Ok(())
}

fn tombstone_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(DELETED_DIR).join(name)
}

fn write_tombstone(data_dir: &Path, name: &str) -> Result<(), Error> {
    let dir = data_dir.join(DELETED_DIR);
    fs::create_dir_all(&dir).map_err(io_error("creating the tombstone directory", &dir))?;
    let path = tombstone_path(data_dir, name);
    File::create(&path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(
            format!("writing the tombstone of database {name}"),
            &path,
        ))?;
    sync_dir(&dir)?;
    sync_dir(data_dir)
}

/// Removes a trashed database directory (or the whole trash); a failure
/// costs only disk space until the next start, so it is logged, not fatal.
fn remove_trash(path: &Path) {
    if let Err(err) = fs::remove_dir_all(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {err}", path.display());
        }
    }
}
