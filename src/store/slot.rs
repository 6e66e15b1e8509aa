//! The next LTX file of a primary's database, made before the commit that
//! fills it: `ltx/next`.
//!
//! A commit's LTX file must be on disk before COMMIT returns, its name
//! included. A new name costs the commit a directory fsync, and on ext4
//! the search for a free inode, both on the application's commit path. So
//! a thread makes `ltx/next` ahead of time: created empty, its directory
//! fsynced. A commit then writes its LTX file into it, fsyncs it, and
//! renames it to `<txid>-<txid>.ltx` without syncing the directory again:
//! the file's content is durable under one of the two names whatever the
//! crash (a rename is atomic on a journaling file system), and start-up
//! gives a whole `next` that continues the chain its proper name
//! (`Db::recover_slot`). The directory is synced soon after anyway, by the
//! thread making the following `next`.
//!
//! Ordering, and who touches `ltx/next`: the maker thread creates it only
//! while no `File` for it is held here and none was asked for; a commit
//! takes the `File` out (under the database's state lock) and, until it
//! has renamed or removed it, no new one is asked for, because asking
//! happens under the same state lock (at the end of a commit). So the
//! maker never creates `next` while a commit writes it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use super::{io_error, sync_dir, Db, Error};
use crate::ltx;

/// The file name of the next LTX file in `ltx/` (not an LTX name, so the
/// listing of LTX files never sees it).
pub(super) const SLOT_NAME: &str = "next";

/// `ltx/next` of one database.
#[derive(Debug)]
pub(super) struct Slot {
    dir: PathBuf,
    path: PathBuf,
    inner: Mutex<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    /// `ltx/next`, empty, its name durable; taken by the next commit.
    file: Option<File>,
    /// The maker thread was asked for one and has not answered yet.
    requested: bool,
}

impl Slot {
    pub(super) fn new(ltx_dir: &Path) -> Slot {
        Slot {
            dir: ltx_dir.to_path_buf(),
            path: ltx_dir.join(SLOT_NAME),
            inner: Mutex::new(SlotInner::default()),
        }
    }

    /// `ltx/next`.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the ready `next` file, if there is one. The caller fills it
    /// and renames it, or removes it (`discard`).
    pub(super) fn take(&self) -> Option<File> {
        self.lock().file.take()
    }

    /// Removes `next` after a commit failed to fill it.
    pub(super) fn discard(&self) {
        if let Err(err) = fs::remove_file(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {err}", self.path.display());
            }
        }
    }

    /// Asks the maker thread for a new `next` unless one is ready or
    /// asked for. Call it with the database's state lock held (see the
    /// module comment).
    pub(super) fn request(self: &Arc<Self>) {
        {
            let mut inner = self.lock();
            if inner.file.is_some() || inner.requested {
                return;
            }
            inner.requested = true;
        }
        if maker().send(Arc::clone(self)).is_err() {
            self.lock().requested = false;
        }
    }

    /// Whether a `next` file is ready (tests wait for it).
    pub(super) fn is_ready(&self) -> bool {
        self.lock().file.is_some()
    }

    /// Makes `next` (on the maker thread). An empty one already there (an
    /// earlier run's) is taken as it is; one with content is left alone
    /// (start-up deals with it, `Db::recover_slot`), and commits make
    /// their own files meanwhile.
    fn make(&self) {
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&self.path)
            .and_then(|file| {
                if file.metadata()?.len() > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it exists and is not empty",
                    ));
                }
                File::open(&self.dir)?.sync_all()?;
                Ok(file)
            });
        let mut inner = self.lock();
        inner.requested = false;
        match made {
            Ok(file) => inner.file = Some(file),
            // A deleted database, a full disk: commits make their own file.
            Err(err) => log::debug!("cannot make {}: {err}", self.path.display()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The one thread that makes `next` files for every database of the
/// process, started at the first request.
fn maker() -> &'static Sender<Arc<Slot>> {
    static MAKER: OnceLock<Sender<Arc<Slot>>> = OnceLock::new();
    MAKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<Slot>>();
        let spawned = std::thread::Builder::new()
            .name("ltx-next".to_string())
            .spawn(move || {
                for slot in rx {
                    slot.make();
                }
            });
        if let Err(err) = spawned {
            // Every commit then makes its own file, as without this module.
            log::warn!("cannot start the thread that makes LTX files ahead: {err}");
        }
        tx
    })
}

impl Db {
    /// Whether `ltx/next` is ready for the next commit (`slot.rs`); tests
    /// wait for it to see a commit take that path.
    pub fn next_ltx_file_ready(&self) -> bool {
        self.slot.is_ready()
    }

    /// At start-up, before the LTX files are listed: a whole `ltx/next`
    /// that continues the chain is a commit whose rename had not reached
    /// the disk, and gets its name; anything else written there (torn: a
    /// commit that had not finished, or stale) is deleted. An empty one is
    /// left for the next commit. Left alone, with a warning, when the
    /// newest LTX file does not verify (the damaged newest file is dealt
    /// with first, see `damage.rs`).
    pub(super) fn recover_slot(&self) -> Result<(), Error> {
        let path = self.slot.path();
        match fs::metadata(path) {
            Ok(md) if md.len() > 0 => {}
            _ => return Ok(()),
        }
        let Ok(header) = ltx::verify_file(path).map(|(header, _)| header) else {
            log::warn!(
                "database {}: deleting {}, an LTX file whose commit had not finished",
                self.name,
                path.display()
            );
            return match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(io_error("deleting an unfinished LTX file", path)(err)),
            };
        };
        let files = self.ltx_files()?;
        let newest = files.iter().max_by_key(|&&(min, max, _)| (max, min));
        let continues = match newest {
            None => header.min_txid == 1,
            Some((_, max, newest_path)) => match ltx::verify_file(newest_path) {
                Ok((_, trailer)) => {
                    header.min_txid == max + 1
                        && header.pre_apply_checksum == trailer.post_apply_checksum
                }
                Err(err) => {
                    log::warn!(
                        "database {}: left {} alone: the newest LTX file {} does not verify \
                         ({err})",
                        self.name,
                        path.display(),
                        newest_path.display()
                    );
                    return Ok(());
                }
            },
        };
        if !continues {
            log::warn!(
                "database {}: deleting {}: TXID {:016x} does not continue the LTX files",
                self.name,
                path.display(),
                header.min_txid
            );
            fs::remove_file(path).map_err(io_error("deleting a stale LTX file", path))?;
            return Ok(());
        }
        let final_path = self
            .ltx_dir
            .join(ltx::filename(header.min_txid, header.max_txid));
        log::warn!(
            "database {}: TXID {:016x} was committed but its LTX file's name had not reached \
             the disk; renaming {} to {}",
            self.name,
            header.max_txid,
            path.display(),
            final_path.display()
        );
        fs::rename(path, &final_path).map_err(io_error("naming a committed LTX file", path))?;
        sync_dir(&self.ltx_dir)
    }
}
