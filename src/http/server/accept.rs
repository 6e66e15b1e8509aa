//! Admitting connections: the accept loop, and the caps that keep one
//! client from taking all of the server's descriptors, threads or
//! replication streams (the numbers and why are in `Limits`).
//!
//! Every connection takes a slot from [`Slots`] before it gets a thread:
//! one of `max_connections` in total and one of its client's
//! `max_connections_per_client`. A connection beyond either is answered
//! 503 at once by the accept thread, without reading its request, and
//! closed. A replication stream also takes one of its client's
//! `max_streams_per_client` stream slots. A client is an IPv4 address or
//! an IPv6 /64 (what one host usually gets).
//!
//! The accept loop never ends before shutdown: when `accept` fails because
//! the process or the system is out of descriptors or memory (EMFILE,
//! ENFILE, ENOBUFS, ENOMEM), the failure is logged once and `accept` is
//! retried with a backoff from 10 ms to 1 s until it works again, which is
//! logged too. The listener is non-blocking and polled, so that shutdown
//! is noticed within `POLL_INTERVAL`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{conn, lock, Limits, Shared};
use crate::metrics;

/// How often the accept loop checks for shutdown while no one connects.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The first and the longest wait before `accept` is tried again after it
/// failed for lack of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a refusal (a cap reached) is logged: once, then at most once
/// a minute with the number refused meanwhile.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The open connections and streams, in total and per client.
pub(super) struct Slots {
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    connections: usize,
    clients: HashMap<IpAddr, PerClient>,
}

#[derive(Default)]
struct PerClient {
    connections: usize,
    streams: usize,
}

/// One connection's slot, given back when dropped.
pub(super) struct ConnSlot {
    slots: Arc<Slots>,
    client: IpAddr,
}

/// One replication stream's slot, given back when dropped.
pub(super) struct StreamSlot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Slots {
    pub(super) fn new(limits: Limits) -> Slots {
        Slots {
            limits,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// A connection slot for a client at `ip`, or why there is none.
    pub(super) fn connection(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
        let client = client_of(ip);
        let mut state = lock(&self.state);
        if state.connections >= self.limits.max_connections {
            return Err("too many connections");
        }
        let per_client = state.clients.entry(client).or_default();
        if per_client.connections >= self.limits.max_connections_per_client {
            if per_client.connections == 0 && per_client.streams == 0 {
                state.clients.remove(&client);
            }
            return Err("too many connections from this address");
        }
        per_client.connections += 1;
        state.connections += 1;
        Ok(ConnSlot {
            slots: self.clone(),
            client,
        })
    }

    /// A stream slot for the client holding `conn`, unless it has all of
    /// its `max_streams_per_client` already.
    pub(super) fn stream(&self, conn: &ConnSlot) -> Option<StreamSlot> {
        let mut state = lock(&self.state);
        let per_client = state.clients.entry(conn.client).or_default();
        if per_client.streams >= self.limits.max_streams_per_client {
            return None;
        }
        per_client.streams += 1;
        Some(StreamSlot {
            slots: conn.slots.clone(),
            client: conn.client,
        })
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        lock(&self.state).connections
    }

    /// Waits until no connection is open or `deadline` passes; returns how
    /// many are still open.
    pub(super) fn wait_until_closed(&self, deadline: Instant) -> usize {
        let mut state = lock(&self.state);
        while state.connections > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.connections
    }

    fn release(&self, client: IpAddr, connection: bool) {
        let mut state = lock(&self.state);
        if let Some(per_client) = state.clients.get_mut(&client) {
            if connection {
                per_client.connections = per_client.connections.saturating_sub(1);
            } else {
                per_client.streams = per_client.streams.saturating_sub(1);
            }
            if per_client.connections == 0 && per_client.streams == 0 {
                state.clients.remove(&client);
            }
        }
        if connection {
            state.connections = state.connections.saturating_sub(1);
        }
        self.changed.notify_all();
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.slots.release(self.client, true);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.slots.release(self.client, false);
    }
}

/// The client an address belongs to: the address itself for IPv4 (also
/// IPv4-mapped IPv6), its /64 for IPv6.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A warning that repeats at most once per `REFUSAL_LOG_INTERVAL`, saying
/// how many times it was suppressed meanwhile.
pub(super) struct Throttled {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub(super) const fn new() -> Throttled {
        Throttled {
            state: Mutex::new((None, 0)),
        }
    }

    pub(super) fn warn(&self, message: impl FnOnce() -> String) {
        let mut state = lock(&self.state);
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            *suppressed += 1;
            return;
        }
        let also = if *suppressed > 0 {
            format!(" ({suppressed} more since the last such warning)")
        } else {
            String::new()
        };
        log::warn!(
            "HTTP server: {}{also}; logged at most once a minute",
            message()
        );
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

/// Accepts connections until the server shuts down, each on a thread of
/// its own when there is a slot for it.
pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let refusals = Throttled::new();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    while !shared.stopping.load(Ordering::SeqCst) {
        if !readable(listener, POLL_INTERVAL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if failures > 0 {
                    log::info!(
                        "HTTP server: accepting connections again after {failures} failed attempts"
                    );
                    failures = 0;
                    backoff = BACKOFF_MIN;
                }
                admit(shared, stream, peer, &refusals);
            }
            Err(err) if is_transient(&err) => {}
            Err(err) => {
                if failures == 0 {
                    log::warn!(
                        "HTTP server: cannot accept connections: {err}; retrying with a \
                         backoff of up to {} s (logged once until it works again)",
                        BACKOFF_MAX.as_secs()
                    );
                }
                failures += 1;
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Whether a failed `accept` concerns only the one connection (or none),
/// so the next can be accepted at once.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || err.raw_os_error() == Some(libc::EPROTO)
}

/// Starts a thread for a new connection, or refuses it with 503 when a cap
/// is reached.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, refusals: &Throttled) {
    let slot = match shared.slots.connection(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            refusals.warn(|| {
                format!(
                    "refused a connection from {}: {why} (at most {} per client, {} in total)",
                    peer.ip(),
                    shared.limits.max_connections_per_client,
                    shared.limits.max_connections
                )
            });
            // Over TLS a plain answer would be noise, and a handshake
            // here would hold up the accept thread: just close.
            if shared.tls.is_none() {
                conn::refuse(&mut stream.into(), 503, why);
            }
            metrics::http_request("", 503);
            return;
        }
    };
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux,
    // but say what is meant.
    if let Err(err) = stream.set_nonblocking(false) {
        log::debug!("HTTP server: dropping a connection from {peer}: {err}");
        return;
    }
    let thread_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("litefs-http".to_string())
        .spawn(move || super::serve_connection(&thread_shared, stream, peer, slot));
    // On failure the closure, and with it the connection and its slot, is
    // dropped: the client sees the connection close.
    if let Err(err) = spawned {
        refusals.warn(|| format!("cannot start a thread for a connection from {peer}: {err}"));
    }
}

/// Waits up to `timeout` for `listener` to have a connection to accept (or
/// an error to report).
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, and its count.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, per_client: usize, streams: usize) -> Arc<Slots> {
        Arc::new(Slots::new(Limits {
            max_connections: total,
            max_connections_per_client: per_client,
            max_streams_per_client: streams,
            ..Limits::default()
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_hold_per_client_and_in_total_and_slots_come_back() {
        let slots = slots(5, 3, 2);
        let a: Vec<ConnSlot> = (0..3)
            .map(|_| slots.connection(ip("10.0.0.1")).unwrap())
            .collect();
        assert!(slots.connection(ip("10.0.0.1")).is_err());
        // The same host over IPv4-mapped IPv6 is the same client.
        assert!(slots.connection(ip("::ffff:10.0.0.1")).is_err());
        let b1 = slots.connection(ip("10.0.0.2")).unwrap();
        let _b2 = slots.connection(ip("10.0.0.2")).unwrap();
        assert_eq!(
            slots.connection(ip("10.0.0.3")).err(),
            Some("too many connections")
        );
        drop(b1);
        let c = slots.connection(ip("10.0.0.3")).unwrap();
        assert_eq!(slots.open(), 5);

        // Stream slots: per client, independent of other clients.
        let s1 = slots.stream(&a[0]).unwrap();
        let s2 = slots.stream(&a[1]).unwrap();
        assert!(slots.stream(&a[2]).is_none());
        assert!(slots.stream(&c).is_some());
        drop(s1);
        assert!(slots.stream(&a[2]).is_some());

        drop(a);
        drop(c);
        drop(s2);
        assert_eq!(slots.open(), 1);
        assert_eq!(slots.wait_until_closed(Instant::now()), 1);
        // Only the client still connected is remembered.
        assert_eq!(lock(&slots.state).clients.len(), 1);
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let slots = slots(10, 1, 1);
        let _held = slots.connection(ip("2001:db8:1:2::1")).unwrap();
        assert!(slots.connection(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(slots.connection(ip("2001:db8:1:3::1")).is_ok());
    }
}
