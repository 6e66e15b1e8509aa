//! The node: start-up, the role state machine, and clean shutdown.
//!
//! `run` opens the store (which recovers every database: hot journals are
//! rolled back before anything is mounted), mounts the file system, starts
//! the HTTP server and the lease thread, then reacts to two kinds of event
//! on crossbeam channels: lease changes (become primary, follow a primary,
//! no primary known) and SIGINT/SIGTERM. Shutdown signals are blocked in
//! every thread and taken by one thread with `sigwait`, so no thread is
//! ever interrupted in the middle of a commit.
//!
//! On shutdown the node first stops accepting writes, then gives up the
//! lease (so another candidate takes over at once), then unmounts.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{debug, error, info, warn};

mod mount;
mod ready;
mod replica;

use crate::config::{Config, LeaseKind};
use crate::exec::{Exec, Next};
use crate::fatal::Fatal;
use crate::fuse::{Applier, LitefsFs};
use crate::http;
use crate::lease::{self, LeaseEvent, PrimaryInfo};
use crate::role::Role;
use crate::sdnotify::SdNotify;
use crate::store::{self, Store};
use mount::{is_root, mount, prepare_mount_dir, unmount};
use ready::Readiness;
use replica::ReplicaTask;

/// How often the main loop looks at readiness while nothing happens.
const READY_POLL: Duration = Duration::from_millis(100);

/// FUSE worker threads: enough that a slow request (an fsync) does not
/// stall every reader on a small machine.
const FUSE_THREADS: usize = 4;

/// Why the node could not start or stop cleanly.
#[derive(Debug)]
pub enum Error {
    /// The mount directory is a dead FUSE mount that could not be cleared.
    StaleMount {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Something is already mounted there.
    AlreadyMounted { path: PathBuf },
    /// The mount directory cannot be used.
    MountDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store failed to open or recover.
    Store(store::Error),
    /// The kernel refused the mount.
    Mount {
        path: PathBuf,
        source: std::io::Error,
        /// Whether `allow_other` was asked for.
        allow_other: bool,
    },
    /// Signal set-up failed.
    Signals(std::io::Error),
    /// The HTTP server could not start.
    Http(http::Error),
    /// A thread could not be started.
    Thread(std::io::Error),
    /// `exit-on-error`: a fatal lease or replication error stopped the node.
    Fatal(String),
    /// The mount could not be removed at shutdown.
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StaleMount { path, source } => write!(
                f,
                "{0} is a stale FUSE mount left by a litefs that did not exit cleanly, and \
                 clearing it failed ({source}); run `umount -f {0}` and start litefs again",
                path.display()
            ),
            Error::AlreadyMounted { path } => write!(
                f,
                "{} is already a mount point: is another litefs running on it? stop it, or \
                 choose another mount-dir",
                path.display()
            ),
            Error::MountDir { path, source } => {
                write!(f, "mount directory {}: {source}", path.display())
            }
            Error::Store(e) => write!(f, "{e}"),
            Error::Mount {
                path,
                source,
                allow_other,
            } => {
                write!(
                    f,
                    "cannot mount at {}: {} (litefs needs root or access to /dev/fuse, and the \
                     fuse3 package",
                    path.display(),
                    source.to_string().trim()
                )?;
                if *allow_other && !is_root() {
                    write!(
                        f,
                        "; fuse.allow-other needs `user_allow_other` in /etc/fuse.conf when \
                         litefs does not run as root, or set fuse.allow-other: false"
                    )?;
                }
                write!(f, ")")
            }
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::Http(e) => write!(f, "{e}"),
            Error::Thread(e) => write!(f, "cannot start a thread: {e}"),
            Error::Fatal(message) => write!(
                f,
                "stopped by exit-on-error: {message} (set exit-on-error: false to retry instead)"
            ),
            Error::Unmount { path, source } => write!(
                f,
                "cannot unmount {0}: {source}; close the programs using it and run `umount -f {0}`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Error {
        Error::Store(e)
    }
}

/// Why the main loop ended.
enum Stop {
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The lease thread ended, which it does only when told to.
    LeaseThreadGone,
    /// `exit-on-error` made an error fatal.
    Fatal(String),
    /// An `exec` command exited (or could not start): exit with this status.
    Exec(u8),
}

/// Runs the node until SIGINT or SIGTERM (or, with `exit-on-error`, a
/// fatal error; or, with `exec`, until the application exits). Returns the
/// status litefs exits with: 0, or the `exec` command's.
pub fn run(config: &Config) -> Result<u8, Error> {
    raise_open_file_limit();
    let signals = ShutdownSignals::block().map_err(Error::Signals)?;
    let mount_dir = config.mount_dir.clone();
    prepare_mount_dir(&mount_dir)?;

    crate::store::set_lost_keep(config.lost_keep);
    let store = Arc::new(Store::open(&config.data_dir)?);
    for db in store.dbs() {
        info!("database {}: position {}", db.name(), db.pos());
    }
    // A static candidate is the primary from the first moment, so writes
    // never see a read-only mount at start-up; every other node is
    // read-only until the lease says otherwise.
    let static_primary = config.lease.kind == LeaseKind::Static && config.lease.candidate;
    let role = Arc::new(if static_primary {
        Role::primary()
    } else {
        Role::replica(None)
    });
    store.acks().configure(config.replication);
    if config.replication.sync > 0 {
        info!(
            "synchronous replication: each commit waits up to {} ms for {} replicas to hold \
             it, then {}",
            config.replication.sync_timeout.as_millis(),
            config.replication.sync,
            match config.replication.sync_fallback {
                crate::config::SyncFallback::Fail => "fails",
                crate::config::SyncFallback::Async =>
                    "returns, and replication degrades to asynchronous",
            }
        );
    }
    let mut fs = LitefsFs::new(store.clone(), role.clone(), &mount_dir);
    fs.allow_passthrough(config.fuse.passthrough);
    fs.keep_cpus_awake(config.fuse.keep_cpus_awake);
    let applier = Arc::new(fs.applier());

    let server = http::Server::start_tls(
        &config.http_bind_addr(),
        store.clone(),
        config.http_token.clone(),
        config.http_tls.clone(),
        http::Limits::default(),
    )
    .map_err(Error::Http)?;
    if config.http_token.is_none() && !is_loopback_bind(&config.http_bind_addr()) {
        warn!(
            "without http.token, anyone who can reach {} can read every database; imports \
             are accepted only from this host; set http.token on every node (or listen on \
             127.0.0.1)",
            config.http_bind_addr()
        );
    }
    server.set_serving(role.is_primary());
    server.set_lease_info(http::LeaseInfo {
        kind: match config.lease.kind {
            LeaseKind::Consul => "consul",
            LeaseKind::Static => "static",
        },
        hostname: config.lease.hostname.clone(),
        ttl: config.lease.consul.as_ref().map(|consul| consul.ttl),
    });
    info!("replication server listening on {}", server.local_addr());

    let allow_other = config.fuse.allow_other.unwrap_or_else(is_root);
    let background = mount(fs, &mount_dir, allow_other)?;
    applier.set_notifier(background.notifier());
    let importer = applier.clone();
    server.set_importer(
        Box::new(move |db, src, role| importer.import(db, src, role)),
        role.clone(),
    );
    info!(
        "mounted {} (data in {})",
        mount_dir.display(),
        config.data_dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let retention = spawn_retention(
        store.clone(),
        config.retention,
        config.retention_interval(),
        stop.clone(),
    )?;
    let (fatal, fatal_rx) = if config.exit_on_error {
        Fatal::channel()
    } else {
        (Fatal::disabled(), crossbeam_channel::never())
    };
    let (lease_tx, lease_rx) = crossbeam_channel::unbounded();
    let node_id = format!("{:016x}", store.node_id());
    let sync_candidate =
        lease::SyncCandidate::new(node_id.clone(), config.replication.sync_failover);
    let sync_set = lease::sync_set_writer(&config.lease, node_id).map(Arc::new);
    if let (Some(writer), true) = (&sync_set, config.replication.sync > 0) {
        let writer = writer.clone();
        store
            .acks()
            .set_publisher(Box::new(move |set, first| writer.publish(set, first)));
    }
    // A node without synchronous replication takes no notice of a set
    // (a primary of its kind deletes any left).
    let sync_candidate = (config.replication.sync > 0).then_some(sync_candidate);
    let lease_thread = lease::spawn_lease_thread_with(
        lease::leaser_for_node(&config.lease, sync_candidate),
        lease::LeaseOptions::from_config(&config.lease, fatal.clone()),
        lease_tx,
        stop.clone(),
    )
    .map_err(Error::Thread)?;
    let signal_rx = signals.spawn_waiter().map_err(Error::Thread)?;

    let mut roles = Roles {
        store: store.clone(),
        role: role.clone(),
        server: &server,
        applier,
        token: config.http_token.clone(),
        retry: http::RetryOptions {
            max_backoff: config
                .lease
                .reconnect_delay
                .unwrap_or(http::RetryOptions::default().max_backoff),
            fatal,
            tls: config.http_tls_ca.clone(),
            acks_at_once: Arc::default(),
        },
        replica: None,
        systemd: Readiness::new(SdNotify::from_env(), role.is_primary()),
        sync_set: sync_set.filter(|_| config.replication.sync == 0),
    };
    roles.systemd.check(&role, &store);
    let mut exec = Exec::new(&config.exec, config.lease.candidate);
    let exec_exits = exec.exits().clone();
    let watchdog = roles.systemd.notify.watchdog_interval();
    let ticks = crossbeam_channel::tick(watchdog.unwrap_or(READY_POLL).min(READY_POLL));
    let idle = crossbeam_channel::never();
    let mut last_watchdog = Instant::now();
    let stopped_by = loop {
        if exec.waiting()
            && roles
                .systemd
                .exec_may_start(config.exec_wait, &role, &store)
        {
            if let Next::Exit(status) = exec.start_next() {
                break Stop::Exec(status);
            }
        }
        // Ticks while systemd or exec wait for readiness, or for the
        // watchdog; otherwise only events wake the loop.
        let waiting = !roles.systemd.ready || exec.waiting() || watchdog.is_some();
        select! {
            recv(signal_rx) -> sig => match sig {
                // With a command running, litefs stops once it has exited.
                Ok(name) => {
                    if !exec.forward(signal_number(name), name) {
                        break Stop::Signal(name);
                    }
                }
                Err(_) => break Stop::Signal("a closed signal channel"),
            },
            recv(exec_exits) -> exited => {
                if let Ok(exited) = exited {
                    if let Next::Exit(status) = exec.exited(exited) {
                        break Stop::Exec(status);
                    }
                }
            }
            recv(fatal_rx) -> message => break Stop::Fatal(message.unwrap_or_default()),
            recv(lease_rx) -> event => match event {
                Ok(event) => roles.handle(event)?,
                Err(_) => {
                    error!("the lease thread ended unexpectedly; shutting down");
                    break Stop::LeaseThreadGone;
                }
            },
            recv(if waiting { &ticks } else { &idle }) -> _ => {}
        }
        roles.systemd.check(&role, &store);
        if let Some(interval) = watchdog {
            // From this loop, so a node whose main loop hangs stops pinging
            // and systemd restarts it.
            if last_watchdog.elapsed() >= interval {
                roles.systemd.notify.watchdog();
                last_watchdog = Instant::now();
            }
        }
    };
    roles.systemd.notify.stopping();
    match &stopped_by {
        Stop::Signal(signal) => info!("received {signal}, shutting down"),
        Stop::LeaseThreadGone | Stop::Exec(_) => {}
        Stop::Fatal(_) => info!("shutting down (exit-on-error)"),
    }
    // The application first, while the mount still works for it.
    exec.terminate();
    // No new writes, then give up the lease so another candidate takes
    // over at once, then stop everything else.
    role.set_replica(None);
    server.set_serving(false);
    stop.store(true, Ordering::SeqCst);
    roles.stop_replica(false);
    roles.applier.close_files();
    let _ = lease_thread.join();
    let _ = retention.join();
    server.shutdown();
    let unmounted = unmount(background, &mount_dir);
    match (stopped_by, unmounted) {
        (Stop::Fatal(message), unmounted) => {
            if let Err(e) = unmounted {
                error!("{e}");
            }
            Err(Error::Fatal(message))
        }
        // The application's failure is what the exit status reports.
        (Stop::Exec(status), Err(e)) if status != 0 => {
            error!("{e}");
            Ok(status)
        }
        (_, Err(e)) => Err(e),
        (Stop::Exec(status), Ok(())) => Ok(status),
        (Stop::Signal(_) | Stop::LeaseThreadGone, Ok(())) => Ok(0),
    }
}

/// The number of a signal the signal thread names.
fn signal_number(name: &str) -> i32 {
    if name == "SIGINT" {
        libc::SIGINT
    } else {
        libc::SIGTERM
    }
}

/// The node's side of role changes: what the mount, the HTTP server and
/// the replication stream do as the lease moves.
struct Roles<'a> {
    store: Arc<Store>,
    role: Arc<Role>,
    server: &'a http::Server,
    applier: Arc<Applier>,
    /// The cluster's token, sent to the primary.
    token: Option<String>,
    /// How replication retries (`lease.reconnect-delay`, `exit-on-error`).
    retry: http::RetryOptions,
    replica: Option<ReplicaTask>,
    /// systemd's view of this node (readiness, status, watchdog).
    systemd: Readiness,
    /// A Consul lease without synchronous replication: the in-sync set a
    /// synchronous primary before left, deleted at promotion
    /// (`lease/consul/sync_set.rs`).
    sync_set: Option<Arc<lease::SyncSetWriter>>,
}

impl Roles<'_> {
    fn handle(&mut self, event: LeaseEvent) -> Result<(), Error> {
        match event {
            LeaseEvent::Primary => {
                // Everything received from the old primary is applied
                // before this node accepts a write.
                self.stop_replica(true);
                self.applier.close_files();
                for db in self.store.dbs() {
                    self.applier.drop_wal_companions(&db);
                }
                // Before the first write: this node names itself in the
                // in-sync set (or removes one it does not keep).
                self.store.acks().promoted();
                if let Some(writer) = &self.sync_set {
                    if let Err(e) = writer.delete() {
                        warn!(
                            "cannot delete the in-sync set a synchronous primary left in \
                             Consul ({e}); candidates it leaves out wait for the ones it names"
                        );
                    }
                }
                self.role.set_primary();
                self.server.set_serving(true);
                self.systemd.set_status("primary".to_string());
                info!("this node is now the primary; the mount accepts writes");
            }
            LeaseEvent::Replica(primary) => {
                self.step_down(Some(primary.hostname.clone()));
                if self.replica.as_ref().map(|r| r.url.as_str()) != Some(&primary.advertise_url) {
                    self.stop_replica(false);
                    self.replica = Some(self.start_replica(&primary)?);
                    self.systemd
                        .set_status(format!("replica of {}", primary.hostname));
                    info!(
                        "this node is a read-only replica of {} at {}",
                        primary.hostname, primary.advertise_url
                    );
                }
            }
            LeaseEvent::NoPrimary => {
                self.step_down(None);
                self.stop_replica(false);
                self.systemd
                    .set_status("read-only: no primary is known".to_string());
                warn!("no primary is known; the mount is read-only until one is");
            }
        }
        Ok(())
    }

    /// Makes the mount read-only (waiting for writes in flight) and stops
    /// serving replicas. A node that was primary also abandons the write
    /// transactions still open, so every database file is back at its
    /// position before anything is applied to it.
    fn step_down(&mut self, primary_hostname: Option<String>) {
        let was_primary = self.role.is_primary();
        self.role.set_replica(primary_hostname);
        self.server.set_serving(false);
        if !was_primary {
            return;
        }
        self.store.acks().stepped_down();
        for db in self.store.dbs() {
            if let Err(e) = self.applier.abandon_transaction(&db) {
                error!(
                    "db {}: cannot roll back the transaction left open by the step-down: {e}",
                    db.name()
                );
            }
        }
    }

    fn start_replica(&self, primary: &PrimaryInfo) -> Result<ReplicaTask, Error> {
        ReplicaTask::start(
            self.store.clone(),
            self.applier.clone(),
            self.token.clone(),
            primary,
            self.retry.clone(),
        )
    }

    /// Stops following the current primary (see `ReplicaTask::stop`).
    fn stop_replica(&mut self, drain: bool) {
        if let Some(task) = self.replica.take() {
            task.stop(drain);
        }
    }
}

/// Deletes LTX files older than `retention` (the newest of each database
/// is always kept), checking `every` (`Config::retention_interval`).
fn spawn_retention(
    store: Arc<Store>,
    retention: Duration,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            while !sleep_unless_stopped(every, &stop) {
                for db in store.dbs() {
                    match db.enforce_retention(retention) {
                        Ok(0) => {}
                        Ok(n) => debug!("db {}: removed {n} LTX files past retention", db.name()),
                        Err(e) => warn!("db {}: retention: {e}", db.name()),
                    }
                }
            }
        })
        .map_err(Error::Thread)
}

/// Sleeps up to `d` in short steps; returns true once `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = std::time::Instant::now() + d;
    while std::time::Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
    stop.load(Ordering::SeqCst)
}

/// Raises the soft limit on open files to the hard limit: every replica
/// connection, open database and LTX file being sent takes a descriptor,
/// and the usual soft default of 1,024 is reached long before the hard one.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                debug!("open file limit raised from {soft} to {}", limit.rlim_max);
            } else {
                warn!(
                    "cannot raise the open file limit from {soft}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Whether `addr` (`host:port`) binds only a loopback address.
fn is_loopback_bind(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// SIGINT and SIGTERM, blocked in every thread and taken with `sigwait`.
#[derive(Clone, Copy)]
struct ShutdownSignals {
    set: libc::sigset_t,
}

impl ShutdownSignals {
    /// Blocks the signals in this thread; threads started later inherit it.
    fn block() -> std::io::Result<ShutdownSignals> {
        // SAFETY: the sigset is initialised by sigemptyset before use, and
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(ShutdownSignals { set })
        }
    }

    /// Starts a thread that waits for the signals and sends each one's name.
    fn spawn_waiter(self) -> std::io::Result<Receiver<&'static str>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(signal) = self.wait() {
                    if tx.send(signal).is_err() {
                        return;
                    }
                }
            })?;
        Ok(rx)
    }

    /// Waits for one of the signals and returns its name.
    fn wait(&self) -> std::io::Result<&'static str> {
        let mut sig: libc::c_int = 0;
        // SAFETY: self.set is an initialised sigset; sig is a valid out pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        })
    }
}
