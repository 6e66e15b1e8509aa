//! One replication stream: the LTX files after a replica's position (or a
//! snapshot), then every new commit as it happens, and heartbeats when
//! idle, until the replica goes away, this node stops being the primary,
//! or the server shuts down. See the parent module for the threads.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::Conn;
use super::{Shared, COPY_BUFFER, SNAPSHOT_RETRY};
use crate::http::wire::{self, CONTENT_TYPE, HEARTBEAT_INTERVAL};
use crate::ltx;
use crate::store::{self, Db, Position};

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

/// How long a write to a replica may make no progress, and how long sent
/// bytes may stay unacknowledged (`TCP_USER_TIMEOUT`), before the replica
/// is taken for gone: its receiving thread reads continuously, so 30 s of
/// nothing is a dead or hostile peer, and heartbeats (one byte a second)
/// alone would never fill the socket buffer to make a write block.
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams to the replica at `peer` on `conn` until it ends (see the
/// module comment); writes the response head itself. Each frame and
/// heartbeat is flushed, through TLS too.
pub(super) fn serve_stream(
    shared: &Arc<Shared>,
    mut conn: Conn,
    peer: SocketAddr,
    replica: BTreeMap<String, Position>,
) {
    let peer = peer.to_string();
    if let Err(err) = conn
        .tcp()
        .set_write_timeout(Some(STREAM_WRITE_TIMEOUT))
        .and_then(|()| set_user_timeout(conn.tcp(), STREAM_WRITE_TIMEOUT))
    {
        log::debug!("replica {peer}: cannot set the write timeouts: {err}");
    }
    // Nothing more is read from a replica. rustls reads the socket when a
    // write is blocked; a read that cannot wait keeps a stuck replica to
    // the write timeout alone.
    conn.set_deadline(Some(Instant::now()));
    // This request's thread now only streams: replication work.
    crate::priority::raise_for_replication("stream");
    let number = shared.streams_started.fetch_add(1, Ordering::SeqCst);
    shared.streams_active.fetch_add(1, Ordering::SeqCst);
    // What the replica says it has, until more is sent.
    shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(number, (peer.clone(), replica.clone()));
    log::info!(
        "replica {peer} connected ({} databases listed)",
        replica.len()
    );
    let mut stream = Stream {
        shared,
        peer,
        out: Out {
            writer: BufWriter::with_capacity(COPY_BUFFER, conn),
            last_write: Instant::now(),
            broken: None,
        },
        replica: ReplicaPositions {
            number,
            positions: replica,
        },
        retry_snapshot: false,
        deletions_seen: None,
        listings: BTreeMap::new(),
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
    shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&number);
    shared.streams_active.fetch_sub(1, Ordering::SeqCst);
}

/// Sets `TCP_USER_TIMEOUT`: the kernel drops the connection when sent
/// data stays unacknowledged for `timeout`.
fn set_user_timeout(conn: &TcpStream, timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    super::socket::set_tcp_option(conn.as_raw_fd(), libc::TCP_USER_TIMEOUT, ms)
}

/// The network side of a stream.
struct Out {
    writer: BufWriter<Conn>,
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
    fn send_ltx(
        &mut self,
        name: &str,
        peer: &str,
        file: &mut impl Read,
        len: u64,
    ) -> Result<(), End> {
        self.writer.write_all(&wire::ltx_frame_header(name, len))?;
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut left = len;
        let mut progress = crate::progress::Progress::start(
            format!("database {name}: sending an LTX file to {peer}"),
            Some(len),
        );
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    progress.finish(false);
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
                    progress.finish(false);
                    return Err(End::Fatal(format!(
                        "database {name}: reading an LTX file to send failed: {err}"
                    )));
                }
            };
            if let Err(err) = self.writer.write_all(&buf[..n]) {
                progress.finish(false);
                return Err(err.into());
            }
            left -= n as u64;
            progress.add(n as u64);
        }
        let flushed = self.writer.flush();
        progress.finish(flushed.is_ok());
        flushed?;
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
pub(super) struct TempFile(pub(super) PathBuf);

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
pub(super) static SNAPSHOT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The most LTX files sent merged as one (`send_files_after`).
const MERGE_MAX_FILES: usize = 1024;
/// The read buffer of the file being merged (one at a time).
const MERGE_BUFFER: usize = 16 * 1024;
/// The most bytes of LTX files merged into one, which is held in memory.
const MERGE_MAX_BYTES: u64 = 4 << 20;

/// Finds a database's LTX file by its min TXID. Most of a primary's
/// commits are one-TXID files, found by name with one stat; a file that
/// covers several (a burst of WAL commits, a snapshot's 1-N file) is found
/// in the stream's listing of the directory (`Stream::listings`), which
/// is read again only when it lacks the TXID, so a directory that holds a
/// retention period's worth of files is not listed at every commit.
struct NextFiles<'a> {
    db: &'a Db,
    listing: &'a mut BTreeMap<u64, PathBuf>,
    /// The directory was listed during this lookup run.
    listed: bool,
}

impl NextFiles<'_> {
    fn find(&mut self, min_txid: u64) -> Result<Option<PathBuf>, End> {
        let single = self.db.ltx_dir().join(ltx::filename(min_txid, min_txid));
        if single.exists() {
            return Ok(Some(single));
        }
        if let Some(path) = self.listing.get(&min_txid) {
            if path.exists() {
                return Ok(Some(path.clone()));
            }
        }
        // Past the database's position there is no file yet: the end of
        // every chain, found without listing the directory.
        if self.listed || min_txid > self.db.pos().txid {
            return Ok(None);
        }
        let files = self
            .db
            .ltx_files()
            .map_err(|err| End::Fatal(err.to_string()))?;
        *self.listing = files.into_iter().map(|(min, _, p)| (min, p)).collect();
        self.listed = true;
        Ok(self.listing.get(&min_txid).cloned())
    }
}

/// What `send_files_after` did.
enum Chain {
    /// Sent every file there was (at least one).
    Sent,
    /// The files cannot bring the replica forward; the reason says why.
    Broken(String),
}

/// What a replica has, or will have once it applies what was sent: the
/// stream's own copy, and the same under the stream's `number` in
/// `Shared::streams` (`/info`), entered at connect.
struct ReplicaPositions {
    number: u64,
    positions: BTreeMap<String, Position>,
}

impl ReplicaPositions {
    /// The replica has been sent `name` up to `pos`.
    fn sent(&mut self, shared: &Shared, name: &str, pos: Position) {
        self.positions.insert(name.to_string(), pos);
        shared.update_stream_view(self.number, |sent| {
            sent.insert(name.to_string(), pos);
        });
    }

    /// The replica was told to delete `name`.
    fn deleted(&mut self, shared: &Shared, name: &str) {
        self.positions.remove(name);
        shared.update_stream_view(self.number, |sent| {
            sent.remove(name);
        });
    }
}

/// One replica's stream.
struct Stream<'a> {
    shared: &'a Shared,
    peer: String,
    out: Out,
    /// The position each database will have on the replica once it has
    /// applied what was sent.
    replica: ReplicaPositions,
    /// A snapshot failed because the database changed under it.
    retry_snapshot: bool,
    /// `Store::deletions` at the last `send_deletions` pass.
    deletions_seen: Option<u64>,
    /// Each database's LTX files by min TXID, as last listed (`NextFiles`).
    listings: BTreeMap<String, BTreeMap<u64, PathBuf>>,
}

impl Stream<'_> {
    /// Streams until the replica goes away (`Err(Gone)`), something fails
    /// (`Err(Fatal)`), or this node stops serving (`Ok(reason)`).
    fn run(&mut self) -> Result<String, End> {
        let store = self.shared.store.clone();
        let extra: &[(&str, &str)] = if store.acks().synchronous() {
            &[(wire::ACK_HEADER, wire::ACK_AT_ONCE)]
        } else {
            &[]
        };
        self.out
            .send(super::conn::response_head(200, CONTENT_TYPE, None, extra).as_bytes())?;
        for name in self.replica.positions.keys() {
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
            self.send_deletions()?;
            self.out.heartbeat_if_idle()?;
            let mut wait = HEARTBEAT_INTERVAL.saturating_sub(self.out.last_write.elapsed());
            if self.retry_snapshot {
                wait = wait.min(SNAPSHOT_RETRY);
            }
            seen = store.wait_for_change(seen, wait);
        }
    }

    /// Tells the replica to delete each database it has that was deleted
    /// here (a tombstone, see `store/delete.rs`); a database that is only
    /// unknown here is left alone.
    fn send_deletions(&mut self) -> Result<(), End> {
        let store = &self.shared.store;
        // Only when a database was deleted since the last pass (and once
        // at the start): a tombstone is a file to look for.
        let deletions = store.deletions();
        if self.deletions_seen == Some(deletions) {
            return Ok(());
        }
        self.deletions_seen = Some(deletions);
        let gone: Vec<String> = self
            .replica
            .positions
            .keys()
            .filter(|name| store.db(name).is_none() && store.is_deleted(name))
            .cloned()
            .collect();
        for name in gone {
            self.out.send(&wire::delete_frame(&name))?;
            self.replica.deleted(self.shared, &name);
            log::info!("told replica {} to delete database {name}", self.peer);
        }
        Ok(())
    }

    /// Sends what `db`'s replica lacks: the LTX files after its position
    /// when they lead on from it, a snapshot otherwise.
    fn sync_db(&mut self, db: &Arc<Db>) -> Result<(), End> {
        let primary = db.pos();
        if primary.txid == 0 {
            return Ok(());
        }
        let replica = self
            .replica
            .positions
            .get(db.name())
            .copied()
            .unwrap_or_default();
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
    /// A run of several files ready at once goes as one merged file (up to
    /// `MERGE_MAX_FILES` files and `MERGE_MAX_BYTES`; see `ltx/merge.rs`),
    /// so a replica that is behind catches up with one receive and one
    /// apply per run instead of one per transaction.
    fn send_files_after(&mut self, db: &Db, replica: Position) -> Result<Chain, End> {
        let name = db.name();
        let mut next_files = NextFiles {
            db,
            listing: self.listings.entry(name.to_string()).or_default(),
            listed: false,
        };
        let mut pos = replica;
        let mut sent = 0;
        loop {
            let mut run: Vec<(PathBuf, u64)> = Vec::new();
            let mut run_bytes = 0;
            let mut run_pos = pos;
            while run.len() < MERGE_MAX_FILES {
                let next = run_pos.txid + 1;
                let Some(path) = next_files.find(next)? else {
                    break;
                };
                let (header, trailer) = match ltx::read_header_and_trailer(&path) {
                    Ok(found) => found,
                    Err(err) => {
                        return Ok(Chain::Broken(format!(
                            "cannot read the LTX file for TXID {next:016x}: {err}"
                        )))
                    }
                };
                if header.pre_apply_checksum != run_pos.checksum {
                    return Ok(Chain::Broken(format!(
                        "{} starts from checksum {:016x}, not {:016x}: the replica's history \
                         differs from the primary's",
                        path.display(),
                        header.pre_apply_checksum,
                        run_pos.checksum
                    )));
                }
                let len = match fs::metadata(&path) {
                    Ok(md) => md.len(),
                    Err(err) => {
                        return Ok(Chain::Broken(format!(
                            "cannot read the size of {}: {err}",
                            path.display()
                        )))
                    }
                };
                if !run.is_empty() && run_bytes + len > MERGE_MAX_BYTES {
                    break;
                }
                run_bytes += len;
                run.push((path, len));
                run_pos = Position {
                    txid: header.max_txid,
                    checksum: trailer.post_apply_checksum,
                };
            }
            let files = run.len();
            if files == 0 {
                break;
            }
            if files == 1 {
                // Sent as it is (an LTX file never changes once named).
                let (path, len) = &run[0];
                let mut file = match File::open(path) {
                    Ok(file) => file,
                    Err(err) => {
                        return Ok(Chain::Broken(format!(
                            "cannot open {}: {err}",
                            path.display()
                        )))
                    }
                };
                self.out.send_ltx(name, &self.peer, &mut file, *len)?;
            } else {
                let mut merged = Vec::with_capacity(run_bytes as usize);
                // Opened one at a time, as the merge reaches each.
                let inputs = run.iter().map(|(path, _)| {
                    File::open(path).map(|f| io::BufReader::with_capacity(MERGE_BUFFER, f))
                });
                if let Err(err) = ltx::merge(inputs, &mut merged) {
                    return Ok(Chain::Broken(format!(
                        "cannot merge the {files} LTX files after TXID {:016x}: {err}",
                        pos.txid
                    )));
                }
                let len = merged.len() as u64;
                self.out
                    .send_ltx(name, &self.peer, &mut merged.as_slice(), len)?;
            }
            pos = run_pos;
            self.replica.sent(self.shared, name, pos);
            self.shared
                .ltx_files_sent
                .fetch_add(files as u64, Ordering::SeqCst);
            sent += files;
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
        self.out.send_ltx(name, &self.peer, &mut file, len)?;
        self.replica.sent(self.shared, name, pos);
        self.shared.snapshots_sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Opens a freshly written snapshot and reads its trailer.
pub(super) fn open_snapshot(path: &Path) -> Result<(File, u64, ltx::Trailer), String> {
    let (_, trailer) = ltx::read_header_and_trailer(path).map_err(|err| err.to_string())?;
    let file = File::open(path)
        .map_err(|err| format!("cannot open the snapshot {}: {err}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|err| format!("cannot read the size of {}: {err}", path.display()))?
        .len();
    Ok((file, len, trailer))
}
