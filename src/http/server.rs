//! The primary's HTTP server (tiny_http): `POST /stream` streams LTX files
//! to a replica, `GET /info` tells whether this node is the primary and
//! where its databases are, `GET /metrics` gives Prometheus the metrics
//! (`crate::metrics`), where every request is counted by path and status,
//! `POST /import` and `GET /export` copy whole databases in and out
//! (`server/transfer.rs`).
//!
//! One thread accepts requests and hands each to a thread of its own, so a
//! slow or dead replica only ever blocks its own thread: the store is read
//! without holding any lock across network writes, and commits never wait
//! for a replica. A stream thread writes the HTTP response head itself
//! (`Request::into_writer`) and then frames until the replica goes away,
//! this node stops being the primary, or the server shuts down.
//!
//! tiny_http does not expose the socket, so no write timeout can be set: a
//! replica that vanishes without a reset keeps its thread blocked in a
//! write until TCP gives up (minutes). That costs a thread, never progress.
//!
//! This file holds the server, its accept loop and the request handlers;
//! `server/stream.rs` holds one replication stream.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wire::{self, MAX_REQUEST_BODY};
use super::Error;
use crate::fuse::{Applier, Role};
use crate::metrics;
use crate::store::Store;

mod stream;
mod transfer;

use stream::serve_stream;
pub use transfer::{percent_decode, percent_encode, LTX_CONTENT_TYPE};

/// Most requests handled at once; more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// How long `shutdown` waits for stream threads to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// How soon a snapshot is tried again after the database changed under it.
const SNAPSHOT_RETRY: Duration = Duration::from_millis(50);
/// Buffer for copying LTX files to the network.
const COPY_BUFFER: usize = 64 * 1024;

/// Counters of what the server has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Streams currently open.
    pub streams_active: u64,
    /// Streams opened since the start.
    pub streams_started: u64,
    /// LTX files (transactions) sent, snapshots not counted.
    pub ltx_files_sent: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
}

/// What the accept thread and the request threads share.
struct Shared {
    store: Arc<Store>,
    /// The cluster's shared secret; every request must carry it when set.
    token: Option<String>,
    serving: AtomicBool,
    stopping: AtomicBool,
    /// Requests being handled (threads alive), with a condvar for shutdown.
    active: Mutex<usize>,
    active_changed: Condvar,
    streams_active: AtomicU64,
    streams_started: AtomicU64,
    ltx_files_sent: AtomicU64,
    snapshots_sent: AtomicU64,
    /// What `/import` needs from the node, once the mount is up.
    importer: OnceLock<(Arc<Applier>, Arc<Role>)>,
}

/// The replication HTTP server. Dropping it shuts it down like
/// [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    http: Arc<tiny_http::Server>,
    accept_thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Server {
    /// Listens on `addr` (`host:port`; `:port` means every IPv4 interface)
    /// and starts the accept thread. The server starts serving streams (as
    /// a primary); see [`Server::set_serving`].
    pub fn start(addr: &str, store: Arc<Store>) -> Result<Server, Error> {
        Server::start_with_token(addr, store, None)
    }

    /// Like [`Server::start`], answering 401 to every request without
    /// `Authorization: Bearer <token>` when `token` is set.
    pub fn start_with_token(
        addr: &str,
        store: Arc<Store>,
        token: Option<String>,
    ) -> Result<Server, Error> {
        let bind_addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr.to_string()
        };
        let bind_error = |reason: String| Error::Bind {
            addr: addr.to_string(),
            reason,
        };
        let listener = std::net::TcpListener::bind(bind_addr.as_str())
            .map_err(|err| bind_error(err.to_string()))?;
        // Frames are small and latency matters: without TCP_NODELAY a frame
        // can wait ~40 ms for the replica's delayed ACK (Nagle). Linux
        // passes the option on to every accepted connection.
        set_nodelay(&listener).map_err(|err| bind_error(format!("setting TCP_NODELAY: {err}")))?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|err| bind_error(err.to_string()))?;
        let local_addr = http.server_addr().to_ip().ok_or_else(|| Error::Bind {
            addr: addr.to_string(),
            reason: "the listener has no IP address".to_string(),
        })?;
        let http = Arc::new(http);
        let shared = Arc::new(Shared {
            store,
            token,
            serving: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            active: Mutex::new(0),
            active_changed: Condvar::new(),
            streams_active: AtomicU64::new(0),
            streams_started: AtomicU64::new(0),
            ltx_files_sent: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            importer: OnceLock::new(),
        });
        let accept_thread = {
            let shared = shared.clone();
            let http = http.clone();
            thread::Builder::new()
                .name("litefs-http-accept".to_string())
                .spawn(move || accept_loop(&shared, &http))
                .map_err(|err| Error::Bind {
                    addr: addr.to_string(),
                    reason: format!("cannot start the accept thread: {err}"),
                })?
        };
        log::info!("HTTP server listening on {local_addr}");
        Ok(Server {
            shared,
            http,
            accept_thread: Some(accept_thread),
            local_addr,
        })
    }

    /// The address the server listens on (with the real port when started
    /// on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether this node serves replication streams (it is the primary).
    /// When off, `/stream` answers 503 "not the primary" and open streams
    /// end with an error frame saying so.
    pub fn set_serving(&self, serving: bool) {
        let was = self.shared.serving.swap(serving, Ordering::SeqCst);
        if was && !serving {
            // Wake the stream threads so they notice at once.
            self.shared.store.notify_change();
        }
    }

    /// Enables `POST /import` (on the primary): imports take SQLite's
    /// locks through the mount with `applier` and are refused unless
    /// `role` is primary.
    pub fn set_importer(&self, applier: Arc<Applier>, role: Arc<Role>) {
        let _ = self.shared.importer.set((applier, role));
    }

    /// Whether this node serves replication streams.
    pub fn is_serving(&self) -> bool {
        self.shared.serving.load(Ordering::SeqCst)
    }

    /// Counters of streams and files sent.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        Stats {
            streams_active: shared.streams_active.load(Ordering::SeqCst),
            streams_started: shared.streams_started.load(Ordering::SeqCst),
            ltx_files_sent: shared.ltx_files_sent.load(Ordering::SeqCst),
            snapshots_sent: shared.snapshots_sent.load(Ordering::SeqCst),
        }
    }

    /// Stops accepting requests, ends every stream with an error frame, and
    /// waits a few seconds for the request threads (a thread blocked
    /// writing to a dead replica is left behind and ends on its own).
    pub fn shutdown(self) {
        // Drop does the work.
    }

    fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.http.unblock();
        if accept_thread.join().is_err() {
            log::error!("the HTTP accept thread panicked");
        }
        self.shared.store.notify_change();
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let mut active = lock(&self.shared.active);
        while *active > 0 {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "HTTP server shut down with {} request threads still running \
                     (blocked writing to unresponsive replicas)",
                    *active
                );
                break;
            }
            active = self
                .shared
                .active_changed
                .wait_timeout(active, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        log::info!("HTTP server on {} stopped", self.local_addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request thread for as long as it lives.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    /// Counts one more request, unless `MAX_CONNECTIONS` are being handled.
    fn try_new(shared: &Arc<Shared>) -> Option<ActiveGuard> {
        let mut active = lock(&shared.active);
        if *active >= MAX_CONNECTIONS {
            return None;
        }
        *active += 1;
        Some(ActiveGuard(shared.clone()))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = lock(&self.0.active);
        *active -= 1;
        self.0.active_changed.notify_all();
    }
}

fn accept_loop(shared: &Arc<Shared>, http: &tiny_http::Server) {
    loop {
        let request = match http.recv() {
            Ok(request) => request,
            Err(err) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                log::error!("HTTP server: receiving a request failed: {err}");
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            let path = request_path(&request);
            let status = respond_text(request, 503, "the server is shutting down", None);
            metrics::http_request(&path, status);
            continue;
        }
        let Some(guard) = ActiveGuard::try_new(shared) else {
            let path = request_path(&request);
            let status = respond_text(request, 503, "too many connections", None);
            metrics::http_request(&path, status);
            continue;
        };
        let thread_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("litefs-http".to_string())
            .spawn(move || {
                let _guard = guard;
                handle_request(&thread_shared, request);
            });
        if let Err(err) = spawned {
            log::error!("HTTP server: cannot start a request thread: {err}");
        }
    }
}

/// The path of a request, without the query.
fn request_path(request: &tiny_http::Request) -> String {
    let url = request.url();
    url.split('?').next().unwrap_or(url).to_string()
}

/// Answers with a plain-text message and `status` (or with 413, see
/// [`refuse_oversized`], when the request declares too large a body);
/// returns the status sent.
fn respond_text(
    request: tiny_http::Request,
    status: u16,
    message: &str,
    header: Option<(&str, &str)>,
) -> u16 {
    if request.body_length().is_some_and(|n| n > MAX_REQUEST_BODY) {
        let peer = request.remote_addr().map(|a| a.to_string());
        return refuse_oversized(request, peer.as_deref().unwrap_or("unknown"));
    }
    respond_plain(request, status, message, header)
}

/// Answers with a plain-text message and `status`, for a request whose
/// body was read whole (or that has none); returns the status sent.
fn respond_plain(
    request: tiny_http::Request,
    status: u16,
    message: &str,
    header: Option<(&str, &str)>,
) -> u16 {
    let mut response =
        tiny_http::Response::from_string(format!("{message}\n")).with_status_code(status);
    for (name, value) in [("Content-Type", "text/plain; charset=utf-8")]
        .into_iter()
        .chain(header)
    {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    if let Err(err) = request.respond(response) {
        log::debug!("HTTP server: cannot send a {status} response: {err}");
    }
    status
}

/// Answers one request and counts it (a stream as soon as it starts).
fn handle_request(shared: &Arc<Shared>, request: tiny_http::Request) {
    let path = request_path(&request);
    if let Some(status) = route(shared, request, &path) {
        metrics::http_request(&path, status);
    }
}

/// Answers one request; returns the status sent, or `None` for a
/// replication stream, which is counted when it starts.
fn route(shared: &Arc<Shared>, mut request: tiny_http::Request, path: &str) -> Option<u16> {
    let url = request.url().to_string();
    let method = request.method().clone();
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    log::debug!("HTTP {method} {url:?} from {peer}");
    // Nothing, not even a 404 or a database name, before the token.
    if !super::auth::authorized(&request, shared.token.as_deref()) {
        log::debug!("HTTP server: refused {peer} without the cluster's token");
        return Some(respond_text(
            request,
            401,
            "unauthorized: this node requires the cluster's token (http.token)",
            Some(("WWW-Authenticate", "Bearer")),
        ));
    }
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    match (path, &method) {
        ("/import", tiny_http::Method::Post) => {
            return Some(transfer::import(shared, request, query, &peer))
        }
        ("/export", tiny_http::Method::Get) => {
            return Some(transfer::export(shared, request, query, &peer))
        }
        ("/import", _) | ("/export", _) => {
            let allow = if path == "/import" { "POST" } else { "GET" };
            return Some(respond_text(
                request,
                405,
                &format!("method not allowed: use {allow} {path}"),
                Some(("Allow", allow)),
            ));
        }
        _ => {}
    }
    if request.body_length().is_some_and(|n| n > MAX_REQUEST_BODY) {
        return Some(refuse_oversized(request, &peer));
    }
    let text = |request, status, message: &str| Some(respond_text(request, status, message, None));
    match path {
        "/stream" => {
            if method != tiny_http::Method::Post {
                return Some(respond_text(
                    request,
                    405,
                    "method not allowed: use POST /stream",
                    Some(("Allow", "POST")),
                ));
            }
            if !shared.serving.load(Ordering::SeqCst) {
                return text(request, 503, "not the primary");
            }
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_REQUEST_BODY as u64 + 1)
                .read_to_end(&mut body);
            if let Err(err) = read {
                log::debug!("HTTP server: reading the body from {peer} failed: {err}");
                return text(request, 400, "cannot read the request body");
            }
            if body.len() > MAX_REQUEST_BODY {
                let message = format!("the position list is larger than {MAX_REQUEST_BODY} bytes");
                return text(request, 413, &message);
            }
            let positions = match wire::parse_positions(&body) {
                Ok(positions) => positions,
                Err(msg) => {
                    log::info!("HTTP server: bad position list from {peer}: {msg}");
                    return text(request, 400, &format!("bad position list: {msg}"));
                }
            };
            metrics::http_request(path, 200);
            serve_stream(shared, request, peer, positions);
            None
        }
        "/info" | "/metrics" => {
            if method != tiny_http::Method::Get {
                return Some(respond_text(
                    request,
                    405,
                    &format!("method not allowed: use GET {path}"),
                    Some(("Allow", "GET")),
                ));
            }
            let (body, content_type) = if path == "/info" {
                (info_json(shared), "application/json")
            } else {
                (metrics_text(shared), metrics::CONTENT_TYPE)
            };
            let mut response = tiny_http::Response::from_string(body);
            if let Ok(header) =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            {
                response.add_header(header);
            }
            if let Err(err) = request.respond(response) {
                log::debug!("HTTP server: cannot answer {path} to {peer}: {err}");
            }
            Some(200)
        }
        _ => text(request, 404, &format!("not found: {path}")),
    }
}

/// Answers 413 to a request that declares a body larger than
/// `MAX_REQUEST_BODY`, and leaks the request's connection.
///
/// tiny_http 0.12 drains an unread body when the request is dropped, into a
/// buffer as large as the declared `Content-Length`: a request declaring
/// petabytes aborts the process on that allocation (upstream PR
/// tiny-http/tiny-http#290). Such a request is therefore never dropped: the
/// answer goes out through `upgrade`, which hands back the connection, and
/// the connection is forgotten. That costs one socket and one tiny_http
/// thread per abusive request instead of the whole node.
fn refuse_oversized(request: tiny_http::Request, peer: &str) -> u16 {
    log::warn!(
        "HTTP server: {peer} declared a request body of {} bytes (the limit is \
         {MAX_REQUEST_BODY}); refused, and its connection is left open",
        request.body_length().unwrap_or(0)
    );
    let mut response = tiny_http::Response::from_string(format!(
        "the request body is larger than {MAX_REQUEST_BODY} bytes\n"
    ))
    .with_status_code(413);
    if let Ok(header) =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..])
    {
        response.add_header(header);
    }
    std::mem::forget(request.upgrade("none", response));
    413
}

/// `{"primary": bool, "dbs": {"name": "txid/checksum", ...}}`.
fn info_json(shared: &Shared) -> String {
    let dbs: Vec<String> = shared
        .store
        .dbs()
        .iter()
        .map(|db| format!("{}:\"{}\"", crate::json::string(db.name()), db.pos()))
        .collect();
    format!(
        "{{\"primary\":{},\"dbs\":{{{}}}}}\n",
        shared.serving.load(Ordering::SeqCst),
        dbs.join(",")
    )
}

/// The metrics (`crate::metrics`), with what the store and this server
/// know now: each database's TXID and size, the role, the lag, streams.
fn metrics_text(shared: &Shared) -> String {
    let primary = shared.serving.load(Ordering::SeqCst);
    let dbs = shared
        .store
        .dbs()
        .iter()
        .map(|db| metrics::DbState {
            name: db.name().to_string(),
            txid: db.pos().txid,
            size_bytes: db.size_bytes(),
        })
        .collect();
    metrics::render(&metrics::Snapshot {
        primary,
        lag: if primary {
            Duration::ZERO
        } else {
            shared.store.replica_lag()
        },
        streams_active: shared.streams_active.load(Ordering::SeqCst),
        streams_served: shared.streams_started.load(Ordering::SeqCst),
        dbs,
    })
}

/// Sets TCP_NODELAY on a listening socket (std only offers it on streams).
fn set_nodelay(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
