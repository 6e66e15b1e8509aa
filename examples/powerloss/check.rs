//! What every crash state must show, checked on a real litefs started on
//! the state's image:
//! - litefs starts (ext4 having replayed its journal) and serves every
//!   database, refusing none;
//! - each database passes `PRAGMA integrity_check` and holds whole
//!   transactions only (batches 1..=m of `rows` rows each), m one of the
//!   counts the workload committed and at least the last durable one that
//!   returned before the crash (with edits in place, `user_version` is m
//!   or m - 1 and at least that one);
//! - a name deleted and created again (generations, told apart by their
//!   table) shows the newest generation acknowledged, or a newer one, and
//!   never a generation whose deletion returned; no file only once the
//!   deletion of every acknowledged generation began;
//! - `-pos` is the end of the LTX chain (TXID 0 with no LTX file only for
//!   an empty database), and the chain replayed onto an empty store is
//!   byte-identical to the database file.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::disk::LoopMount;
use crate::node::Node;
use crate::workloads::{DbSpec, DOOMED_BATCH};

/// One generation of a database in one crash state: a database name
/// may be deleted and created again (a new table name tells them apart).
pub struct Expect {
    pub spec: DbSpec,
    /// The last transaction that must be there.
    pub required: u64,
    /// Every transaction number the workload marked (the transaction
    /// counts a crash state may show, with 0).
    pub steps: Vec<u64>,
    /// Whether its deletion began before the crash.
    pub deleting: bool,
    /// Whether its deletion returned before the crash.
    pub deleted: bool,
    /// Refused commits (`Workload::TakeBack`) whose error returned before
    /// the crash: their batches (`DOOMED_BATCH + n`) must not be there.
    pub refused: Vec<u64>,
}

/// Checks the crash state whose disk image is `image`; `work` is a
/// scratch directory of this run, `bin` the litefs binary.
pub fn check_state(
    bin: &Path,
    work: &Path,
    image: &[u8],
    yaml: &str,
    expects: &[Expect],
) -> Result<(), String> {
    let image_path = work.join("state.img");
    std::fs::write(&image_path, image).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let disk = LoopMount::new(&image_path, &work.join("state"), false)
        .map_err(|e| format!("mounting the crash state's ext4: {e}"))?;
    let data = disk.dir.join("data");
    let node_dir = work.join("node");
    let _ = std::fs::remove_dir_all(&node_dir);
    std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
    let mut node = Node::start(bin, &node_dir, &data, yaml)
        .map_err(|e| format!("litefs does not start on it: {e}"))?;
    let served = check_served(&node, expects).map_err(|e| with_log(&node, e));
    let stopped = node.stop().map_err(|e| with_log(&node, e));
    let positions = served?;
    stopped?;
    for (name, pos) in positions {
        check_chain(work, &data, &name, &pos)?;
    }
    drop(disk);
    let _ = std::fs::remove_file(&image_path);
    Ok(())
}

fn with_log(node: &Node, error: String) -> String {
    format!(
        "{error}\n--- litefs log (last lines) ---\n{}",
        node.log_tail(15)
    )
}

/// Checks each database through the mount; returns each name's `-pos`
/// (None for one that is rightly absent), after a checkpoint that leaves
/// every committed page in the database file.
fn check_served(node: &Node, expects: &[Expect]) -> Result<Vec<(String, String)>, String> {
    if let Some(line) = node.log_text().lines().find(|l| l.contains("refusing")) {
        return Err(format!("litefs refused a database: {line}"));
    }
    let mut names: Vec<&str> = expects.iter().map(|e| e.spec.name.as_str()).collect();
    names.dedup();
    let mut positions = Vec::new();
    for name in names {
        let generations: Vec<&Expect> = expects.iter().filter(|e| e.spec.name == name).collect();
        let path = node.mount.join(name);
        // The generation the file is (None: no file), by its table; a file
        // with no table yet is the newest generation being created.
        let found = if path.exists() {
            let tables = tables(&path)?;
            Some(
                generations
                    .iter()
                    .position(|g| tables.iter().any(|t| t == g.spec.table))
                    .unwrap_or(generations.len() - 1),
            )
        } else {
            None
        };
        for (i, g) in generations.iter().enumerate() {
            // An acknowledged generation is there, or a newer one, or none
            // once its deletion began.
            let kept = match found {
                Some(f) => f >= i,
                None => g.deleting,
            };
            if g.required > 0 && !kept {
                return Err(format!(
                    "{name} ({}): transaction {} was acknowledged, but the mount has {}",
                    g.spec.key,
                    g.required,
                    match found {
                        Some(f) => format!("{} instead", generations[f].spec.key),
                        None => "no such file".into(),
                    }
                ));
            }
        }
        let Some(f) = found else {
            continue;
        };
        let g = generations[f];
        if g.deleted {
            return Err(format!(
                "{name}: {} is back, though its deletion was acknowledged",
                g.spec.key
            ));
        }
        let m = check_db(&path, g)?;
        if m < g.required || (m > 0 && !g.steps.contains(&m)) {
            return Err(format!(
                "{name} ({}) holds transactions 1..={m}; acknowledged 1..={}, committed {:?}",
                g.spec.key, g.required, g.steps
            ));
        }
        let pos = std::fs::read_to_string(node.mount.join(format!("{name}-pos")))
            .map_err(|e| format!("{name}-pos: {e}"))?;
        positions.push((name.to_string(), pos));
    }
    Ok(positions)
}

/// The names of the tables in the database at `path`.
fn tables(path: &Path) -> Result<Vec<String>, String> {
    let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let names = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| format!("{}: {e}", path.display()));
    names
}

/// integrity_check, then the batches; returns the last whole batch.
/// Ends with a TRUNCATE checkpoint (a no-op out of WAL mode).
fn check_db(path: &Path, expect: &Expect) -> Result<u64, String> {
    let name = &expect.spec.name;
    let table = expect.spec.table;
    let fail = |what: &str, e: rusqlite::Error| format!("{name}: {what}: {e}");
    let conn = Connection::open(path).map_err(|e| fail("open", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| fail("busy_timeout", e))?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| fail("integrity_check", e))?;
    if integrity != "ok" {
        return Err(format!("{name}: integrity_check: {integrity}"));
    }
    let batches: Vec<(u64, u64)> = if tables(path)?.iter().any(|t| t == table) {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT batch, count(*) FROM {table} GROUP BY batch ORDER BY batch"
            ))
            .map_err(|e| fail("read the batches", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| fail("read the batches", e))?;
        rows
    } else {
        Vec::new()
    };
    // A refused commit's batch, last, when its error had not returned
    // (then it may or may not be kept, as any commit in flight).
    let mut batches = batches;
    if let Some(&(batch, _)) = batches.last() {
        if batch > DOOMED_BATCH {
            let n = batch - DOOMED_BATCH;
            if expect.refused.contains(&n) {
                return Err(format!(
                    "{name}: transaction {n}'s refused commit (batch {batch}) is there, though \
                     its error had returned: a taken-back transaction came back"
                ));
            }
            if n == batches.len() as u64 {
                batches.pop();
            }
        }
    }
    for (i, (batch, rows)) in batches.iter().enumerate() {
        if *batch != i as u64 + 1 || *rows != expect.spec.rows {
            return Err(format!(
                "{name}: transaction {batch} has {rows} rows (of {}) at place {}: a torn or \
                 missing transaction; all: {batches:?}",
                expect.spec.rows,
                i + 1
            ));
        }
    }
    let m = batches.len() as u64;
    if expect.spec.edits {
        // Each transaction's edit in place comes after it, and is marked
        // with it.
        let edited: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| fail("user_version", e))?;
        let edited = edited as u64;
        if !(edited == m || edited + 1 == m) || edited < expect.required {
            return Err(format!(
                "{name}: user_version {edited} (written in place after each transaction) with \
                 transactions 1..={m}; acknowledged 1..={}",
                expect.required
            ));
        }
    }
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(|e| fail("checkpoint", e))?;
    if busy != 0 {
        return Err(format!("{name}: the checkpoint was busy"));
    }
    Ok(m)
}

/// The LTX files of `name` in `data`, in TXID order.
fn ltx_files(data: &Path, name: &str) -> Result<Vec<PathBuf>, String> {
    let dir = data.join("dbs").join(name).join("ltx");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (min, _) = litefs::ltx::parse_filename(&name)?;
            Some((min, e.path()))
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// `-pos` is the chain's end, the chain is contiguous, and replayed from
/// its start (TXID 1 or a snapshot) it is byte-identical to the database
/// file; a chain whose start retention deleted is checked by the
/// database file's checksum against the newest file's.
fn check_chain(work: &Path, data: &Path, name: &str, pos: &str) -> Result<(), String> {
    let files = ltx_files(data, name)?;
    let database = data.join("dbs").join(name).join("database");
    let Some(newest) = files.last() else {
        // Created, never committed to: empty, at TXID 0.
        let len = std::fs::metadata(&database).map_or(0, |m| m.len());
        if len != 0 || !pos.starts_with("0000000000000000/") {
            return Err(format!(
                "{name}: no LTX file, but -pos is {pos:?} and the database file {len} bytes"
            ));
        }
        return Ok(());
    };
    let (last, trailer) = litefs::ltx::read_header_and_trailer(newest)
        .map_err(|e| format!("{name}: {}: {e}", newest.display()))?;
    let end = format!(
        "{:016x}/{:016x}\n",
        last.max_txid, trailer.post_apply_checksum
    );
    if pos != end {
        return Err(format!(
            "{name}: -pos is {pos:?}, the LTX chain ends at {end:?}"
        ));
    }
    let (first, _) = litefs::ltx::read_header_and_trailer(&files[0])
        .map_err(|e| format!("{name}: {}: {e}", files[0].display()))?;
    if first.min_txid != 1 && !first.is_snapshot() {
        let sum = litefs::store::database_checksum(&database)
            .map_err(|e| format!("{name}: checksum of the database file: {e}"))?;
        if sum != trailer.post_apply_checksum {
            return Err(format!(
                "{name}: the database file's checksum {sum:016x} is not the chain's end's"
            ));
        }
        return check_contiguous(name, &files);
    }
    let replay_dir = work.join("replay");
    let _ = std::fs::remove_dir_all(&replay_dir);
    std::fs::create_dir_all(&replay_dir).map_err(|e| format!("{}: {e}", replay_dir.display()))?;
    let store =
        litefs::store::Store::open(&replay_dir).map_err(|e| format!("replay store: {e}"))?;
    let target = store
        .create_db(name)
        .map_err(|e| format!("replay store: {e}"))?;
    for file in &files {
        target
            .apply_ltx(file)
            .map_err(|e| format!("{name}: replaying {}: {e}", file.display()))?;
    }
    let original = std::fs::read(&database).map_err(|e| format!("{}: {e}", database.display()))?;
    let replayed = std::fs::read(target.database_path())
        .map_err(|e| format!("{}: {e}", target.database_path().display()))?;
    if original != replayed {
        return Err(format!(
            "{name}: the LTX chain replayed ({} bytes) differs from the database file ({} bytes)",
            replayed.len(),
            original.len()
        ));
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&replay_dir);
    Ok(())
}

fn check_contiguous(name: &str, files: &[PathBuf]) -> Result<(), String> {
    let mut next = None;
    for file in files {
        let (header, _) = litefs::ltx::read_header_and_trailer(file)
            .map_err(|e| format!("{name}: {}: {e}", file.display()))?;
        if next.is_some_and(|n| n != header.min_txid) {
            return Err(format!(
                "{name}: LTX chain has a gap before {}",
                file.display()
            ));
        }
        next = Some(header.max_txid + 1);
    }
    Ok(())
}
