//! The lease thread: runs a [`Leaser`] (take the lease when free, renew
//! it, step down in time, release it on stop; otherwise watch who holds
//! it) and reports this node's role changes as [`LeaseEvent`]s. The timing
//! rules are in `lease.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};

use super::{Error, Lease, LeaseEvent, Leaser, WATCH_FAILURE_GRACE, WATCH_WAIT};
use crate::config::LeaseConfig;
use crate::fatal::Fatal;

/// How soon a candidate tries again when the key looked free but Consul
/// refused the lock (the lock delay after a lost session).
const ACQUIRE_RETRY_WAIT: Duration = Duration::from_millis(250);

/// First pause after a failed call to Consul; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between retries while Consul fails, unless
/// `lease.reconnect-delay` says otherwise.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a sleeping lease thread looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

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
    spawn_lease_thread_with(leaser, LeaseOptions::new(candidate), events, stop)
}

/// How the lease thread behaves, beyond taking and keeping the lease.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Whether this node may take the lease.
    pub candidate: bool,
    /// Longest pause between retries while Consul fails
    /// (`lease.reconnect-delay`); the first is 100ms, or this if shorter.
    pub max_backoff: Duration,
    /// How long a node that lost the lease waits before it tries to take
    /// it again (`lease.demote-delay`); it follows other primaries meanwhile.
    pub demote_delay: Duration,
    /// Where a lost lease or a refusal by Consul is reported when
    /// `exit-on-error` makes them fatal.
    pub fatal: Fatal,
}

impl LeaseOptions {
    /// The defaults: 2s between retries at most, no demote delay, nothing
    /// fatal.
    pub fn new(candidate: bool) -> LeaseOptions {
        LeaseOptions {
            candidate,
            max_backoff: MAX_BACKOFF,
            demote_delay: Duration::ZERO,
            fatal: Fatal::disabled(),
        }
    }

    /// The options `config` asks for.
    pub fn from_config(config: &LeaseConfig, fatal: Fatal) -> LeaseOptions {
        LeaseOptions {
            candidate: config.candidate,
            max_backoff: config.reconnect_delay.unwrap_or(MAX_BACKOFF),
            demote_delay: config.demote_delay,
            fatal,
        }
    }
}

/// [`spawn_lease_thread`] with every option.
pub fn spawn_lease_thread_with(
    leaser: Box<dyn Leaser>,
    options: LeaseOptions,
    events: Sender<LeaseEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let driver = Driver {
        leaser,
        candidate: options.candidate,
        events,
        stop,
        last_event: None,
        receiver_gone: false,
        trouble: Trouble::new("Consul", options.max_backoff),
        acquire_trouble: Trouble::new("taking the lease", options.max_backoff),
        demote_delay: options.demote_delay,
        held_off_until: None,
        fatal: options.fatal,
        fatal_reported: false,
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
    /// See [`LeaseOptions::demote_delay`].
    demote_delay: Duration,
    /// Until when this node does not try to take the lease (it lost it).
    held_off_until: Option<Instant>,
    fatal: Fatal,
    /// A fatal error was reported already (the node is stopping).
    fatal_reported: bool,
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
                        self.check_refused(&e);
                        let pause = self.trouble.failed(&e);
                        stale = Some(lease);
                        self.sleep_until(Instant::now() + pause);
                        continue;
                    }
                }
            }

            let held_off = self.held_off();
            if try_acquire && !held_off {
                try_acquire = false;
                match self.leaser.acquire() {
                    Ok(Some(lease)) => {
                        self.acquire_trouble.succeeded();
                        stale = self.hold(lease).or(stale);
                        if !self.should_stop() {
                            self.lost_the_lease();
                        }
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
                        self.check_refused(&e);
                        self.acquire_trouble.failed(&e);
                        retry_soon = false;
                    }
                }
            }

            let mut wait = if retry_soon {
                ACQUIRE_RETRY_WAIT
            } else {
                WATCH_WAIT
            };
            if let (true, Some(until)) = (held_off && try_acquire, self.held_off_until) {
                // Watch no longer than the hold-off, to try the free key
                // as soon as it ends.
                wait = wait.min(until.saturating_duration_since(Instant::now()) + STOP_CHECK);
            }
            if index >= 1 && self.leaser.answer_never_changes() {
                // Nothing can change: wait here, stoppable.
                self.sleep_until(Instant::now() + wait);
                continue;
            }
            let started = Instant::now();
            match self.leaser.primary(index, wait) {
                Ok((primary, new_index)) => {
                    self.trouble.succeeded();
                    let unchanged = new_index == index;
                    index = new_index;
                    match primary {
                        Some(primary) => {
                            retry_soon = false;
                            try_acquire = false;
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
                    self.check_refused(&e);
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
                self.report_fatal(
                    "this node lost the lease: it could not renew it for half its TTL",
                );
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
                    self.report_fatal(&format!("this node {e}"));
                    return None;
                }
                Err(e) => {
                    self.check_refused(&e);
                    let pause = self.trouble.failed(&e);
                    retry_at = Some(Instant::now() + pause);
                }
            }
        }
    }

    /// Starts the demote delay after this node lost the lease.
    fn lost_the_lease(&mut self) {
        if self.demote_delay.is_zero() {
            return;
        }
        info!(
            "lease: waiting {:?} (lease.demote-delay) before trying to take the lease again",
            self.demote_delay
        );
        self.held_off_until = Instant::now().checked_add(self.demote_delay);
    }

    /// Whether this node must not try to take the lease yet.
    fn held_off(&mut self) -> bool {
        match self.held_off_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.held_off_until = None;
                false
            }
            None => false,
        }
    }

    /// Reports a refusal by Consul (401/403) as fatal, when it is.
    fn check_refused(&mut self, e: &Error) {
        if let Error::Status {
            status: 401 | 403, ..
        } = e
        {
            self.report_fatal(&format!(
                "{e} (this litefs sends no Consul ACL token; give it a Consul agent that \
                 allows the key)"
            ));
        }
    }

    /// Reports `message` once through `exit-on-error`.
    fn report_fatal(&mut self, message: &str) {
        if !self.fatal_reported && self.fatal.report(format!("lease: {message}")) {
            self.fatal_reported = true;
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
    max_backoff: Duration,
}

impl Trouble {
    fn new(what: &'static str, max_backoff: Duration) -> Trouble {
        Trouble {
            what,
            since: None,
            backoff: MIN_BACKOFF.min(max_backoff),
            max_backoff,
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
        let pause = self.backoff.max(MIN_BACKOFF.min(self.max_backoff));
        self.backoff = (pause * 2).min(self.max_backoff);
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
        self.backoff = MIN_BACKOFF.min(self.max_backoff);
    }

    /// How long calls have been failing (zero when they work).
    fn failing_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}
