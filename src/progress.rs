//! Progress of long work (a database checked at start-up, a snapshot or
//! LTX file sent or received, an import or export): one log line at the
//! start and at the end of work of `LOUD_FROM` bytes or more, and one
//! every `LOG_EVERY` with bytes done, total and rate for work that takes
//! that long, whatever its size. The `litefs import` and `export`
//! commands also draw a progress line on a terminal (`with_bar`).
//!
//! Counting costs a clock read per call of `add` (one per copied chunk).

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// How often a progress line is logged while work goes on.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Work of this many bytes or more logs its start and its end.
pub const LOUD_FROM: u64 = 64 << 20;
/// How often a terminal's progress line is redrawn.
const BAR_EVERY: Duration = Duration::from_millis(200);

/// One piece of long work being counted.
pub struct Progress {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_log: Instant,
    last_bar: Option<Instant>,
    /// Its start was logged (so its end is).
    loud: bool,
}

impl Progress {
    /// Starts counting `what` (e.g. "database x: sending a snapshot to
    /// 10.0.0.2:4410") of `total` bytes, when known.
    pub fn start(what: impl Into<String>, total: Option<u64>) -> Progress {
        let what = what.into();
        let loud = total.is_some_and(|total| total >= LOUD_FROM);
        if loud {
            log::info!("{what}: started, {}", size(total.unwrap_or(0)));
        }
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            started: now,
            last_log: now,
            last_bar: None,
            loud,
        }
    }

    /// Also draws a progress line on stderr when it is a terminal.
    pub fn with_bar(mut self) -> Progress {
        if std::io::stderr().is_terminal() {
            self.last_bar = Some(self.started);
        }
        self
    }

    /// `n` more bytes are done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        let now = Instant::now();
        if now.duration_since(self.last_log) >= LOG_EVERY {
            self.last_log = now;
            self.loud = true;
            log::info!("{}: {}", self.what, self.figures(now));
        }
        if let Some(last) = self.last_bar {
            if now.duration_since(last) >= BAR_EVERY {
                self.last_bar = Some(now);
                let _ = write!(
                    std::io::stderr(),
                    "\r{}: {}\x1b[K",
                    self.what,
                    self.figures(now)
                );
            }
        }
    }

    /// The work is over (`ok`: done; otherwise it stopped short).
    pub fn finish(self, ok: bool) {
        let now = Instant::now();
        if self.last_bar.is_some() {
            let _ = writeln!(
                std::io::stderr(),
                "\r{}: {}\x1b[K",
                self.what,
                self.figures(now)
            );
        }
        if self.loud {
            let how = if ok { "done" } else { "stopped" };
            log::info!(
                "{}: {how}, {} in {:.1} s ({})",
                self.what,
                size(self.done),
                now.duration_since(self.started).as_secs_f64(),
                rate(self.done, now.duration_since(self.started))
            );
        }
    }

    /// "12.0 of 48.0 MiB (25%), 6.1 MiB/s".
    fn figures(&self, now: Instant) -> String {
        let rate = rate(self.done, now.duration_since(self.started));
        match self.total {
            Some(total) if total > 0 => format!(
                "{:.1} of {} ({}%), {rate}",
                self.done as f64 / MIB,
                size(total),
                self.done * 100 / total
            ),
            _ => format!("{}, {rate}", size(self.done)),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn rate(bytes: u64, took: Duration) -> String {
    format!(
        "{:.1} MiB/s",
        bytes as f64 / MIB / took.as_secs_f64().max(1e-3)
    )
}

/// A reader that counts what is read through it into a `Progress`.
pub struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R> Counted<R> {
    pub fn new(inner: R, progress: Progress) -> Counted<R> {
        Counted { inner, progress }
    }

    /// The progress, to finish it.
    pub fn into_progress(self) -> Progress {
        self.progress
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_say_done_total_and_rate() {
        let mut p = Progress::start("x", Some(4 << 20));
        p.add(1 << 20);
        let text = p.figures(p.started + Duration::from_secs(1));
        assert_eq!(text, "1.0 of 4.0 MiB (25%), 1.0 MiB/s");
        let mut counted = Counted::new(&[0u8; 10][..], Progress::start("y", None));
        let mut out = Vec::new();
        assert_eq!(counted.read_to_end(&mut out).ok(), Some(10));
        assert_eq!(counted.into_progress().done, 10);
    }
}
