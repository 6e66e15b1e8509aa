//! Reading a known list of database pages with few system calls. A commit
//! reads each page it records twice (to checksum it, then to encode it
//! into the LTX file), and a bulk insert's pages mostly follow each other,
//! so consecutive pages of the list are read together, up to
//! [`RUN_BYTES`] at a time: a 1,800-page insert then costs tens of reads
//! instead of thousands.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::page_offset;

/// The most bytes read at once (and kept: one run).
const RUN_BYTES: usize = 256 * 1024;

/// Reads the pages of `pgnos` (ascending) from a database file, each
/// run of consecutive ones at once.
pub(super) struct PageReader<'a> {
    file: &'a File,
    pgnos: &'a [u32],
    page_size: u32,
    run: RefCell<Run>,
}

/// The pages read last: `count` pages from `first`, in `buf`.
struct Run {
    buf: Vec<u8>,
    first: u32,
    count: u32,
}

impl<'a> PageReader<'a> {
    pub(super) fn new(file: &'a File, pgnos: &'a [u32], page_size: u32) -> PageReader<'a> {
        PageReader {
            file,
            pgnos,
            page_size,
            run: RefCell::new(Run {
                buf: Vec::new(),
                first: 0,
                count: 0,
            }),
        }
    }

    /// Reads page `pgno` into `page` (of the page size): from the run read
    /// last, or by reading the run of the list that starts at `pgno`.
    pub(super) fn read(&self, pgno: u32, page: &mut [u8]) -> io::Result<()> {
        let size = self.page_size as usize;
        let mut run = self.run.borrow_mut();
        if pgno < run.first || pgno - run.first >= run.count {
            let count = match self.pgnos.binary_search(&pgno) {
                Ok(at) => {
                    let most = (RUN_BYTES / size).max(1);
                    let rest = &self.pgnos[at..];
                    let mut count = 1;
                    while count < most.min(rest.len()) && rest[count] == pgno + count as u32 {
                        count += 1;
                    }
                    count
                }
                // Not in the list: this page alone.
                Err(_) => 1,
            };
            run.count = 0;
            run.buf.resize(count * size, 0);
            let offset = page_offset(pgno, self.page_size);
            let mut read = self.file.read_exact_at(&mut run.buf, offset);
            if read.is_err() && count > 1 {
                // A later page of the run missing (the file shorter than
                // the list) fails that page's read, not this one's.
                run.buf.truncate(size);
                read = self.file.read_exact_at(&mut run.buf, offset);
            }
            read?;
            run.first = pgno;
            run.count = (run.buf.len() / size) as u32;
        }
        let at = (pgno - run.first) as usize * size;
        page.copy_from_slice(&run.buf[at..at + size]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `count` pages of `size` bytes, each filled with its number.
    fn pages_file(count: u32, size: usize) -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut data = Vec::new();
        for pgno in 1..=count {
            data.extend(vec![pgno as u8; size]);
        }
        std::fs::write(tmp.path(), &data).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn every_page_reads_as_itself_in_and_out_of_runs() {
        let size = 4096;
        let (_tmp, file) = pages_file(200, size);
        // Runs longer than one read (64 pages of 4096 bytes), gaps, a
        // page alone at the end.
        let mut listed: Vec<u32> = (1..=150).collect();
        listed.extend([152, 153, 170, 200]);
        let reader = PageReader::new(&file, &listed, size as u32);
        let mut page = vec![0u8; size];
        let mut order = listed.clone();
        // In order, then backwards (every read a miss), then pages not
        // listed at all.
        order.extend(listed.iter().rev());
        order.extend([151, 7, 199]);
        for pgno in order {
            reader.read(pgno, &mut page).unwrap();
            assert!(page.iter().all(|&b| b == pgno as u8), "page {pgno}");
        }
    }

    #[test]
    fn a_page_beyond_the_file_is_an_error() {
        let (_tmp, file) = pages_file(3, 512);
        let listed = [2, 3, 4];
        let reader = PageReader::new(&file, &listed, 512);
        let mut page = vec![0u8; 512];
        assert!(reader.read(4, &mut page).is_err());
        reader.read(3, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 3));
    }
}
