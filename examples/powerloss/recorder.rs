//! The recording block device: a FUSE file system with one file,
//! `disk.img`, kept in memory, that logs every write (offset and bytes)
//! and every flush in the order it answers them. A loop device over that
//! file is the disk of an ext4 file system: the loop driver turns each
//! block write into a `write` at the block's offset and each flush (a
//! journal commit, an `fsync`) into an `fsync` of the file, so the log is
//! what dm-log-writes would record.
//!
//! It runs as a process of its own (`powerloss __recorder`), as a disk
//! would: a process that serves the disk under a file system must not
//! also use mmap on a file system stacked on it (SQLite's `-shm` on the
//! litefs mount), or an munmap that waits for writeback, holding its
//! mmap lock, blocks the disk's own thread at its next allocation.
//!
//! One thread answers every request (`n_threads = 1`), so the log's order
//! is the order the device completed them: a write logged before a flush
//! was acknowledged before the flush began, so the flush covers it. The
//! harness writes its own events (a COMMIT returned) to a second file,
//! `control`, answered by the same thread: a mark logged after a flush was
//! made after the flush was acknowledged. `control` also starts the log
//! (`start`: the image as it is becomes `base.img` in the output
//! directory) and ends it (`stop`: `events.bin` complete).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
const DISK: u64 = 2;
const CONTROL: u64 = 3;
/// The disk's name in the recorder's mount.
pub const DISK_NAME: &str = "disk.img";
const CONTROL_NAME: &str = "control";

/// One event of the log.
#[derive(Clone, Debug)]
pub enum Event {
    /// The device wrote `data` at `offset` (not yet durable).
    Write { offset: u64, data: Vec<u8> },
    /// The device made every write before it durable.
    Flush,
    /// The workload's own event, with no effect on the image.
    Mark(Mark),
}

/// What a workload had seen happen when it logged a mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Transaction `n` (counted from 1) of database generation `db` (the
    /// `key` of a `DbSpec`) returned from COMMIT; `durable` says whether
    /// it is promised to survive power loss (false for WAL with
    /// synchronous=NORMAL).
    Committed { db: String, n: u64, durable: bool },
    /// The deletion of database generation `db` began (`done` false) or
    /// returned (`done` true).
    Deleted { db: String, done: bool },
    /// A commit of database generation `db` inserting batch
    /// `DOOMED_BATCH + n` returned an error (`Workload::TakeBack`): it
    /// must never be seen after this.
    Refused { db: String, n: u64 },
}

impl Mark {
    /// One line of `control` (tab-separated: keys may hold spaces).
    fn encode(&self) -> String {
        match self {
            Mark::Committed { db, n, durable } => format!("mark\tc\t{db}\t{n}\t{durable}\n"),
            Mark::Deleted { db, done } => format!("mark\td\t{db}\t{done}\n"),
            Mark::Refused { db, n } => format!("mark\tr\t{db}\t{n}\n"),
        }
    }

    fn decode(fields: &[&str]) -> Option<Mark> {
        match fields {
            ["c", db, n, durable] => Some(Mark::Committed {
                db: db.to_string(),
                n: n.parse().ok()?,
                durable: durable.parse().ok()?,
            }),
            ["d", db, done] => Some(Mark::Deleted {
                db: db.to_string(),
                done: done.parse().ok()?,
            }),
            ["r", db, n] => Some(Mark::Refused {
                db: db.to_string(),
                n: n.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// What was recorded: the image when recording began and what happened
/// to it after.
pub struct Recording {
    pub base: Vec<u8>,
    pub events: Vec<Event>,
}

/// The harness's handle on the recorder process.
pub struct Recorder {
    child: Child,
    mount: PathBuf,
    out: PathBuf,
    /// Closed before the unmount (an open file keeps the mount busy).
    control: Option<File>,
}

impl Recorder {
    /// Starts `powerloss __recorder` serving `image` (a file) at `mount`,
    /// its log going to `out`; waits for the mount.
    pub fn spawn(image: &Path, mount: &Path, out: &Path) -> Result<Recorder, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("__recorder")
            .args([image, mount, out])
            .spawn()
            .map_err(|e| format!("start the recorder: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let control = loop {
            if crate::node::mount_fstype(mount).is_some() {
                if let Ok(f) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(mount.join(CONTROL_NAME))
                {
                    break f;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the recorder exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = Command::new("umount").arg("-l").arg(mount).status();
                let _ = child.kill();
                let _ = child.wait();
                return Err("the recorder did not mount in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Recorder {
            child,
            mount: mount.to_path_buf(),
            out: out.to_path_buf(),
            control: Some(control),
        })
    }

    fn command(&self, line: &str) -> Result<(), String> {
        self.control
            .as_ref()
            .ok_or("the recorder is closed")?
            .write_all(line.as_bytes())
            .map_err(|e| format!("recorder control {line:?}: {e}"))
    }

    /// Starts a log from the image as it is now.
    pub fn start(&self) -> Result<(), String> {
        self.command("start\n")
    }

    /// Logs a workload's event at this point of the device's history
    /// (an error fails the workload: a lost mark would weaken the checks).
    pub fn mark(&self, mark: Mark) -> Result<(), String> {
        self.command(&mark.encode())
    }

    /// Ends the log and reads it back.
    pub fn stop(&self) -> Result<Recording, String> {
        self.command("stop\n")?;
        let base_path = self.out.join("base.img");
        let base =
            std::fs::read(&base_path).map_err(|e| format!("{}: {e}", base_path.display()))?;
        let events_path = self.out.join("events.bin");
        let raw =
            std::fs::read(&events_path).map_err(|e| format!("{}: {e}", events_path.display()))?;
        Ok(Recording {
            base,
            events: decode_events(&raw)?,
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.control.take();
        let _ = Command::new("umount").arg(&self.mount).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `events.bin`: `W` offset (u64) length (u32) bytes, `F`, or `M`
/// length (u32) and a mark's fields, tab-separated.
fn encode_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    match event {
        Event::Write { offset, data } => {
            out.write_all(b"W")?;
            out.write_all(&offset.to_le_bytes())?;
            out.write_all(&(data.len() as u32).to_le_bytes())?;
            out.write_all(data)
        }
        Event::Flush => out.write_all(b"F"),
        Event::Mark(mark) => {
            let text = mark.encode();
            let fields = text.trim_end().strip_prefix("mark\t").unwrap_or_default();
            out.write_all(b"M")?;
            out.write_all(&(fields.len() as u32).to_le_bytes())?;
            out.write_all(fields.as_bytes())
        }
    }
}

fn decode_events(mut raw: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let bad = || "events.bin is malformed".to_string();
    let take = |raw: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; n];
        raw.read_exact(&mut buf).map_err(|_| bad())?;
        Ok(buf)
    };
    while let Some(&tag) = raw.first() {
        raw = &raw[1..];
        match tag {
            b'W' => {
                let offset = u64::from_le_bytes(take(&mut raw, 8)?.try_into().map_err(|_| bad())?);
                let len = u32::from_le_bytes(take(&mut raw, 4)?.try_into().map_err(|_| bad())?);
                let data = take(&mut raw, len as usize)?;
                events.push(Event::Write { offset, data });
            }
            b'F' => events.push(Event::Flush),
            b'M' => {
                let len = u32::from_le_bytes(take(&mut raw, 4)?.try_into().map_err(|_| bad())?);
                let text = String::from_utf8(take(&mut raw, len as usize)?).map_err(|_| bad())?;
                let fields: Vec<&str> = text.split('\t').collect();
                events.push(Event::Mark(Mark::decode(&fields).ok_or_else(bad)?));
            }
            _ => return Err(bad()),
        }
    }
    Ok(events)
}

/// The recorder process: serves `image` at `mount` until unmounted.
pub fn serve(args: &[String]) -> Result<(), String> {
    let [image, mount, out] = args else {
        return Err("usage: powerloss __recorder IMAGE MOUNT OUT".into());
    };
    let image = std::fs::read(image).map_err(|e| format!("{image}: {e}"))?;
    let fs = RecorderFs {
        state: Mutex::new(State {
            image,
            events: None,
            out: PathBuf::from(out),
            pending: String::new(),
        }),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("powerloss-recorder".to_string()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    config.n_threads = Some(1);
    fuser::Session::new(fs, Path::new(mount), &config)
        .and_then(|s| s.run())
        .map_err(|e| format!("serve the recorder at {mount}: {e}"))
}

struct State {
    image: Vec<u8>,
    /// While recording: the log.
    events: Option<BufWriter<File>>,
    out: PathBuf,
    /// A control line not yet ended by its newline.
    pending: String,
}

impl State {
    fn log(&mut self, event: &Event) -> Result<(), Errno> {
        match &mut self.events {
            Some(out) => encode_event(out, event).map_err(|_| Errno::EIO),
            None => Ok(()),
        }
    }

    fn control(&mut self, line: &str) -> Result<(), Errno> {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[..] {
            ["start"] => {
                std::fs::write(self.out.join("base.img"), &self.image).map_err(|_| Errno::EIO)?;
                let file = File::create(self.out.join("events.bin")).map_err(|_| Errno::EIO)?;
                self.events = Some(BufWriter::with_capacity(1 << 20, file));
                Ok(())
            }
            ["stop"] => match self.events.take() {
                Some(mut out) => out.flush().map_err(|_| Errno::EIO),
                None => Ok(()),
            },
            ["mark", ..] => {
                let mark = Mark::decode(&fields[1..]).ok_or(Errno::EINVAL)?;
                self.log(&Event::Mark(mark))
            }
            _ => Err(Errno::EINVAL),
        }
    }
}

/// The recorder's file system.
struct RecorderFs {
    state: Mutex<State>,
}

impl RecorderFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = match ino {
            ROOT => (FileType::Directory, 0, 0o755),
            CONTROL => (FileType::RegularFile, 0, 0o200),
            _ => (
                FileType::RegularFile,
                self.state().image.len() as u64,
                0o600,
            ),
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

impl Filesystem for RecorderFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name.to_str() {
            Some(DISK_NAME) if parent.0 == ROOT => {
                reply.entry(&TTL, &self.attr(DISK), Generation(0))
            }
            Some(CONTROL_NAME) if parent.0 == ROOT => {
                reply.entry(&TTL, &self.attr(CONTROL), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DISK | CONTROL => reply.attr(&TTL, &self.attr(ino.0)),
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
        if ino.0 == DISK && size.is_some_and(|s| s != self.state().image.len() as u64) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &self.attr(ino.0))
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            return reply.error(Errno::EISDIR);
        }
        // No page cache between the loop device and the log.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CONTROL {
            return reply.data(&[]);
        }
        let state = self.state();
        let start = (offset as usize).min(state.image.len());
        let end = (start + size as usize).min(state.image.len());
        reply.data(&state.image[start..end])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        if ino.0 == CONTROL {
            // Lines of text, each acted on once whole.
            state.pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = state.pending.find('\n') {
                let line: String = state.pending.drain(..=end).collect();
                if let Err(e) = state.control(line.trim_end()) {
                    return reply.error(e);
                }
            }
            return reply.written(data.len() as u32);
        }
        let start = offset as usize;
        let Some(end) = start
            .checked_add(data.len())
            .filter(|e| *e <= state.image.len())
        else {
            return reply.error(Errno::ENOSPC);
        };
        state.image[start..end].copy_from_slice(data);
        let event = Event::Write {
            offset,
            data: data.to_vec(),
        };
        match state.log(&event) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
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
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 != DISK {
            return reply.ok();
        }
        match self.state().log(&Event::Flush) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
            (CONTROL, FileType::RegularFile, CONTROL_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }
}
