//! The replica's side of replication: one long-lived `POST /stream` to the
//! primary carrying this node's received positions, then every frame
//! checked and handed to the caller's [`Receivers`] (litefs queues each LTX
//! file for its apply thread, `node/replica.rs`), and a loop that
//! reconnects with backoff.
//!
//! The request goes through ureq. ureq 3 (3.5 and later) can bound each
//! transport read (`timeout_per_read`), which restarts with every read:
//! exactly the idle timeout a long-lived body needs, so a dead link (no
//! frame, not even a heartbeat, for `IDLE_TIMEOUT`) ends the stream with an
//! error instead of hanging. Its total-body timeout is left unset.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{self, CONTENT_TYPE, IDLE_TIMEOUT};
use super::Error;
use crate::fatal::Fatal;
use crate::store::{self, Db, Position, Store};
use crate::tls::ClientTls;

/// Time allowed to open the TCP connection to the primary.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for each write of the request.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting, unless `lease.reconnect-delay` says
/// otherwise.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// What a full data directory means on a replica, for its WARN.
const DISK_FULL_EFFECT: &str = "this replica stops advancing (its position and everything \
                                it applied are kept) and retries with backoff";
/// Longest error message read from a refusing primary.
const MAX_ERROR_BODY: u64 = 4096;

/// The function that takes a received LTX file (at the given path) for a
/// database, applying or queueing it (which moves it away or copies it),
/// and returns the database's new received position.
pub type ReceiveFn<'a> = dyn FnMut(&Arc<Db>, &Path) -> Result<Position, store::Error> + 'a;

/// The function that deletes a database the primary deleted (given its
/// name), as `Store::delete_db` does, plus whatever the caller keeps for it.
pub type DeleteFn<'a> = dyn FnMut(&str) -> Result<(), store::Error> + 'a;

/// What a replica does with what the primary sends.
pub struct Receivers<'a, 'b> {
    /// Takes each received LTX file (litefs queues it for its apply thread).
    pub receive: &'b mut ReceiveFn<'a>,
    /// Deletes a database the primary deleted.
    pub delete: &'b mut DeleteFn<'a>,
}

/// Connects once to the primary at `primary_url` (`http://host:port`),
/// with the cluster's `token` when there is one, sends the received
/// position (`Db::received_pos`) of every database in `store`, and hands
/// every LTX file the primary streams back to `receive` (which must verify
/// before it changes anything, as `Db::enqueue_ltx` and `Db::apply_ltx`
/// do). Databases the primary has
/// and this node lacks are created. Returns `Ok(())` once `stop` is set
/// (checked between frames, so within a heartbeat interval), and an error
/// when the link fails, stays silent for `IDLE_TIMEOUT`, the primary
/// refuses or ends the stream, or a frame is malformed; a database is never
/// left past its last good position.
pub fn stream_from_primary(
    primary_url: &str,
    token: Option<&str>,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let at_once = AtomicBool::new(false);
    let link = Link {
        tls: None,
        acks_at_once: &at_once,
    };
    stream_once(
        primary_url,
        token,
        &link,
        store,
        receivers,
        stop,
        &mut false,
    )
}

/// Replicates from the primary until `stop` is set: asks `primary_url` for
/// the primary's URL (`None` while none is known), streams from it with
/// [`stream_from_primary`], and when that fails reconnects after a backoff
/// doubling from 100 ms to 5 s (reset once a stream was established),
/// resuming from this node's own positions. Each distinct failure is logged
/// once, not every retry.
pub fn run_replica_loop(
    primary_url: impl Fn() -> Option<String>,
    token: Option<&str>,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
) {
    let options = RetryOptions::default();
    run_replica_loop_with(primary_url, token, store, receivers, stop, &options)
}

/// How [`run_replica_loop_with`] retries.
#[derive(Clone, Debug)]
pub struct RetryOptions {
    /// Longest pause before reconnecting (`lease.reconnect-delay`); the
    /// first is 100ms, or this if shorter.
    pub max_backoff: Duration,
    /// Where an error that needs an operator ([`Error::needs_operator`]) is
    /// reported when `exit-on-error` makes it fatal. The loop retries
    /// either way, until stopped.
    pub fatal: Fatal,
    /// The CAs an `https://` primary is verified against (`http.tls-ca`);
    /// without them an https URL is refused before connecting.
    pub tls: Option<ClientTls>,
    /// Set at each connect to whether the primary asks for each received
    /// file to be acknowledged at once (its stream's `Litefs-Ack:
    /// at-once`, sent with synchronous replication).
    pub acks_at_once: Arc<AtomicBool>,
}

impl Default for RetryOptions {
    fn default() -> RetryOptions {
        RetryOptions {
            max_backoff: MAX_BACKOFF,
            fatal: Fatal::disabled(),
            tls: None,
            acks_at_once: Arc::default(),
        }
    }
}

/// [`run_replica_loop`] with the given retry options.
pub fn run_replica_loop_with(
    primary_url: impl Fn() -> Option<String>,
    token: Option<&str>,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
    options: &RetryOptions,
) {
    let min_backoff = MIN_BACKOFF.min(options.max_backoff);
    let max_backoff = options.max_backoff;
    let mut backoff = min_backoff;
    let mut fatal_reported = false;
    let mut last_failure: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(url) = primary_url() else {
            if last_failure.as_deref() != Some("no primary") {
                log::info!("replication: no primary known yet; waiting");
                last_failure = Some("no primary".to_string());
            }
            sleep_unless_stopped(backoff, stop);
            backoff = (backoff * 2).min(max_backoff);
            continue;
        };
        let mut connected = false;
        let link = Link {
            tls: options.tls.as_ref(),
            acks_at_once: &options.acks_at_once,
        };
        let result = stream_once(&url, token, &link, store, receivers, stop, &mut connected);
        let full = result.as_ref().is_err_and(|err| err.is_disk_full());
        // A full disk backs off like an unreachable primary, though the
        // stream was established: each attempt downloads again.
        if connected && !full {
            backoff = min_backoff;
        }
        match result {
            Ok(()) => break,
            Err(err) => {
                crate::metrics::replica_stream_failed();
                let message = err.to_string();
                if err.needs_operator() && !fatal_reported {
                    fatal_reported = options
                        .fatal
                        .report(format!("replication from {url} failed: {message}"));
                }
                if full {
                    // One WARN per episode (`DiskFull`), debug at each retry.
                    store.disk().full(
                        &format!("replication from {url} failed: {message}"),
                        DISK_FULL_EFFECT,
                    );
                } else if connected || last_failure.as_deref() != Some(message.as_str()) {
                    log::warn!(
                        "replication from {url} failed: {message}; retrying in {} ms",
                        backoff.as_millis()
                    );
                } else {
                    log::debug!("replication from {url} failed again: {message}");
                }
                last_failure = Some(message);
            }
        }
        sleep_unless_stopped(backoff, stop);
        backoff = (backoff * 2).min(max_backoff);
    }
    log::info!("replication stopped");
}

/// Sleeps for `duration`, waking early when `stop` is set.
fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + duration;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// How a stream reaches the primary, and what it learns of it.
struct Link<'a> {
    tls: Option<&'a ClientTls>,
    /// Set to whether the primary asks for acknowledgements at once.
    acks_at_once: &'a AtomicBool,
}

/// `stream_from_primary`, setting `connected` once the primary accepted.
fn stream_once(
    primary_url: &str,
    token: Option<&str>,
    link: &Link<'_>,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
    connected: &mut bool,
) -> Result<(), Error> {
    let base = normalize_url(primary_url)?;
    let url = format!("{base}/stream?node={:016x}", store.node_id());
    let mut listed = Vec::new();
    for db in store.dbs() {
        if db.name().contains('\n') {
            // The line format cannot carry it; the primary treats it as new.
            log::warn!(
                "database {:?}: its name holds a newline, which the replication \
                 request cannot carry; it will be sent whole",
                db.name()
            );
            continue;
        }
        // What was received, even if not yet applied: the primary sends
        // only what follows it.
        listed.push((db.name().to_string(), db.received_pos()));
    }
    let body = wire::format_positions(listed.iter().map(|(n, p)| (n.as_str(), *p)));

    let tls = link.tls;
    let response = post_positions(&base, &url, token, tls, body)?.map_err(|source| {
        match crate::tls::certificate_problem(&source, tls) {
            Some(reason) => Error::Certificate {
                url: url.clone(),
                reason,
            },
            None => Error::Request {
                url: url.clone(),
                source: Box::new(source),
            },
        }
    })?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let at_once = response
        .headers()
        .get(wire::ACK_HEADER)
        .is_some_and(|v| v.as_bytes() == wire::ACK_AT_ONCE.as_bytes());
    let mut body = response.into_body();
    if status != 200 {
        return Err(refused(url, status, &mut body));
    }
    link.acks_at_once.store(at_once, Ordering::SeqCst);
    if content_type != CONTENT_TYPE {
        return Err(Error::Protocol {
            url,
            reason: format!(
                "the response is not a replication stream: Content-Type is {content_type:?}, \
                 expected {CONTENT_TYPE:?}"
            ),
        });
    }
    *connected = true;
    crate::metrics::replica_connected();
    log::info!(
        "replicating from {base} ({} databases at their positions)",
        listed.len()
    );
    super::frames::read_frames(
        BufReader::with_capacity(super::frames::READ_BUFFER, body.into_reader()),
        &url,
        store,
        receivers,
        stop,
    )
}

/// The agent's TLS settings for `base`: for an `https://` URL, `tls`'s
/// CAs only (the URL is refused without them, and in a build without
/// TLS); an `http://` URL is left plain.
fn with_tls(
    builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    base: &str,
    tls: Option<&ClientTls>,
) -> Result<ureq::config::ConfigBuilder<ureq::typestate::AgentScope>, Error> {
    if !base.starts_with("https://") {
        return Ok(builder);
    }
    match tls {
        #[cfg(feature = "tls")]
        Some(tls) => Ok(builder.tls_config(tls.ureq_config())),
        #[cfg(not(feature = "tls"))]
        Some(tls) => match *tls {},
        None => Err(Error::BadUrl {
            url: base.to_string(),
            reason: if crate::tls::BUILT {
                "it is https, but no CA to verify it against is configured: set \
                 http.tls-ca to the cluster's CA certificate file"
                    .to_string()
            } else {
                crate::tls::NOT_BUILT.to_string()
            },
        }),
    }
}

/// Checks `url` is `http://host[:port][/path]` or `https://...` (trailing
/// `/`s allowed) and returns it without the trailing `/`s: the base the
/// replica appends `/stream` to, so a primary behind a reverse proxy under
/// a path prefix is reached at `<prefix>/stream`. The config refuses the
/// same URLs at load (`config::check_http_url`).
fn normalize_url(url: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err(bad("it must start with http:// or https://"));
    };
    let rest = rest.trim_end_matches('/');
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    if authority.is_empty() {
        return Err(bad("it names no host"));
    }
    if authority.contains('@') {
        return Err(bad("it must not hold a user name or password"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad(
            "it must be http://host[:port][/path], without a query or fragment",
        ));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it holds a space or control character"));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Tells the primary at `primary_url` that this node (`node`, its id) holds
/// `positions` durably (`POST /ack`, see `http/server/ack.rs`).
pub fn send_ack(
    primary_url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
    node: u64,
    positions: &BTreeMap<String, Position>,
) -> Result<(), Error> {
    let base = normalize_url(primary_url)?;
    let url = format!("{base}/ack?node={node:016x}");
    let body = wire::format_positions(
        positions
            .iter()
            .filter(|(name, _)| !name.contains('\n'))
            .map(|(name, pos)| (name.as_str(), *pos)),
    );
    let response =
        post_positions(&base, &url, token, tls, body)?.map_err(|source| Error::Request {
            url: url.clone(),
            source: Box::new(source),
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(refused(url, status, &mut response.into_body()));
    }
    Ok(())
}

/// Sends `POST url` with a position list `body` to the primary at `base`,
/// with the cluster's token: the outer error is a URL or TLS setting that
/// cannot be used, the inner one the request's.
fn post_positions(
    base: &str,
    url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
    body: String,
) -> Result<Result<ureq::http::Response<ureq::Body>, ureq::Error>, Error> {
    let builder = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(IDLE_TIMEOUT))
        .timeout_per_write(Some(WRITE_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None);
    let agent = ureq::Agent::new_with_config(with_tls(builder, base, tls)?.build());
    let mut request = agent
        .post(url)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Connection", "close");
    if let Some(token) = token {
        request = request.header("Authorization", super::auth::bearer(token));
    }
    Ok(request.send(body))
}

/// The primary's refusal (`status`) of `url`, with the start of its
/// message from `body`.
fn refused(url: String, status: u16, body: &mut ureq::Body) -> Error {
    let message = body
        .with_config()
        .limit(MAX_ERROR_BODY)
        .lossy_utf8(true)
        .read_to_string()
        .unwrap_or_default();
    Error::Refused {
        url,
        status,
        message: message.trim().to_string(),
    }
}
