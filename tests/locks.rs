//! SQLite's POSIX locks on the mount: the kernel keeps them (litefs does
//! not take FUSE_POSIX_LOCKS), so every way a lock is released or
//! downgraded must wake a waiter at once. A Python process holds a lock
//! on a database file of a real mount; this test process waits for it
//! with F_OFD_SETLKW (OFD locks conflict even within one process), seen
//! asleep in that request before the holder lets go, and must get it as
//! soon as the holder lets go, by each path. Needs root and /dev/fuse.

mod common;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{sqlite3_ok, temp_dir, Node, DEADLINE};

/// A waiter must be woken this soon after the release: the release itself
/// wakes it, so it never sleeps out a timeout.
const WAKE: Duration = Duration::from_secs(2);

/// The holder: a Python process that locks bytes 100..=199 of the file
/// with fcntl (a POSIX lock, as SQLite's unix VFS takes) and then obeys
/// one command per line.
const HOLDER: &str = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 100, 100, os.SEEK_SET)
print("locked", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "unlock":
        fcntl.lockf(fd, fcntl.LOCK_UN, 100, 100, os.SEEK_SET)
    elif cmd == "downgrade":
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 100, 100, os.SEEK_SET)
    elif cmd == "shrink":
        # Keep only 150..=199: a smaller lock, as SQLite's SHARED after
        # EXCLUSIVE keeps a part of what it held.
        fcntl.lockf(fd, fcntl.LOCK_UN, 50, 100, os.SEEK_SET)
    elif cmd == "close":
        os.close(fd)
    elif cmd == "exit":
        os._exit(0)
    print("done", flush=True)
"#;

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn start(path: &Path) -> Holder {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/setup.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked", "the holder could not take its lock");
        Holder {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        if cmd != "exit" {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "done", "holder command {cmd}");
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread waiting for a lock: when it got it, and its thread id.
struct Waiter {
    got: mpsc::Receiver<Instant>,
    tid: i32,
    /// Dropped to let the thread release the lock and end.
    done: mpsc::Sender<()>,
}

/// Starts a thread that takes an OFD lock of `typ` on `start..start+len`
/// of `path`, waiting in the kernel; it sends the moment it got the lock.
/// The lock is kept until the waiter is dropped.
fn wait_for_lock(path: &Path, typ: i32, start: i64, len: i64) -> Waiter {
    let (tx, rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: a zeroed flock is valid; l_pid must be 0 for OFD locks.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: the descriptor is open and fl is a valid flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        assert_eq!(rc, 0, "F_OFD_SETLKW: {}", std::io::Error::last_os_error());
        let _ = tx.send(Instant::now());
        // Keep the lock until the test is done with this waiter.
        let _ = done_rx.recv();
        drop(file);
    });
    Waiter {
        got: rx,
        tid: tid_rx.recv().unwrap(),
        done: done_tx,
    }
}

/// Whether thread `tid` of this process is asleep inside
/// fcntl(F_OFD_SETLKW): its /proc syscall file names the system call a
/// blocked thread is in, with its arguments ("running" when it is not
/// blocked).
fn blocked_in_lock_wait(tid: i32) -> bool {
    let Ok(syscall) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return false;
    };
    let fields: Vec<&str> = syscall.split_whitespace().collect();
    let arg = |i: usize| {
        fields
            .get(i)
            .and_then(|a| i64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
    };
    fields.first().and_then(|n| n.parse::<i64>().ok()) == Some(libc::SYS_fcntl)
        && arg(2) == Some(i64::from(libc::F_OFD_SETLKW))
}

/// Runs one release path: the waiter must be asleep in its lock request,
/// not holding the lock, while the holder holds, and must get the lock
/// within `WAKE` of the release.
fn check_release(path: &Path, cmd: &str, typ: i32, start: i64, len: i64) {
    let mut holder = Holder::start(path);
    let waiter = wait_for_lock(path, typ, start, len);
    let deadline = Instant::now() + DEADLINE;
    while !blocked_in_lock_wait(waiter.tid) {
        assert!(
            waiter.got.try_recv().is_err(),
            "{cmd}: the waiter got the lock while the holder still held it"
        );
        assert!(
            Instant::now() < deadline,
            "{cmd}: the waiter is not waiting in F_OFD_SETLKW: {:?}",
            std::fs::read_to_string(format!("/proc/self/task/{}/syscall", waiter.tid))
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        waiter.got.try_recv().is_err(),
        "{cmd}: the waiter got the lock while the holder still held it"
    );
    let released = Instant::now();
    if cmd == "kill" {
        holder.child.kill().unwrap();
    } else {
        holder.send(cmd);
    }
    let got = waiter
        .got
        .recv_timeout(WAKE)
        .unwrap_or_else(|_| panic!("{cmd}: the waiter was not woken within {WAKE:?}"));
    eprintln!("{cmd}: woken after {:?}", got.duration_since(released));
    drop(waiter.done);
}

#[test]
fn every_way_of_releasing_a_lock_wakes_its_waiter() {
    let dir = temp_dir("locks-wake");
    let node = Node::start_in(&dir.path().join("node"), "");
    let db = node.db("locks.db");
    sqlite3_ok(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");

    check_release(&db, "unlock", libc::F_WRLCK, 100, 100);
    // A write lock downgraded to a read lock lets a reader in.
    check_release(&db, "downgrade", libc::F_RDLCK, 100, 100);
    // A lock shrunk to 150..=199 frees 100..=149.
    check_release(&db, "shrink", libc::F_WRLCK, 100, 50);
    // close() of the descriptor ends the process's POSIX locks.
    check_release(&db, "close", libc::F_WRLCK, 100, 100);
    // The process ends, cleanly or by SIGKILL.
    check_release(&db, "exit", libc::F_WRLCK, 100, 100);
    check_release(&db, "kill", libc::F_WRLCK, 100, 100);

    // The database is untouched by all this.
    assert_eq!(sqlite3_ok(&db, "SELECT x FROM t;"), "1\n");
}
