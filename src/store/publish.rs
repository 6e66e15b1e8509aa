//! How a new LTX file appears under its name only once it is whole.
//!
//! Where the file system allows it (ext4, xfs, btrfs, tmpfs), the file is
//! written unnamed in its directory (`O_TMPFILE`) and then linked under
//! its name: one directory entry added, against a create, a rename and a
//! removal for a temporary name, which matters in a directory of
//! thousands of LTX files with one new file per transaction. A crash
//! before the link leaves nothing behind. Elsewhere, or should linking
//! fail (it goes through `/proc/self/fd`), the file is written under
//! `<name>.tmp` and renamed.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::db::temp_path;

/// Unnamed files work here (cleared at the first failure).
static UNNAMED_OK: AtomicBool = AtomicBool::new(true);

/// A file being written for `path`.
pub(super) struct NewFile {
    pub(super) file: File,
    /// The temporary name it has, if any.
    tmp: Option<PathBuf>,
}

impl NewFile {
    /// Makes a new, empty file to become `path` (see the module comment).
    pub(super) fn create(path: &Path) -> io::Result<NewFile> {
        if UNNAMED_OK.load(Ordering::Relaxed) {
            let dir = path.parent().unwrap_or(Path::new("."));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
            {
                Ok(file) => return Ok(NewFile { file, tmp: None }),
                Err(err) if unsupported(&err) => UNNAMED_OK.store(false, Ordering::Relaxed),
                Err(err) => return Err(err),
            }
        }
        let tmp = temp_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok(NewFile {
            file,
            tmp: Some(tmp),
        })
    }

    /// Gives the written file its name `path` (replacing a file there).
    /// Not durable until the directory is synced.
    pub(super) fn publish(self, path: &Path) -> io::Result<()> {
        let NewFile { mut file, tmp } = self;
        let tmp = match tmp {
            Some(tmp) => tmp,
            None => match link(&file, path) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    // Copied into a named file instead, from now on too.
                    log::warn!(
                        "cannot link the new LTX file {} ({err}); LTX files are written under a \
                         temporary name from now on",
                        path.display()
                    );
                    UNNAMED_OK.store(false, Ordering::Relaxed);
                    let tmp = temp_path(path);
                    let mut named = File::create(&tmp)?;
                    file.rewind()?;
                    let copied = io::copy(&mut file, &mut named).and_then(|_| named.sync_all());
                    if let Err(err) = copied {
                        let _ = fs::remove_file(&tmp);
                        return Err(err);
                    }
                    tmp
                }
            },
        };
        fs::rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Removes what was written (a failed write).
    pub(super) fn discard(self) {
        if let Some(tmp) = self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Links the unnamed `file` as `path`, replacing a file there.
fn link(file: &File, path: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut replaced = false;
    loop {
        // SAFETY: two NUL-terminated paths; linkat touches no other memory.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) && !replaced {
            fs::remove_file(path)?;
            replaced = true;
            continue;
        }
        return Err(err);
    }
}

/// Whether `err` says the file system has no unnamed files.
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}
