//! Tests of the LTX format: round trips, known answers, and refusal of every
//! kind of corruption (bit flips, truncation, reordering, trailing bytes).

use std::io::Cursor;

use litefs::ltx::{
    self, checksum_replace, crc64, filename, page_checksum, parse_filename, Error, Header,
    LtxDecoder, LtxEncoder, Trailer, CHECKSUM_FLAG, HEADER_SIZE, TRAILER_SIZE,
};

/// Deterministic page content that differs per page and per seed.
fn page_data(pgno: u32, page_size: u32, seed: u64) -> Vec<u8> {
    let mut state = seed ^ (u64::from(pgno) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    (0..page_size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn db_checksum(pages: &[(u32, Vec<u8>)]) -> u64 {
    pages
        .iter()
        .fold(0, |sum, (pgno, page)| sum ^ page_checksum(*pgno, page))
        | CHECKSUM_FLAG
}

fn snapshot_header(page_size: u32, commit: u32) -> Header {
    Header {
        page_size,
        commit,
        min_txid: 1,
        max_txid: 7,
        timestamp: 1_700_000_000_000,
        node_id: 0xabcd,
        ..Header::default()
    }
}

fn delta_header(page_size: u32, commit: u32) -> Header {
    Header {
        page_size,
        commit,
        min_txid: 8,
        max_txid: 8,
        timestamp: 1_700_000_000_123,
        pre_apply_checksum: CHECKSUM_FLAG | 0x1234_5678_9abc_def0,
        node_id: 42,
        ..Header::default()
    }
}

fn encode(header: &Header, pages: &[(u32, Vec<u8>)], post_apply: u64) -> (Vec<u8>, Trailer) {
    let mut enc = LtxEncoder::new(Vec::new(), header).unwrap();
    for (pgno, page) in pages {
        enc.encode_page(*pgno, page).unwrap();
    }
    enc.finish(post_apply).unwrap()
}

/// Page numbers and contents, in file order.
type Pages = Vec<(u32, Vec<u8>)>;

type Decoded = (Header, Pages, Trailer);

fn decode(bytes: &[u8]) -> Result<Decoded, Error> {
    let mut dec = LtxDecoder::new(Cursor::new(bytes))?;
    let header = *dec.header();
    let mut pages = Vec::new();
    let mut buf = vec![0u8; header.page_size as usize];
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let trailer = dec.finish()?;
    Ok((header, pages, trailer))
}

/// Builds a file byte by byte, with a correct file checksum, so that tests
/// can make files the encoder refuses to write.
fn raw_file(header: &Header, frames: &[(u32, Vec<u8>)], post_apply: u64) -> Vec<u8> {
    let mut bytes = header.encode().to_vec();
    for (pgno, page) in frames {
        bytes.extend_from_slice(&pgno.to_be_bytes());
        bytes.extend_from_slice(page);
    }
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&post_apply.to_be_bytes());
    let sum = crc64(&bytes) | CHECKSUM_FLAG;
    bytes.extend_from_slice(&sum.to_be_bytes());
    bytes
}

/// Recomputes the file checksum of a (modified) file in place.
fn fix_file_checksum(bytes: &mut [u8]) {
    let len = bytes.len();
    let sum = crc64(&bytes[..len - 8]) | CHECKSUM_FLAG;
    bytes[len - 8..].copy_from_slice(&sum.to_be_bytes());
}

fn message(err: Error) -> String {
    err.to_string()
}

/// A snapshot of 5 pages and a delta of pages 2, 5, 9 of a 12-page database.
fn samples(page_size: u32) -> Vec<(Header, Pages, u64)> {
    let snap_pages: Vec<_> = (1..=5).map(|p| (p, page_data(p, page_size, 1))).collect();
    let snap_sum = db_checksum(&snap_pages);
    let delta_pages: Vec<_> = [2, 5, 9]
        .iter()
        .map(|&p| (p, page_data(p, page_size, 2)))
        .collect();
    vec![
        (snapshot_header(page_size, 5), snap_pages, snap_sum),
        (
            delta_header(page_size, 12),
            delta_pages,
            CHECKSUM_FLAG | 0x0fed_cba9_8765_4321,
        ),
    ]
}

#[test]
fn crc64_known_answer() {
    assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
    assert_eq!(crc64(b""), 0);
    let mut expected = crc64fast::Digest::new();
    expected.write(&7u32.to_be_bytes());
    expected.write(b"page");
    assert_eq!(page_checksum(7, b"page"), expected.sum64());
    assert_ne!(page_checksum(7, b"page"), page_checksum(8, b"page"));
}

#[test]
fn round_trip_every_page_size() {
    let mut page_size = 512;
    while page_size <= 65536 {
        for (header, pages, post) in samples(page_size) {
            let (bytes, trailer) = encode(&header, &pages, post);
            let frames = pages.len() * (4 + page_size as usize);
            assert_eq!(bytes.len(), HEADER_SIZE + frames + 4 + TRAILER_SIZE);
            assert_eq!(&bytes[0..4], b"LTX1");
            assert_eq!(trailer.post_apply_checksum, post);
            assert_eq!(
                trailer.file_checksum,
                crc64(&bytes[..bytes.len() - 8]) | CHECKSUM_FLAG
            );
            let (got_header, got_pages, got_trailer) = decode(&bytes).unwrap();
            assert_eq!(got_header, header);
            assert_eq!(got_pages, pages);
            assert_eq!(got_trailer, trailer);
        }
        page_size *= 2;
    }
}

#[test]
fn header_encoding_is_big_endian_at_fixed_offsets() {
    let header = Header {
        flags: 0,
        page_size: 4096,
        commit: 0x0102_0304,
        min_txid: 0x1111_2222_3333_4444,
        max_txid: 0x1111_2222_3333_4445,
        timestamp: 0x0a0b_0c0d_0e0f_1011,
        pre_apply_checksum: CHECKSUM_FLAG | 5,
        wal_offset: 0x21,
        wal_size: 0x22,
        wal_salt1: 0x23,
        wal_salt2: 0x24,
        node_id: 0x25,
    };
    let buf = header.encode();
    assert_eq!(&buf[8..12], &4096u32.to_be_bytes());
    assert_eq!(&buf[12..16], &[1, 2, 3, 4]);
    assert_eq!(&buf[16..24], &0x1111_2222_3333_4444u64.to_be_bytes());
    assert_eq!(&buf[32..40], &0x0a0b_0c0d_0e0f_1011u64.to_be_bytes());
    assert_eq!(&buf[40..48], &(CHECKSUM_FLAG | 5).to_be_bytes());
    assert_eq!(&buf[48..56], &0x21u64.to_be_bytes());
    assert_eq!(&buf[56..64], &0x22u64.to_be_bytes());
    assert_eq!(&buf[64..68], &0x23u32.to_be_bytes());
    assert_eq!(&buf[68..72], &0x24u32.to_be_bytes());
    assert_eq!(&buf[72..80], &0x25u64.to_be_bytes());
    assert!(buf[80..].iter().all(|&b| b == 0));
    // WAL fields may hold anything: they round trip.
    assert_eq!(Header::decode(&buf).unwrap(), header);
}

#[test]
fn every_header_and_trailer_bit_flip_is_refused() {
    for (header, pages, post) in samples(512) {
        let (bytes, _) = encode(&header, &pages, post);
        let len = bytes.len();
        let mut positions: Vec<usize> = (0..HEADER_SIZE).collect();
        positions.extend(len - TRAILER_SIZE..len);
        for byte in positions {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} of byte {byte} accepted (snapshot: {})",
                    header.is_snapshot()
                );
            }
        }
    }
}

#[test]
fn page_block_bit_flips_are_refused() {
    for (header, pages, post) in samples(512) {
        let (bytes, _) = encode(&header, &pages, post);
        let block = HEADER_SIZE..bytes.len() - TRAILER_SIZE;
        let frame = 4 + header.page_size as usize;
        for byte in block {
            let in_frame = (byte - HEADER_SIZE) % frame;
            // Every bit of every page number (and of the end marker); sampled page data.
            let bits: Vec<u32> = if in_frame < 4 {
                (0..8).collect()
            } else if byte % 61 == 0 {
                vec![(byte % 8) as u32]
            } else {
                continue;
            };
            for bit in bits {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} of byte {byte} accepted"
                );
            }
        }
    }
}

#[test]
fn page_data_flip_reports_checksum_mismatch() {
    let (header, pages, post) = samples(1024).remove(1);
    let (mut bytes, trailer) = encode(&header, &pages, post);
    bytes[HEADER_SIZE + 4 + 10] ^= 0x10;
    let msg = message(decode(&bytes).unwrap_err());
    assert!(msg.contains("file checksum mismatch"), "{msg}");
    assert!(
        msg.contains(&format!("stored {:016x}", trailer.file_checksum)),
        "{msg}"
    );
}

#[test]
fn truncation_at_every_frame_boundary_is_refused() {
    for (header, pages, post) in samples(512) {
        let (bytes, _) = encode(&header, &pages, post);
        let frame = 4 + header.page_size as usize;
        let mut cuts = vec![0, 1, 50, HEADER_SIZE - 1, HEADER_SIZE];
        for i in 1..=pages.len() {
            let boundary = HEADER_SIZE + i * frame;
            cuts.extend([boundary, boundary - 1, boundary - frame + 2, boundary - 300]);
        }
        let end_marker = HEADER_SIZE + pages.len() * frame;
        cuts.extend([end_marker + 2, end_marker + 4, end_marker + 12]);
        cuts.extend([bytes.len() - 8, bytes.len() - 1]);
        for cut in cuts {
            match decode(&bytes[..cut]) {
                Err(Error::Truncated { offset, reading }) => {
                    assert_eq!(offset, cut as u64, "cut at {cut}: reading {reading}");
                }
                other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
            }
        }
        let msg = message(decode(&bytes[..HEADER_SIZE + 7]).unwrap_err());
        assert!(
            msg.contains("truncated") && msg.contains("byte 107"),
            "{msg}"
        );
    }
}

#[test]
fn zero_length_file_is_refused() {
    match decode(&[]) {
        Err(Error::Truncated { offset: 0, reading }) => assert!(reading.contains("header")),
        other => panic!("expected truncation at byte 0, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(filename(1, 1));
    std::fs::write(&path, b"").unwrap();
    let msg = message(ltx::verify_file(&path).unwrap_err());
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    assert!(ltx::read_header_and_trailer(&path).is_err());
}

#[test]
fn data_after_trailer_is_refused() {
    let (header, pages, post) = samples(512).remove(1);
    let (mut bytes, _) = encode(&header, &pages, post);
    bytes.push(0);
    let msg = message(decode(&bytes).unwrap_err());
    assert!(msg.contains("after the trailer"), "{msg}");
}

#[test]
fn swapped_frames_are_refused() {
    for (header, pages, post) in samples(512) {
        let (bytes, _) = encode(&header, &pages, post);
        let frame = 4 + header.page_size as usize;
        let mut swapped = bytes.clone();
        let (first, second) = (HEADER_SIZE + frame, HEADER_SIZE + 2 * frame);
        let copy = bytes[first..first + frame].to_vec();
        swapped.copy_within(second..second + frame, first);
        swapped[second..second + frame].copy_from_slice(&copy);
        assert!(decode(&swapped).is_err());
        // Even with a valid file checksum, the order is checked.
        fix_file_checksum(&mut swapped);
        let msg = message(decode(&swapped).unwrap_err());
        let (a, b) = (pages[1].0, pages[2].0);
        if header.is_snapshot() {
            assert!(msg.contains(&format!("missing page {a}")), "{msg}");
        } else {
            assert!(
                msg.contains(&format!("page {a} out of order after page {b}")),
                "{msg}"
            );
        }
    }
}

#[test]
fn decoder_checks_page_numbers_against_header() {
    let page = |p| page_data(p, 512, 3);
    let delta = delta_header(512, 10);
    let post = CHECKSUM_FLAG | 1;
    let cases: Vec<(Header, Pages, u64, &str)> = vec![
        (
            delta,
            vec![(3, page(3)), (3, page(3))],
            post,
            "page 3 out of order after page 3",
        ),
        (
            delta,
            vec![(11, page(11))],
            post,
            "beyond the commit size of 10",
        ),
        (
            Header {
                min_txid: 1,
                max_txid: 1,
                pre_apply_checksum: 0,
                ..delta
            },
            vec![(1, page(1)), (3, page(3))],
            post,
            "snapshot is missing page 2",
        ),
        (
            Header {
                min_txid: 1,
                max_txid: 1,
                pre_apply_checksum: 0,
                commit: 2,
                ..delta
            },
            vec![(1, page(1))],
            db_checksum(&[(1, page(1))]),
            "snapshot ends at page 1 but the database has 2 pages",
        ),
        (
            Header {
                min_txid: 1,
                max_txid: 1,
                pre_apply_checksum: 0,
                commit: 1,
                ..delta
            },
            vec![(1, page(1))],
            CHECKSUM_FLAG | 99,
            "does not match its pages' checksum",
        ),
        (delta, vec![], 5, "lacks the checksum flag"),
        (
            Header {
                page_size: 65536,
                commit: 20000,
                ..delta
            },
            vec![(16385, vec![0; 65536])],
            post,
            "lock page",
        ),
    ];
    for (header, frames, post, expected) in cases {
        let bytes = raw_file(&header, &frames, post);
        let msg = message(decode(&bytes).unwrap_err());
        assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
    }
    // A delta may hold no page at all.
    let bytes = raw_file(&delta, &[], post);
    assert!(decode(&bytes).unwrap().1.is_empty());
}

#[test]
fn header_validation_rules() {
    let good = delta_header(4096, 3);
    assert!(good.validate().is_ok());
    let cases: Vec<(Header, &str)> = vec![
        (Header { flags: 1, ..good }, "flags"),
        (
            Header {
                page_size: 256,
                ..good
            },
            "page size 256",
        ),
        (
            Header {
                page_size: 131072,
                ..good
            },
            "page size 131072",
        ),
        (
            Header {
                page_size: 4095,
                ..good
            },
            "page size 4095",
        ),
        (Header { commit: 0, ..good }, "commit is 0"),
        (
            Header {
                min_txid: 0,
                ..good
            },
            "min TXID is 0",
        ),
        (
            Header {
                min_txid: 9,
                max_txid: 8,
                ..good
            },
            "after max TXID",
        ),
        // A snapshot ending at 2^64-1: the next commit could not be numbered.
        (
            Header {
                min_txid: 1,
                max_txid: u64::MAX,
                pre_apply_checksum: 0,
                ..good
            },
            "past the largest TXID",
        ),
        (
            Header {
                min_txid: 1,
                pre_apply_checksum: CHECKSUM_FLAG | 1,
                ..good
            },
            "snapshot (min TXID 1) has pre-apply checksum",
        ),
        (
            Header {
                pre_apply_checksum: 7,
                ..good
            },
            "lacks the checksum flag",
        ),
        (
            Header {
                pre_apply_checksum: 0,
                ..good
            },
            "lacks the checksum flag",
        ),
    ];
    for (header, expected) in cases {
        let msg = message(header.validate().unwrap_err());
        assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        assert!(matches!(
            LtxEncoder::new(Vec::new(), &header),
            Err(Error::Invalid(_))
        ));
        let msg = message(Header::decode(&header.encode()).unwrap_err());
        assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
    }
    let mut buf = good.encode();
    buf[99] = 1;
    let msg = message(Header::decode(&buf).unwrap_err());
    assert!(msg.contains("header byte 99"), "{msg}");
    let mut buf = good.encode();
    buf[0] = b'X';
    let msg = message(Header::decode(&buf).unwrap_err());
    assert!(msg.contains("bad magic"), "{msg}");
}

#[test]
fn encoder_refuses_misuse() {
    let header = delta_header(512, 10);
    let page = vec![0u8; 512];
    let new = || LtxEncoder::new(Vec::new(), &header).unwrap();

    let mut enc = new();
    enc.encode_page(5, &page).unwrap();
    let msg = message(enc.encode_page(4, &page).unwrap_err());
    assert!(msg.contains("page 4 out of order after page 5"), "{msg}");
    assert!(
        enc.encode_page(5, &page).is_err(),
        "duplicate page accepted"
    );

    let msg = message(new().encode_page(1, &page[..511]).unwrap_err());
    assert!(msg.contains("511 bytes"), "{msg}");
    assert!(new().encode_page(1, &[0u8; 1024]).is_err());
    assert!(new().encode_page(0, &page).is_err());
    let msg = message(new().encode_page(11, &page).unwrap_err());
    assert!(msg.contains("beyond the commit size"), "{msg}");
    assert!(new().finish(1).is_err(), "post-apply checksum without flag");

    let big = Header {
        page_size: 65536,
        commit: 20000,
        ..header
    };
    let mut enc = LtxEncoder::new(Vec::new(), &big).unwrap();
    let msg = message(enc.encode_page(16385, &vec![0u8; 65536]).unwrap_err());
    assert!(msg.contains("lock page"), "{msg}");

    let snap = snapshot_header(512, 3);
    let mut enc = LtxEncoder::new(Vec::new(), &snap).unwrap();
    assert!(
        enc.encode_page(2, &page).is_err(),
        "snapshot without page 1"
    );
    enc.encode_page(1, &page).unwrap();
    let msg = message(enc.finish(CHECKSUM_FLAG).unwrap_err());
    assert!(msg.contains("snapshot ends at page 1"), "{msg}");

    let mut enc = LtxEncoder::new(Vec::new(), &Header { commit: 1, ..snap }).unwrap();
    enc.encode_page(1, &page).unwrap();
    let msg = message(enc.finish(CHECKSUM_FLAG | 12345).unwrap_err());
    assert!(msg.contains("does not match its pages' checksum"), "{msg}");
}

#[test]
fn decoder_refuses_wrong_buffer_length() {
    let (header, pages, post) = samples(512).remove(1);
    let (bytes, _) = encode(&header, &pages, post);
    let mut dec = LtxDecoder::new(Cursor::new(&bytes)).unwrap();
    assert!(matches!(
        dec.next_page(&mut [0u8; 1024]),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn finish_reads_remaining_pages() {
    for (header, pages, post) in samples(512) {
        let (bytes, trailer) = encode(&header, &pages, post);
        let dec = LtxDecoder::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(dec.finish().unwrap(), trailer);
        let mut bad = bytes.clone();
        bad[HEADER_SIZE + 40] ^= 1;
        let dec = LtxDecoder::new(Cursor::new(&bad)).unwrap();
        assert!(dec.finish().is_err());
    }
}

#[test]
fn verify_and_read_header_from_files() {
    let dir = tempfile::tempdir().unwrap();
    for (header, pages, post) in samples(4096) {
        let (bytes, trailer) = encode(&header, &pages, post);
        let path = dir.path().join(filename(header.min_txid, header.max_txid));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(ltx::verify_file(&path).unwrap(), (header, trailer));
        assert_eq!(
            ltx::read_header_and_trailer(&path).unwrap(),
            (header, trailer)
        );

        let mut bad = bytes.clone();
        bad[HEADER_SIZE + 4 + 100] ^= 4;
        std::fs::write(&path, &bad).unwrap();
        let msg = message(ltx::verify_file(&path).unwrap_err());
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("file checksum mismatch"), "{msg}");

        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let msg = message(ltx::read_header_and_trailer(&path).unwrap_err());
        assert!(msg.contains("page frames"), "{msg}");
    }
    let missing = dir.path().join("missing.ltx");
    let msg = message(ltx::verify_file(&missing).unwrap_err());
    assert!(msg.contains("missing.ltx"), "{msg}");
}

#[test]
fn rolling_checksum_matches_recomputed() {
    let page_size = 1024;
    let mut pages: Vec<(u32, Vec<u8>)> =
        (1..=6).map(|p| (p, page_data(p, page_size, 10))).collect();
    let mut sum = db_checksum(&pages);
    // Change pages 2 and 5, then drop page 6 (truncation), then add page 6 back.
    for (i, seed) in [(1usize, 11u64), (4, 12)] {
        let pgno = pages[i].0;
        let new = page_data(pgno, page_size, seed);
        sum = checksum_replace(
            sum,
            page_checksum(pgno, &pages[i].1),
            page_checksum(pgno, &new),
        );
        pages[i].1 = new;
        assert_eq!(sum, db_checksum(&pages));
    }
    let (pgno, last) = pages.pop().unwrap();
    sum = checksum_replace(sum, page_checksum(pgno, &last), 0);
    assert_eq!(sum, db_checksum(&pages));
    sum = checksum_replace(sum, 0, page_checksum(pgno, &last));
    pages.push((pgno, last));
    assert_eq!(sum, db_checksum(&pages));
    assert_ne!(sum & CHECKSUM_FLAG, 0);
}

#[test]
fn filename_round_trip_and_garbage() {
    assert_eq!(filename(1, 0x2f), "0000000000000001-000000000000002f.ltx");
    for (min, max) in [
        (1, 1),
        (5, 9),
        (0xabc, 0xabc),
        (1, u64::MAX - 1),
        (u64::MAX - 1, u64::MAX - 1),
    ] {
        assert_eq!(parse_filename(&filename(min, max)), Some((min, max)));
    }
    // Past the largest TXID: its successor would wrap to 0.
    assert_eq!(parse_filename(&filename(1, u64::MAX)), None);
    for bad in [
        "",
        ".ltx",
        "0000000000000001-0000000000000002",
        "0000000000000001-0000000000000002.ltx.tmp",
        "0000000000000001_0000000000000002.ltx",
        "000000000000001-0000000000000002.ltx",
        "00000000000000001-0000000000000002.ltx",
        "000000000000000G-0000000000000002.ltx",
        "000000000000000A-000000000000000B.ltx",
        "+000000000000001-0000000000000002.ltx",
        "0000000000000003-0000000000000002.ltx",
        "0000000000000000-0000000000000002.ltx",
        "0000000000000001-0000000000000002-0000000000000003.ltx",
        "database",
    ] {
        assert_eq!(parse_filename(bad), None, "{bad:?} accepted");
    }
}
