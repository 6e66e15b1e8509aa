//! Merging consecutive LTX files into one that covers all their TXIDs.
//!
//! A replica that is behind gets what it lacks as one file per run of
//! consecutive files (`http/server/stream.rs`), so it receives, fsyncs and
//! applies once per run rather than once per transaction. Every TXID still
//! names exactly one of the primary's transactions; a merged file covers
//! `min..=max` of them and a replica applies it whole, so no reader sees
//! part of any of them.
//!
//! The merged file holds, for each page, its content in the newest input
//! that has it, less the pages past the last input's `commit`. That is the
//! database after applying the inputs in order: a page past an input's
//! `commit` is cut off by that input, and an input that grows the database
//! holds every page past the previous size (the apply refuses it
//! otherwise), so a page dropped here is rewritten by a later input or
//! gone. Its pre-apply checksum is the first input's, its post-apply
//! checksum the last's, which the replica checks against the pages as for
//! any file.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use super::{Error, Header, LtxDecoder, LtxEncoder, Trailer};

/// Decodes every input in order (verifying each whole) and writes one LTX
/// file covering them all to `out`. The inputs must follow each other:
/// each one's min TXID the previous max TXID + 1, its pre-apply checksum
/// the previous post-apply checksum, the same page size, and none but the
/// first a snapshot. The merged file's timestamp, node id and WAL fields
/// are the last input's (the WAL fields then say where the newest frames
/// it covers ended). Holds every distinct page in memory: the caller
/// bounds the inputs' total size. The inputs are taken one at a time (an
/// input that could not be opened is an `Err` item), so that only one is
/// open while the others wait.
pub fn merge<R: Read, W: Write>(
    inputs: impl IntoIterator<Item = io::Result<R>>,
    out: W,
) -> Result<(Header, Trailer), Error> {
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut merged: Option<(Header, Trailer)> = None;
    for (i, input) in inputs.into_iter().enumerate() {
        let mut decoder = LtxDecoder::new(input?)?;
        let header = *decoder.header();
        if let Some((first, last)) = &merged {
            check_follows(i, first, last, &header)?;
        }
        let mut page = vec![0u8; header.page_size as usize];
        while let Some(pgno) = decoder.next_page(&mut page)? {
            pages.insert(pgno, page.clone());
        }
        let trailer = decoder.finish()?;
        // What this input cuts off is gone, whatever came before.
        pages.split_off(&(header.commit + 1));
        let first = merged.map_or(header, |(first, _)| first);
        merged = Some((
            Header {
                min_txid: first.min_txid,
                pre_apply_checksum: first.pre_apply_checksum,
                ..header
            },
            trailer,
        ));
    }
    let Some((header, last_trailer)) = merged else {
        return Err(Error::Invalid("no LTX files to merge".to_string()));
    };
    let mut encoder = LtxEncoder::new(out, &header)?;
    for (pgno, page) in &pages {
        encoder.encode_page(*pgno, page)?;
    }
    let (_, trailer) = encoder.finish(last_trailer.post_apply_checksum)?;
    Ok((header, trailer))
}

/// Checks that input `i` (`next`) follows the merge so far, whose header
/// is `merged` and the previous input's trailer `last`.
fn check_follows(i: usize, merged: &Header, last: &Trailer, next: &Header) -> Result<(), Error> {
    let invalid = |what: String| Err(Error::Invalid(format!("LTX file {i} of a merge: {what}")));
    if next.is_snapshot() {
        return invalid("it is a snapshot; only the first file may be".to_string());
    }
    if next.page_size != merged.page_size {
        return invalid(format!(
            "its page size is {}, the files before it have {}",
            next.page_size, merged.page_size
        ));
    }
    if next.min_txid != merged.max_txid + 1 {
        return invalid(format!(
            "it starts at TXID {:016x}, not at {:016x}",
            next.min_txid,
            merged.max_txid + 1
        ));
    }
    if next.pre_apply_checksum != last.post_apply_checksum {
        return invalid(format!(
            "its pre-apply checksum {:016x} is not the previous file's post-apply checksum \
             {:016x}",
            next.pre_apply_checksum, last.post_apply_checksum
        ));
    }
    Ok(())
}
