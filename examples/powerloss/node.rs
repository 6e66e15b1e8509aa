//! One litefs process of the harness: its config, its mount and its log.
//! Dropping it kills the process and detaches its mount, also on a panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long litefs may take to mount or to stop.
const DEADLINE: Duration = Duration::from_secs(20);

pub struct Node {
    pub mount: PathBuf,
    pub data: PathBuf,
    port: u16,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `litefs` (the binary at `bin`) with a config written to
    /// `dir/litefs.yml`: mount `dir/mnt`, data directory `data`, a
    /// loopback HTTP port, and `extra_yaml` (a lease section; none is the
    /// static lease of a primary). Waits for the mount.
    pub fn start(bin: &Path, dir: &Path, data: &Path, extra_yaml: &str) -> Result<Node, String> {
        Node::start_with(bin, dir, data, |_| extra_yaml.to_string())
    }

    /// Like `start`, with the extra YAML made from the node's HTTP port.
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        data: &Path,
        extra_yaml: impl FnOnce(u16) -> String,
    ) -> Result<Node, String> {
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
        let port = free_port()?;
        let extra_yaml = extra_yaml(port);
        let config = dir.join("litefs.yml");
        std::fs::write(
            &config,
            format!(
                "mount-dir: \"{}\"\ndata-dir: \"{}\"\nhttp:\n  addr: \"127.0.0.1:{port}\"\n{extra_yaml}",
                mount.display(),
                data.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let mut node = Node {
            mount,
            data: data.to_path_buf(),
            port,
            bin: bin.to_path_buf(),
            config,
            log: dir.join("litefs.log"),
            child: None,
        };
        node.restart()?;
        Ok(node)
    }

    /// Starts litefs again with the same config (after `stop`); waits for
    /// the mount.
    pub fn restart(&mut self) -> Result<(), String> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .arg("-config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_mounted()
    }

    /// The port of its HTTP server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of its HTTP server.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `<db>-pos` on its mount (empty when unreadable).
    pub fn pos(&self, db: &str) -> String {
        std::fs::read_to_string(self.mount.join(format!("{db}-pos"))).unwrap_or_default()
    }

    fn wait_mounted(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if is_fuse_mount(&self.mount) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("litefs exited with {status} before mounting"));
            }
            if Instant::now() > deadline {
                return Err("litefs did not mount within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The litefs process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far, last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to end; a process that
    /// does not end in time has its FUSE connection aborted.
    pub fn signal_and_wait(&mut self, signal: i32) -> Result<std::process::ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("litefs is not running".into());
        };
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                detach(&self.mount);
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                abort_fuse_connection(&self.mount);
                let _ = child.wait();
                detach(&self.mount);
                return Err(format!("litefs did not exit after signal {signal}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A clean stop (SIGTERM): Err unless litefs exits with success.
    pub fn stop(&mut self) -> Result<(), String> {
        let status = self.signal_and_wait(libc::SIGTERM)?;
        if !status.success() {
            return Err(format!("litefs exited with {status} on SIGTERM"));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.signal_and_wait(libc::SIGKILL);
        }
    }
}

/// Unmounts `mount` if anything is still mounted there (a killed
/// litefs leaves its mount behind).
fn detach(mount: &Path) {
    if mount_fstype(mount).is_some() {
        let _ = Command::new("umount").arg("-l").arg(mount).status();
    }
}

fn is_fuse_mount(path: &Path) -> bool {
    mount_fstype(path).is_some_and(|t| t.starts_with("fuse"))
        && std::fs::read_dir(path).is_ok_and(|mut d| d.next().transpose().is_ok())
}

/// The file system type mounted at `path`, per /proc/self/mounts.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let want = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == want)
        .map(|f| f[2].to_string())
}

/// Aborts the FUSE connection of the mount at `mount` (fusectl).
fn abort_fuse_connection(mount: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let target = mount.to_string_lossy();
    let Some(minor) = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == target)
        .and_then(|f| f[2].split(':').nth(1).map(str::to_string))
    else {
        return;
    };
    let connections = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(connections).map_or(true, |mut d| d.next().is_none()) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status();
    }
    let _ = std::fs::write(connections.join(minor).join("abort"), "1");
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}
