//! Following a primary: three threads per primary followed. The stream
//! thread receives LTX files and queues them durably in the store
//! (`Db::enqueue_ltx`); the apply thread takes them from the queue and
//! applies them under SQLite's locks (`Applier`); the ack thread tells the
//! primary what is queued durably (`POST /ack`, `http::send_ack`), the
//! newest position of each database at a time, at most ten times a
//! second, retrying each second while the primary cannot be told, and
//! ends with the stream thread. A primary with synchronous replication
//! (its stream's `Litefs-Ack: at-once`) is told at once, after each
//! queued file and after a failure too. A reader that holds the
//! database delays only the apply thread: the stream keeps receiving,
//! heartbeats flow, and the position the replica reports on reconnect is
//! what it has received, so nothing is sent twice.
//!
//! Locks and ordering: `gate` is held while a file is queued and while one
//! is applied (after SQLite's locks are taken, never while waiting for
//! them), and `stop` is set under it. So once `stop` returns, no file is
//! queued or applied on this task's account any more, even by an apply
//! thread still waiting in the kernel for a reader to let go.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error};

use super::Error;
use crate::fatal::Fatal;
use crate::fuse::Applier;
use crate::http;
use crate::lease::PrimaryInfo;
use crate::store::{self, Db, Position, Store};

/// A running replication from one primary.
pub(super) struct ReplicaTask {
    pub(super) url: String,
    shared: Arc<Shared>,
    stream: JoinHandle<()>,
    apply: JoinHandle<()>,
    /// Wakes the apply thread: a file was queued, or the task stops.
    wake: Sender<()>,
}

/// What the task's two threads and the node share.
struct Shared {
    /// Set (under `gate`) when the node stops following this primary.
    stop: AtomicBool,
    /// Set with `stop` when the apply thread must first apply everything
    /// queued (the node is about to become the primary).
    drain: AtomicBool,
    gate: Mutex<()>,
    /// Where a local I/O error while applying is reported (`exit-on-error`).
    fatal: Fatal,
}

impl Shared {
    fn gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl ReplicaTask {
    /// Starts following `primary`: its stream thread and its apply thread.
    pub(super) fn start(
        store: Arc<Store>,
        applier: Arc<Applier>,
        token: Option<String>,
        primary: &PrimaryInfo,
        retry: http::RetryOptions,
    ) -> Result<ReplicaTask, Error> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            gate: Mutex::new(()),
            fatal: retry.fatal.clone(),
        });
        let url = primary.advertise_url.clone();
        let (wake_tx, wake_rx) = crossbeam_channel::unbounded::<()>();
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<(String, Position)>();
        {
            let (url, token, tls) = (url.clone(), token.clone(), retry.tls.clone());
            let node = store.node_id();
            let at_once = retry.acks_at_once.clone();
            // What this node holds already, told first: a new primary
            // knows nothing of it, and a database no commit touches would
            // never be acknowledged (synchronous replication's in-sync set
            // needs every database, `store/acks.rs`).
            let held: Vec<(String, Position)> = store
                .dbs()
                .iter()
                .filter(|db| !db.name().contains('\n'))
                .map(|db| (db.name().to_string(), db.received_pos()))
                .collect();
            std::thread::Builder::new()
                .name("ack".into())
                .spawn(move || {
                    let to = AckTarget {
                        url: &url,
                        token: token.as_deref(),
                        tls: tls.as_ref(),
                        node,
                    };
                    ack_loop(&to, &at_once, held, &ack_rx)
                })
                .map_err(Error::Thread)?;
        }

        let ack_for_apply = ack_tx.clone();
        let stream = {
            let (store, shared, url) = (store.clone(), shared.clone(), url.clone());
            let applier = applier.clone();
            let wake_tx = wake_tx.clone();
            std::thread::Builder::new()
                .name("replica".into())
                .spawn(move || {
                    crate::priority::raise_for_replication("replica");
                    let mut enqueue =
                        |db: &Arc<Db>, path: &Path| -> Result<Position, store::Error> {
                            let _gate = shared.gate();
                            if shared.stopped() {
                                return Err(store::Error::Refused {
                                    db: db.name().to_string(),
                                    path: path.to_path_buf(),
                                    reason: "this node stopped following that primary".into(),
                                });
                            }
                            let pos = db.enqueue_ltx(path)?;
                            let _ = wake_tx.send(());
                            let _ = ack_tx.send((db.name().to_string(), pos));
                            Ok(pos)
                        };
                    // Under the gate, so no apply of that database is
                    // under way; its queued files go with it.
                    let mut delete = |name: &str| -> Result<(), store::Error> {
                        let _gate = shared.gate();
                        store.delete_db(name)?;
                        applier.forget_deleted(name);
                        Ok(())
                    };
                    let stop = &shared.stop;
                    http::run_replica_loop_with(
                        || Some(url.clone()),
                        token.as_deref(),
                        &store,
                        &mut http::Receivers {
                            receive: &mut enqueue,
                            delete: &mut delete,
                        },
                        stop,
                        &retry,
                    );
                })
                .map_err(Error::Thread)?
        };
        let apply = {
            let shared = shared.clone();
            let ack_tx = ack_for_apply;
            std::thread::Builder::new()
                .name("apply".into())
                .spawn(move || {
                    crate::priority::raise_for_replication("apply");
                    apply_loop(&store, &applier, &shared, &wake_rx, &ack_tx)
                })
                .map_err(Error::Thread)?
        };
        Ok(ReplicaTask {
            url,
            shared,
            stream,
            apply,
            wake: wake_tx,
        })
    }

    /// Stops following the primary. With `drain`, first waits until every
    /// received file is applied (the node is becoming the primary and must
    /// hold everything it was sent); that waits for readers, as a SQLite
    /// writer would. Without, files stay queued for the next task or the
    /// next start. Returns once nothing more is queued or applied on this
    /// task's account.
    pub(super) fn stop(self, drain: bool) {
        {
            let _gate = self.shared.gate();
            self.shared.drain.store(drain, Ordering::SeqCst);
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        let _ = self.wake.send(());
        // Draining: wait for the queue to empty. Otherwise the apply thread
        // ends at once, unless it waits in the kernel for a reader's lock;
        // it then finds `stop` set and applies nothing (see the gate).
        if drain || self.apply.is_finished() {
            let _ = self.apply.join();
        }
        // The stream thread ends at its next frame or heartbeat.
        if self.stream.is_finished() {
            let _ = self.stream.join();
        }
        debug!("stopped replicating from {}", self.url);
    }
}

/// Applies queued files in order, database by database, until stopped
/// (after draining the queue when `drain` is set).
/// How often the ack thread tells the primary at most, and how long it
/// waits before trying again when the primary could not be told.
const ACK_INTERVAL: Duration = Duration::from_millis(100);
const ACK_RETRY: Duration = Duration::from_secs(1);

/// Where the ack thread sends, and as which node.
struct AckTarget<'a> {
    url: &'a str,
    token: Option<&'a str>,
    tls: Option<&'a crate::tls::ClientTls>,
    node: u64,
}

/// The ack thread (see the module comment): sends `held` (every
/// database's received position when the task started), then what
/// `positions` brings,
/// at most once per `ACK_INTERVAL` (at once, while the primary asks for
/// that: `at_once`), until its sender, the stream thread's, is gone.
fn ack_loop(
    to: &AckTarget<'_>,
    at_once: &AtomicBool,
    held: Vec<(String, Position)>,
    positions: &Receiver<(String, Position)>,
) {
    let url = to.url;
    let mut unsent: std::collections::BTreeMap<String, Position> = held.into_iter().collect();
    let mut failing = false;
    let mut last_sent: Option<Instant> = None;
    loop {
        if unsent.is_empty() {
            match positions.recv() {
                Ok((name, pos)) => unsent.insert(name, pos),
                Err(_) => return,
            };
        }
        let wait = if failing {
            ACK_RETRY
        } else if at_once.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            ACK_INTERVAL
        };
        if let Some(due) = last_sent.map(|at| at + wait) {
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                match positions.recv_timeout(due - now) {
                    Ok((name, pos)) => {
                        unsent.insert(name, pos);
                        // A primary that waits for it: now, even after
                        // a failure (the primary may be back).
                        if at_once.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        while let Ok((name, pos)) = positions.try_recv() {
            unsent.insert(name, pos);
        }
        last_sent = Some(Instant::now());
        match http::send_ack(url, to.token, to.tls, to.node, &unsent) {
            Ok(()) => {
                unsent.clear();
                failing = false;
            }
            Err(e) => {
                if !failing {
                    debug!("cannot tell {url} what this replica holds: {e}");
                }
                failing = true;
            }
        }
    }
}

/// `dropped` takes each database whose queued files were dropped, to
/// tell the primary the position went back (the ack thread).
fn apply_loop(
    store: &Store,
    applier: &Applier,
    shared: &Shared,
    wake: &Receiver<()>,
    dropped: &Sender<(String, Position)>,
) {
    loop {
        let draining = shared.drain.load(Ordering::SeqCst);
        if shared.stopped() && !draining {
            return;
        }
        let mut applied = false;
        for db in store.dbs() {
            while db.front_queued().is_some() {
                if !apply_front(store, applier, &db, shared, dropped) {
                    return;
                }
                applied = true;
            }
        }
        if applied {
            // Everything received is applied: as current as the stream
            // (`.lag`). Idle rounds say nothing: the stream may be down.
            store.note_caught_up(false);
        }
        if shared.stopped() {
            // Draining, and every queue is empty: nothing more can be
            // queued once `stop` is set.
            return;
        }
        // Woken by the next queued file or by `stop`.
        if wake.recv().is_err() {
            return;
        }
    }
}

/// Applies the front file of `db`'s queue. False when the task was
/// stopped (without draining) while waiting for the locks.
fn apply_front(
    store: &Store,
    applier: &Applier,
    db: &Db,
    shared: &Shared,
    dropped: &Sender<(String, Position)>,
) -> bool {
    // Files this replica acknowledged are gone: the primary must know
    // (synchronous replication counts on them).
    let drop_queue = |path: &Path| {
        db.finish_queued(path, false);
        let _ = dropped.send((db.name().to_string(), db.received_pos()));
    };
    let lock = match applier.lock(db) {
        Ok(lock) => lock,
        Err(e) => {
            error!("db {}: cannot apply received LTX files: {e}", db.name());
            if e.is_local_io() {
                shared.fatal.report(format!("db {}: {e}", db.name()));
            }
            // Under the gate, as every change to the queue: the stream
            // thread's acknowledgement of a file queued now cannot come
            // after this one's lower position.
            let _gate = shared.gate();
            if let Some(path) = db.front_queued() {
                drop_queue(&path);
            }
            return true;
        }
    };
    let _gate = shared.gate();
    if shared.stopped() && !shared.drain.load(Ordering::SeqCst) {
        return false;
    }
    // Read the front again: it is what is queued now that the locks are held.
    let Some(path) = db.front_queued() else {
        return true;
    };
    let before = db.pos();
    let result = applier.apply(db, &path, &lock);
    // Readers may start again as soon as the pages are written.
    drop(lock);
    if let Err(e) = &result {
        if e.is_local_io() {
            shared.fatal.report(format!("db {}: {e}", db.name()));
        }
    }
    match result {
        Ok(pos) => {
            debug!(
                "db {}: applied a received LTX file, {before} -> {pos}",
                db.name()
            );
            db.finish_queued(&path, true);
        }
        Err(e) if e.is_disk_full() => {
            // The database is back at `before` (`Db::apply_ltx`); the
            // queue goes, which frees room, and the stream resumes from
            // `before` once there is room. One WARN per episode.
            store.disk().full(
                &format!("db {}: applying a received LTX file: {e}", db.name()),
                "this replica stops advancing (its position is kept) and the stream \
                 retries with backoff",
            );
            drop_queue(&path);
        }
        Err(e) => {
            error!(
                "db {}: a received LTX file could not be applied, so the files queued after \
                 it are dropped and the stream resynchronizes from {before}: {e}",
                db.name()
            );
            drop_queue(&path);
        }
    }
    true
}
