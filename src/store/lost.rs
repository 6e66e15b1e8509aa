//! `lost/`: what litefs sets aside instead of deleting.
//!
//! Whenever litefs must drop something that may hold data (a damaged LTX
//! file whose transaction was never acknowledged, a damaged database file
//! it rebuilt, the transactions of a node whose history diverged from the
//! primary's), it moves or copies it into
//! `<data-dir>/lost/<db>/<txid 16 hex>-<unix ms>/` first, fsynced, and logs
//! the path at WARN. litefs never reads anything there: it is the
//! operator's, to inspect (`litefs ltx dump`, `sqlite3`) and remove. So
//! that it cannot fill the disk (a node that rejoins diverged again and
//! again sets a whole database aside each time), each database keeps the
//! newest `data.lost-keep` sets (`set_keep`; the config's default is 10,
//! 0 keeps all): making
//! one more deletes the oldest, with a WARN naming it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{io_error, now_ms, sync_dir, Error};

/// The directory under the data directory that holds what was set aside.
pub(super) const LOST_DIR: &str = "lost";

/// How many sets each database keeps (0: all): one setting per process,
/// set by the node from the config's `data.lost-keep`; a store used
/// without a node keeps all.
static KEEP: AtomicUsize = AtomicUsize::new(0);

/// Sets how many sets of set-aside files each database keeps (0: all).
pub fn set_keep(keep: usize) {
    KEEP.store(keep, Ordering::SeqCst);
}

/// Creates a new, empty `lost/<db>/<txid>-<ms>[.<n>]/` and returns it;
/// its parents are fsynced so the directory survives a crash. Older sets
/// beyond the number kept are deleted first (`prune`).
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
    prune(&parent, &dir, KEEP.load(Ordering::SeqCst));
    sync_dir(&parent)?;
    sync_dir(&lost)?;
    sync_dir(data_dir)?;
    Ok(dir)
}

/// Deletes the oldest sets in `parent` (by the time in their names) until
/// `keep` are left, never `newest`; `keep` 0 deletes nothing. A set that
/// cannot be deleted is left, with a WARN: setting aside goes on.
pub(super) fn prune(parent: &Path, newest: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    // (unix ms, name): `<txid>-<ms>[.<n>]`.
    let mut sets: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p != newest)
        .map(|p| {
            let ms = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('-'))
                .and_then(|(_, rest)| rest.split('.').next()?.parse().ok())
                .unwrap_or(0);
            (ms, p)
        })
        .collect();
    sets.sort();
    let excess = (sets.len() + 1).saturating_sub(keep);
    for (_, path) in sets.into_iter().take(excess) {
        match fs::remove_dir_all(&path) {
            Ok(()) => log::warn!(
                "deleted {}, the oldest set-aside files of its database: each keeps the newest \
                 {keep} (data.lost-keep)",
                path.display()
            ),
            Err(err) => log::warn!("cannot delete {}: {err}", path.display()),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_sets() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path();
        for name in [
            "0000000000000009-1000",
            "0000000000000001-3000",
            "0000000000000005-2000",
            "0000000000000005-2000.1",
            "0000000000000002-4000",
        ] {
            fs::create_dir(parent.join(name)).unwrap();
            fs::write(parent.join(name).join("database"), b"x").unwrap();
        }
        let newest = parent.join("0000000000000002-4000");
        let names = || {
            let mut names: Vec<String> = fs::read_dir(parent)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        prune(parent, &newest, 0);
        assert_eq!(names().len(), 5);
        prune(parent, &newest, 3);
        assert_eq!(
            names(),
            [
                "0000000000000001-3000",
                "0000000000000002-4000",
                "0000000000000005-2000.1"
            ]
        );
        prune(parent, &newest, 1);
        assert_eq!(names(), ["0000000000000002-4000"]);
    }
}
