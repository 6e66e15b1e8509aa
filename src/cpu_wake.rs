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
//! closes, also when litefs dies. It changes no setting of the machine.
//! Nothing is asked on a replica (its applies do not go through FUSE) or
//! for reads.
//!
//! Measured on a 2-core VM whose idle vCPUs halt (a 200,000-row bulk
//! insert, the plain directory about 155 ms): 255-278 ms without the
//! request, 176 ms with it, 174 ms with the guest's halt polling on. Two
//! other ways do worse: litefs's FUSE threads spinning 100 µs for the next
//! request (228-238 ms) save only litefs's own wake-up, not the
//! application's; a pinned `SCHED_IDLE` thread per CPU spinning 200 µs
//! after each request speeds up bulk inserts but slows single-row commits
//! (DELETE mode 1.66-1.77 ms against 1.14-1.22 ms), since a CPU running
//! such a thread still needs an interrupt to wake anything, and the
//! spinning competes with the fsyncs' completion work. A CPU polling in
//! the kernel's idle loop has neither problem.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
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
///
/// A write being served touches only the atomics: ending one wakes no
/// thread (a bulk insert ends thousands a second, and a wake-up each is
/// what this module exists to avoid). Taking and letting go of the request
/// happen under `device`, so the device sees them in order; `held` is set
/// and cleared only there.
struct Request {
    /// The open device; the mutex orders taking and letting go.
    device: Mutex<File>,
    /// The request is taken (the device holds `AWAKE`).
    held: AtomicBool,
    /// Writes being served now: the request is not let go while one is
    /// (a commit's fsync and LTX file can take longer than `RELEASE_AFTER`).
    in_flight: AtomicU32,
    /// When the last write being served ended, in nanoseconds since
    /// `start` (what the release counts from).
    last_write: AtomicU64,
    start: Instant,
    stopped: AtomicBool,
    /// Signalled when the request is taken and when the owner goes: the
    /// `cpu-wake` thread waits on it while nothing is held.
    changed: Condvar,
}

impl Request {
    fn since_start(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
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
            device: Mutex::new(device),
            held: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            last_write: AtomicU64::new(0),
            start: Instant::now(),
            stopped: AtomicBool::new(false),
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
            // Counted before `held` is read: the releaser clears `held`
            // before it reads the count, so either it sees this write and
            // keeps the request, or this write sees `held` cleared and
            // takes it again.
            request.in_flight.fetch_add(1, SeqCst);
            if !request.held.load(SeqCst) {
                let device = lock(&request.device);
                if !request.held.load(SeqCst) {
                    set(&device, AWAKE);
                    request.held.store(true, SeqCst);
                    request.changed.notify_one();
                }
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
            // The latest end wins (another write may have ended later).
            request.last_write.fetch_max(request.since_start(), SeqCst);
            request.in_flight.fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for CpuWake {
    fn drop(&mut self) {
        if let Some(request) = &self.request {
            let _device = lock(&request.device);
            request.stopped.store(true, SeqCst);
            request.changed.notify_one();
        }
    }
}

/// The `cpu-wake` thread: while the request is held, looks every
/// `RELEASE_AFTER` (at most) and lets it go once that long has passed
/// since the last write with none in flight; exits when its `CpuWake` is
/// dropped.
fn release_when_idle(request: &Request) {
    let mut device = lock(&request.device);
    loop {
        if request.stopped.load(SeqCst) {
            set(&device, RELEASED);
            return;
        }
        if !request.held.load(SeqCst) {
            device = request
                .changed
                .wait(device)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        }
        // Cleared before the count is read (see `CpuWake::hold`); a write
        // that comes in meanwhile waits for `device` and finds it set again.
        request.held.store(false, SeqCst);
        let busy = request.in_flight.load(SeqCst) > 0;
        let idle_ns = request
            .since_start()
            .saturating_sub(request.last_write.load(SeqCst));
        let idle = Duration::from_nanos(idle_ns);
        if !busy && idle >= RELEASE_AFTER {
            set(&device, RELEASED);
            continue;
        }
        request.held.store(true, SeqCst);
        let wait = if busy {
            RELEASE_AFTER
        } else {
            RELEASE_AFTER - idle
        };
        device = request
            .changed
            .wait_timeout(device, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Writes `value` (microseconds, native-endian s32 as the device takes it).
/// A failure costs only speed: one debug line.
fn set(mut device: &File, value: i32) {
    // Callers hold the device's mutex, so writes are in order.
    if let Err(e) = device.write_all(&value.to_ne_bytes()) {
        debug!("{DEVICE}: cannot write {value}: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
