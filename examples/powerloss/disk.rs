//! The disks the harness mounts: the recorded one a workload runs on
//! (ext4 on a loop device over the recorder's file), and a crash state's
//! image (ext4 on a loop device over a plain file). Each is a guard that
//! unmounts and detaches what it set up when dropped, also on a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::recorder::{Recorder, DISK_NAME};

/// The size of every disk image: big enough for the workloads and
/// ext4's journal (4 MiB at this size), small enough to copy per state.
pub const IMAGE_SIZE: u64 = 64 << 20;

/// Runs `cmd` and fails with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{cmd:?}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A fresh ext4 image (default features, its journal) of `IMAGE_SIZE`
/// made in `path`. Inode tables and the journal are written by mkfs, not
/// lazily after mounting, so that no background initialisation writes
/// into the recording.
pub fn fresh_ext4_image(path: &Path) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(IMAGE_SIZE)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path))?;
    Ok(())
}

/// An ext4 file system mounted at `dir` from a loop device over `file`.
pub struct LoopMount {
    pub dir: PathBuf,
    device: String,
    mounted: bool,
}

impl LoopMount {
    /// Attaches `file` (with direct I/O when `direct`) and mounts it at
    /// `dir` with ext4's default options (data=ordered, its journal
    /// replayed if it needs to be).
    pub fn new(file: &Path, dir: &Path, direct: bool) -> Result<LoopMount, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let device = run(Command::new("losetup")
            .arg(format!("--direct-io={}", if direct { "on" } else { "off" }))
            .args(["-f", "--show"])
            .arg(file))?;
        let mut mount = LoopMount {
            dir: dir.to_path_buf(),
            device,
            mounted: false,
        };
        run(Command::new("mount")
            .args(["-t", "ext4", &mount.device])
            .arg(dir))?;
        mount.mounted = true;
        Ok(mount)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(&self.dir)) {
                eprintln!("{e}; detaching it lazily");
                let _ = run(Command::new("umount").arg("-l").arg(&self.dir));
            }
        }
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(&self.device)) {
            eprintln!("{e}");
        }
    }
}

/// The recorded disk: the recorder process and its mount, and ext4 over
/// its file.
pub struct RecordedDisk {
    ext4: Option<LoopMount>,
    /// Dropped after ext4 and its loop device (see `Drop`).
    pub recorder: Recorder,
}

impl RecordedDisk {
    /// A fresh ext4 file system on a recorded disk, mounted at `dir`
    /// (the recorder's own mount and files are made beside it in `work`).
    pub fn new(work: &Path, dir: &Path) -> Result<RecordedDisk, String> {
        std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let image = work.join("mkfs.img");
        fresh_ext4_image(&image)?;
        let rec_dir = work.join("recorder");
        std::fs::create_dir_all(&rec_dir).map_err(|e| format!("{}: {e}", rec_dir.display()))?;
        let recorder = Recorder::spawn(&image, &rec_dir, work)?;
        let _ = std::fs::remove_file(&image);
        let mut disk = RecordedDisk {
            ext4: None,
            recorder,
        };
        disk.ext4 = Some(LoopMount::new(&rec_dir.join(DISK_NAME), dir, true)?);
        Ok(disk)
    }

    /// Where ext4 is mounted.
    pub fn dir(&self) -> &Path {
        &self.ext4.as_ref().expect("mounted").dir
    }

    /// Writes everything ext4 holds to the device and flushes it.
    pub fn sync(&self) -> Result<(), String> {
        let dir = std::fs::File::open(self.dir()).map_err(|e| format!("open disk: {e}"))?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(format!("syncfs: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for RecordedDisk {
    fn drop(&mut self) {
        // ext4 and its loop device first; the recorder (a field) after.
        self.ext4.take();
    }
}
