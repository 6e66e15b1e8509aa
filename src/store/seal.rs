//! Sealing a database's WAL and rollback journal when a primary steps
//! down. On the primary, SQLite's writes to both pass through the kernel
//! to the backing files (FUSE passthrough), so litefs cannot refuse them;
//! a connection opened while this node was primary keeps its descriptors
//! after the step-down. The file system's immutable flag makes every write
//! through them fail, so that nothing "commits" on a replica. Promotion,
//! start-up and deletion take the flag off again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{hidden_journal_header, Db};
use crate::sqlite::{read_journal_head, JOURNAL_MAGIC};

/// FS_IMMUTABLE_FL of linux/fs.h: no write, truncation, rename or removal.
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

impl Db {
    /// Makes the backing WAL refuse every write, also through descriptors
    /// opened before. False where the file system has no immutable flag
    /// (or litefs lacks CAP_LINUX_IMMUTABLE).
    pub fn seal_wal(&self) -> io::Result<bool> {
        seal(self.wal_path())
    }

    /// Like `seal_wal`, for the rollback journal; true when there is none.
    pub fn seal_journal(&self) -> io::Result<bool> {
        match seal(self.journal_path()) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
            other => other,
        }
    }

    /// After `seal_journal`: a connection from before the step-down may
    /// have written a new transaction's header into the journal just
    /// before the seal. None of that transaction is in the database (its
    /// writes are refused on a replica), but its live header would make the
    /// journal hot for every reader here, so it is ended with litefs's mark
    /// (`hidden_journal_header`), the seal lifted for that moment. Returns
    /// whether there was one.
    pub fn end_sealed_journal(&self) -> io::Result<bool> {
        let path = self.journal_path();
        let mut ended = false;
        // A writer can slip in only while the seal is lifted; a few rounds
        // end any such race.
        for _ in 0..3 {
            match read_journal_head(path) {
                Some((head, _)) if head[..8] == JOURNAL_MAGIC => {}
                _ => return Ok(ended),
            }
            unseal(path)?;
            let file = OpenOptions::new().write(true).open(path)?;
            file.write_all_at(&hidden_journal_header(), 0)?;
            file.sync_data()?;
            seal(path)?;
            ended = true;
        }
        Ok(ended)
    }

    /// Undoes `seal_wal` and `seal_journal` (promotion, start-up,
    /// deletion); nothing for a file that is missing or not sealed.
    pub fn unseal_companions(&self) -> io::Result<()> {
        unseal(self.wal_path())?;
        unseal(self.journal_path())
    }
}

fn seal(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    let sealed =
        inode_flags(&file).and_then(|flags| set_inode_flags(&file, flags | FS_IMMUTABLE_FL));
    match sealed {
        Ok(()) => Ok(true),
        Err(err) if flags_unsupported(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

fn unseal(path: &Path) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let flags = match inode_flags(&file) {
        Ok(flags) => flags,
        Err(err) if flags_unsupported(&err) => return Ok(()),
        Err(err) => return Err(err),
    };
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    set_inode_flags(&file, flags & !FS_IMMUTABLE_FL).map_err(|err| {
        io::Error::other(format!(
            "{} is marked immutable (a step-down sealed it) and litefs cannot clear the \
             flag ({err}; it needs CAP_LINUX_IMMUTABLE): run `chattr -i` on it",
            path.display()
        ))
    })
}

/// The inode flags of `file` (FS_IOC_GETFLAGS).
fn inode_flags(file: &File) -> io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to `flags`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::FS_IOC_GETFLAGS,
            &mut flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Sets the inode flags of `file` (FS_IOC_SETFLAGS).
fn set_inode_flags(file: &File, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::FS_IOC_SETFLAGS,
            &flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `err` says the file system has no such flags, or the process
/// may not set them.
fn flags_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EPERM)
    )
}
