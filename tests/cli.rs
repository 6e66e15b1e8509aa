//! Tests of the `litefs` binary's command line: help, version, bad
//! arguments, config errors, and the `ltx` operator commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use litefs::ltx::{self, Header, LtxEncoder};

const PAGE_SIZE: usize = 512;

fn litefs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_litefs"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run the litefs binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Three distinct pages of PAGE_SIZE bytes.
fn sample_pages() -> Vec<(u32, Vec<u8>)> {
    (1..=3u32)
        .map(|pgno| {
            let page: Vec<u8> = (0..PAGE_SIZE)
                .map(|i| (i as u32 * 7 + pgno * 31) as u8)
                .collect();
            (pgno, page)
        })
        .collect()
}

/// Writes a snapshot LTX file of `sample_pages` and returns its path and
/// post-apply checksum.
fn write_sample_ltx(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join(ltx::filename(1, 1));
    let header = Header {
        page_size: PAGE_SIZE as u32,
        commit: 3,
        min_txid: 1,
        max_txid: 1,
        timestamp: 1_700_000_000_000,
        node_id: 0xabcdef,
        ..Header::default()
    };
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = LtxEncoder::new(std::io::BufWriter::new(file), &header).unwrap();
    let mut sum = 0u64;
    for (pgno, page) in sample_pages() {
        encoder.encode_page(pgno, &page).unwrap();
        sum ^= ltx::page_checksum(pgno, &page);
    }
    let post_apply = sum | ltx::CHECKSUM_FLAG;
    let (writer, _trailer) = encoder.finish(post_apply).unwrap();
    writer.into_inner().unwrap().sync_all().unwrap();
    (path, post_apply)
}

/// A copy of `path` with one byte of page 2's data flipped.
fn corrupt_copy(path: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(path).unwrap();
    let page2_data = ltx::HEADER_SIZE + (4 + PAGE_SIZE) + 4 + 10;
    bytes[page2_data] ^= 0x01;
    let bad = dir.join("corrupt.ltx");
    std::fs::write(&bad, bytes).unwrap();
    bad
}

#[test]
fn help_prints_usage() {
    for flag in ["--help", "-h", "help"] {
        let out = litefs(&[flag]);
        assert!(out.status.success(), "{flag}: {out:?}");
        let text = stdout(&out);
        assert!(text.contains("Usage:"), "{flag}: {text}");
        assert!(text.contains("-config PATH"), "{flag}: {text}");
        assert!(text.contains("ltx verify FILE..."), "{flag}: {text}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    for arg in ["version", "--version"] {
        let out = litefs(&[arg]);
        assert!(out.status.success(), "{arg}: {out:?}");
        assert_eq!(
            stdout(&out).trim(),
            format!("litefs {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    let cases: [(&[&str], &str); 6] = [
        (&["frobnicate"], "unknown command `frobnicate`"),
        (&["--bogus"], "unknown flag `--bogus`"),
        (&["mount", "-config"], "needs a path"),
        (&["ltx", "dump"], "missing file"),
        (&["ltx", "verify"], "at least one file"),
        (&["ltx", "shred", "x"], "unknown ltx subcommand"),
    ];
    for (args, reason) in cases {
        let out = litefs(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(err.contains("Usage:"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

#[test]
fn mount_reports_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("litefs.yml");
    std::fs::write(&config, "mount-dir: ./mnt\nhttp:\n  adr: \":1\"\n").unwrap();
    for form in [
        vec!["-config", config.to_str().unwrap()],
        vec!["mount", "--config", config.to_str().unwrap()],
    ] {
        let out = litefs(&form);
        assert_eq!(out.status.code(), Some(1), "{form:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains(config.to_str().unwrap()), "{err}");
        assert!(err.contains("unknown key `http.adr`"), "{err}");
    }

    let missing = dir.path().join("missing.yml");
    let out = litefs(&["-config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.yml"), "{}", stderr(&out));
}

#[test]
fn mount_without_config_lists_the_search_path() {
    if Path::new("/etc/litefs.yml").exists() {
        return; // The machine has a system config; the search would find it.
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litefs"))
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    for place in ["./litefs.yml", "/etc/litefs.yml", "-config"] {
        assert!(err.contains(place), "{place}: {err}");
    }
    assert!(
        err.contains(&dir.path().join("litefs.yml").display().to_string()),
        "{err}"
    );
}

#[test]
fn ltx_dump_shows_header_pages_and_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let (path, post_apply) = write_sample_ltx(dir.path());
    let out = litefs(&["ltx", "dump", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for want in [
        "page size:           512".to_string(),
        "commit:              3 pages".to_string(),
        "min txid:            0000000000000001".to_string(),
        "max txid:            0000000000000001".to_string(),
        "2023-11-14T22:13:20.000Z".to_string(),
        "node id:             0000000000abcdef".to_string(),
        "snapshot".to_string(),
        format!("post-apply checksum: {post_apply:016x}"),
        "(3 pages)".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    for (pgno, page) in sample_pages() {
        let line = format!("{pgno:>10}  {:016x}", ltx::page_checksum(pgno, &page));
        assert!(
            text.contains(&line),
            "missing page line {line:?} in:\n{text}"
        );
    }
}

#[test]
fn ltx_dump_of_a_corrupt_file_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_sample_ltx(dir.path());
    let bad = corrupt_copy(&path, dir.path());
    let out = litefs(&["ltx", "dump", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("corrupt.ltx"), "{err}");
    assert!(err.contains("checksum"), "{err}");
    // The header was printed before the damage was found.
    assert!(stdout(&out).contains("page size:"), "{}", stdout(&out));
}

#[test]
fn ltx_verify_reports_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = write_sample_ltx(dir.path());
    let out = litefs(&["ltx", "verify", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(": OK"), "{}", stdout(&out));

    let bad = corrupt_copy(&good, dir.path());
    let truncated = dir.path().join("truncated.ltx");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let out = litefs(&[
        "ltx",
        "verify",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        truncated.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with(good.to_str().unwrap()) && lines[0].contains(": OK"));
    assert!(lines[1].starts_with(bad.to_str().unwrap()), "{text}");
    assert!(
        lines[1].contains("CORRUPT") && lines[1].contains("checksum"),
        "{text}"
    );
    assert!(
        lines[2].contains("CORRUPT") && lines[2].contains("truncated"),
        "{text}"
    );
    assert!(stderr(&out).contains("2 of 3"), "{}", stderr(&out));
}

/// The database checksum computed here independently of litefs.
fn expected_checksum(db: &Path, page_size: usize) -> u64 {
    let bytes = std::fs::read(db).unwrap();
    assert_eq!(bytes.len() % page_size, 0);
    let mut sum = 0u64;
    for (i, page) in bytes.chunks(page_size).enumerate() {
        sum ^= ltx::page_checksum(i as u32 + 1, page);
    }
    sum | ltx::CHECKSUM_FLAG
}

#[test]
fn ltx_checksum_of_a_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 1024;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO t (body) SELECT printf('row %d %s', i, hex(randomblob(40))) FROM n;",
        )
        .unwrap();
    }
    let out = litefs(&["ltx", "checksum", db.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let printed = text.trim();
    assert_eq!(printed.len(), 16, "{text}");
    assert_eq!(
        u64::from_str_radix(printed, 16).unwrap(),
        expected_checksum(&db, 1024)
    );

    let not_db = dir.path().join("notes.txt");
    std::fs::write(&not_db, vec![b'x'; 4096]).unwrap();
    let out = litefs(&["ltx", "checksum", not_db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("notes.txt"), "{}", stderr(&out));
}
