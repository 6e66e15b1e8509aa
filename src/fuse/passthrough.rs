//! FUSE passthrough (Linux 6.9+, `FUSE_PASSTHROUGH`) of a primary's
//! `-wal` and rollback journal: SQLite's reads and writes of them go from
//! the kernel straight to the backing file, with no round trip to litefs
//! per frame or journal record. litefs follows the committed frames from
//! the WAL itself (`wal_follower.rs`) and learns a journal's transaction bounds
//! from what still reaches it (`journal.rs`, which also says when a
//! journal may pass through).
//!
//! Every open of these files on the primary (readers' too) registers the
//! backing file, or shares the one registered: while an inode has one, the
//! kernel fails with EIO any open of it whose reply does not pass through
//! with the same `BackingId` (kept here while any handle holds it). The
//! kernel checks that when the opening process finishes its open, after
//! litefs has replied, so an open answered without passthrough can still
//! meet a backing registered meanwhile by another open: SQLite reads that
//! EIO on a journal as a hot journal ("attempt to write a readonly
//! database" for a read-only connection). Hence the rule, decided under
//! one lock: an open that does not pass through (direct I/O: the journal
//! may not pass through, see `journal.rs`, or passthrough is off) holds a
//! `DirectOpen` for as long as litefs has its handle, and no backing is
//! registered for the inode while one is held: such opens go through
//! litefs until the last direct one is released (the kernel has finished
//! that open before it sends the release). Direct I/O never stands in the
//! way of a passthrough open the other way round (cached pages would).
//!
//! Registering a backing file needs CAP_SYS_ADMIN; without it, or on an
//! older kernel, the writes go through litefs (one INFO at mount on a
//! kernel without passthrough, one WARN at the first refused
//! registration), as they do with `fuse.passthrough: false`.
//!
//! The kernel refuses passthrough on a mount that asked for
//! FUSE_WRITEBACK_CACHE (`process_init_reply` in fs/fuse/inode.c), so
//! litefs does not ask for it, though the writeback cache would batch a
//! bulk insert's page writes: WAL mode, which most applications use, would
//! lose its passthrough. The writeback cache would also let a commit point
//! reach litefs before the transaction's pages with synchronous=OFF, and
//! report a refused write only at the next fsync.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use fuser::{BackingId, FopenFlags};
use log::warn;

use super::inodes::FileKind;
use super::{wants_write, LitefsFs};
use crate::store::Db;

/// The kernel's passthrough, and the backing files registered with it.
#[derive(Debug, Default)]
pub(super) struct Passthrough {
    /// The configuration turned it off (`fuse.passthrough: false`).
    refused: AtomicBool,
    /// The kernel granted FUSE_PASSTHROUGH and registering works.
    enabled: AtomicBool,
    /// The backing file of each inode open in passthrough, and the inodes
    /// open without it. The lock is held while an open decides, so two
    /// opens of one inode cannot register two, nor one register while
    /// another goes without.
    by_ino: Mutex<Opens>,
}

/// What is open of each WAL and journal inode, under `Passthrough::by_ino`.
#[derive(Debug, Default)]
struct Opens {
    registered: HashMap<u64, Registered>,
    /// Inodes with a handle open without passthrough: no backing is
    /// registered for them until the last one is released.
    direct: HashMap<u64, Weak<DirectOpen>>,
}

/// Held by each handle of a WAL or journal opened without passthrough
/// (see the module comment).
#[derive(Debug)]
pub(super) struct DirectOpen;

/// How a WAL or journal handle is open: in passthrough with the
/// registered backing file, or direct.
pub(super) enum Opened {
    Passthrough(Arc<Backing>),
    Direct(Arc<DirectOpen>),
}

impl Opened {
    /// What a handle keeps of `opened`: its backing, or its direct mark.
    pub(super) fn split(opened: Option<Opened>) -> (Option<Arc<Backing>>, Option<Arc<DirectOpen>>) {
        match opened {
            Some(Opened::Passthrough(backing)) => (Some(backing), None),
            Some(Opened::Direct(direct)) => (None, Some(direct)),
            None => (None, None),
        }
    }
}

/// A backing file registered with the kernel, shared by every handle of
/// its inode open in passthrough; the kernel lets it go when the last
/// handle does.
#[derive(Debug)]
pub(super) struct Backing {
    pub(super) id: BackingId,
    /// The file the kernel reads and writes for those handles, for litefs
    /// to read too (a journal's header at each database write).
    pub(super) file: File,
}

/// One inode's registered backing file.
#[derive(Debug)]
struct Registered {
    backing: Weak<Backing>,
    /// The backing file's device and inode numbers.
    file: (u64, u64),
}

/// `file`'s device and inode numbers.
fn identity(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|md| (md.dev(), md.ino()))
}

impl Passthrough {
    /// Called at INIT with whether the kernel granted FUSE_PASSTHROUGH.
    pub(super) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// The configuration turned passthrough off.
    pub(super) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether inode `ino` has a backing file registered: a handle of it
    /// is open in passthrough.
    pub(super) fn is_registered(&self, ino: u64) -> bool {
        self.registered(ino).is_some()
    }

    /// The backing file registered for inode `ino` while any handle
    /// holds it.
    pub(super) fn registered(&self, ino: u64) -> Option<Arc<Backing>> {
        let by_ino = self.by_ino.lock().unwrap_or_else(|e| e.into_inner());
        by_ino
            .registered
            .get(&ino)
            .and_then(|r| r.backing.upgrade())
    }

    /// How an open of inode `ino`, whose backing file is `file`, is
    /// answered: with the backing file already registered while any handle
    /// holds it (every open of such an inode must pass through, the kernel
    /// refuses any other), or, when `may_register` and no handle of the
    /// inode is open without passthrough, a new one from `register`;
    /// otherwise direct. Registering fails only when the kernel cannot
    /// pass through, which turns passthrough off for the mount's life
    /// (one WARN).
    pub(super) fn open(
        &self,
        ino: u64,
        may_register: bool,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Opened {
        let mut by_ino = self.by_ino.lock().unwrap_or_else(|e| e.into_inner());
        match self.backing(&mut by_ino, ino, may_register, file, register) {
            Some(backing) => Opened::Passthrough(backing),
            None => {
                let direct = by_ino.direct.get(&ino).and_then(Weak::upgrade);
                let direct = direct.unwrap_or_else(|| {
                    let direct = Arc::new(DirectOpen);
                    by_ino.direct.retain(|_, d| d.strong_count() > 0);
                    by_ino.direct.insert(ino, Arc::downgrade(&direct));
                    direct
                });
                Opened::Direct(direct)
            }
        }
    }

    /// The backing file for an open of `ino` (see `open`), if any.
    fn backing(
        &self,
        by_ino: &mut Opens,
        ino: u64,
        may_register: bool,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<Backing>> {
        let file_identity = identity(file);
        if let Some(registered) = by_ino.registered.get(&ino) {
            if let Some(backing) = registered.backing.upgrade() {
                if file_identity == Some(registered.file) {
                    return Some(backing);
                }
                // The backing file was replaced (a journal rolled back and
                // deleted at a step-down) while a connection from before
                // still holds the old one: sharing its id would write to
                // a file nobody reads, and the kernel refuses any other.
                warn!(
                    "an open of inode {ino} is refused: a connection opened before this \
                     node's last step-down still holds the file's old backing file open \
                     in passthrough; close it"
                );
                return None;
            }
        }
        let direct_open = by_ino
            .direct
            .get(&ino)
            .is_some_and(|d| d.strong_count() > 0);
        if !may_register || direct_open || !self.enabled() {
            return None;
        }
        // A read-only descriptor of litefs's own for reading it (the
        // registering handle may be write-only), opened through the
        // handle's: the same inode. Without one this open goes through
        // litefs.
        let own = match File::open(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(own) => own,
            Err(e) => {
                warn!("inode {ino}: cannot open its backing file for passthrough: {e}");
                return None;
            }
        };
        match register(file) {
            Ok(id) => {
                let backing = Arc::new(Backing { id, file: own });
                by_ino
                    .registered
                    .retain(|_, r| r.backing.strong_count() > 0);
                if let Some(file) = file_identity {
                    by_ino.registered.insert(
                        ino,
                        Registered {
                            backing: Arc::downgrade(&backing),
                            file,
                        },
                    );
                }
                Some(backing)
            }
            Err(e) => {
                self.set_enabled(false);
                warn!(
                    "FUSE passthrough is unavailable ({e}); the WAL's and journals' writes go \
                     through litefs, which is slower (passthrough needs Linux 6.9 or later and \
                     CAP_SYS_ADMIN)"
                );
                None
            }
        }
    }
}

impl LitefsFs {
    /// Whether the WAL may pass through (`fuse.passthrough`; default yes).
    pub fn allow_passthrough(&self, allowed: bool) {
        self.passthrough.refused.store(!allowed, Ordering::Relaxed);
    }

    /// How an open (`flags`) of `db`'s file of `kind`, backed by `file`,
    /// is answered: its FOPEN flags, and for a WAL or journal how it is
    /// open (`register` makes a backing id).
    pub(super) fn open_mode(
        &self,
        db: &Db,
        kind: FileKind,
        flags: i32,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> (FopenFlags, Option<Opened>) {
        match kind {
            // Pages stay cached across opens: litefs drops them when it
            // changes the file itself (a replica's apply).
            FileKind::Database => (FopenFlags::FOPEN_KEEP_CACHE, None),
            FileKind::Wal | FileKind::Journal => {
                // On the primary every open registers the backing file (a
                // journal's only once its database syncs it, `journal.rs`),
                // or shares the registered one; every open of the inode
                // while it is registered (one on a node that has since
                // stepped down too: the file is sealed then) must use it.
                // With synchronous replication, every commit frame's
                // write must reach litefs (`sync_commit.rs`); with
                // `max-lag`, every frame's (`store/acks/max_lag.rs`).
                let may_register = self.role.is_primary()
                    && match kind {
                        FileKind::Wal => !self.store.acks().wal_through_litefs(),
                        _ => self.journal_may_pass_through(db),
                    };
                let ino = self.ino(db, kind);
                let opened = self.passthrough.open(ino, may_register, file, register);
                if let Opened::Passthrough(_) = opened {
                    if wants_write(flags) && kind == FileKind::Wal {
                        self.watcher.watch(db);
                    }
                    return (FopenFlags::empty(), Some(opened));
                }
                // Cached pages would make the kernel refuse passthrough
                // opens of the inode (and the reverse); without
                // passthrough, the cache is fine.
                if self.passthrough.enabled() {
                    (FopenFlags::FOPEN_DIRECT_IO, Some(opened))
                } else {
                    (FopenFlags::empty(), Some(opened))
                }
            }
            _ => (FopenFlags::empty(), None),
        }
    }

    /// `db`'s WAL was deleted: a new one is a new backing file.
    pub(super) fn forget_wal_backing(&self, db: &Db) {
        let ino = self.ino(db, FileKind::Wal);
        self.passthrough
            .by_ino
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .registered
            .remove(&ino);
    }
}
