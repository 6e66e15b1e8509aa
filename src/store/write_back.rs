//! Handing written data to the disk early: while a large file is still
//! being written (an LTX file of a bulk insert, the undo log of the free
//! pages it reuses), the kernel is asked to start writing what is done,
//! without waiting, so that the fsync which makes it durable finds little
//! left to do. Only a head start: the fsync is what counts, so failures
//! are ignored.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// How many bytes are handed to the disk at a time.
pub(crate) const EVERY: u64 = 1 << 20;

/// Asks the kernel to start writing `from..to` of `file` to the disk,
/// without waiting for it (`to` 0: to the end of the file).
pub(crate) fn start(file: &File, from: u64, to: u64) {
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is
    // open for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            to.saturating_sub(from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// How much of a file written from its start was handed to the disk.
#[derive(Debug, Default)]
pub(super) struct Handed(u64);

impl Handed {
    /// `file` now holds `end` bytes written from its start: hands the new
    /// ones to the disk once [`EVERY`] of them have gathered.
    pub(super) fn written(&mut self, file: &File, end: u64) {
        if end.saturating_sub(self.0) >= EVERY {
            start(file, self.0, end);
            self.0 = end;
        }
    }
}

/// Writes to a file from its start, handing each [`EVERY`] bytes to the
/// disk as they are written.
pub(super) struct WriteBack<'a> {
    pub(super) file: &'a File,
    written: u64,
    handed: Handed,
}

impl<'a> WriteBack<'a> {
    pub(super) fn new(file: &'a File) -> WriteBack<'a> {
        WriteBack {
            file,
            written: 0,
            handed: Handed::default(),
        }
    }
}

impl Write for WriteBack<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.handed.written(self.file, self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
