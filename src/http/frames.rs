//! The frames of a replication stream, as a replica reads them: each
//! frame checked before it changes anything (an LTX frame's name, length
//! and header before a byte is written, the whole file verified before it
//! is handed on), so that a primary, a proxy or the link cannot make a
//! replica store what it should not (see `wire.rs` for the format).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::client::{ReceiveFn, Receivers};
use super::wire::{self, IDLE_TIMEOUT, MAX_LTX_LEN, MAX_NAME_LEN, MIN_LTX_LEN};
use super::Error;
use crate::store::{self, Store};

/// The buffer between the socket and the frame reader, and the one a
/// received LTX file is copied through.
pub(super) const READ_BUFFER: usize = 64 * 1024;
/// Numbers temporary files of received LTX files.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Reads frames from `reader` (the body of a stream from `url`) until
/// `stop` is set, the stream ends or a frame is refused, handing LTX files
/// and deletions to `receivers`. Never returns `Ok` for a stream that
/// ends: the primary never ends one on its own.
pub fn read_frames(
    reader: impl Read,
    url: &str,
    store: &Store,
    receivers: &mut Receivers<'_, '_>,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let url = url.to_string();
    let mut reader = FrameReader {
        reader,
        url: &url,
        frames: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        match reader.frame_type()? {
            None => return Err(Error::Closed { url }),
            Some(wire::FRAME_HEARTBEAT) => {
                // Dropped files were reported received: ask again.
                if let Some(db) = store.dbs().into_iter().find(|db| db.take_queue_dropped()) {
                    return Err(Error::Resync {
                        url,
                        db: db.name().to_string(),
                    });
                }
                store.note_caught_up(true);
            }
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
        let mut progress = crate::progress::Progress::start(
            format!("database {name}: receiving an LTX file from {}", self.url),
            Some(len),
        );
        progress.add(head.len() as u64);
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match self.reader.read(&mut buf[..want]) {
                Ok(0) => {
                    progress.finish(false);
                    return Err(self.protocol(format!(
                        "database {name}: the stream ended after {} of the {len} bytes \
                         of an LTX file",
                        len - left
                    )));
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    progress.finish(false);
                    let what = format!(
                        "an LTX file of database {name} (after {} of {len} bytes)",
                        len - left
                    );
                    return Err(self.read_error(err, &what));
                }
            };
            if let Err(err) = file.write_all(&buf[..n]) {
                progress.finish(false);
                return Err(io_error("writing a received LTX file", err));
            }
            left -= n as u64;
            progress.add(n as u64);
        }
        progress.finish(true);
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
