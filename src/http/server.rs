//! The primary's HTTP server: `POST /stream` streams LTX files to a
//! replica, `GET /info` tells whether this node is the primary and where
//! its databases are, `GET /metrics` gives Prometheus the metrics
//! (`crate::metrics`), where every request is counted by path and status,
//! `POST /import` and `GET /export` copy whole databases in and out
//! (`server/transfer.rs`).
//!
//! It is a small server of litefs's own on `std::net`, so that it can
//! promise what a node needs from it whatever its clients do: a bounded
//! request head, read within a deadline (`server/conn.rs`); caps on
//! connections in total and per client, and on streams per client, so no
//! client can take every descriptor, thread or stream slot
//! (`server/accept.rs`); an accept loop that survives running out of
//! descriptors; and write timeouts on every answer. [`Limits`] holds the
//! numbers and says why they are what they are. Several clients together
//! can still fill the connections for a few seconds at a time: open
//! streams and local commits go on, but a reconnecting replica waits for a
//! slot. Keeping a distributed flood out is left to the network in front
//! of litefs.
//!
//! One thread accepts connections and hands each to a thread of its own,
//! which reads one request, answers it and closes the connection, so a
//! slow or dead client only ever blocks its own thread: the store is read
//! without holding any lock across network writes, and commits never wait
//! for a replica. A stream thread writes the HTTP response head itself and
//! then frames until the replica goes away, this node stops being the
//! primary, or the server shuts down (`server/stream.rs`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wire::{self, MAX_DATABASE_SIZE, MAX_REQUEST_BODY};
use super::Error;
use crate::metrics;
use crate::role::Role;
use crate::store::{self, Db, Position, Store};

/// Loads the SQLite database file at the path into the database as one
/// transaction on the primary, refused unless the role is primary
/// throughout (`POST /import`; the node hands in `Applier::import`).
pub type ImportFn = Box<dyn Fn(&Db, &Path, &Role) -> Result<Position, store::Error> + Send + Sync>;

/// The lease as `/info` shows it.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    /// `consul` or `static`.
    pub kind: &'static str,
    /// This node's hostname: the lease's holder while it is primary.
    pub hostname: String,
    /// The Consul session's TTL; `None` for a static lease.
    pub ttl: Option<Duration>,
}

mod accept;
mod ack;
mod conn;
mod socket;
mod stream;
mod transfer;

use accept::{ConnSlot, Slots, Throttled};
pub use conn::parse_request_head;
pub(in crate::http) use conn::Request;
use conn::{read_request, ReadError};
use stream::serve_stream;
pub use transfer::percent_encode;

/// Connections open at once, all clients together. Each costs a
/// descriptor and a thread (a mostly untouched stack); 512 stays well
/// inside the 1,024 descriptors a process has before litefs raises its
/// limit, leaving the rest for databases and LTX files, and is far more
/// than a cluster's replicas, scrapers and CLI calls need.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections open at once from one client (IPv4 address or IPv6 /64):
/// a node has one stream per replica behind that address plus the odd
/// scrape or CLI call; 64 leaves room for several nodes behind one NAT
/// while keeping one client to an eighth of `MAX_CONNECTIONS`.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Replication streams at once from one client: one per replica behind
/// that address, so 8 allows several nodes behind one NAT and a
/// reconnecting replica whose old stream has not timed out yet, while one
/// client can never take the stream slots the other replicas need.
pub const MAX_STREAMS_PER_CLIENT: usize = 8;
/// The largest request head (request line and headers): litefs's clients
/// send about 200 bytes; 16 KiB is what common servers allow and room for
/// any token.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a request head may take to arrive, from the moment the
/// connection is accepted: a client sends it in one write, so 5 s is
/// generous even on a bad link, and a slow or silent client (slowloris)
/// holds its slot no longer than that.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for connection threads to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// How soon a snapshot is tried again after the database changed under it.
const SNAPSHOT_RETRY: Duration = Duration::from_millis(50);
/// Buffer for copying LTX files to the network.
const COPY_BUFFER: usize = 64 * 1024;

/// What the server allows its clients; [`Limits::default`] is the
/// constants above (tests use smaller numbers).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one client.
    pub max_connections_per_client: usize,
    /// Replication streams at once from one client.
    pub max_streams_per_client: usize,
    /// The largest request head, in bytes.
    pub max_head: usize,
    /// How long a request head may take to arrive.
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_client: MAX_CONNECTIONS_PER_CLIENT,
            max_streams_per_client: MAX_STREAMS_PER_CLIENT,
            max_head: MAX_HEAD,
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

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
    /// Connections open now (streams included).
    pub connections_open: u64,
}

/// What the accept thread and the connection threads share.
struct Shared {
    store: Arc<Store>,
    /// The cluster's shared secret; every request must carry it when set.
    token: Option<String>,
    /// The node's certificate and key: when set, every connection is TLS.
    tls: Option<crate::tls::ServerTls>,
    limits: Limits,
    serving: AtomicBool,
    stopping: AtomicBool,
    /// The open connections and streams, per client.
    slots: Arc<Slots>,
    /// Refused streams (a client over its stream slots), logged sparingly.
    stream_refusals: Throttled,
    streams_active: AtomicU64,
    streams_started: AtomicU64,
    /// Each active stream's replica (its address) and the position of
    /// each database it listed at connect or was sent since, by stream
    /// number (`/info`).
    streams: Mutex<BTreeMap<u64, StreamView>>,
    ltx_files_sent: AtomicU64,
    snapshots_sent: AtomicU64,
    /// What `/import` needs from the node, once the mount is up.
    importer: OnceLock<(ImportFn, Arc<Role>)>,
    /// What `/info` says of the lease (`set_lease_info`).
    lease_info: OnceLock<LeaseInfo>,
}

impl Shared {
    /// Changes what `streams` holds as sent to stream `number`, if it is
    /// still there.
    fn update_stream_view(
        &self,
        number: u64,
        change: impl FnOnce(&mut BTreeMap<String, Position>),
    ) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, sent)) = streams.get_mut(&number) {
            change(sent);
        }
    }
}

/// An active stream's replica as `/info` shows it: its address, and each
/// database's position it listed at connect or was sent since.
type StreamView = (String, BTreeMap<String, Position>);

/// The replication HTTP server. Dropping it shuts it down like
/// [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Server {
    /// Listens on `addr` (`host:port`; `:port` means every IPv4 interface)
    /// and starts the accept thread. The server starts serving streams (as
    /// a primary); see [`Server::set_serving`].
    pub fn start(addr: &str, store: Arc<Store>) -> Result<Server, Error> {
        Server::start_with(addr, store, None, Limits::default())
    }

    /// Like [`Server::start_with`], speaking only TLS with `tls` when it
    /// is given (`http.tls-cert`, `http.tls-key`).
    pub fn start_tls(
        addr: &str,
        store: Arc<Store>,
        token: Option<String>,
        tls: Option<crate::tls::ServerTls>,
        limits: Limits,
    ) -> Result<Server, Error> {
        Server::start_inner(addr, store, token, tls, limits)
    }

    /// Like [`Server::start`], answering 401 to every request without
    /// `Authorization: Bearer <token>` when `token` is set, with `limits`
    /// instead of the defaults.
    pub fn start_with(
        addr: &str,
        store: Arc<Store>,
        token: Option<String>,
        limits: Limits,
    ) -> Result<Server, Error> {
        Server::start_inner(addr, store, token, None, limits)
    }

    fn start_inner(
        addr: &str,
        store: Arc<Store>,
        token: Option<String>,
        tls: Option<crate::tls::ServerTls>,
        limits: Limits,
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
        let listener =
            TcpListener::bind(bind_addr.as_str()).map_err(|err| bind_error(err.to_string()))?;
        // Frames are small and latency matters: without TCP_NODELAY a frame
        // can wait ~40 ms for the replica's delayed ACK (Nagle). Linux
        // passes the option on to every accepted connection.
        set_nodelay(&listener).map_err(|err| bind_error(format!("setting TCP_NODELAY: {err}")))?;
        // Polled by the accept loop, so that it notices shutdown.
        listener
            .set_nonblocking(true)
            .map_err(|err| bind_error(format!("making the listener non-blocking: {err}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| bind_error(err.to_string()))?;
        let shared = Arc::new(Shared {
            store,
            token,
            tls,
            slots: Arc::new(Slots::new(limits.clone())),
            limits,
            serving: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            stream_refusals: Throttled::new(),
            streams_active: AtomicU64::new(0),
            streams_started: AtomicU64::new(0),
            streams: Mutex::new(BTreeMap::new()),
            ltx_files_sent: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            importer: OnceLock::new(),
            lease_info: OnceLock::new(),
        });
        let accept_thread = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("litefs-http-accept".to_string())
                .spawn(move || accept::accept_loop(&shared, &listener))
                .map_err(|err| bind_error(format!("cannot start the accept thread: {err}")))?
        };
        match &shared.tls {
            Some(tls) => log::info!(
                "HTTP server listening on {local_addr} (TLS only, certificate {})",
                tls.cert_path().display()
            ),
            None => log::info!("HTTP server listening on {local_addr}"),
        }
        Ok(Server {
            shared,
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

    /// Enables `POST /import` (on the primary): `import` loads a received
    /// file into a database as one transaction (the node's is
    /// `Applier::import`, which takes SQLite's locks through the mount);
    /// imports are refused unless `role` is primary.
    pub fn set_importer(&self, import: ImportFn, role: Arc<Role>) {
        let _ = self.shared.importer.set((import, role));
    }

    /// What `/info` says of the lease: its kind, this node's hostname
    /// (the holder while it is primary) and the session TTL.
    pub fn set_lease_info(&self, info: LeaseInfo) {
        let _ = self.shared.lease_info.set(info);
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
            connections_open: shared.slots.open() as u64,
        }
    }

    /// Stops accepting connections, ends every stream with an error frame
    /// and every wait for a request head, and waits a few seconds for the
    /// connection threads (a thread blocked writing to a dead replica is
    /// left behind and ends at its write timeout).
    pub fn shutdown(self) {
        // Drop does the work.
    }

    fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if accept_thread.join().is_err() {
            log::error!("the HTTP accept thread panicked");
        }
        self.shared.store.notify_change();
        let open = self
            .shared
            .slots
            .wait_until_closed(Instant::now() + SHUTDOWN_WAIT);
        if open > 0 {
            log::warn!(
                "HTTP server shut down with {open} connection threads still running \
                 (blocked on unresponsive clients until their timeouts)"
            );
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

/// One connection, on its own thread: reads the request, answers it, and
/// counts it (a stream as soon as it starts). `slot` is held until the
/// connection is closed.
fn serve_connection(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: ConnSlot) {
    let conn = match socket::Conn::new(stream, shared.tls.as_ref()) {
        Ok(conn) => conn,
        Err(err) => {
            log::warn!("HTTP server: dropping a connection from {peer}: {err}");
            return;
        }
    };
    let request = match read_request(conn, peer, &shared.limits, &shared.stopping) {
        Ok(request) => request,
        Err((mut stream, err)) => {
            match err {
                ReadError::Gone(why) => log::debug!("HTTP server: {peer} went away: {why}"),
                ReadError::TimedOut => {
                    log::debug!("HTTP server: {peer} did not send a request in time");
                    conn::refuse(&mut stream, 408, "the request did not arrive in time");
                    metrics::http_request("", 408);
                }
                ReadError::Refused { status, message } => {
                    log::debug!("HTTP server: refused a request from {peer}: {message}");
                    conn::refuse(&mut stream, status, &message);
                    metrics::http_request("", status);
                }
            }
            return;
        }
    };
    let path = request.path().to_string();
    if let Some(status) = route(shared, request, &path, &slot) {
        metrics::http_request(&path, status);
    }
}

/// Answers with a plain-text message and `status`; returns the status.
fn respond_text(request: Request, status: u16, message: &str, extra: &[(&str, &str)]) -> u16 {
    let peer = request.peer();
    if let Err(err) = request.respond_text(status, message, extra) {
        log::debug!("HTTP server: cannot send a {status} answer to {peer}: {err}");
    }
    status
}

/// Answers one request; returns the status sent, or `None` for a
/// replication stream, which is counted when it starts.
fn route(shared: &Arc<Shared>, mut request: Request, path: &str, slot: &ConnSlot) -> Option<u16> {
    let method = request.method().to_string();
    let peer = request.peer();
    log::debug!("HTTP {method} {path:?} from {peer}");
    // Nothing, not even a 404 or a database name, before the token.
    if !super::auth::authorized(&request, shared.token.as_deref()) {
        log::debug!("HTTP server: refused {peer} without the cluster's token");
        return Some(respond_text(
            request,
            401,
            "unauthorized: this node requires the cluster's token (http.token)",
            &[("WWW-Authenticate", "Bearer")],
        ));
    }
    // An import streams a database file of up to `MAX_DATABASE_SIZE`;
    // every other body is a position list of at most `MAX_REQUEST_BODY`.
    // Beyond, the answer is 413 and the body is never read.
    let limit = if path == "/import" && method == "POST" {
        MAX_DATABASE_SIZE
    } else {
        MAX_REQUEST_BODY as u64
    };
    if request.content_length().is_some_and(|n| n > limit) {
        log::debug!(
            "HTTP server: {peer} declared a request body of {} bytes; refused unread",
            request.content_length().unwrap_or(0)
        );
        let message = format!("the request body is larger than {limit} bytes");
        return Some(respond_text(request, 413, &message, &[]));
    }
    let query = request.query().to_string();
    let allow = match path {
        "/import" | "/stream" | "/ack" => "POST",
        "/export" | "/info" | "/metrics" => "GET",
        _ => {
            return Some(respond_text(
                request,
                404,
                &format!("not found: {path}"),
                &[],
            ))
        }
    };
    if method != allow {
        return Some(respond_text(
            request,
            405,
            &format!("method not allowed: use {allow} {path}"),
            &[("Allow", allow)],
        ));
    }
    // Without a token, what changes data is taken only from this host:
    // anyone who can reach the port may read, but not write.
    if path == "/import" && shared.token.is_none() && !peer.ip().to_canonical().is_loopback() {
        log::warn!(
            "HTTP server: refused an import from {peer}: without http.token, imports are \
             accepted only from this host"
        );
        return Some(respond_text(
            request,
            403,
            "forbidden: this node has no http.token, so it accepts imports only from its own \
             host (loopback); set http.token on every node and give it to litefs import",
            &[],
        ));
    }
    match path {
        "/import" => Some(transfer::import(shared, request, &query)),
        "/export" => Some(transfer::export(shared, request, &query)),
        "/ack" => Some(ack::ack(shared, request, &query)),
        "/stream" => {
            if !shared.serving.load(Ordering::SeqCst) {
                return Some(respond_text(request, 503, "not the primary", &[]));
            }
            let mut body = Vec::new();
            if let Err(err) = std::io::Read::read_to_end(&mut request.body(), &mut body) {
                log::debug!("HTTP server: reading the body from {peer} failed: {err}");
                return Some(respond_text(
                    request,
                    400,
                    "cannot read the request body",
                    &[],
                ));
            }
            let positions = match wire::parse_positions(&body) {
                Ok(positions) => positions,
                Err(msg) => {
                    log::debug!("HTTP server: bad position list from {peer}: {msg:?}");
                    let message = format!("bad position list: {msg}");
                    return Some(respond_text(request, 400, &message, &[]));
                }
            };
            let Some(stream_slot) = shared.slots.stream(slot) else {
                let most = shared.limits.max_streams_per_client;
                shared.stream_refusals.warn(|| {
                    format!(
                        "refused a replication stream to {}: it has {most} open already",
                        peer.ip()
                    )
                });
                let message = format!("too many streams from this address (at most {most})");
                return Some(respond_text(request, 503, &message, &[]));
            };
            // What a replica lists when it connects, it holds durably
            // (received files are queued fsynced): a new primary knows at
            // once (synchronous replication's in-sync set, `store/acks.rs`).
            if let Some(node) = ack::node_id(&query) {
                let store = &shared.store;
                store
                    .acks()
                    .record_listing(node, peer, positions.clone(), &|| store.positions());
            }
            metrics::http_request(path, 200);
            serve_stream(shared, request.into_stream(), peer, positions);
            drop(stream_slot);
            None
        }
        _ => {
            let (body, content_type) = if path == "/info" {
                (info_json(shared), "application/json")
            } else {
                (metrics_text(shared), metrics::CONTENT_TYPE)
            };
            if let Err(err) = request.respond(200, content_type, body.as_bytes(), &[]) {
                log::debug!("HTTP server: cannot answer {path} to {peer}: {err}");
            }
            Some(200)
        }
    }
}

/// `"name":"txid/checksum"` for each of `list`, comma-separated: the
/// inside of a JSON object.
fn positions_json<'a>(list: impl Iterator<Item = (&'a str, Position)>) -> String {
    list.map(|(name, pos)| format!("{}:\"{pos}\"", crate::json::string(name)))
        .collect::<Vec<_>>()
        .join(",")
}

/// What this node is and holds (`litefs status`): `{"primary": bool,
/// "primary_hostname": the primary a replica follows or null,
/// "lag_seconds": f64, "streams": active replication streams,
/// "dbs": {"name": "txid/checksum", ...}, "db_lag_seconds": {"name": f64},
/// "replicas": [{"peer": "addr:port", "sent": {"name": "txid/checksum"}}],
/// "acknowledged": [{"node": id, "peer": addr, "age_seconds": f64,
/// "dbs": {"name": "txid/checksum"}}], "sync": {"replicas": N,
/// "degraded": bool, "in_sync_set": [id] or null}}` (`replicas`: each
/// stream's replica and what was sent to it; `acknowledged`: what replica
/// nodes said they hold durably, `ack.rs`; `sync`: synchronous
/// replication; `lease`: its kind, holder and TTL).
fn info_json(shared: &Shared) -> String {
    let primary = shared.serving.load(Ordering::SeqCst);
    let dbs = shared.store.dbs();
    let lags: Vec<String> = dbs
        .iter()
        .map(|db| {
            let lag = if primary {
                0.0
            } else {
                shared.store.db_lag(db).as_secs_f64()
            };
            format!("{}:{lag:.3}", crate::json::string(db.name()))
        })
        .collect();
    let primary_hostname = match shared.importer.get() {
        Some((_, role)) if !primary => role
            .hostname()
            .map_or("null".to_string(), |host| crate::json::string(&host)),
        _ => "null".to_string(),
    };
    let lag = if primary {
        0.0
    } else {
        shared.store.replica_lag().as_secs_f64()
    };
    let replicas: Vec<String> = shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|(peer, sent)| {
            format!(
                "{{\"peer\":{},\"sent\":{{{}}}}}",
                crate::json::string(peer),
                positions_json(sent.iter().map(|(name, pos)| (name.as_str(), *pos)))
            )
        })
        .collect();
    format!(
        "{{\"primary\":{primary},\"primary_hostname\":{primary_hostname},\"lag_seconds\":{lag:.3},\
         \"streams\":{},\"dbs\":{{{}}},\"db_lag_seconds\":{{{}}},\"replicas\":[{}],\"acknowledged\":{},\
         \"sync\":{},\"lease\":{}}}\n",
        shared.streams_active.load(Ordering::SeqCst),
        positions_json(dbs.iter().map(|db| (db.name(), db.pos()))),
        lags.join(","),
        replicas.join(","),
        ack::json(shared),
        ack::sync_json(shared),
        lease_json(shared, primary)
    )
}

/// `{"type": "consul"|"static", "holder": hostname or null, "ttl_seconds":
/// f64 or null}`: the holder is this node while it is primary, else the
/// primary it follows (when known).
fn lease_json(shared: &Shared, primary: bool) -> String {
    let Some(info) = shared.lease_info.get() else {
        return "null".to_string();
    };
    let holder = if primary {
        Some(info.hostname.clone())
    } else {
        shared.importer.get().and_then(|(_, role)| role.hostname())
    };
    format!(
        "{{\"type\":{},\"holder\":{},\"ttl_seconds\":{}}}",
        crate::json::string(info.kind),
        holder.map_or("null".to_string(), |h| crate::json::string(&h)),
        info.ttl.map_or("null".to_string(), |ttl| format!(
            "{:.1}",
            ttl.as_secs_f64()
        ))
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
            lag_seconds: if primary {
                0.0
            } else {
                shared.store.db_lag(db).as_secs_f64()
            },
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
        unacknowledged: shared.store.acks().unacknowledged_for(),
        replicas_in_sync: if primary {
            let store = &shared.store;
            store.acks().in_sync(&store.positions()).len() as u64
        } else {
            0
        },
    })
}

/// Sets TCP_NODELAY on a listening socket (std only offers it on streams).
fn set_nodelay(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    socket::set_tcp_option(listener.as_raw_fd(), libc::TCP_NODELAY, 1)
}
