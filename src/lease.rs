//! Leader election: which node is primary, and this node's lease on it.
//!
//! A [`Leaser`] is the seam between the node and whatever decides the
//! primary. [`StaticLeaser`] takes the answer from the config (one fixed
//! primary, no external service); [`ConsulLeaser`] holds a lock on a Consul
//! KV key through a session with a TTL, so the primary moves when it stops
//! or dies. [`spawn_lease_thread`] runs a leaser on its own thread and tells
//! the node about role changes as [`LeaseEvent`]s over a channel.
//!
//! Timing, for a Consul lease with TTL `T`:
//!
//! - the holder renews its session every `T/3`;
//! - if it could not renew for `T/2` (Consul down, hung, or answering
//!   errors) it steps down, which is long before Consul could give the key
//!   to another node (Consul keeps a session at least `T` after its last
//!   renewal, and then the lock delay blocks the key);
//! - every renewal is bounded by a timeout that ends at that `T/2` deadline,
//!   so a hung Consul cannot hold the step-down back;
//! - on a clean stop the holder releases the key and destroys its session,
//!   so another candidate takes over at once (a crashed holder's key is
//!   freed only after the TTL plus the lock delay);
//! - nodes without the lease watch the key with Consul's blocking queries
//!   (`?index=`), so they learn of a new primary as soon as it is written.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};
use serde::Deserialize;

use crate::config::{ConsulConfig, LeaseConfig, LeaseKind};

/// How long one watch (a Consul blocking query) waits for a change before
/// it is issued again. A stop request is noticed within this time on a node
/// that does not hold the lease.
pub const WATCH_WAIT: Duration = Duration::from_secs(2);

/// How long a node that does not hold the lease keeps following the last
/// known primary while Consul cannot be asked, before it reports
/// [`LeaseEvent::NoPrimary`]. A primary that lost Consul too has stepped
/// down by then (half of the smallest TTL Consul allows, 10s).
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(5);

/// How soon a candidate tries again when the key looked free but Consul
/// refused the lock (the lock delay after a lost session).
const ACQUIRE_RETRY_WAIT: Duration = Duration::from_millis(250);

/// First pause after a failed call to Consul; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between retries while Consul fails.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a sleeping lease thread looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How long before the step-down deadline a renewal must have ended.
const RENEW_MARGIN: Duration = Duration::from_millis(100);

/// Largest answer read from Consul.
const MAX_BODY: u64 = 1 << 20;

/// Who holds the lease: what a replica needs to find the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryInfo {
    /// The primary's hostname, shown in `.primary` on replicas.
    pub hostname: String,
    /// The URL replicas stream from, `http://host:port`.
    pub advertise_url: String,
}

/// A lease this node holds: proof that it is primary until it fails to
/// renew.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The Consul session that holds the key (`static` for a static lease).
    pub session: String,
    /// How long the lease lives without renewal; `None` never expires.
    pub ttl: Option<Duration>,
    /// When the lease was last known good: the moment the request that
    /// created or last renewed it was sent, so never later than the moment
    /// Consul restarted the session's TTL.
    pub renewed_at: Instant,
}

impl Lease {
    /// When the holder should renew next: a third of the TTL after the
    /// last renewal. `None` for a lease that never expires.
    pub fn renew_due(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl? / 3)
    }

    /// When a holder that could not renew must stop acting as primary: half
    /// the TTL after the last renewal, well before Consul could let another
    /// node take the key. `None` for a lease that never expires.
    pub fn step_down_at(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl? / 2)
    }
}

/// Decides who is primary. Implementations block (with timeouts); they are
/// meant to run on the lease thread.
pub trait Leaser: Send {
    /// Tries once to become primary: `Ok(Some(lease))` on success,
    /// `Ok(None)` when another node holds the lease (or may not be replaced
    /// yet).
    fn acquire(&mut self) -> Result<Option<Lease>, Error>;

    /// Extends the lease and records the renewal in `lease.renewed_at`.
    /// [`Error::Lost`] means the lease is gone for good; other errors mean
    /// the renewal could not be done and may be retried until
    /// [`Lease::step_down_at`].
    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error>;

    /// Gives the lease up (clean shutdown) so another candidate can take
    /// over at once.
    fn release(&mut self, lease: Lease) -> Result<(), Error>;

    /// The current primary, or `None` if no node holds the lease. With
    /// `index` from an earlier answer, blocks up to `wait` until something
    /// changes after it; with `index` 0, answers at once. Returns the index
    /// to pass next time.
    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error>;
}

/// Builds the leaser the config asks for; `config.hostname` and
/// `config.advertise_url` name the primary (static replica) or this node
/// (everything else).
pub fn leaser_from_config(config: &LeaseConfig) -> Box<dyn Leaser> {
    let info = PrimaryInfo {
        hostname: config.hostname.clone(),
        advertise_url: config.advertise_url.clone(),
    };
    match (config.kind, &config.consul) {
        (LeaseKind::Consul, Some(consul)) => Box::new(ConsulLeaser::new(consul, info)),
        _ => Box::new(StaticLeaser::new(info, config.candidate)),
    }
}

/// Everything that can go wrong talking to Consul about the lease.
#[derive(Debug)]
pub enum Error {
    /// Consul could not be reached, or did not answer in time.
    Request {
        /// What was being done, e.g. "renew the Consul session".
        action: &'static str,
        url: String,
        message: String,
    },
    /// Consul answered with an HTTP status that was not expected.
    Status {
        action: &'static str,
        url: String,
        status: u16,
        /// The start of the answer's body, which usually says why.
        body: String,
    },
    /// Consul's answer could not be understood.
    BadResponse {
        action: &'static str,
        url: String,
        message: String,
    },
    /// The lease is gone: its session expired or was destroyed, or the key
    /// is no longer held by it.
    Lost {
        key: String,
        session: String,
        reason: String,
    },
    /// A renewal was not attempted because the step-down deadline passed.
    TooLate { key: String, session: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Request {
                action,
                url,
                message,
            } => write!(f, "cannot {action} at {url}: {message}"),
            Error::Status {
                action,
                url,
                status,
                body,
            } => write!(
                f,
                "cannot {action} at {url}: Consul answered HTTP {status}: {}",
                if body.is_empty() {
                    "(empty body)"
                } else {
                    body
                }
            ),
            Error::BadResponse {
                action,
                url,
                message,
            } => write!(
                f,
                "cannot {action} at {url}: Consul's answer is not understood: {message}"
            ),
            Error::Lost {
                key,
                session,
                reason,
            } => write!(
                f,
                "lost the lease on Consul key {key} (session {session}): {reason}"
            ),
            Error::TooLate { key, session } => write!(
                f,
                "could not renew the lease on Consul key {key} (session {session}) within half \
                 its TTL"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A lease decided by the config: the candidate node is always primary, the
/// others always follow the configured primary.
pub struct StaticLeaser {
    primary: PrimaryInfo,
    candidate: bool,
}

impl StaticLeaser {
    /// `primary` names the primary (this node when `candidate` is true).
    pub fn new(primary: PrimaryInfo, candidate: bool) -> StaticLeaser {
        StaticLeaser { primary, candidate }
    }
}

impl Leaser for StaticLeaser {
    fn acquire(&mut self) -> Result<Option<Lease>, Error> {
        if !self.candidate {
            return Ok(None);
        }
        Ok(Some(Lease {
            session: "static".to_string(),
            ttl: None,
            renewed_at: Instant::now(),
        }))
    }

    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error> {
        lease.renewed_at = Instant::now();
        Ok(())
    }

    fn release(&mut self, _lease: Lease) -> Result<(), Error> {
        Ok(())
    }

    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error> {
        // The answer never changes, so a caller waiting for a change after
        // the first answer (index 1) waits the whole time.
        if index >= 1 {
            thread::sleep(wait);
        }
        Ok((Some(self.primary.clone()), 1))
    }
}

/// A lease held in Consul: a session (TTL, lock delay, behavior `delete`)
/// that locks a KV key whose value names this node.
pub struct ConsulLeaser {
    url: String,
    key: String,
    ttl: Duration,
    lock_delay: Duration,
    me: PrimaryInfo,
    agent: ureq::Agent,
    /// Upper bound for a request that is not a blocking query.
    request_timeout: Duration,
}

impl ConsulLeaser {
    /// A leaser for the lease described by `consul`; `me` is what this node
    /// writes into the key when it becomes primary.
    pub fn new(consul: &ConsulConfig, me: PrimaryInfo) -> ConsulLeaser {
        // A fifth of the TTL: a hung request ends well before the holder
        // has to step down (renewals are further bounded by that deadline).
        let request_timeout = (consul.ttl / 5).clamp(Duration::from_millis(100), MAX_BACKOFF);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(request_timeout))
            .user_agent("litefs")
            .build()
            .into();
        ConsulLeaser {
            url: consul.url.trim_end_matches('/').to_string(),
            key: consul.key.clone(),
            ttl: consul.ttl,
            lock_delay: consul.lock_delay,
            me,
            agent,
            request_timeout,
        }
    }

    /// The session TTL this leaser asks Consul for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn kv_url(&self) -> String {
        format!("{}/v1/kv/{}", self.url, encode_path(&self.key))
    }

    /// Sends one request and reads the whole answer, whatever its status.
    fn call(
        &self,
        action: &'static str,
        url: &str,
        put: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let result = match put {
            None => self
                .agent
                .get(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
            Some(body) => self
                .agent
                .put(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .send(body),
        };
        let request_error = |e: ureq::Error| Error::Request {
            action,
            url: url.to_string(),
            message: describe_ureq_error(e, timeout),
        };
        let mut response = result.map_err(request_error)?;
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()));
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(request_error)?;
        Ok(Answer {
            action,
            url: url.to_string(),
            status,
            index,
            body,
        })
    }

    /// Creates a session for one attempt to take the lease.
    fn create_session(&self) -> Result<String, Error> {
        let body = format!(
            "{{\"Name\": {}, \"TTL\": \"{}ms\", \"LockDelay\": \"{}ms\", \"Behavior\": \"delete\"}}",
            crate::json::string(&format!("litefs {}", self.me.hostname)),
            self.ttl.as_millis(),
            self.lock_delay.as_millis()
        );
        let url = format!("{}/v1/session/create", self.url);
        let answer = self.call(
            "create a Consul session",
            &url,
            Some(&body),
            self.request_timeout,
        )?;
        answer.expect_status(200)?;

        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = answer.parse_json()?;
        if created.id.trim().is_empty() {
            return Err(answer.bad("the new session's ID is empty".to_string()));
        }
        Ok(created.id)
    }

    fn destroy_session(&self, session: &str, timeout: Duration) -> Result<(), Error> {
        let url = format!("{}/v1/session/destroy/{}", self.url, encode_path(session));
        let answer = self.call("destroy the Consul session", &url, Some(""), timeout)?;
        answer.expect_status(200)
    }

    /// Reads the key once (no blocking). `None` when it does not exist.
    fn read_key(
        &self,
        action: &'static str,
        url: &str,
        timeout: Duration,
    ) -> Result<(Option<KvEntry>, Answer), Error> {
        let answer = self.call(action, url, None, timeout)?;
        match answer.status {
            404 => Ok((None, answer)),
            200 => {
                let entries: Vec<KvEntry> = answer.parse_json()?;
                let entry = entries.into_iter().find(|e| e.key == self.key);
                match entry {
                    Some(entry) => Ok((Some(entry), answer)),
                    None => Err(answer.bad(format!("no entry for key {}", self.key))),
                }
            }
            _ => Err(answer.status_error()),
        }
    }

    /// What a held key's value says about the primary.
    fn decode_primary(&self, answer: &Answer, entry: &KvEntry) -> Result<PrimaryInfo, Error> {
        let session = entry.session.as_deref().unwrap_or("");
        let Some(value) = entry.value.as_deref().filter(|v| !v.is_empty()) else {
            return Err(answer.bad(format!(
                "key {} is held by session {session} but has no value naming the primary",
                self.key
            )));
        };
        let bytes = decode_base64(value)
            .map_err(|m| answer.bad(format!("the value of key {} is not base64: {m}", self.key)))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| answer.bad(format!("the value of key {} is not UTF-8 text", self.key)))?;
        let raw: RawPrimaryInfo = serde_yaml::from_str(&text).map_err(|e| {
            answer.bad(format!(
                "the value of key {} does not name a primary ({e}): {}",
                self.key,
                snippet(&text)
            ))
        })?;
        if raw.hostname.is_empty() && raw.advertise_url.is_empty() {
            return Err(answer.bad(format!(
                "the value of key {} names neither a hostname nor an advertise-url",
                self.key
            )));
        }
        Ok(PrimaryInfo {
            hostname: raw.hostname,
            advertise_url: raw.advertise_url,
        })
    }
}

impl Leaser for ConsulLeaser {
    fn acquire(&mut self) -> Result<Option<Lease>, Error> {
        let started = Instant::now();
        let session = self.create_session()?;
        let value = format!(
            "{{\"hostname\": {}, \"advertise-url\": {}}}",
            crate::json::string(&self.me.hostname),
            crate::json::string(&self.me.advertise_url)
        );
        let url = format!("{}?acquire={}", self.kv_url(), encode_path(&session));
        let acquired = self
            .call(
                "acquire the lease key",
                &url,
                Some(&value),
                self.request_timeout,
            )
            .and_then(|answer| {
                answer.expect_status(200)?;
                answer.parse_bool()
            });
        match acquired {
            Ok(true) => {
                debug!(
                    "lease: acquired Consul key {} with session {session}",
                    self.key
                );
                Ok(Some(Lease {
                    session,
                    ttl: Some(self.ttl),
                    renewed_at: started,
                }))
            }
            Ok(false) => {
                if let Err(e) = self.destroy_session(&session, self.request_timeout) {
                    debug!("lease: {e} (the unused session expires after its TTL)");
                }
                Ok(None)
            }
            Err(e) => {
                // The lock may or may not have been taken: destroying the
                // session frees it either way.
                if let Err(e) = self.destroy_session(&session, self.request_timeout) {
                    debug!("lease: {e} (the unused session expires after its TTL)");
                }
                Err(e)
            }
        }
    }

    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error> {
        let started = Instant::now();
        let too_late = || Error::TooLate {
            key: self.key.clone(),
            session: lease.session.clone(),
        };
        // Every request ends by the step-down deadline, so a hung Consul
        // cannot keep this node primary past it.
        let budget = |now: Instant| -> Option<Duration> {
            let left = match lease.step_down_at() {
                Some(deadline) => deadline.saturating_duration_since(now),
                None => self.request_timeout,
            };
            // Leave a little for the answer to be handled before the
            // deadline itself.
            let left = left.saturating_sub(RENEW_MARGIN).min(self.request_timeout);
            (left >= Duration::from_millis(1)).then_some(left)
        };

        let timeout = budget(started).ok_or_else(too_late)?;
        let url = format!(
            "{}/v1/session/renew/{}",
            self.url,
            encode_path(&lease.session)
        );
        let answer = self.call("renew the Consul session", &url, Some(""), timeout)?;
        if answer.status == 404 {
            return Err(Error::Lost {
                key: self.key.clone(),
                session: lease.session.clone(),
                reason: "the session expired or was destroyed".to_string(),
            });
        }
        answer.expect_status(200)?;

        #[derive(Deserialize)]
        struct Session {
            #[serde(rename = "ID")]
            id: String,
        }
        let sessions: Vec<Session> = answer.parse_json()?;
        if !sessions.iter().any(|s| s.id == lease.session) {
            return Err(answer.bad(format!(
                "the renewed session {} is not in the answer",
                lease.session
            )));
        }

        // The session lives; check it still holds the key (someone may have
        // deleted the key by hand, and another node taken it).
        let timeout = budget(Instant::now()).ok_or_else(too_late)?;
        let (entry, _) = self.read_key("check the lease key", &self.kv_url(), timeout)?;
        let holder = entry.and_then(|e| e.session).unwrap_or_default();
        if holder != lease.session {
            let reason = if holder.is_empty() {
                "the key is no longer locked (deleted or released)".to_string()
            } else {
                format!("the key is now held by session {holder}")
            };
            return Err(Error::Lost {
                key: self.key.clone(),
                session: lease.session.clone(),
                reason,
            });
        }
        lease.renewed_at = started;
        Ok(())
    }

    fn release(&mut self, lease: Lease) -> Result<(), Error> {
        // Releasing the key first frees it without the lock delay that
        // destroying a session holding it would impose.
        let url = format!("{}?release={}", self.kv_url(), encode_path(&lease.session));
        let released = self
            .call(
                "release the lease key",
                &url,
                Some(""),
                self.request_timeout,
            )
            .and_then(|answer| {
                answer.expect_status(200)?;
                answer.parse_bool()
            });
        match released {
            Ok(true) => debug!("lease: released Consul key {}", self.key),
            Ok(false) => debug!(
                "lease: Consul key {} was not held by session {}",
                self.key, lease.session
            ),
            Err(e) => {
                // Destroying the session frees the key too, after the lock
                // delay; say so only if that works (else its error says it).
                self.destroy_session(&lease.session, self.request_timeout)?;
                warn!(
                    "lease: {e}; destroyed the session instead, so other candidates wait the \
                     lock delay ({:?})",
                    self.lock_delay
                );
                return Ok(());
            }
        }
        self.destroy_session(&lease.session, self.request_timeout)
    }

    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error> {
        let (url, timeout) = if index == 0 {
            (self.kv_url(), self.request_timeout)
        } else {
            // Consul adds up to wait/16 of jitter to a blocking query.
            let url = format!(
                "{}?index={index}&wait={}ms",
                self.kv_url(),
                wait.as_millis()
            );
            (url, wait + wait / 16 + self.request_timeout)
        };
        let (entry, answer) = self.read_key("read the lease key", &url, timeout)?;
        let new_index = match answer.index {
            Some(Some(i)) => i,
            Some(None) => {
                return Err(answer.bad("the X-Consul-Index header is not a number".into()))
            }
            None => return Err(answer.bad("the X-Consul-Index header is missing".into())),
        };
        // Consul's rules for blocking queries: an index that went backwards
        // starts over, and an index is never below 1 (0 would not block).
        let new_index = if new_index < index {
            1
        } else {
            new_index.max(1)
        };
        let primary = match entry {
            None => None,
            Some(entry) if entry.session.as_deref().unwrap_or("").is_empty() => None,
            Some(entry) => Some(self.decode_primary(&answer, &entry)?),
        };
        Ok((primary, new_index))
    }
}

/// One entry of Consul's answer to `GET /v1/kv/<key>`.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    /// Base64 of the stored bytes; `null` when empty.
    #[serde(rename = "Value")]
    value: Option<String>,
    /// The session holding the lock, absent when unlocked.
    #[serde(rename = "Session")]
    session: Option<String>,
}

/// The lease key's value as this and Go's LiteFS write it.
#[derive(Deserialize)]
struct RawPrimaryInfo {
    #[serde(default)]
    hostname: String,
    #[serde(rename = "advertise-url", default)]
    advertise_url: String,
}

/// Consul's answer to one request.
struct Answer {
    action: &'static str,
    url: String,
    status: u16,
    /// The X-Consul-Index header: absent, or present and maybe a number.
    index: Option<Option<u64>>,
    body: String,
}

impl Answer {
    fn bad(&self, message: String) -> Error {
        Error::BadResponse {
            action: self.action,
            url: self.url.clone(),
            message,
        }
    }

    fn status_error(&self) -> Error {
        Error::Status {
            action: self.action,
            url: self.url.clone(),
            status: self.status,
            body: snippet(&self.body),
        }
    }

    fn expect_status(&self, status: u16) -> Result<(), Error> {
        if self.status == status {
            Ok(())
        } else {
            Err(self.status_error())
        }
    }

    /// Parses a JSON body (YAML is a superset of JSON for what Consul
    /// sends, so serde_yaml reads it).
    fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        if self.body.trim().is_empty() {
            return Err(self.bad("the answer is empty".to_string()));
        }
        serde_yaml::from_str(&self.body).map_err(|e| {
            self.bad(format!(
                "expected JSON ({e}); the answer was: {}",
                snippet(&self.body)
            ))
        })
    }

    /// Parses a body of `true` or `false`.
    fn parse_bool(&self) -> Result<bool, Error> {
        match self.body.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.bad(format!(
                "expected true or false; the answer was: {}",
                snippet(&self.body)
            ))),
        }
    }
}

/// A ureq failure said the way an operator reads it.
fn describe_ureq_error(e: ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => {
            format!("no answer within {timeout:.1?} (is Consul overloaded or hung?)")
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is Consul running there?)".to_string()
        }
        ureq::Error::ConnectionFailed => "connection failed (is Consul running there?)".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        e => e.to_string(),
    }
}

/// The start of a body, on one line, for error messages.
fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= MAX {
        line
    } else {
        let cut: String = line.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// Percent-encodes `text` for a URL path or query value, keeping `/` so a
/// Consul key's folders stay folders.
fn encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes standard base64 (padding optional), as Consul encodes KV values.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let data = text.trim().trim_end_matches('=').as_bytes();
    if data.len() % 4 == 1 {
        return Err(format!("{} characters cannot be base64", text.trim().len()));
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v =
                sextet(c).ok_or_else(|| format!("{:?} is not a base64 character", c as char))?;
            bits |= v << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// A role change reported by the lease thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This node holds the lease: it is the primary.
    Primary,
    /// Another node is primary; replicate from it.
    Replica(PrimaryInfo),
    /// No node is known to be primary (none holds the lease, or Consul
    /// cannot be asked). This node must not accept writes.
    NoPrimary,
}

/// Runs `leaser` on a thread named `lease` and sends a [`LeaseEvent`] on
/// `events` each time this node's role changes (never the same event twice
/// in a row). A `candidate` takes the lease whenever no node holds it.
///
/// Setting `stop` (or dropping the receiver) ends the thread; a held lease
/// is released first so another candidate takes over at once. A node that
/// does not hold the lease notices `stop` within [`WATCH_WAIT`].
pub fn spawn_lease_thread(
    leaser: Box<dyn Leaser>,
    candidate: bool,
    events: Sender<LeaseEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let driver = Driver {
        leaser,
        candidate,
        events,
        stop,
        last_event: None,
        receiver_gone: false,
        trouble: Trouble::new("Consul"),
        acquire_trouble: Trouble::new("taking the lease"),
    };
    thread::Builder::new()
        .name("lease".to_string())
        .spawn(move || driver.run())
}

/// The lease thread's state.
struct Driver {
    leaser: Box<dyn Leaser>,
    candidate: bool,
    events: Sender<LeaseEvent>,
    stop: Arc<AtomicBool>,
    last_event: Option<LeaseEvent>,
    receiver_gone: bool,
    /// Failures to reach Consul: watching, renewing, releasing.
    trouble: Trouble,
    /// Failures to take the lease, tracked apart so that a node allowed to
    /// read the key but not to take it logs that once, not on every turn.
    acquire_trouble: Trouble,
}

impl Driver {
    fn run(mut self) {
        // The index of the last watch answer; 0 asks without blocking.
        let mut index = 0;
        // Whether to try to take the lease before the next watch.
        let mut try_acquire = self.candidate;
        // The key looked free but the lock was refused (lock delay): watch
        // only briefly before trying again.
        let mut retry_soon = false;
        // A lease this node stepped down from without releasing it.
        let mut stale: Option<Lease> = None;

        while !self.should_stop() {
            // A lease this node stepped down from (it could not renew) may
            // still hold the key: free it before anything else, so the key
            // does not wait for the TTL and this node never follows itself
            // as a replica. Once Consul has surely expired it (twice the
            // TTL), stop trying.
            if let Some(lease) = stale.take() {
                match self.leaser.release(lease.clone()) {
                    Ok(()) => {
                        self.trouble.succeeded();
                        info!("lease: released the lease this node stepped down from");
                    }
                    Err(e) if surely_expired(&lease) => {
                        debug!("lease: {e}; the session has expired by now");
                    }
                    Err(e) => {
                        let pause = self.trouble.failed(&e);
                        stale = Some(lease);
                        self.sleep_until(Instant::now() + pause);
                        continue;
                    }
                }
            }

            if try_acquire {
                try_acquire = false;
                match self.leaser.acquire() {
                    Ok(Some(lease)) => {
                        self.acquire_trouble.succeeded();
                        stale = self.hold(lease).or(stale);
                        // Try again at once: the key may be free.
                        try_acquire = self.candidate;
                        index = 0;
                        retry_soon = false;
                        continue;
                    }
                    Ok(None) => {
                        self.acquire_trouble.succeeded();
                        retry_soon = true;
                    }
                    Err(e) => {
                        // Watch anyway, to follow whoever is primary; the
                        // next attempt comes when the watch again finds the
                        // key free, which paces the retries.
                        self.acquire_trouble.failed(&e);
                        retry_soon = false;
                    }
                }
            }

            let wait = if retry_soon {
                ACQUIRE_RETRY_WAIT
            } else {
                WATCH_WAIT
            };
            let started = Instant::now();
            match self.leaser.primary(index, wait) {
                Ok((primary, new_index)) => {
                    self.trouble.succeeded();
                    let unchanged = new_index == index;
                    index = new_index;
                    match primary {
                        Some(primary) => {
                            retry_soon = false;
                            self.send(LeaseEvent::Replica(primary));
                        }
                        None => {
                            self.send(LeaseEvent::NoPrimary);
                            try_acquire = self.candidate;
                        }
                    }
                    // An answer that neither changed nor waited would make
                    // this loop spin against a misbehaving server.
                    if unchanged && started.elapsed() < wait / 2 {
                        self.sleep_until(Instant::now() + MIN_BACKOFF);
                    }
                }
                Err(e) => {
                    let pause = self.trouble.failed(&e);
                    index = 0;
                    if self.last_event.is_none()
                        || self.trouble.failing_for() >= WATCH_FAILURE_GRACE
                    {
                        self.send(LeaseEvent::NoPrimary);
                    }
                    self.sleep_until(Instant::now() + pause);
                }
            }
        }

        if let Some(lease) = stale {
            if let Err(e) = self.leaser.release(lease) {
                debug!("lease: {e}");
            }
        }
    }

    /// Holds `lease` until it is lost, cannot be renewed in time, or the
    /// thread stops. Returns a lease that was given up without being
    /// released (to release once Consul answers again).
    fn hold(&mut self, mut lease: Lease) -> Option<Lease> {
        self.send(LeaseEvent::Primary);
        // When to try again after a failed renewal; None after a success.
        let mut retry_at: Option<Instant> = None;
        loop {
            if self.should_stop() {
                match self.leaser.release(lease) {
                    Ok(()) => info!("lease: released the lease; another candidate can take over"),
                    Err(e) => warn!(
                        "lease: could not release the lease ({e}); other candidates must wait \
                         for it to expire"
                    ),
                }
                return None;
            }
            let step_down_at = lease.step_down_at();
            let next = retry_at.or(lease.renew_due());
            let wake = match (next, step_down_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(wake) = wake else {
                // A lease that never expires: nothing to do until stopped.
                self.sleep_until(Instant::now() + WATCH_WAIT);
                continue;
            };
            if !self.sleep_until(wake) {
                continue;
            }
            if step_down_at.is_some_and(|at| Instant::now() >= at) {
                warn!(
                    "lease: could not renew the lease for half its TTL; no longer primary \
                     (stepping down before another node could take over)"
                );
                self.send(LeaseEvent::NoPrimary);
                return Some(lease);
            }
            match crate::metrics::lease_renewal(self.leaser.renew(&mut lease)) {
                Ok(()) => {
                    retry_at = None;
                    self.trouble.succeeded();
                }
                Err(e @ Error::Lost { .. }) => {
                    warn!("lease: {e}; no longer primary");
                    self.send(LeaseEvent::NoPrimary);
                    return None;
                }
                Err(e) => {
                    let pause = self.trouble.failed(&e);
                    retry_at = Some(Instant::now() + pause);
                }
            }
        }
    }

    fn should_stop(&self) -> bool {
        self.receiver_gone || self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`; false if the thread was told to stop first.
    fn sleep_until(&self, deadline: Instant) -> bool {
        loop {
            if self.should_stop() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(STOP_CHECK));
        }
    }

    /// Sends `event` unless it is the last one sent.
    fn send(&mut self, event: LeaseEvent) {
        if self.last_event.as_ref() == Some(&event) {
            return;
        }
        match &event {
            LeaseEvent::Primary => info!("lease: this node is now the primary"),
            LeaseEvent::Replica(p) => {
                info!(
                    "lease: the primary is {} at {}",
                    p.hostname, p.advertise_url
                )
            }
            LeaseEvent::NoPrimary => info!("lease: no primary"),
        }
        if self.events.send(event.clone()).is_err() {
            debug!("lease: the event receiver is gone; stopping the lease thread");
            self.receiver_gone = true;
        }
        self.last_event = Some(event);
    }
}

/// Whether Consul has certainly invalidated `lease`'s session by now: it
/// keeps a session between one and two TTLs after its last renewal.
fn surely_expired(lease: &Lease) -> bool {
    lease
        .ttl
        .and_then(|ttl| lease.renewed_at.checked_add(ttl * 2))
        .is_some_and(|at| Instant::now() >= at)
}

/// Failures in a row: logged once when they start and once when they end,
/// with a capped, doubling pause between retries.
struct Trouble {
    /// What works again when the failures end, for the log.
    what: &'static str,
    since: Option<Instant>,
    backoff: Duration,
}

impl Trouble {
    fn new(what: &'static str) -> Trouble {
        Trouble {
            what,
            since: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// Records a failure; returns how long to wait before retrying.
    fn failed(&mut self, e: &Error) -> Duration {
        if self.since.is_none() {
            warn!("lease: {e}; retrying with backoff (repeats are logged at debug level)");
            self.since = Some(Instant::now());
        } else {
            debug!("lease: {e}");
        }
        let pause = self.backoff.max(MIN_BACKOFF);
        self.backoff = (pause * 2).min(MAX_BACKOFF);
        pause
    }

    /// Records a success.
    fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            info!(
                "lease: {} works again after {:.1?} of failures",
                self.what,
                since.elapsed()
            );
        }
        self.backoff = MIN_BACKOFF;
    }

    /// How long calls have been failing (zero when they work).
    fn failing_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("Zm9vYg").unwrap(), b"foob");
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            crate::json::string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
        let value = format!(
            "{{\"hostname\": {}, \"advertise-url\": {}}}",
            crate::json::string("we\"ird\\host"),
            crate::json::string("http://x:1")
        );
        let raw: RawPrimaryInfo = serde_yaml::from_str(&value).unwrap();
        assert_eq!(raw.hostname, "we\"ird\\host");
        assert_eq!(raw.advertise_url, "http://x:1");
    }

    #[test]
    fn compact_json_from_other_writers_parses() {
        let raw: RawPrimaryInfo =
            serde_yaml::from_str(r#"{"hostname":"n1","advertise-url":"http://n1:20202"}"#).unwrap();
        assert_eq!(raw.hostname, "n1");
        assert_eq!(raw.advertise_url, "http://n1:20202");
        let entries: Vec<KvEntry> = serde_yaml::from_str(
            r#"[{"LockIndex":1,"Key":"litefs/primary","Flags":0,"Value":null,"CreateIndex":5,"ModifyIndex":6}]"#,
        )
        .unwrap();
        assert_eq!(entries[0].key, "litefs/primary");
        assert!(entries[0].value.is_none() && entries[0].session.is_none());
    }

    #[test]
    fn keys_are_percent_encoded_except_folders() {
        assert_eq!(encode_path("litefs/primary"), "litefs/primary");
        assert_eq!(encode_path("a b?c&d"), "a%20b%3Fc%26d");
    }

    #[test]
    fn lease_deadlines_follow_the_ttl() {
        let now = Instant::now();
        let lease = Lease {
            session: "s".into(),
            ttl: Some(Duration::from_secs(12)),
            renewed_at: now,
        };
        assert_eq!(lease.renew_due(), Some(now + Duration::from_secs(4)));
        assert_eq!(lease.step_down_at(), Some(now + Duration::from_secs(6)));
        let forever = Lease { ttl: None, ..lease };
        assert_eq!(forever.renew_due(), None);
        assert_eq!(forever.step_down_at(), None);
    }
}
