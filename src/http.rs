//! Replication over HTTP: the primary's server (std::net) that streams LTX
//! files to replicas, the replica's client that receives them, and the wire
//! format between the two (ARCHITECTURE.md, "Replication stream").
//!
//! - [`Server`]: `POST /stream` (the replication stream), `GET /info`,
//!   `GET /metrics` (Prometheus, see `crate::metrics`), `POST /import` and
//!   `GET /export`.
//! - [`stream_from_primary`]: one stream. Each LTX frame's header is
//!   checked before a byte is written, the file is received into the
//!   store's `incoming/` and handed to the caller's [`Receivers`], which
//!   in litefs queue it for the apply thread (`node/replica.rs`); the
//!   position sent at each connect is the received one.
//! - [`run_replica_loop`]: streams until stopped, reconnecting with backoff.

mod auth;

pub use auth::bearer as auth_header;
mod client;
mod frames;
mod server;
mod wire;

pub use client::{
    run_replica_loop, run_replica_loop_with, send_ack, stream_from_primary, DeleteFn, ReceiveFn,
    Receivers, RetryOptions,
};
pub use frames::read_frames;
pub use server::{
    parse_request_head, percent_encode, LeaseInfo, Limits, Server, Stats, HEAD_TIMEOUT,
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT,
};
pub use wire::{
    format_positions, parse_positions, CONTENT_TYPE, HEARTBEAT_INTERVAL, IDLE_TIMEOUT,
    MAX_DATABASE_SIZE, MAX_LTX_LEN, MAX_NAME_LEN, MAX_REQUEST_BODY,
};

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::escape_controls;
use crate::store;

/// An error of the replication server or client; each says which address,
/// URL or database it is about.
#[derive(Debug)]
pub enum Error {
    /// The server could not listen on `addr`.
    Bind { addr: String, reason: String },
    /// A primary URL that cannot be used.
    BadUrl { url: String, reason: String },
    /// The request to the primary failed: connecting, sending, or reading
    /// the response head.
    Request {
        url: String,
        source: Box<ureq::Error>,
    },
    /// The primary's TLS certificate does not verify against the CA
    /// (`http.tls-ca`): another CA signed it, or it names another host.
    /// Retried like any connection failure; never a fallback to http.
    Certificate { url: String, reason: String },
    /// The primary answered with a status other than 200.
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The primary sent something that is not a valid stream.
    Protocol { url: String, reason: String },
    /// Reading the stream failed; `what` says what was being read.
    Read {
        url: String,
        what: String,
        source: io::Error,
    },
    /// Nothing, not even a heartbeat, arrived for `idle`.
    IdleTimeout { url: String, idle: Duration },
    /// The primary ended the stream with an error frame.
    PrimaryError { url: String, message: String },
    /// The primary closed the stream without saying why.
    Closed { url: String },
    /// Received files of `db` could not be applied and were dropped: the
    /// stream starts again from the replica's position.
    Resync { url: String, db: String },
    /// A local file operation failed.
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The store refused to create a database or apply a received file.
    Store { db: String, source: store::Error },
}

impl Error {
    /// Whether retrying cannot fix this without an operator: the primary
    /// refuses this node's token (401, 403), or storing what it sent failed
    /// on a local I/O error. These are what `exit-on-error` makes fatal.
    pub fn needs_operator(&self) -> bool {
        match self {
            Error::Refused {
                status: 401 | 403, ..
            } => true,
            Error::Io { .. } => true,
            Error::Store { source, .. } => source.is_local_io(),
            _ => false,
        }
    }

    /// Whether storing what the primary sent failed for lack of space in
    /// the data directory: retried with backoff, one WARN per episode.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => store::is_disk_full_io(source),
            Error::Store { source, .. } => source.is_disk_full(),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, reason } => {
                write!(f, "cannot listen for HTTP on {addr}: {reason}")
            }
            Error::BadUrl { url, reason } => write!(f, "bad primary URL {url:?}: {reason}"),
            Error::Request { url, source } => write!(f, "request to {url} failed: {source}"),
            Error::Certificate { url, reason } => write!(
                f,
                "refusing {url}: {reason}; nothing is sent to or received from it"
            ),
            Error::Refused {
                url,
                status,
                message,
            } => write!(f, "{url} answered {status}: {}", escape_controls(message)),
            Error::Protocol { url, reason } => {
                write!(f, "bad replication stream from {url}: {reason}")
            }
            Error::Read { url, what, source } => {
                write!(f, "reading {what} from {url} failed: {source}")
            }
            Error::IdleTimeout { url, idle } => write!(
                f,
                "nothing received from {url} for {} s, not even a heartbeat: the link is dead",
                idle.as_secs()
            ),
            Error::PrimaryError { url, message } => {
                write!(
                    f,
                    "{url} ended the replication stream: {}",
                    escape_controls(message)
                )
            }
            Error::Closed { url } => {
                write!(f, "{url} closed the replication stream without a reason")
            }
            Error::Resync { url, db } => write!(
                f,
                "database {db}: received LTX files could not be applied and were dropped; \
                 asking {url} again from this replica's position"
            ),
            Error::Io { what, path, source } => {
                write!(f, "{what} ({}): {source}", path.display())
            }
            // The store's errors name the database already.
            Error::Store { source, .. } => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Request { source, .. } => Some(source.as_ref()),
            Error::Read { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::Store { source, .. } => Some(source),
            _ => None,
        }
    }
}
