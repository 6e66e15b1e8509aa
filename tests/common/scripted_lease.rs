//! A lease thread under test, and a scripted leaser whose answers the
//! test sets, for the lease thread's rules without a real Consul.
//!
//! Include it with `#[path = "common/scripted_lease.rs"] mod scripted_lease;`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use litefs::lease::{
    spawn_lease_thread_with, Error, Lease, LeaseEvent, LeaseOptions, Leaser, PrimaryInfo,
};

/// A running lease thread and its ends.
pub struct LeaseThread {
    pub events: Receiver<LeaseEvent>,
    pub stop: Arc<AtomicBool>,
    pub handle: Option<thread::JoinHandle<()>>,
}

impl LeaseThread {
    pub fn start(leaser: Box<dyn Leaser>, candidate: bool) -> LeaseThread {
        LeaseThread::start_with(leaser, LeaseOptions::new(candidate))
    }

    pub fn start_with(leaser: Box<dyn Leaser>, options: LeaseOptions) -> LeaseThread {
        let _ = env_logger::builder().is_test(true).try_init();
        let (tx, rx) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn_lease_thread_with(leaser, options, tx, stop.clone()).unwrap();
        LeaseThread {
            events: rx,
            stop,
            handle: Some(handle),
        }
    }

    pub fn next(&self, within: Duration) -> LeaseEvent {
        match self.events.recv_timeout(within) {
            Ok(event) => event,
            Err(e) => panic!("no lease event within {within:?}: {e}"),
        }
    }

    /// Asserts that no event arrives for `quiet`.
    pub fn assert_quiet(&self, quiet: Duration) {
        match self.events.recv_timeout(quiet) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("expected no event for {quiet:?}, got {other:?}"),
        }
    }

    /// Asserts that no event has been sent (since the last one received).
    pub fn assert_no_event(&self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("expected no event, got {event:?}");
        }
    }

    /// Sets the stop flag and joins; returns how long the thread took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("the lease thread panicked");
        }
        started.elapsed()
    }
}

impl Drop for LeaseThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A leaser that notes when each watch (`primary`) starts, then asks the
/// one it wraps.
struct Watched {
    inner: Box<dyn Leaser>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Leaser for Watched {
    fn acquire(&mut self) -> Result<Option<Lease>, Error> {
        self.inner.acquire()
    }

    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error> {
        self.inner.renew(lease)
    }

    fn release(&mut self, lease: Lease) -> Result<(), Error> {
        self.inner.release(lease)
    }

    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error> {
        self.starts.lock().unwrap().push(Instant::now());
        self.inner.primary(index, wait)
    }

    fn answer_never_changes(&self) -> bool {
        self.inner.answer_never_changes()
    }
}

/// `leaser`, and when each of its watches started. The lease thread makes
/// one call at a time and sends an event before its next call, so once a
/// watch has started, whatever the previous ones led to has been sent.
pub fn watched(leaser: Box<dyn Leaser>) -> (Box<dyn Leaser>, Arc<Mutex<Vec<Instant>>>) {
    let starts = Arc::new(Mutex::new(Vec::new()));
    (
        Box::new(Watched {
            inner: leaser,
            starts: starts.clone(),
        }),
        starts,
    )
}

/// Waits (up to `within`) until `count` of the watches in `starts` have
/// started at or after `from`.
pub fn wait_for_watches(
    starts: &Mutex<Vec<Instant>>,
    from: Instant,
    count: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let started = starts
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t >= from)
            .count();
        if started >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {started} of {count} watches started within {within:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The pauses between successive `starts`.
pub fn gaps(starts: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let starts = starts.lock().unwrap();
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// What the scripted leaser answers; shared with the test.
#[derive(Default)]
pub struct Script {
    /// Whether acquire succeeds.
    pub grant: bool,
    /// The answer to renew: None succeeds, Some(true) is Lost, Some(false)
    /// is a (retryable) HTTP 500.
    pub renew_fails: Option<bool>,
    /// Who `primary` says holds the lease.
    pub holder: Option<PrimaryInfo>,
    /// When set, `primary` fails with this HTTP status.
    pub watch_fails: Option<u16>,
    pub renews: usize,
    pub releases: usize,
    pub acquires: usize,
    pub watches: usize,
}

struct ScriptedLeaser {
    ttl: Duration,
    script: Arc<Mutex<Script>>,
}

impl Leaser for ScriptedLeaser {
    fn acquire(&mut self) -> Result<Option<Lease>, Error> {
        let mut script = self.script.lock().unwrap();
        script.acquires += 1;
        Ok(script.grant.then(|| Lease {
            session: "scripted".to_string(),
            ttl: Some(self.ttl),
            renewed_at: Instant::now(),
        }))
    }

    fn renew(&mut self, lease: &mut Lease) -> Result<(), Error> {
        let mut script = self.script.lock().unwrap();
        script.renews += 1;
        match script.renew_fails {
            None => {
                lease.renewed_at = Instant::now();
                Ok(())
            }
            Some(true) => Err(Error::Lost {
                key: "k".into(),
                session: lease.session.clone(),
                reason: "scripted".into(),
            }),
            Some(false) => Err(Error::Status {
                action: "renew the Consul session",
                url: "http://scripted".into(),
                status: 500,
                body: "scripted".into(),
            }),
        }
    }

    fn release(&mut self, _lease: Lease) -> Result<(), Error> {
        self.script.lock().unwrap().releases += 1;
        Ok(())
    }

    fn primary(&mut self, index: u64, wait: Duration) -> Result<(Option<PrimaryInfo>, u64), Error> {
        // Answers at once, as a server ignoring the index would.
        let _ = (index, wait);
        let mut script = self.script.lock().unwrap();
        script.watches += 1;
        if let Some(status) = script.watch_fails {
            return Err(Error::Status {
                action: "read the lease key",
                url: "http://scripted".into(),
                status,
                body: "scripted".into(),
            });
        }
        Ok((script.holder.clone(), 1))
    }
}

pub fn scripted(ttl: Duration, script: Script) -> (Box<dyn Leaser>, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(script));
    (
        Box::new(ScriptedLeaser {
            ttl,
            script: script.clone(),
        }),
        script,
    )
}
