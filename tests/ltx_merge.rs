//! Tests of merging consecutive LTX files (`ltx::merge`), as a primary
//! does for a replica that is behind: applying the merged file gives the
//! same database, byte for byte, and the same position as applying the
//! files one by one, whatever the run (growing, shrinking and regrowing
//! databases, the first file a snapshot); inputs that do not follow each
//! other are refused.

mod store_common;

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use litefs::ltx::{self, Error};
use litefs::store::Store;
use store_common::{read, sqlite_shared, Primary};

/// The transactions of the run: the database grows, shrinks (VACUUM cuts
/// pages off the end) and grows again, and one page changes over and over.
const TRANSACTIONS: &[&str] = &[
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    "INSERT INTO t(v) SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS \
     (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30) SELECT x FROM c);",
    "UPDATE t SET v = randomblob(10) WHERE id = 3;",
    "UPDATE t SET v = randomblob(20) WHERE id = 3;",
    "DELETE FROM t WHERE id > 5;",
    "VACUUM;",
    "INSERT INTO t(v) SELECT randomblob(2000) FROM (WITH RECURSIVE c(x) AS \
     (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 12) SELECT x FROM c);",
    "UPDATE t SET v = randomblob(30) WHERE id = 3;",
];

/// A primary in `dir` that ran `TRANSACTIONS`, and its LTX files, oldest
/// first.
fn primary_with_files(dir: &Path) -> (Primary, Vec<PathBuf>) {
    let mut primary = Primary::new(dir, 4096);
    for sql in TRANSACTIONS {
        primary.exec(sql).expect("each transaction commits");
    }
    let files = primary
        .db
        .ltx_files()
        .unwrap()
        .into_iter()
        .map(|(_, _, path)| path)
        .collect();
    (primary, files)
}

/// Merges `files` into the file at `out`.
fn merge_files(files: &[PathBuf], out: &Path) -> Result<(ltx::Header, ltx::Trailer), Error> {
    let inputs = files.iter().map(|p| File::open(p).map(BufReader::new));
    let mut bytes = Vec::new();
    let merged = ltx::merge(inputs, &mut bytes)?;
    fs::write(out, bytes).unwrap();
    Ok(merged)
}

#[test]
fn a_merged_run_applies_exactly_as_its_files_one_by_one() {
    let _sqlite = sqlite_shared();
    let dir = tempfile::tempdir().unwrap();
    let (primary, files) = primary_with_files(&dir.path().join("primary"));
    assert_eq!(files.len(), TRANSACTIONS.len());
    let expected = read(primary.db.database_path());
    // The run shrinks: the merges below cover a cut and a regrowth.
    let sizes: Vec<u32> = files
        .iter()
        .map(|f| ltx::read_header_and_trailer(f).unwrap().0.commit)
        .collect();
    assert!(sizes.windows(2).any(|w| w[1] < w[0]), "sizes {sizes:?}");

    // Every run [from, to) of two or more files, merged, the others applied
    // one by one.
    let mut case = 0;
    for from in 0..files.len() {
        for to in from + 2..=files.len() {
            case += 1;
            let replica = Store::open(&dir.path().join(format!("replica-{case}"))).unwrap();
            let db = replica.create_db("db").unwrap();
            let merged_path = dir.path().join(format!("merged-{case}.ltx"));
            let (header, trailer) = merge_files(&files[from..to], &merged_path).unwrap();
            let (first, _) = ltx::read_header_and_trailer(&files[from]).unwrap();
            let (last, last_trailer) = ltx::read_header_and_trailer(&files[to - 1]).unwrap();
            assert_eq!(
                (header.min_txid, header.max_txid, header.pre_apply_checksum),
                (first.min_txid, last.max_txid, first.pre_apply_checksum)
            );
            assert_eq!(header.commit, last.commit);
            assert_eq!(
                trailer.post_apply_checksum,
                last_trailer.post_apply_checksum
            );
            // What is merged holds fewer pages than its files together
            // (page 1 and the updated row's page are in every one of them).
            let merged_len = fs::metadata(&merged_path).unwrap().len();
            let inputs_len: u64 = files[from..to]
                .iter()
                .map(|f| fs::metadata(f).unwrap().len())
                .sum();
            assert!(merged_len < inputs_len, "{merged_len} >= {inputs_len}");

            let mut apply = files[..from].to_vec();
            apply.push(merged_path);
            apply.extend_from_slice(&files[to..]);
            for file in &apply {
                db.apply_ltx(file)
                    .unwrap_or_else(|e| panic!("case {case} ({from}..{to}): {e}"));
            }
            assert_eq!(db.pos(), primary.db.pos(), "case {case} ({from}..{to})");
            assert!(
                read(db.database_path()) == expected,
                "case {case} ({from}..{to}): the database differs from the primary's"
            );
        }
    }
}

#[test]
fn files_that_do_not_follow_each_other_are_not_merged() {
    let _sqlite = sqlite_shared();
    let dir = tempfile::tempdir().unwrap();
    let (_primary, files) = primary_with_files(&dir.path().join("primary"));
    let out = dir.path().join("out.ltx");
    let refused = |files: &[PathBuf], why: &str| {
        let err = merge_files(files, &out).expect_err(why).to_string();
        assert!(err.contains(why), "{err}");
    };
    refused(&[files[1].clone(), files[3].clone()], "not at");
    refused(&[files[2].clone(), files[1].clone()], "not at");
    refused(&[files[1].clone(), files[0].clone()], "is a snapshot");
    refused(&[], "no LTX files");

    // A file of the same TXID from another history: the chain of checksums
    // breaks.
    let mut other = Primary::new(&dir.path().join("other"), 4096);
    for sql in &TRANSACTIONS[..2] {
        other.exec(sql).unwrap();
    }
    other.exec("INSERT INTO t(v) VALUES (1);").unwrap();
    let other_third = other.newest_ltx();
    refused(
        &[files[1].clone(), other_third],
        "is not the previous file's post-apply checksum",
    );
}
