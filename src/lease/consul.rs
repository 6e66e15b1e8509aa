//! The Consul side of the lease: a session (TTL, lock delay, behavior
//! `delete`) that locks a KV key whose value names the primary, renewed by
//! the holder and watched by everyone else with blocking queries; and the
//! small pieces of Consul's HTTP API this needs (answers, JSON, base64,
//! percent-encoding). See `lease.rs` for the timing rules.

use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::Deserialize;

use super::{Error, Lease, Leaser, PrimaryInfo};
use crate::config::ConsulConfig;

mod sync_set;

pub use sync_set::{SyncCandidate, SyncSet, SyncSetWriter};

/// Upper bound for a Consul request that is not a blocking query.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long before the step-down deadline a renewal must have ended.
const RENEW_MARGIN: Duration = Duration::from_millis(100);

/// Largest answer read from Consul.
const MAX_BODY: u64 = 1 << 20;

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
    /// With synchronous replication: this candidate, which reads the
    /// in-sync set before it takes the lease (`consul/sync_set.rs`).
    sync_candidate: Option<SyncCandidate>,
}

impl ConsulLeaser {
    /// A leaser for the lease described by `consul`; `me` is what this node
    /// writes into the key when it becomes primary.
    pub fn new(consul: &ConsulConfig, me: PrimaryInfo) -> ConsulLeaser {
        // A fifth of the TTL: a hung request ends well before the holder
        // has to step down (renewals are further bounded by that deadline).
        let request_timeout =
            (consul.ttl / 5).clamp(Duration::from_millis(100), MAX_REQUEST_TIMEOUT);
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
            sync_candidate: None,
        }
    }

    /// Reads the in-sync set before each attempt to take the lease, as
    /// `candidate` (see `consul/sync_set.rs`).
    pub fn with_sync_candidate(mut self, candidate: SyncCandidate) -> ConsulLeaser {
        self.sync_candidate = Some(candidate);
        self
    }

    /// Sends `DELETE url` and reads the answer.
    fn delete(&self, url: &str) -> Result<Answer, Error> {
        self.call_with("delete a key", url, Method::Delete, self.request_timeout)
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
        let method = match put {
            None => Method::Get,
            Some(body) => Method::Put(body),
        };
        self.call_with(action, url, method, timeout)
    }

    /// `call` with any method.
    fn call_with(
        &self,
        action: &'static str,
        url: &str,
        method: Method<'_>,
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let result = match method {
            Method::Get => self
                .agent
                .get(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
            Method::Put(body) => self
                .agent
                .put(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .send(body),
            Method::Delete => self
                .agent
                .delete(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
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
        if !self.may_take_lease()? {
            return Ok(None);
        }
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

/// A request's method (and a PUT's body).
enum Method<'a> {
    Get,
    Put(&'a str),
    Delete,
}

/// One entry of Consul's answer to `GET /v1/kv/<key>`.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    /// The index of the entry's last change (for check-and-set).
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
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
}
