//! The store's error type: every variant says which database, file or
//! TXID, and where a person has to act, what to do.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::{ltx, sqlite};

/// An error of the store; every variant says which database, file or TXID.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed; `what` says what was being done.
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A name that cannot be a database name.
    InvalidName { name: String, reason: String },
    /// The node id file does not hold a hexadecimal u64.
    InvalidNodeId { path: PathBuf, content: String },
    /// A write to a database file was refused before reaching the file.
    InvalidWrite {
        db: String,
        offset: u64,
        len: usize,
        reason: String,
    },
    /// A database file is not a SQLite database litefs can handle.
    InvalidDatabase {
        db: String,
        path: PathBuf,
        reason: String,
    },
    /// An LTX file could not be read or written.
    Ltx {
        db: String,
        path: PathBuf,
        source: ltx::Error,
    },
    /// A hot rollback journal could not be read.
    Journal {
        db: String,
        path: PathBuf,
        source: sqlite::Error,
    },
    /// An LTX file was not applied because it does not fit the database;
    /// nothing was changed.
    Refused {
        db: String,
        path: PathBuf,
        reason: String,
    },
    /// The database file does not match the position of its newest LTX file.
    ChecksumMismatch {
        db: String,
        txid: u64,
        ltx_checksum: u64,
        file_checksum: u64,
        ltx_path: PathBuf,
    },
    /// The database file changed while litefs read it, outside a transaction
    /// litefs knows about.
    Changed { db: String, reason: String },
    /// The database has no transaction yet, so there is nothing to snapshot.
    NoTransactions { db: String },
    /// Writing a snapshot to its destination failed.
    Snapshot { db: String, source: ltx::Error },
    /// A database's files are damaged in a way litefs cannot repair with
    /// certainty (see `damage.rs`): `path` is the file, `problem` what is
    /// wrong with it, `remedy` what to do.
    Damaged {
        db: String,
        path: PathBuf,
        problem: String,
        remedy: String,
    },
    /// The database was refused at start-up (see [`Store::refused`]).
    RefusedAtStart { db: String, reason: String },
}

impl Error {
    /// Whether this is a local I/O failure (disk full, EIO, permissions)
    /// rather than a file or database that does not fit.
    pub fn is_local_io(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Ltx {
                    source: ltx::Error::Io(_),
                    ..
                }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, path, source } => {
                write!(f, "{what} ({}): {source}", path.display())
            }
            Error::InvalidName { name, reason } => {
                write!(f, "invalid database name {name:?}: {reason}")
            }
            Error::InvalidNodeId { path, content } => write!(
                f,
                "node id file {} holds {content:?}, expected a hexadecimal number; \
                 delete the file to get a new node id",
                path.display()
            ),
            Error::InvalidWrite {
                db,
                offset,
                len,
                reason,
            } => write!(
                f,
                "database {db}: refused write of {len} bytes at offset {offset}: {reason}"
            ),
            Error::InvalidDatabase { db, path, reason } => {
                write!(f, "database {db} ({}): {reason}", path.display())
            }
            Error::Ltx { db, path, source } => {
                // The path is said here; do not repeat the one inside.
                let source = match source {
                    ltx::Error::File { source, .. } => source.as_ref(),
                    other => other,
                };
                write!(f, "database {db}: LTX file {}: {source}", path.display())
            }
            Error::Journal { db, path, source } => {
                let source = match source {
                    sqlite::Error::File { source, .. } => source.as_ref(),
                    other => other,
                };
                write!(
                    f,
                    "database {db}: cannot read the rollback journal {}: {source}",
                    path.display()
                )
            }
            Error::Refused { db, path, reason } => write!(
                f,
                "database {db}: refused to apply {}: {reason}",
                path.display()
            ),
            Error::ChecksumMismatch {
                db,
                txid,
                ltx_checksum,
                file_checksum,
                ltx_path,
            } => write!(
                f,
                "database {db}: the database file does not match TXID {txid:016x}: \
                 its checksum is {file_checksum:016x}, the newest LTX file {} says \
                 {ltx_checksum:016x}; the file was changed outside litefs or a \
                 transaction was lost. Restore the database (or remove its directory \
                 to start empty) before starting again",
                ltx_path.display()
            ),
            Error::Changed { db, reason } => write!(f, "database {db}: {reason}"),
            Error::NoTransactions { db } => write!(
                f,
                "database {db}: no transaction has been recorded yet, nothing to snapshot"
            ),
            Error::Snapshot { db, source } => {
                write!(f, "database {db}: writing a snapshot: {source}")
            }
            Error::Damaged {
                db,
                path,
                problem,
                remedy,
            } => write!(f, "database {db}: {}: {problem}; {remedy}", path.display()),
            Error::RefusedAtStart { db, reason } => write!(
                f,
                "database {db} was refused at start-up and is not served: {reason}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Ltx { source, .. } => Some(source),
            Error::Journal { source, .. } => Some(source),
            Error::Snapshot { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Builds a closure turning an `io::Error` into `Error::Io` with context.
pub(super) fn io_error<'a>(
    what: impl Into<String> + 'a,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    }
}
