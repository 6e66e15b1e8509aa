//! The mount point: preparing it (created, a stale mount of a killed
//! litefs cleared), mounting the file system on it, and unmounting at
//! shutdown (detached when files are still open).

use std::path::Path;

use log::{error, info, warn};

use super::{Error, FUSE_THREADS};
use crate::fuse::LitefsFs;

/// Whether litefs runs as root (which may always use `allow_other`).
pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(super) fn mount(
    fs: LitefsFs,
    mount_dir: &Path,
    allow_other: bool,
) -> Result<fuser::BackgroundSession, Error> {
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("litefs".to_string()),
        fuser::MountOption::Subtype("litefs".to_string()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    // With allow_other every local user reaches the mount, like any other
    // directory; file permissions still apply (the backing files' modes
    // are reported). Without, only the user litefs runs as.
    fuse_config.acl = if allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fuse_config.n_threads = Some(FUSE_THREADS);
    fuse_config.clone_fd = true;
    let mount_error = |source| Error::Mount {
        path: mount_dir.to_path_buf(),
        source,
        allow_other,
    };
    fuser::Session::new(fs, mount_dir, &fuse_config)
        .map_err(mount_error)?
        .spawn()
        .map_err(mount_error)
}

/// Creates the mount directory if needed and clears a stale mount left by
/// a crashed litefs (reads on it fail with ENOTCONN); refuses a directory
/// something else is mounted on.
pub(super) fn prepare_mount_dir(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Error::MountDir {
                path: path.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|source| Error::MountDir {
                path: path.to_path_buf(),
                source,
            })?;
            info!("created mount directory {}", path.display());
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return clear_stale_mount(path),
        Err(source) => {
            return Err(Error::MountDir {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    if is_mount_point(path) {
        // The kernel may still answer stat from its cache for a dead mount,
        // and opens a directory without asking litefs (no opendir);
        // reading an entry always asks the (absent) daemon.
        return match std::fs::read_dir(path).and_then(|mut rd| rd.next().transpose()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => clear_stale_mount(path),
            _ => Err(Error::AlreadyMounted {
                path: path.to_path_buf(),
            }),
        };
    }
    Ok(())
}

/// Lazily unmounts a dead FUSE mount left by a litefs that was killed.
fn clear_stale_mount(path: &Path) -> Result<(), Error> {
    warn!(
        "{} is a stale mount from a litefs that did not exit cleanly; unmounting it",
        path.display()
    );
    detach(path).map_err(|source| Error::StaleMount {
        path: path.to_path_buf(),
        source,
    })
}

/// True when `path` is listed in /proc/self/mounts.
fn is_mount_point(path: &Path) -> bool {
    // canonicalize fails on a dead mount point itself; fall back to the
    // path as given (config paths are absolute).
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        line.split(' ')
            .nth(1)
            .map(|p| Path::new(&unescape_mount_path(p)) == canonical)
            .unwrap_or(false)
    })
}

/// /proc/mounts writes spaces and a few other bytes as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmounts, or when files are still open, says so and detaches lazily so
/// no stale mount is left behind.
pub(super) fn unmount(background: fuser::BackgroundSession, path: &Path) -> Result<(), Error> {
    match background.umount_and_join() {
        Ok(()) => {
            info!("unmounted {}", path.display());
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            error!(
                "cannot unmount {0} cleanly: SQLite connections (or other programs) still hold \
                 files open; close them first next time. Detaching it now; their next access \
                 fails. If {0} still shows as mounted, run `umount -f {0}`",
                path.display()
            );
            detach(path).map_err(|source| Error::Unmount {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(Error::Unmount {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Lazily unmounts `path` (MNT_DETACH).
fn detach(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: cpath is a valid NUL-terminated path.
    if unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let dir = std::env::temp_dir().join(format!("litefs-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir));
        assert!(is_mount_point(Path::new("/proc")));
        std::fs::remove_dir(&dir).unwrap();
    }
}
