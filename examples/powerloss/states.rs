//! Crash states of a recording, and the disk image of each.
//!
//! The log splits into intervals at its flushes: interval k holds the
//! writes after the k-th flush (the recording's start counts as flush 0)
//! and before the next. A power cut in interval k keeps every write
//! before it, and any subset of interval k's own writes (the device may
//! have put any of them on the medium, in any order, or none). So a crash
//! state is (k, a subset of interval k's writes).
//!
//! What it must keep: a COMMIT that returned before flush k+1 completed
//! could only rely on flushes up to k, and every write after flush k may
//! be the one lost, so every durable commit marked before flush k+1 must
//! be there, whatever the subset.
//!
//! The model is a little kinder than a real disk: a device write is whole
//! or absent (no torn sectors), a write the device completed before a
//! flush began counts as covered by it, and writes between the last sync
//! before recording and its start are taken as durable. Those can hide a
//! fault, never invent one.

use crate::recorder::{Event, Mark, Recording};

/// One crash state of a recording.
#[derive(Clone, Debug)]
pub struct CrashState {
    /// The interval: writes before `start` are all kept.
    pub start: usize,
    /// Indices (into the log) of the interval's writes that are kept,
    /// in log order.
    pub kept: Vec<usize>,
    /// Where the interval ends (the next flush, or the log's end).
    pub end: usize,
    /// How the subset was chosen, for the report.
    pub kind: &'static str,
}

impl CrashState {
    /// How many of the interval's writes there were, and kept.
    pub fn describe(&self, events: &[Event]) -> String {
        let writes = (self.start..self.end)
            .filter(|i| matches!(events[*i], Event::Write { .. }))
            .count();
        format!(
            "events {}..{} ({} of {writes} unflushed writes kept: {})",
            self.start,
            self.end,
            self.kept.len(),
            self.kind
        )
    }

    /// The durable commits of `db` the state must hold: the highest
    /// transaction number marked before the interval's end.
    pub fn required(&self, events: &[Event], db: &str) -> u64 {
        events[..self.end]
            .iter()
            .filter_map(|e| match e {
                Event::Mark(Mark::Committed {
                    db: d,
                    n,
                    durable: true,
                }) if d == db => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The refused commits of `db` whose error returned before the
    /// interval's end (`Mark::Refused`).
    pub fn refused(&self, events: &[Event], db: &str) -> Vec<u64> {
        events[..self.end]
            .iter()
            .filter_map(|e| match e {
                Event::Mark(Mark::Refused { db: d, n }) if d == db => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Whether the deletion of `db` began (`done` false) or returned
    /// (`done` true) before the interval's end.
    pub fn deletion(&self, events: &[Event], db: &str, done: bool) -> bool {
        events[..self.end].iter().any(|e| {
            matches!(e, Event::Mark(Mark::Deleted { db: d, done: x }) if d == db && (*x || !done))
        })
    }
}

/// A small deterministic generator (xorshift64*), seeded per run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The ways a subset of an interval's writes is chosen, in turn.
const KINDS: &[&str] = &["random subset", "prefix", "none", "all but one", "all"];

/// `count` crash states spread evenly over the intervals of `events`
/// that have writes.
pub fn choose(events: &[Event], count: usize, rng: &mut Rng) -> Vec<CrashState> {
    let mut intervals = Vec::new();
    let mut start = 0;
    for (i, e) in events.iter().enumerate() {
        if matches!(e, Event::Flush) {
            intervals.push((start, i));
            start = i + 1;
        }
    }
    intervals.push((start, events.len()));
    let writes_of = |(s, e): (usize, usize)| -> Vec<usize> {
        (s..e)
            .filter(|i| matches!(events[*i], Event::Write { .. }))
            .collect()
    };
    let intervals: Vec<(usize, usize)> = intervals
        .into_iter()
        .filter(|iv| !writes_of(*iv).is_empty())
        .collect();
    if intervals.is_empty() {
        return Vec::new();
    }
    let mut states = Vec::with_capacity(count);
    for i in 0..count {
        // Evenly spaced over the log; several per interval when there are
        // more states than intervals.
        let (start, end) = intervals[i * intervals.len() / count];
        let writes = writes_of((start, end));
        let kind = KINDS[i % KINDS.len()];
        let kept = match kind {
            "none" => Vec::new(),
            "all" => writes.clone(),
            "prefix" => writes[..rng.below(writes.len() + 1)].to_vec(),
            "all but one" => {
                let drop = rng.below(writes.len());
                let mut w = writes.clone();
                w.remove(drop);
                w
            }
            _ => writes
                .iter()
                .copied()
                .filter(|_| rng.next() & 1 == 1)
                .collect(),
        };
        states.push(CrashState {
            start,
            kept,
            end,
            kind,
        });
    }
    states
}

/// Builds disk images of crash states of one recording in the order of
/// their intervals, keeping the image at the current interval's start.
pub struct Images<'a> {
    recording: &'a Recording,
    at: usize,
    image: Vec<u8>,
}

impl<'a> Images<'a> {
    pub fn new(recording: &'a Recording) -> Images<'a> {
        Images {
            recording,
            at: 0,
            image: recording.base.clone(),
        }
    }

    /// The image of `state`; states must come in increasing `start`.
    pub fn image(&mut self, state: &CrashState) -> Vec<u8> {
        assert!(state.start >= self.at, "states out of order");
        for e in &self.recording.events[self.at..state.start] {
            apply(&mut self.image, e);
        }
        self.at = state.start;
        let mut image = self.image.clone();
        for i in &state.kept {
            apply(&mut image, &self.recording.events[*i]);
        }
        image
    }
}

fn apply(image: &mut [u8], event: &Event) {
    if let Event::Write { offset, data } = event {
        let start = *offset as usize;
        image[start..start + data.len()].copy_from_slice(data);
    }
}

/// Every transaction number of `db` the workload marked as returned.
pub fn steps(events: &[Event], db: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Mark(Mark::Committed { db: d, n, .. }) if d == db => Some(*n),
            _ => None,
        })
        .collect()
}
