//! Keeps idle CPUs ready to run while transactions write through the mount.
//!
//! Each page SQLite writes through the mount is a round trip: the
//! application's thread sleeps until a litefs thread has answered, often on
//! the other CPU. Where an idle CPU halts (a virtual machine's idle vCPU
//! halts, and the host must wake it), each wake-up costs tens of
//! microseconds, more than the write itself: a bulk insert then runs at
//! 0.4-0.6x the plain directory. Linux's PM QoS interface lets a process
//! ask that idle CPUs wake at once (they poll instead of halting). litefs
//! asks while a database write, sync or commit is being served and until
//! `RELEASE_AFTER` has passed without one, so the cost, idle CPUs polling
//! instead of sleeping, lasts as long as the writes do
//! (`fuse.keep-cpus-awake: false` turns it off).
//!
//! The request is one open file, `/dev/cpu_dma_latency` (root only): the
//! value last written to it holds, and the kernel drops it when the file
//! closes, also when litefs dies.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info};

/// The kernel's CPU-latency request device.
const DEVICE: &str = "/dev/cpu_dma_latency";

/// How long after the last write the request is let go. Long enough that
/// the gaps inside one transaction (SQLite filling its cache between
/// spills, a commit's few requests) keep it; short enough that an idle
/// database costs nothing.
const RELEASE_AFTER: Duration = Duration::from_millis(2);

/// Microseconds of wake-up latency asked for while writes go on: 0, no
/// idle state that must be woken from (the CPU polls).
const AWAKE: i32 = 0;

/// PM_QOS_DEFAULT_VALUE: the kernel's default, no constraint of ours.
const RELEASED: i32 = -1;

/// The request and its state (absent from [`CpuWake`] when off).
struct Request {
    device: File,
    state: Mutex<State>,
    /// Signalled when the request is taken, when the last write being
    /// served ends, and when the owner goes.
    changed: Condvar,
}

struct State {
    held: bool,
    /// Writes being served now: the request is not let go while one is
    /// (a commit's fsync and LTX file can take longer than `RELEASE_AFTER`).
    in_flight: u32,
    /// When the last write being served ended (what the release counts
    /// from: nothing is let go while one is in flight).
    last_write: Instant,
    stopped: bool,
}

/// The mount's request for awake CPUs; [`CpuWake::hold`] while serving a
/// write.
pub struct CpuWake {
    request: Option<Arc<Request>>,
}

impl CpuWake {
    /// A request that is never made.
    pub fn off() -> CpuWake {
        CpuWake { request: None }
    }

    /// Opens the kernel's device and starts the thread that lets the
    /// request go after writes stop. Without the device (not root, an old
    /// kernel) litefs runs without it, with one line saying so.
    pub fn start() -> CpuWake {
        let device = match std::fs::OpenOptions::new().write(true).open(DEVICE) {
            Ok(f) => f,
            Err(e) => {
                info!(
                    "cannot ask for awake CPUs during writes ({DEVICE}: {e}); page writes \
                     through the mount cost a CPU wake-up each where idle CPUs halt"
                );
                return CpuWake::off();
            }
        };
        let request = Arc::new(Request {
            device,
            state: Mutex::new(State {
                held: false,
                in_flight: 0,
                last_write: Instant::now(),
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let releaser = request.clone();
        let spawned = std::thread::Builder::new()
            .name("cpu-wake".into())
            .spawn(move || release_when_idle(&releaser));
        if let Err(e) = spawned {
            info!("cannot start the cpu-wake thread ({e}); CPUs are not kept awake");
            return CpuWake::off();
        }
        debug!("CPUs are kept awake while databases are written ({DEVICE})");
        CpuWake {
            request: Some(request),
        }
    }

    /// A database write, sync or commit is being served: takes the
    /// request if it is not held; it is kept until the returned guard is
    /// dropped and `RELEASE_AFTER` more.
    pub fn hold(&self) -> Awake<'_> {
        if let Some(request) = &self.request {
            let mut state = lock(&request.state);
            state.in_flight += 1;
            if !state.held {
                state.held = true;
                set(request, AWAKE);
                request.changed.notify_one();
            }
        }
        Awake { wake: self }
    }
}

/// A write being served (from [`CpuWake::hold`]).
pub struct Awake<'a> {
    wake: &'a CpuWake,
}

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        if let Some(request) = &self.wake.request {
            let mut state = lock(&request.state);
            state.in_flight = state.in_flight.saturating_sub(1);
            state.last_write = Instant::now();
            if state.in_flight == 0 {
                request.changed.notify_one();
            }
        }
    }
}

impl Drop for CpuWake {
    fn drop(&mut self) {
        if let Some(request) = &self.request {
            lock(&request.state).stopped = true;
            request.changed.notify_one();
        }
    }
}

/// The `cpu-wake` thread: lets the request go once `RELEASE_AFTER` has
/// passed since the last write; exits when its `CpuWake` is dropped.
fn release_when_idle(request: &Request) {
    let mut state = lock(&request.state);
    loop {
        if state.stopped {
            set(request, RELEASED);
            return;
        }
        // Nothing to let go while not held or while a write is served (the
        // last one to end signals).
        if !state.held || state.in_flight > 0 {
            state = request
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let idle = state.last_write.elapsed();
        if idle >= RELEASE_AFTER {
            state.held = false;
            set(request, RELEASED);
            continue;
        }
        state = request
            .changed
            .wait_timeout(state, RELEASE_AFTER - idle)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Writes `value` (microseconds, native-endian s32 as the device takes it).
/// A failure costs only speed: one debug line.
fn set(request: &Request, value: i32) {
    // Callers hold `state`, so writes are in order.
    if let Err(e) = (&request.device).write_all(&value.to_ne_bytes()) {
        debug!("{DEVICE}: cannot write {value}: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
