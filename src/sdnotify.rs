//! systemd's notify protocol, spoken directly (no libsystemd): one
//! datagram per message to the socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` for the abstract namespace). Messages are newline-separated
//! `KEY=value` lines: `READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1`.
//! Without `$NOTIFY_SOCKET` (not run by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The way to tell systemd how this service is doing.
pub struct SdNotify {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl SdNotify {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honoured only when
    /// `$WATCHDOG_PID` is unset or this process).
    pub fn from_env() -> SdNotify {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(socket), Ok(addr)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET {path:?} cannot be used: {e}; systemd will not hear from litefs");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        SdNotify { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd allows.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// The service is up; `status` says in what role.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A change worth showing in `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// Still alive (see `watchdog_interval`).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::debug!("sd_notify: cannot send {message:?}: {e}");
            }
        }
    }
}

/// A status is one line: newlines would start new `KEY=value` lines.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}
