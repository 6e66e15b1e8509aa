//! POSIX record locks (fcntl F_GETLK / F_SETLK / F_SETLKW) for files on the
//! mount.
//!
//! SQLite coordinates its connections with byte-range locks on the database
//! file. The kernel forwards those calls to us (FUSE_POSIX_LOCKS), so the
//! lock table lives here, where litefs itself can take part: a replica
//! applying a transaction takes the same locks a SQLite writer would, so no
//! reader sees half of it.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A shared (read) lock, as `libc::F_RDLCK`.
pub const READ: i32 = libc::F_RDLCK;
/// An exclusive (write) lock, as `libc::F_WRLCK`.
pub const WRITE: i32 = libc::F_WRLCK;
/// No lock / unlock, as `libc::F_UNLCK`.
pub const UNLOCK: i32 = libc::F_UNLCK;

/// One held lock: the inclusive byte range `start..=end` of one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    fn conflicts(&self, owner: u64, start: u64, end: u64, typ: i32) -> bool {
        self.owner != owner && self.overlaps(start, end) && (typ == WRITE || self.typ == WRITE)
    }
}

/// Every lock held on every inode of the mount.
#[derive(Debug, Default)]
pub struct LockTable {
    locks: Mutex<HashMap<u64, Vec<Lock>>>,
    released: Condvar,
}

impl LockTable {
    /// Creates an empty table.
    pub fn new() -> LockTable {
        LockTable::default()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<u64, Vec<Lock>>> {
        // A panic while holding the table cannot leave it half-edited in a
        // way that matters more than losing every lock, so carry on.
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the first lock that would block `typ` on `start..=end` for
    /// `owner` (F_GETLK), or None when the lock could be taken.
    pub fn conflict(&self, ino: u64, owner: u64, start: u64, end: u64, typ: i32) -> Option<Lock> {
        let table = self.table();
        let locks = table.get(&ino)?;
        locks
            .iter()
            .find(|l| l.conflicts(owner, start, end, typ))
            .copied()
    }

    /// Takes, changes or releases (`UNLOCK`) a lock without waiting.
    /// Returns false when another owner's lock is in the way.
    pub fn try_set(&self, ino: u64, lock: Lock) -> bool {
        let mut table = self.table();
        set_locked(&mut table, ino, lock)
    }

    /// Like `try_set`, but waits up to `timeout` for conflicting locks to go
    /// away (F_SETLKW). Returns false on timeout.
    pub fn set_wait(&self, ino: u64, lock: Lock, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut table = self.table();
        loop {
            if set_locked(&mut table, ino, lock) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            table = match self.released.wait_timeout(table, deadline - now) {
                Ok((t, _)) => t,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Drops every lock `owner` holds on `ino` (close of any descriptor of
    /// the file ends a process's POSIX locks on it).
    pub fn release_owner(&self, ino: u64, owner: u64) {
        let mut table = self.table();
        if let Some(locks) = table.get_mut(&ino) {
            let before = locks.len();
            locks.retain(|l| l.owner != owner);
            if locks.len() != before {
                self.released.notify_all();
            }
            if locks.is_empty() {
                table.remove(&ino);
            }
        }
    }

    /// The locks held on `ino`, for tests and diagnostics.
    pub fn held(&self, ino: u64) -> Vec<Lock> {
        self.table().get(&ino).cloned().unwrap_or_default()
    }
}

/// Applies `lock` to the table if no other owner is in the way.
fn set_locked(table: &mut HashMap<u64, Vec<Lock>>, ino: u64, lock: Lock) -> bool {
    let locks = table.entry(ino).or_default();
    if lock.typ != UNLOCK
        && locks
            .iter()
            .any(|l| l.conflicts(lock.owner, lock.start, lock.end, lock.typ))
    {
        return false;
    }
    // Cut the new range out of this owner's existing locks, keeping the
    // parts outside it, then add the new lock (POSIX replaces, never stacks).
    let mut kept = Vec::with_capacity(locks.len() + 1);
    for l in locks.drain(..) {
        if l.owner != lock.owner || !l.overlaps(lock.start, lock.end) {
            kept.push(l);
            continue;
        }
        if l.start < lock.start {
            kept.push(Lock {
                end: lock.start - 1,
                ..l
            });
        }
        if l.end > lock.end {
            kept.push(Lock {
                start: lock.end + 1,
                ..l
            });
        }
    }
    if lock.typ != UNLOCK {
        kept.push(lock);
    }
    *locks = kept;
    if locks.is_empty() {
        table.remove(&ino);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(owner: u64, start: u64, end: u64, typ: i32) -> Lock {
        Lock {
            owner,
            start,
            end,
            typ,
            pid: owner as u32,
        }
    }

    #[test]
    fn readers_share_writers_exclude() {
        let t = LockTable::new();
        assert!(t.try_set(5, lock(1, 10, 20, READ)));
        assert!(t.try_set(5, lock(2, 15, 25, READ)));
        assert!(!t.try_set(5, lock(3, 0, 100, WRITE)));
        assert_eq!(t.conflict(5, 3, 0, 100, WRITE).map(|l| l.owner), Some(1));
        // A different inode is independent.
        assert!(t.try_set(6, lock(3, 0, 100, WRITE)));
        t.release_owner(5, 1);
        t.release_owner(5, 2);
        assert!(t.try_set(5, lock(3, 0, 100, WRITE)));
        assert!(!t.try_set(5, lock(1, 50, 50, READ)));
    }

    #[test]
    fn unlock_splits_and_upgrade_replaces() {
        let t = LockTable::new();
        assert!(t.try_set(1, lock(1, 0, 99, READ)));
        assert!(t.try_set(1, lock(1, 40, 59, UNLOCK)));
        let mut held = t.held(1);
        held.sort_by_key(|l| l.start);
        assert_eq!(
            held.iter().map(|l| (l.start, l.end)).collect::<Vec<_>>(),
            vec![(0, 39), (60, 99)]
        );
        // Owner 2 can now write-lock the hole but not beyond it.
        assert!(t.try_set(1, lock(2, 40, 59, WRITE)));
        assert!(!t.try_set(1, lock(2, 39, 59, WRITE)));
        // Owner 1 upgrades its own range: replaced, not stacked.
        assert!(t.try_set(1, lock(1, 0, 39, WRITE)));
        assert_eq!(t.held(1).iter().filter(|l| l.owner == 1).count(), 2);
        assert!(t.try_set(1, lock(1, 0, u64::MAX, UNLOCK)));
        assert!(t.held(1).iter().all(|l| l.owner == 2));
    }

    #[test]
    fn set_wait_wakes_on_release() {
        let t = std::sync::Arc::new(LockTable::new());
        assert!(t.try_set(1, lock(1, 0, 0, WRITE)));
        let t2 = t.clone();
        let waiter = std::thread::spawn(move || {
            t2.set_wait(1, lock(2, 0, 0, WRITE), Duration::from_secs(30))
        });
        t.release_owner(1, 1);
        assert!(waiter.join().unwrap());
        assert!(!t.set_wait(1, lock(3, 0, 0, READ), Duration::from_millis(10)));
    }
}
