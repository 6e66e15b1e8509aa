//! What every crash state must show, checked on a real litefs started on
//! the state's image:
//! - litefs starts (ext4 having replayed its journal) and serves every
//!   database, refusing none;
//! - each database passes `PRAGMA integrity_check` and holds whole
//!   transactions only (batches 1..=m of `rows` rows each), m at least the
//!   last durable COMMIT that returned before the crash;
//! - `-pos` is the end of the LTX chain, and the chain replayed onto an
//!   empty store is byte-identical to the database file.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::disk::LoopMount;
use crate::node::Node;
use crate::workloads::DbSpec;

/// One database's expectation in one crash state.
pub struct Expect {
    pub spec: DbSpec,
    /// The last transaction that must be there.
    pub required: u64,
    /// The last transaction the workload committed.
    pub last: u64,
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
    for (expect, pos) in expects.iter().zip(positions) {
        if let Some(pos) = pos {
            check_chain(work, &data, &expect.spec.name, &pos)?;
        }
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

/// Checks each database through the mount; returns each one's `-pos`
/// (None for one that is rightly absent), after a checkpoint that leaves
/// every committed page in the database file.
fn check_served(node: &Node, expects: &[Expect]) -> Result<Vec<Option<String>>, String> {
    if let Some(line) = node.log_text().lines().find(|l| l.contains("refusing")) {
        return Err(format!("litefs refused a database: {line}"));
    }
    let mut positions = Vec::new();
    for expect in expects {
        let name = &expect.spec.name;
        let path = node.mount.join(name);
        if !path.exists() {
            if expect.required > 0 {
                return Err(format!(
                    "{name} is not on the mount; transaction {} was acknowledged",
                    expect.required
                ));
            }
            positions.push(None);
            continue;
        }
        let m = check_db(&path, expect)?;
        if m < expect.required || m > expect.last {
            return Err(format!(
                "{name} holds transactions 1..={m}; acknowledged 1..={}, committed 1..={}",
                expect.required, expect.last
            ));
        }
        let pos = std::fs::read_to_string(node.mount.join(format!("{name}-pos")))
            .map_err(|e| format!("{name}-pos: {e}"))?;
        positions.push(Some(pos));
    }
    Ok(positions)
}

/// integrity_check, then the batches; returns the last whole batch.
/// Ends with a TRUNCATE checkpoint (a no-op out of WAL mode).
fn check_db(path: &Path, expect: &Expect) -> Result<u64, String> {
    let name = &expect.spec.name;
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
    let mut stmt = conn
        .prepare("SELECT batch, count(*) FROM t GROUP BY batch ORDER BY batch")
        .map_err(|e| fail("read the batches", e))?;
    let batches: Vec<(u64, u64)> = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| fail("read the batches", e))?;
    drop(stmt);
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
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(|e| fail("checkpoint", e))?;
    if busy != 0 {
        return Err(format!("{name}: the checkpoint was busy"));
    }
    Ok(batches.len() as u64)
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
    let Some(newest) = files.last() else {
        return Err(format!("{name}: no LTX file"));
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
    let database = data.join("dbs").join(name).join("database");
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
