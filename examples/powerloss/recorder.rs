//! The recording block device: a FUSE file system with one file,
//! `disk.img`, kept in memory, that logs every write (offset and bytes)
//! and every flush in the order it answers them. A loop device over that
//! file is the disk of an ext4 file system: the loop driver turns each
//! block write into a `write` at the block's offset and each flush (a
//! journal commit, an `fsync`) into an `fsync` of the file, so the log is
//! what dm-log-writes would record.
//!
//! One thread answers every request (`n_threads = 1`), so the log's order
//! is the order the device completed them: a write logged before a flush
//! was acknowledged before the flush began, so the flush covers it. Marks
//! (`Recorder::mark`) put the workload's own events (a COMMIT returned) in
//! the same order: a mark logged after a flush was made after the flush
//! was acknowledged.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
const DISK: u64 = 2;
/// The file's name in the recorder's mount.
pub const DISK_NAME: &str = "disk.img";

/// One event of the log.
#[derive(Clone, Debug)]
pub enum Event {
    /// The device wrote `data` at `offset` (not yet durable).
    Write { offset: u64, data: Vec<u8> },
    /// The device made every write before it durable.
    Flush,
    /// The workload's own event (see `workloads.rs`), with no effect on
    /// the image.
    Mark(Mark),
}

/// What a workload had seen happen when it logged a mark.
#[derive(Clone, Debug)]
pub enum Mark {
    /// Transaction `n` (counted from 1) of database generation `db` (the
    /// `key` of a `DbSpec`) returned from COMMIT; `durable` says whether
    /// it is promised to survive power loss (false for WAL with
    /// synchronous=NORMAL).
    Committed { db: String, n: u64, durable: bool },
    /// The deletion of database generation `db` began (`done` false) or
    /// returned (`done` true).
    Deleted { db: String, done: bool },
}

/// What was recorded: the image when recording began and what happened
/// to it after.
pub struct Recording {
    pub base: Vec<u8>,
    pub events: Vec<Event>,
}

struct State {
    image: Vec<u8>,
    /// Some while recording: the image when it began, and the log.
    recording: Option<Recording>,
}

/// The recorder, shared by its FUSE session and the harness.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
}

impl Recorder {
    /// A recorder whose disk starts as `image`.
    pub fn new(image: Vec<u8>) -> Recorder {
        Recorder {
            state: Arc::new(Mutex::new(State {
                image,
                recording: None,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a log from the image as it is now.
    pub fn start(&self) {
        let mut state = self.state();
        let base = state.image.clone();
        state.recording = Some(Recording {
            base,
            events: Vec::new(),
        });
    }

    /// Ends the log and returns it (None if none was started).
    pub fn stop(&self) -> Option<Recording> {
        self.state().recording.take()
    }

    /// Logs a workload's event at this point of the device's history.
    pub fn mark(&self, mark: Mark) {
        if let Some(rec) = &mut self.state().recording {
            rec.events.push(Event::Mark(mark));
        }
    }

    /// Mounts the recorder's file system at `dir` (one thread answers).
    pub fn mount(&self, dir: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powerloss-recorder".to_string()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        config.n_threads = Some(1);
        fuser::Session::new(self.clone(), dir, &config)?.spawn()
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = if ino == ROOT {
            (FileType::Directory, 0, 0o755)
        } else {
            (
                FileType::RegularFile,
                self.state().image.len() as u64,
                0o600,
            )
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size / 512,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

const TTL: Duration = Duration::from_secs(3600);

impl Filesystem for Recorder {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == DISK_NAME {
            reply.entry(&TTL, &self.attr(DISK), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The disk's size is fixed.
        if size.is_some_and(|s| s != self.state().image.len() as u64) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &self.attr(ino.0))
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != DISK {
            return reply.error(Errno::EISDIR);
        }
        // No page cache between the loop device and the log.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let start = (offset as usize).min(state.image.len());
        let end = (start + size as usize).min(state.image.len());
        reply.data(&state.image[start..end])
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let start = offset as usize;
        let Some(end) = start
            .checked_add(data.len())
            .filter(|e| *e <= state.image.len())
        else {
            return reply.error(Errno::ENOSPC);
        };
        state.image[start..end].copy_from_slice(data);
        if let Some(rec) = &mut state.recording {
            rec.events.push(Event::Write {
                offset,
                data: data.to_vec(),
            });
        }
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(rec) = &mut self.state().recording {
            rec.events.push(Event::Flush);
        }
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }
}
