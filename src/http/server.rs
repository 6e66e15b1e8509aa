//! The primary's HTTP server (tiny_http): `POST /stream` streams LTX files
//! to a replica, `GET /info` tells whether this node is the primary and
//! where its databases are.
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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wire::{self, CONTENT_TYPE, HEARTBEAT_INTERVAL, MAX_REQUEST_BODY};
use super::Error;
use crate::ltx;
use crate::store::{self, Db, Position, Store};

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
            respond_text(request, 503, "the server is shutting down", None);
            continue;
        }
        let Some(guard) = ActiveGuard::try_new(shared) else {
            respond_text(request, 503, "too many connections", None);
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

/// Answers with a plain-text message and `status` (or with 413, see
/// [`refuse_oversized`], when the request declares too large a body).
fn respond_text(
    request: tiny_http::Request,
    status: u16,
    message: &str,
    header: Option<(&str, &str)>,
) {
    if request.body_length().is_some_and(|n| n > MAX_REQUEST_BODY) {
        let peer = request.remote_addr().map(|a| a.to_string());
        return refuse_oversized(request, peer.as_deref().unwrap_or("unknown"));
    }
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
}

fn handle_request(shared: &Arc<Shared>, mut request: tiny_http::Request) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let method = request.method().clone();
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    log::debug!("HTTP {method} {url:?} from {peer}");
    // Nothing, not even a 404 or a database name, before the token.
    if !super::auth::authorized(&request, shared.token.as_deref()) {
        log::debug!("HTTP server: refused {peer} without the cluster's token");
        return respond_text(
            request,
            401,
            "unauthorized: this node requires the cluster's token (http.token)",
            Some(("WWW-Authenticate", "Bearer")),
        );
    }
    if request.body_length().is_some_and(|n| n > MAX_REQUEST_BODY) {
        return refuse_oversized(request, &peer);
    }
    match path {
        "/stream" => {
            if method != tiny_http::Method::Post {
                return respond_text(
                    request,
                    405,
                    "method not allowed: use POST /stream",
                    Some(("Allow", "POST")),
                );
            }
            if !shared.serving.load(Ordering::SeqCst) {
                return respond_text(request, 503, "not the primary", None);
            }
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_REQUEST_BODY as u64 + 1)
                .read_to_end(&mut body);
            if let Err(err) = read {
                log::debug!("HTTP server: reading the body from {peer} failed: {err}");
                return respond_text(request, 400, "cannot read the request body", None);
            }
            if body.len() > MAX_REQUEST_BODY {
                return respond_text(
                    request,
                    413,
                    &format!("the position list is larger than {MAX_REQUEST_BODY} bytes"),
                    None,
                );
            }
            let positions = match wire::parse_positions(&body) {
                Ok(positions) => positions,
                Err(msg) => {
                    log::info!("HTTP server: bad position list from {peer}: {msg}");
                    return respond_text(request, 400, &format!("bad position list: {msg}"), None);
                }
            };
            serve_stream(shared, request, peer, positions);
        }
        "/info" => {
            if method != tiny_http::Method::Get {
                return respond_text(
                    request,
                    405,
                    "method not allowed: use GET /info",
                    Some(("Allow", "GET")),
                );
            }
            let mut response = tiny_http::Response::from_string(info_json(shared));
            if let Ok(header) =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            {
                response.add_header(header);
            }
            if let Err(err) = request.respond(response) {
                log::debug!("HTTP server: cannot answer /info to {peer}: {err}");
            }
        }
        _ => respond_text(request, 404, &format!("not found: {path}"), None),
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
fn refuse_oversized(request: tiny_http::Request, peer: &str) {
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

/// Why a stream ended.
enum End {
    /// Writing to the replica failed: it went away.
    Gone(io::Error),
    /// This side cannot go on; the message is sent in an error frame.
    Fatal(String),
}

impl From<io::Error> for End {
    fn from(err: io::Error) -> End {
        End::Gone(err)
    }
}

fn serve_stream(
    shared: &Arc<Shared>,
    request: tiny_http::Request,
    peer: String,
    replica: BTreeMap<String, Position>,
) {
    // This request's thread now only streams: replication work.
    crate::priority::raise_for_replication("stream");
    shared.streams_started.fetch_add(1, Ordering::SeqCst);
    shared.streams_active.fetch_add(1, Ordering::SeqCst);
    log::info!(
        "replica {peer} connected ({} databases listed)",
        replica.len()
    );
    let mut stream = Stream {
        shared,
        peer,
        out: Out {
            writer: BufWriter::with_capacity(COPY_BUFFER, request.into_writer()),
            last_write: Instant::now(),
            broken: None,
        },
        replica,
        retry_snapshot: false,
    };
    let result = stream.run();
    let peer = &stream.peer;
    match result {
        Ok(message) => {
            log::info!("replication stream to {peer} ended: {message}");
            let _ = stream.out.send(&wire::error_frame(&message));
        }
        Err(End::Gone(err)) => log::info!("replica {peer} disconnected: {err}"),
        Err(End::Fatal(message)) => {
            log::error!("replication stream to {peer} failed: {message}");
            let _ = stream.out.send(&wire::error_frame(&message));
        }
    }
    shared.streams_active.fetch_sub(1, Ordering::SeqCst);
}

/// The network side of a stream.
struct Out {
    writer: BufWriter<Box<dyn Write + Send>>,
    last_write: Instant,
    /// The error of a failed heartbeat sent from inside a snapshot.
    broken: Option<io::Error>,
}

impl Out {
    /// Writes `bytes` and flushes.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// Sends a heartbeat if nothing was sent for `HEARTBEAT_INTERVAL`.
    fn heartbeat_if_idle(&mut self) -> io::Result<()> {
        if self.last_write.elapsed() >= HEARTBEAT_INTERVAL {
            self.send(&[wire::FRAME_HEARTBEAT])?;
        }
        Ok(())
    }

    /// Sends an `L` frame with the `len` bytes of `file`.
    fn send_ltx(&mut self, name: &str, file: &mut File, len: u64) -> Result<(), End> {
        self.writer.write_all(&wire::ltx_frame_header(name, len))?;
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    // The frame is half sent: the stream cannot go on.
                    return Err(End::Fatal(format!(
                        "database {name}: an LTX file shrank while it was being sent \
                         ({} of {len} bytes sent)",
                        len - left
                    )));
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(End::Fatal(format!(
                        "database {name}: reading an LTX file to send failed: {err}"
                    )))
                }
            };
            self.writer.write_all(&buf[..n])?;
            left -= n as u64;
        }
        self.writer.flush()?;
        self.last_write = Instant::now();
        Ok(())
    }
}

/// A writer for a snapshot's temporary file that keeps the stream alive
/// with heartbeats while a large snapshot is written.
struct HeartbeatWriter<'a> {
    file: BufWriter<File>,
    out: &'a mut Out,
}

impl Write for HeartbeatWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.broken.is_none() {
            if let Err(err) = self.out.heartbeat_if_idle() {
                self.out.broken = Some(err);
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Deletes a temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.0) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!(
                    "cannot delete the temporary snapshot {}: {err}",
                    self.0.display()
                );
            }
        }
    }
}

/// Gives every temporary snapshot of this process its own name.
static SNAPSHOT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What `send_files_after` did.
enum Chain {
    /// Sent every file there was (at least one).
    Sent,
    /// The files cannot bring the replica forward; the reason says why.
    Broken(String),
}

/// One replica's stream.
struct Stream<'a> {
    shared: &'a Shared,
    peer: String,
    out: Out,
    /// The position each database will have on the replica once it has
    /// applied what was sent.
    replica: BTreeMap<String, Position>,
    /// A snapshot failed because the database changed under it.
    retry_snapshot: bool,
}

impl Stream<'_> {
    /// Streams until the replica goes away (`Err(Gone)`), something fails
    /// (`Err(Fatal)`), or this node stops serving (`Ok(reason)`).
    fn run(&mut self) -> Result<String, End> {
        self.out.send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let store = self.shared.store.clone();
        for name in self.replica.keys() {
            if store.db(name).is_none() {
                log::debug!("replica {} lists database {name}, unknown here", self.peer);
            }
        }
        let mut seen = store.wait_for_change(u64::MAX, Duration::ZERO);
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok("the primary is shutting down".to_string());
            }
            if !self.shared.serving.load(Ordering::SeqCst) {
                return Ok("not the primary".to_string());
            }
            self.retry_snapshot = false;
            for db in store.dbs() {
                self.sync_db(&db)?;
            }
            self.out.heartbeat_if_idle()?;
            let mut wait = HEARTBEAT_INTERVAL.saturating_sub(self.out.last_write.elapsed());
            if self.retry_snapshot {
                wait = wait.min(SNAPSHOT_RETRY);
            }
            seen = store.wait_for_change(seen, wait);
        }
    }

    /// Sends what `db`'s replica lacks: the LTX files after its position
    /// when they lead on from it, a snapshot otherwise.
    fn sync_db(&mut self, db: &Arc<Db>) -> Result<(), End> {
        let primary = db.pos();
        if primary.txid == 0 {
            return Ok(());
        }
        let replica = self.replica.get(db.name()).copied().unwrap_or_default();
        if replica == primary {
            return Ok(());
        }
        let reason = if replica.txid < primary.txid {
            match self.send_files_after(db, replica)? {
                Chain::Sent => return Ok(()),
                Chain::Broken(reason) => reason,
            }
        } else if replica.txid == primary.txid {
            "the checksums differ at the same TXID: the replica diverged".to_string()
        } else {
            "the replica is ahead of the primary".to_string()
        };
        self.send_snapshot(db, replica, primary, &reason)
    }

    /// Sends the chain of LTX files starting at the replica's TXID + 1 while
    /// each one's pre-apply checksum is the checksum the replica will have.
    fn send_files_after(&mut self, db: &Db, replica: Position) -> Result<Chain, End> {
        let name = db.name();
        // A primary's commits are one-TXID files, so the next file is
        // found by name with one stat; the directory (which may hold a
        // retention period's worth of files) is listed only when that
        // fails, e.g. for a snapshot's 1-N file, and then only once.
        let mut listing: Option<BTreeMap<u64, PathBuf>> = None;
        let mut pos = replica;
        let mut sent = 0;
        loop {
            let next = pos.txid + 1;
            let single = db.ltx_dir().join(ltx::filename(next, next));
            let path = if single.exists() {
                single
            } else {
                if listing.is_none() {
                    let files = db.ltx_files().map_err(|err| End::Fatal(err.to_string()))?;
                    listing = Some(files.into_iter().map(|(min, _, p)| (min, p)).collect());
                }
                match listing.as_ref().and_then(|l| l.get(&next)) {
                    Some(path) => path.clone(),
                    None => break,
                }
            };
            let path = &path;
            let (header, trailer) = match ltx::read_header_and_trailer(path) {
                Ok(found) => found,
                Err(err) => {
                    return Ok(Chain::Broken(format!(
                        "cannot read the LTX file for TXID {next:016x}: {err}"
                    )))
                }
            };
            if header.pre_apply_checksum != pos.checksum {
                return Ok(Chain::Broken(format!(
                    "{} starts from checksum {:016x}, not {:016x}: the replica's history \
                     differs from the primary's",
                    path.display(),
                    header.pre_apply_checksum,
                    pos.checksum
                )));
            }
            let opened = File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len())));
            let (mut file, len) = match opened {
                Ok(opened) => opened,
                Err(err) => {
                    return Ok(Chain::Broken(format!(
                        "cannot open {}: {err}",
                        path.display()
                    )))
                }
            };
            self.out.send_ltx(name, &mut file, len)?;
            pos = Position {
                txid: header.max_txid,
                checksum: trailer.post_apply_checksum,
            };
            self.replica.insert(name.to_string(), pos);
            self.shared.ltx_files_sent.fetch_add(1, Ordering::SeqCst);
            sent += 1;
        }
        if sent > 0 {
            log::debug!(
                "database {name}: sent {sent} LTX files to {}, now at {pos}",
                self.peer
            );
            return Ok(Chain::Sent);
        }
        Ok(Chain::Broken(format!(
            "no LTX file starts at TXID {:016x} (deleted by retention?)",
            replica.txid + 1
        )))
    }

    /// Writes a snapshot of `db` to a temporary file in its LTX directory,
    /// then sends it. A snapshot that meets a write in progress is retried
    /// on the next round.
    fn send_snapshot(
        &mut self,
        db: &Db,
        replica: Position,
        primary: Position,
        reason: &str,
    ) -> Result<(), End> {
        let name = db.name();
        let tmp = TempFile(db.ltx_dir().join(format!(
            "snapshot-{}.tmp",
            SNAPSHOT_COUNTER.fetch_add(1, Ordering::SeqCst)
        )));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp.0)
            .map_err(|err| {
                End::Fatal(format!(
                    "database {name}: cannot create the temporary snapshot {}: {err}",
                    tmp.0.display()
                ))
            })?;
        let written = {
            let mut writer = HeartbeatWriter {
                file: BufWriter::with_capacity(COPY_BUFFER, file),
                out: &mut self.out,
            };
            db.write_snapshot(&mut writer)
        };
        if let Some(err) = self.out.broken.take() {
            return Err(End::Gone(err));
        }
        let header = match written {
            Ok(header) => header,
            Err(store::Error::Changed { reason, .. }) => {
                log::debug!(
                    "database {name}: snapshot for {} deferred: {reason}",
                    self.peer
                );
                self.retry_snapshot = true;
                return Ok(());
            }
            Err(store::Error::NoTransactions { .. }) => return Ok(()),
            Err(err) => return Err(End::Fatal(format!("cannot make a snapshot: {err}"))),
        };
        let (mut file, len, trailer) =
            open_snapshot(&tmp.0).map_err(|err| End::Fatal(format!("database {name}: {err}")))?;
        let pos = Position {
            txid: header.max_txid,
            checksum: trailer.post_apply_checksum,
        };
        log::info!(
            "database {name}: sending a snapshot at {pos} ({len} bytes) to replica {}: \
             {reason} (replica at {replica}, primary at {primary})",
            self.peer
        );
        self.out.send_ltx(name, &mut file, len)?;
        self.replica.insert(name.to_string(), pos);
        self.shared.snapshots_sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Opens a freshly written snapshot and reads its trailer.
fn open_snapshot(path: &Path) -> Result<(File, u64, ltx::Trailer), String> {
    let (_, trailer) = ltx::read_header_and_trailer(path).map_err(|err| err.to_string())?;
    let file = File::open(path)
        .map_err(|err| format!("cannot open the snapshot {}: {err}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|err| format!("cannot read the size of {}: {err}", path.display()))?
        .len();
    Ok((file, len, trailer))
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
