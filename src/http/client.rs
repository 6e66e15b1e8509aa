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

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{self, CONTENT_TYPE, IDLE_TIMEOUT, MAX_LTX_LEN, MAX_NAME_LEN, MIN_LTX_LEN};
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
/// Buffer between the socket and the frame parser.
const READ_BUFFER: usize = 64 * 1024;

/// Gives every received temporary file of this process its own name.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

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
    stream_once(primary_url, token, None, store, receivers, stop, &mut false)
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
}

impl Default for RetryOptions {
    fn default() -> RetryOptions {
        RetryOptions {
            max_backoff: MAX_BACKOFF,
            fatal: Fatal::disabled(),
            tls: None,
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
        let tls = options.tls.as_ref();
        let result = stream_once(&url, token, tls, store, receivers, stop, &mut connected);
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

/// `stream_from_primary`, setting `connected` once the primary accepted.
fn stream_once(
    primary_url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
    connected: &mut bool,
) -> Result<(), Error> {
    let base = normalize_url(primary_url)?;
    let url = format!("{base}/stream");
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

    let builder = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(IDLE_TIMEOUT))
        .timeout_per_write(Some(WRITE_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None);
    let builder = with_tls(builder, &base, tls)?;
    let agent = ureq::Agent::new_with_config(builder.build());
    let mut request = agent
        .post(&url)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Connection", "close");
    if let Some(token) = token {
        request = request.header("Authorization", super::auth::bearer(token));
    }
    let response = request.send(body).map_err(|source| {
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
    let mut body = response.into_body();
    if status != 200 {
        let message = body
            .with_config()
            .limit(MAX_ERROR_BODY)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        return Err(Error::Refused {
            url,
            status,
            message: message.trim().to_string(),
        });
    }
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
    let mut reader = FrameReader {
        reader: BufReader::with_capacity(READ_BUFFER, body.into_reader()),
        url: &url,
        frames: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        match reader.frame_type()? {
            None => return Err(Error::Closed { url }),
            Some(wire::FRAME_HEARTBEAT) => store.note_caught_up(true),
            Some(wire::FRAME_ERROR) => {
                let message = reader.error_message()?;
                return Err(Error::PrimaryError { url, message });
            }
            Some(wire::FRAME_LTX) => {
                reader.ltx_frame(store, receivers.receive)?;
                // Stored: a full-disk episode, if any, is over.
                store.disk().space();
            }
            Some(wire::FRAME_DELETE) => {
                let name = reader.name("a delete frame")?;
                if store.db(&name).is_some() {
                    (receivers.delete)(&name).map_err(|source| Error::Store {
                        db: name.clone(),
                        source,
                    })?;
                }
            }
            Some(other) => {
                return Err(reader.protocol(format!(
                    "unknown frame type byte {other:#04x} (frame {})",
                    reader.frames + 1
                )))
            }
        }
        reader.frames += 1;
    }
    Ok(())
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

/// Reads frames from the body of a stream.
struct FrameReader<'a, R: Read> {
    reader: R,
    url: &'a str,
    /// Frames read so far, for error messages.
    frames: u64,
}

impl<R: Read> FrameReader<'_, R> {
    fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            url: self.url.to_string(),
            reason,
        }
    }

    /// Turns a read error into an `Error`, telling a dead link apart.
    fn read_error(&self, err: io::Error, what: &str) -> Error {
        if is_timeout(&err) {
            return Error::IdleTimeout {
                url: self.url.to_string(),
                idle: IDLE_TIMEOUT,
            };
        }
        if err.kind() == io::ErrorKind::UnexpectedEof {
            return self.protocol(format!("the stream ended in the middle of {what}"));
        }
        Error::Read {
            url: self.url.to_string(),
            what: what.to_string(),
            source: err,
        }
    }

    /// The next frame's type byte; `None` at a clean end of the stream.
    fn frame_type(&mut self) -> Result<Option<u8>, Error> {
        let mut byte = [0u8; 1];
        loop {
            match self.reader.read(&mut byte) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(byte[0])),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.read_error(err, "a frame type")),
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        self.reader
            .read_exact(buf)
            .map_err(|err| self.read_error(err, what))
    }

    /// The message of an `E` frame.
    fn error_message(&mut self) -> Result<String, Error> {
        let mut len = [0u8; 2];
        self.read_exact(&mut len, "the length of an error message")?;
        let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
        self.read_exact(&mut message, "an error message")?;
        Ok(String::from_utf8_lossy(&message).into_owned())
    }

    /// Reads an `L` frame into a temporary file in the database's LTX
    /// directory, applies it, and deletes the temporary file.
    fn ltx_frame(&mut self, store: &Store, receive: &mut ReceiveFn<'_>) -> Result<(), Error> {
        let name = self.name("an LTX frame")?;
        let mut len = [0u8; 8];
        self.read_exact(&mut len, &format!("the LTX length of database {name}"))?;
        let len = u64::from_be_bytes(len);
        if !(MIN_LTX_LEN..=MAX_LTX_LEN).contains(&len) {
            return Err(self.protocol(format!(
                "database {name}: an LTX frame announces {len} bytes \
                 ({MIN_LTX_LEN} to {MAX_LTX_LEN} allowed)"
            )));
        }
        // A database refused at start-up here is left as it is: its
        // frames are read past (logged once), so the stream goes on for
        // the others instead of failing on it again at every reconnect.
        if let Some(reason) = store.refusal(&name) {
            self.skip(&name, len)?;
            if store.first_skip_of_refused(&name) {
                log::warn!(
                    "database {name}: skipping what the primary sends for it (logged once): \
                     {reason}"
                );
            }
            return Ok(());
        }
        // The header first, checked against the frame's length and what
        // this replica has received, before any byte is written.
        let mut head = [0u8; crate::ltx::HEADER_SIZE];
        self.read_exact(&mut head, &format!("the LTX header of database {name}"))?;
        let received = store
            .db(&name)
            .map(|db| db.received_pos())
            .unwrap_or_default();
        if let Err(reason) = wire::check_ltx_header(&head, len, received) {
            return Err(self.protocol(format!(
                "database {name}: refused an LTX frame before writing it: {reason}"
            )));
        }
        // Then received into the store's incoming directory and verified
        // whole before anything else: a frame that is cut or corrupt
        // creates no database and touches none.
        let incoming = store.incoming_dir().map_err(|source| Error::Store {
            db: name.clone(),
            source,
        })?;
        let tmp = TempFile(incoming.join(format!(
            "received-{}.tmp",
            TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)
        )));
        self.receive(&name, &head, len, &tmp.0)?;
        if let Err(err) = crate::ltx::verify_file(&tmp.0) {
            return Err(self.protocol(format!(
                "database {name}: the received LTX file is damaged: {err}"
            )));
        }
        let db = store.create_db(&name).map_err(|source| Error::Store {
            db: name.clone(),
            source,
        })?;
        let pos = receive(&db, &tmp.0).map_err(|source| Error::Store {
            db: name.clone(),
            source,
        })?;
        log::debug!("database {name}: received an LTX file up to {pos}");
        Ok(())
    }

    /// A frame's database name (length, then the name), checked as a
    /// database name; `frame` says which kind of frame, for errors.
    fn name(&mut self, frame: &str) -> Result<String, Error> {
        let mut len = [0u8; 2];
        self.read_exact(&mut len, &format!("the name length of {frame}"))?;
        let name_len = u16::from_be_bytes(len) as usize;
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(self.protocol(format!(
                "{frame} has a database name of {name_len} bytes (1 to {MAX_NAME_LEN} allowed)"
            )));
        }
        let mut name = vec![0u8; name_len];
        self.read_exact(&mut name, &format!("the database name of {frame}"))?;
        let Ok(name) = String::from_utf8(name) else {
            return Err(self.protocol(format!("{frame} has a database name that is not UTF-8")));
        };
        if let Err(err) = store::validate_name(&name) {
            return Err(self.protocol(format!("{frame} names no valid database: {err}")));
        }
        Ok(name)
    }

    /// Reads and drops the `len` bytes of an LTX file of database `name`.
    fn skip(&mut self, name: &str, len: u64) -> Result<(), Error> {
        let copied = io::copy(&mut (&mut self.reader).take(len), &mut io::sink());
        match copied {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(self.protocol(format!(
                "database {name}: the stream ended after {n} of the {len} bytes of an LTX file"
            ))),
            Err(err) => {
                let what = format!("an LTX file of database {name}");
                Err(self.read_error(err, &what))
            }
        }
    }

    /// Writes `head` (already read) and the rest of the `len` bytes of an
    /// LTX file from the stream into a new file at `path`.
    fn receive(&mut self, name: &str, head: &[u8], len: u64, path: &Path) -> Result<(), Error> {
        let io_error = |what: &str, source| Error::Io {
            what: format!("database {name}: {what}"),
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::create(path)
            .map_err(|err| io_error("creating a file for a received LTX file", err))?;
        file.write_all(head)
            .map_err(|err| io_error("writing a received LTX file", err))?;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut left = len - head.len() as u64;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match self.reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(self.protocol(format!(
                        "database {name}: the stream ended after {} of the {len} bytes \
                         of an LTX file",
                        len - left
                    )))
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let what = format!(
                        "an LTX file of database {name} (after {} of {len} bytes)",
                        len - left
                    );
                    return Err(self.read_error(err, &what));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|err| io_error("writing a received LTX file", err))?;
            left -= n as u64;
        }
        // Not synced here: the store syncs what it keeps (`Db::enqueue_ltx`,
        // `Db::apply_ltx`), once.
        Ok(())
    }
}

/// Whether `err` is a read timeout (from ureq or the socket).
fn is_timeout(err: &io::Error) -> bool {
    if matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return true;
    }
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)))
}

/// Deletes a temporary file when dropped (it may have been moved away).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.0) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot delete {}: {err}", self.0.display());
            }
        }
    }
}
