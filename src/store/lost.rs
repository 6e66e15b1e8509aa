//! `lost/`: what litefs sets aside instead of deleting.
//!
//! Whenever litefs must drop something that may hold data (a damaged LTX
//! file whose transaction was never acknowledged, a damaged database file
//! it rebuilt, the transactions of a node whose history diverged from the
//! primary's), it moves or copies it into
//! `<data-dir>/lost/<db>/<txid 16 hex>-<unix ms>/` first, fsynced, and logs
//! the path at WARN. litefs never reads or deletes anything there: it is
//! the operator's, to inspect (`litefs ltx dump`, `sqlite3`) and remove.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::{io_error, now_ms, sync_dir, Error};

/// The directory under the data directory that holds what was set aside.
pub(super) const LOST_DIR: &str = "lost";

/// Creates a new, empty `lost/<db>/<txid>-<ms>[.<n>]/` and returns it;
/// its parents are fsynced so the directory survives a crash.
pub(super) fn new_dir(data_dir: &Path, db: &str, txid: u64) -> Result<PathBuf, Error> {
    let lost = data_dir.join(LOST_DIR);
    let parent = lost.join(db);
    fs::create_dir_all(&parent).map_err(io_error(
        format!("creating the directory for what database {db} set aside"),
        &parent,
    ))?;
    let stem = format!("{txid:016x}-{}", now_ms());
    let mut dir = parent.join(&stem);
    let mut n = 1;
    loop {
        match fs::create_dir(&dir) {
            Ok(()) => break,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                dir = parent.join(format!("{stem}.{n}"));
                n += 1;
            }
            Err(err) => {
                return Err(io_error(
                    format!("creating the directory for what database {db} set aside"),
                    &dir,
                )(err))
            }
        }
    }
    sync_dir(&parent)?;
    sync_dir(&lost)?;
    sync_dir(data_dir)?;
    Ok(dir)
}

/// Moves `path` into `dir` under its own file name (same file system: the
/// data directory), and fsyncs both directories.
pub(super) fn move_into(dir: &Path, path: &Path) -> Result<PathBuf, Error> {
    let target = dir.join(path.file_name().unwrap_or_default());
    fs::rename(path, &target).map_err(io_error(
        format!("setting {} aside", path.display()),
        &target,
    ))?;
    sync_dir(dir)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(target)
}

/// Copies `path` into `dir` under its own file name, fsynced.
pub(super) fn copy_into(dir: &Path, path: &Path) -> Result<PathBuf, Error> {
    let target = dir.join(path.file_name().unwrap_or_default());
    let copy = || -> io::Result<()> {
        fs::copy(path, &target)?;
        File::open(&target)?.sync_all()
    };
    copy().map_err(io_error(
        format!("copying {} aside", path.display()),
        &target,
    ))?;
    sync_dir(dir)?;
    Ok(target)
}
