//! The requests litefs makes to its own mount (opening a database to take
//! SQLite's locks, fsyncing `-shm` through the kernel's cache), made by a
//! helper process so that a kill -9 of litefs can never hang.
//!
//! A task waiting for the answer to a FUSE request that a server thread
//! has already read waits uninterruptibly (`request_wait_answer` in the
//! kernel's fs/fuse/dev.c): SIGKILL does not end it. Were litefs's own
//! thread that task, a kill -9 landing while the request is in flight
//! would kill the threads that answer it, the waiting thread would keep
//! the process, and so its `/dev/fuse` descriptors, alive, the kernel
//! would never abort the connection, and litefs would never finish dying
//! (a zombie with a thread in D state and a hung mount, until someone
//! writes to `/sys/fs/fuse/connections/N/abort`).
//!
//! So litefs's threads only ever wait on a socket, which a kill ends. The
//! helper (`litefs __mount-helper`, started on first use with one end of a
//! `SOCK_SEQPACKET` socket pair as its stdin, every other descriptor
//! closed) makes the request and passes the opened descriptor back
//! (`SCM_RIGHTS`). When litefs dies its descriptors close, the kernel
//! aborts the connection, the helper's request fails, and the helper reads
//! the end of its socket and exits.
//!
//! Messages: `O` + path: open the file read-write (after one open and
//! close, see `Applier::mount_file`), answered by an errno (0 with the
//! descriptor). `S` with a descriptor: fsync it, answered by an errno.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The hidden command line that runs the helper.
pub const HELPER_ARG: &str = "__mount-helper";
/// The longest message: an op byte and a path.
const MAX_MESSAGE: usize = 1 + libc::PATH_MAX as usize;

/// litefs's side: one helper, started on first use, restarted once if it
/// is gone. Requests are made one at a time.
#[derive(Default)]
pub struct MountHelper {
    conn: Mutex<Option<Conn>>,
    /// The running helper's pid (0: none), read without the lock by the
    /// mount, which lets it open a replica's database read-write.
    pid: AtomicU32,
}

struct Conn {
    sock: OwnedFd,
    child: Child,
}

impl MountHelper {
    /// Whether `pid` is the running helper's.
    pub fn is_helper(&self, pid: u32) -> bool {
        pid != 0 && self.pid.load(Ordering::SeqCst) == pid
    }

    /// Opens the file at `path` (on the mount) read-write.
    pub fn open_rw(&self, path: &Path) -> io::Result<File> {
        let mut msg = vec![b'O'];
        msg.extend_from_slice(path.as_os_str().as_bytes());
        let fd = self
            .request(&msg, None)?
            .ok_or_else(|| io::Error::other("the mount helper answered without a descriptor"))?;
        Ok(File::from(fd))
    }

    /// fsyncs `file` (open on the mount).
    pub fn fsync(&self, file: &File) -> io::Result<()> {
        self.request(b"S", Some(file.as_raw_fd())).map(drop)
    }

    /// Sends `msg` (with `fd`) and returns the descriptor answered, after
    /// one new helper if the first is gone.
    fn request(&self, msg: &[u8], fd: Option<RawFd>) -> io::Result<Option<OwnedFd>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut retried = false;
        loop {
            let mut c = match conn.take() {
                Some(c) => c,
                None => {
                    let started = spawn()?;
                    self.pid.store(started.child.id(), Ordering::SeqCst);
                    started
                }
            };
            match exchange(&c.sock, msg, fd) {
                Ok((errno, answer)) => {
                    *conn = Some(c);
                    return match errno {
                        0 => Ok(answer),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                Err(e) => {
                    // The helper is gone (killed, or the socket broke):
                    // reap it if it can be, and start another once.
                    let _ = c.child.kill();
                    let _ = c.child.try_wait();
                    if retried {
                        return Err(io::Error::other(format!(
                            "the mount helper (litefs {HELPER_ARG}) failed: {e}"
                        )));
                    }
                    retried = true;
                }
            }
        }
    }
}

/// Starts a helper.
fn spawn() -> io::Result<Conn> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting the mount helper: {e}")))?;
    Ok(Conn { sock: ours, child })
}

/// Sends one request and reads its answer: the errno and a descriptor.
fn exchange(sock: &OwnedFd, msg: &[u8], fd: Option<RawFd>) -> io::Result<(i32, Option<OwnedFd>)> {
    send(sock.as_raw_fd(), msg, fd)?;
    let mut buf = [0u8; 4];
    let (len, fd) = recv(sock.as_raw_fd(), &mut buf)?;
    if len != 4 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the mount helper closed its socket",
        ));
    }
    Ok((i32::from_ne_bytes(buf), fd))
}

/// The helper: answers requests on stdin until litefs closes its end.
pub fn serve() -> std::process::ExitCode {
    // Nothing of litefs's but the socket: above all no `/dev/fuse`
    // descriptor, which would keep a dead litefs's connection alive.
    // SAFETY: close_range takes no pointers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let sock: RawFd = 0;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, fd) = match recv(sock, &mut buf) {
            Ok((0, _)) => return std::process::ExitCode::SUCCESS,
            Ok(got) => got,
            Err(e) => {
                eprintln!("litefs {HELPER_ARG}: reading a request: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let (errno, answer) = match (buf[0], fd) {
            (b'O', None) => {
                let path = Path::new(std::ffi::OsStr::from_bytes(&buf[1..len]));
                drop(File::open(path));
                match OpenOptions::new().read(true).write(true).open(path) {
                    Ok(file) => (0, Some(OwnedFd::from(file))),
                    Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), None),
                }
            }
            (b'S', Some(fd)) => match File::from(fd).sync_all() {
                Ok(()) => (0, None),
                Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), None),
            },
            _ => (libc::EINVAL, None),
        };
        let fd = answer.as_ref().map(AsRawFd::as_raw_fd);
        if send(sock, &errno.to_ne_bytes(), fd).is_err() {
            return std::process::ExitCode::FAILURE;
        }
    }
}

/// Room for one descriptor's control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends `data` as one message, with `fd` attached when given.
fn send(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: an all-zero msghdr is valid; the pointers set below point to
    // `iov` and `cmsg`, which outlive the sendmsg call, and the control
    // message written fits `cmsg` (CMSG_SPACE of one int is at most 24).
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space;
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr) as *mut RawFd, fd);
        }
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message into `buf`: its length and the descriptor
/// attached, if any (close-on-exec).
fn recv(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = CmsgBuf([0; 64]);
    loop {
        // SAFETY: as in `send`; recvmsg writes at most `msg_controllen`
        // bytes of control data into `cmsg` and at most `buf.len()` bytes.
        let (rc, fd) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = cmsg.0.len();
            let rc = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            let mut fd = None;
            if rc >= 0 {
                let hdr = libc::CMSG_FIRSTHDR(&msg);
                if !hdr.is_null()
                    && (*hdr).cmsg_level == libc::SOL_SOCKET
                    && (*hdr).cmsg_type == libc::SCM_RIGHTS
                {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(hdr) as *const RawFd);
                    fd = Some(OwnedFd::from_raw_fd(raw));
                }
            }
            (rc, fd)
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok((rc as usize, fd));
    }
}
