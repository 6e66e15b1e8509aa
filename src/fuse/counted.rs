//! Counting the mount's requests for the metrics (`crate::metrics`): each
//! operation wraps its reply in a [`Counted`] as it starts, which counts
//! the operation, and counts an error answer with its errno. The cost is
//! one relaxed atomic add per request (two for an error); the replies are
//! passed on unchanged.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr,
};

use crate::metrics;
pub(super) use crate::metrics::FuseOp;

/// A reply to the kernel, counted (see the module's comment).
pub(super) struct Counted<R> {
    op: FuseOp,
    reply: R,
}

impl<R> Counted<R> {
    /// Counts a request of kind `op`, to be answered through `reply`.
    pub(super) fn new(op: FuseOp, reply: R) -> Counted<R> {
        metrics::fuse_op(op);
        Counted { op, reply }
    }
}

/// `error` for each reply type: counted, then sent.
macro_rules! counted_errors {
    ($($reply:ty),*) => {$(
        impl Counted<$reply> {
            pub(super) fn error(self, err: Errno) {
                metrics::fuse_error(self.op, err.code());
                self.reply.error(err)
            }
        }
    )*};
}

counted_errors!(
    ReplyEntry,
    ReplyAttr,
    ReplyEmpty,
    ReplyOpen,
    ReplyData,
    ReplyWrite,
    ReplyDirectory,
    ReplyStatfs,
    ReplyXattr,
    ReplyCreate,
    ReplyIoctl,
    ReplyLseek
);

impl Counted<ReplyEntry> {
    pub(super) fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        self.reply.entry(ttl, attr, generation)
    }

    /// An entry whose attributes are cached for `attr_ttl`, its name for
    /// `entry_ttl`.
    pub(super) fn entry_with_ttls(
        self,
        attr_ttl: &Duration,
        entry_ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) {
        self.reply
            .entry_with_ttls(attr_ttl, entry_ttl, attr, generation)
    }
}

impl Counted<ReplyAttr> {
    pub(super) fn attr(self, ttl: &Duration, attr: &FileAttr) {
        self.reply.attr(ttl, attr)
    }
}

impl Counted<ReplyEmpty> {
    pub(super) fn ok(self) {
        self.reply.ok()
    }
}

impl Counted<ReplyOpen> {
    pub(super) fn opened(self, fh: FileHandle, flags: FopenFlags) {
        self.reply.opened(fh, flags)
    }
}

impl Counted<ReplyData> {
    pub(super) fn data(self, data: &[u8]) {
        self.reply.data(data)
    }
}

impl Counted<ReplyWrite> {
    pub(super) fn written(self, size: u32) {
        self.reply.written(size)
    }
}

impl Counted<ReplyDirectory> {
    /// Adds an entry; true when the buffer is full.
    #[must_use]
    pub(super) fn add<T: AsRef<OsStr>>(
        &mut self,
        ino: INodeNo,
        offset: u64,
        kind: FileType,
        name: T,
    ) -> bool {
        self.reply.add(ino, offset, kind, name)
    }

    pub(super) fn ok(self) {
        self.reply.ok()
    }
}

impl Counted<ReplyStatfs> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        self.reply
            .statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize)
    }
}

impl Counted<ReplyCreate> {
    /// Registers `file` with the kernel for passthrough (see `passthrough.rs`).
    pub(super) fn open_backing(&self, file: &std::fs::File) -> std::io::Result<fuser::BackingId> {
        self.reply.open_backing(file)
    }

    /// Answers a create, passing through with `backing` when there is one.
    pub(super) fn created_with(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        fh: FileHandle,
        flags: FopenFlags,
        backing: Option<&fuser::BackingId>,
    ) {
        match backing {
            Some(id) => self
                .reply
                .created_passthrough(ttl, attr, Generation(0), fh, flags, id),
            None => self.reply.created(ttl, attr, Generation(0), fh, flags),
        }
    }
}

impl Counted<ReplyOpen> {
    /// Registers `file` with the kernel for passthrough (see `passthrough.rs`).
    pub(super) fn open_backing(&self, file: &std::fs::File) -> std::io::Result<fuser::BackingId> {
        self.reply.open_backing(file)
    }

    /// `opened`, passing through with `backing` when there is one.
    pub(super) fn opened_with(
        self,
        fh: FileHandle,
        flags: FopenFlags,
        backing: Option<&fuser::BackingId>,
    ) {
        match backing {
            Some(id) => self.reply.opened_passthrough(fh, flags, id),
            None => self.reply.opened(fh, flags),
        }
    }
}
