//! The litefs benchmark: the same SQLite workloads on a litefs mount and on
//! a plain directory of the same disk, reads on a replica against a plain
//! directory, and the replication lag from a primary to a replica.
//!
//! Run it through `scripts/bench.sh`, which builds litefs in release mode,
//! starts the nodes and passes their directories, ports and pids:
//!
//! ```text
//! bench single --mount DIR --plain DIR [--pid PID] [--writes N] [--rows N] [--rounds N]
//! bench replica-reads --replica DIR --plain DIR [--primary-port PORT --replica-port PORT]
//!           [--rounds N]
//! bench lag --primary DIR --primary-port PORT --replica DIR --replica-port PORT
//!           [--pid PID] [--replica-pid PID] [--txns N] [--readers N]
//! bench writer-under-readers --plain DIR [--readers N] [--txns N]
//! bench catch-up --primary DIR --primary-port PORT --replica DIR --replica-port PORT
//!           [--txns N] [--readers N] [--journal delete|wal]
//! bench sync --primary DIR --primary-port PORT --replica DIR --replica-port PORT
//!           --proxy-port PORT [--delay-ms N] [--txns N] [--journal delete|wal] [--label TEXT]
//! ```
//!
//! `single` prints, for the mount and the plain directory, single-row write
//! transactions per second (journal_mode DELETE, TRUNCATE and PERSIST, each
//! with synchronous=FULL; WAL with NORMAL and FULL), bulk
//! insert rows per second and full-scan reads per second, with the ratio
//! mount/plain, each the median of `--rounds` rounds (default 3) that
//! alternate which directory goes first, then the daemon's peak RSS.
//! `replica-reads` reads the `bench-bulk.db` that `single` left (on the
//! primary, replicated to the replica, and in the plain directory), opened
//! read-only on both sides: full-scan reads per second and point selects
//! per second, with the ratio replica/plain, each the median of `--rounds`
//! rounds that alternate which goes first. With the two ports it first
//! waits for the replica to catch up; either way it checks that the
//! replica's copy holds the same rows as the plain one. `lag` commits
//! single-row transactions on the primary one at a time and measures, for
//! each, the time from COMMIT returning to the row being readable on the
//! replica (`lag.rs`). `writer-under-readers` is the yardstick for the lag
//! with readers: SQLite's own writer on a plain directory, committing
//! single-row transactions while the same reader processes query its
//! database; it times each commit (what readers delay it by is what they
//! would delay any writer by). `catch-up` commits as fast as one client
//! can and times how long the replica takes to reach the last commit
//! (`catch_up.rs`). `sync` times each COMMIT with the replica behind a
//! delaying forwarder (`sync.rs`), for synchronous replication's cost.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

mod catch_up;
mod lag;
#[path = "../common/node_info.rs"]
mod node_info;
mod sync;

use catch_up::catch_up;
use lag::{lag, reader, wait_caught_up, writer_under_readers};

/// How often the replica is polled while waiting for a transaction.
const POLL: Duration = Duration::from_micros(200);
/// How long one transaction may take to reach the replica before the
/// bench gives up.
const TXN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the replica may take to catch up before the lag is measured.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

/// Command-line flags of both modes; each mode checks what it needs.
struct Args {
    mode: String,
    mount: PathBuf,
    plain: PathBuf,
    primary: PathBuf,
    primary_port: u16,
    replica: PathBuf,
    replica_port: u16,
    pid: Option<u32>,
    replica_pid: Option<u32>,
    writes: u32,
    rows: u32,
    txns: u32,
    rounds: u32,
    /// Reader processes querying the replica during the lag run.
    readers: u32,
    /// The lag run's journal mode on the primary: `delete` (synchronous
    /// FULL) or `wal` (synchronous NORMAL).
    journal: String,
    /// `reader` mode: the database to read, and the file whose existence
    /// stops it.
    db: PathBuf,
    stop: PathBuf,
    /// `sync` mode: the delaying forwarder's port and delay, and the
    /// label of the primary's replication mode.
    proxy_port: u16,
    delay_ms: u32,
    label: String,
}

const USAGE: &str =
    "usage: bench single --mount DIR --plain DIR [--pid PID] [--writes N] [--rows N]
       bench replica-reads --replica DIR --plain DIR [--primary-port PORT --replica-port PORT] \
[--rounds N]
       bench lag --primary DIR --primary-port PORT --replica DIR --replica-port PORT \
[--pid PID] [--replica-pid PID] [--txns N] [--readers N] [--journal delete|wal]
       bench writer-under-readers --plain DIR [--readers N] [--txns N]
       bench catch-up --primary DIR --primary-port PORT --replica DIR --replica-port PORT \
[--txns N] [--readers N] [--journal delete|wal]
       bench sync --primary DIR --primary-port PORT --replica DIR --replica-port PORT \
--proxy-port PORT [--delay-ms N] [--txns N] [--journal delete|wal] [--label TEXT]
       bench reader --db FILE --stop FILE";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or(USAGE)?;
    let mut args = Args {
        mode,
        mount: PathBuf::new(),
        plain: PathBuf::new(),
        primary: PathBuf::new(),
        primary_port: 0,
        replica: PathBuf::new(),
        replica_port: 0,
        pid: None,
        replica_pid: None,
        writes: 1000,
        rows: 200_000,
        txns: 1000,
        rounds: 3,
        readers: 0,
        journal: "delete".to_string(),
        db: PathBuf::new(),
        stop: PathBuf::new(),
        proxy_port: 0,
        delay_ms: 0,
        label: String::new(),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |what: &str| format!("{what}: not a number: {value}");
        match flag.as_str() {
            "--mount" => args.mount = value.into(),
            "--plain" => args.plain = value.into(),
            "--primary" => args.primary = value.into(),
            "--replica" => args.replica = value.into(),
            "--primary-port" => args.primary_port = value.parse().map_err(|_| number(&flag))?,
            "--replica-port" => args.replica_port = value.parse().map_err(|_| number(&flag))?,
            "--pid" => args.pid = Some(value.parse().map_err(|_| number(&flag))?),
            "--replica-pid" => args.replica_pid = Some(value.parse().map_err(|_| number(&flag))?),
            "--writes" => args.writes = value.parse().map_err(|_| number(&flag))?,
            "--rows" => args.rows = value.parse().map_err(|_| number(&flag))?,
            "--txns" => args.txns = value.parse().map_err(|_| number(&flag))?,
            "--rounds" => args.rounds = value.parse().map_err(|_| number(&flag))?,
            "--readers" => args.readers = value.parse().map_err(|_| number(&flag))?,
            "--journal" if value == "delete" || value == "wal" => args.journal = value,
            "--db" => args.db = value.into(),
            "--stop" => args.stop = value.into(),
            "--proxy-port" => args.proxy_port = value.parse().map_err(|_| number(&flag))?,
            "--delay-ms" => args.delay_ms = value.parse().map_err(|_| number(&flag))?,
            "--label" => args.label = value,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let missing = match args.mode.as_str() {
        "single" => {
            args.mount.as_os_str().is_empty()
                || args.plain.as_os_str().is_empty()
                || args.rounds == 0
        }
        "sync" => {
            args.primary.as_os_str().is_empty()
                || args.replica.as_os_str().is_empty()
                || args.primary_port == 0
                || args.replica_port == 0
                || args.proxy_port == 0
                || args.txns == 0
        }
        "lag" | "catch-up" => {
            args.primary.as_os_str().is_empty()
                || args.replica.as_os_str().is_empty()
                || args.primary_port == 0
                || args.replica_port == 0
                || args.txns == 0
        }
        "replica-reads" => {
            args.replica.as_os_str().is_empty()
                || args.plain.as_os_str().is_empty()
                || args.rounds == 0
                || (args.primary_port == 0) != (args.replica_port == 0)
        }
        "reader" => args.db.as_os_str().is_empty() || args.stop.as_os_str().is_empty(),
        "writer-under-readers" => args.plain.as_os_str().is_empty() || args.txns == 0,
        _ => return Err(format!("unknown mode {}\n{USAGE}", args.mode)),
    };
    if missing {
        return Err(USAGE.into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// single: mount against plain directory

/// Figures for one directory.
struct Figures {
    writes_per_sec: f64,
    truncate_per_sec: f64,
    persist_per_sec: f64,
    wal_normal_per_sec: f64,
    wal_full_per_sec: f64,
    rows_per_sec: f64,
    scans_per_sec: f64,
}

fn open(dir: &Path, name: &str) -> rusqlite::Result<Connection> {
    open_in_mode(dir, name, "DELETE")
}

fn open_in_mode(dir: &Path, name: &str, journal_mode: &str) -> rusqlite::Result<Connection> {
    let path = dir.join(name);
    let conn = Connection::open(path)?;
    conn.query_row(&format!("PRAGMA journal_mode={journal_mode}"), [], |_| {
        Ok(())
    })?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

/// Single-row write transactions per second in the rollback-journal mode
/// `journal_mode`, synchronous=FULL.
fn journal_writes(dir: &Path, name: &str, journal_mode: &str, count: u32) -> rusqlite::Result<f64> {
    let conn = open_in_mode(dir, name, journal_mode)?;
    conn.execute_batch("DROP TABLE IF EXISTS t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")?;
    let start = Instant::now();
    for i in 0..count {
        conn.execute("INSERT INTO t(v) VALUES(?1)", [format!("row {i}")])?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn run_single(dir: &Path, args: &Args) -> rusqlite::Result<Figures> {
    let writes_per_sec = journal_writes(dir, "bench-writes.db", "DELETE", args.writes)?;
    let truncate_per_sec = journal_writes(dir, "bench-truncate.db", "TRUNCATE", args.writes)?;
    let persist_per_sec = journal_writes(dir, "bench-persist.db", "PERSIST", args.writes)?;
    let wal_normal_per_sec = wal_writes(dir, "bench-wal-normal.db", "NORMAL", args.writes * 4)?;
    let wal_full_per_sec = wal_writes(dir, "bench-wal-full.db", "FULL", args.writes)?;

    // Bulk insert in one transaction.
    let conn = open(dir, "bench-bulk.db")?;
    conn.execute_batch(
        "DROP TABLE IF EXISTS t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);",
    )?;
    let start = Instant::now();
    conn.execute_batch("BEGIN")?;
    {
        let mut stmt = conn.prepare("INSERT INTO t(v, n) VALUES(?1, ?2)")?;
        for i in 0..args.rows {
            stmt.execute(rusqlite::params![format!("some text for row {i}"), i])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    let rows_per_sec = args.rows as f64 / start.elapsed().as_secs_f64();

    // Full-table scans, with a fresh connection each time so SQLite's own
    // cache does not hide the file system.
    drop(conn);
    let start = Instant::now();
    let mut scans = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        let conn = Connection::open(dir.join("bench-bulk.db"))?;
        let sum: i64 = conn.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))?;
        assert!(sum > 0);
        scans += 1;
    }
    let scans_per_sec = scans as f64 / start.elapsed().as_secs_f64();
    Ok(Figures {
        writes_per_sec,
        truncate_per_sec,
        persist_per_sec,
        wal_normal_per_sec,
        wal_full_per_sec,
        rows_per_sec,
        scans_per_sec,
    })
}

/// Single-row write transactions per second in WAL mode with the given
/// `synchronous`, on a fresh database.
fn wal_writes(dir: &Path, name: &str, synchronous: &str, count: u32) -> rusqlite::Result<f64> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
    }
    let conn = Connection::open(dir.join(name))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
    ))?;
    let start = Instant::now();
    for i in 0..count {
        conn.execute("INSERT INTO t(v) VALUES(?1)", [format!("row {i}")])?;
    }
    // On the mount, litefs records WAL commits just after they return:
    // the clock stops once every one is an LTX file (reading `-pos` waits
    // for that), so the figure is what litefs keeps up with.
    let pos = dir.join(format!("{name}-pos"));
    if pos.exists() {
        let text = std::fs::read_to_string(&pos).unwrap_or_default();
        assert!(text.len() >= 16, "cannot read {}", pos.display());
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The median of `values` (the upper one of the middle two).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Each figure's median over several rounds.
fn median_figures(rounds: &[Figures]) -> Figures {
    let of = |figure: fn(&Figures) -> f64| median(&rounds.iter().map(figure).collect::<Vec<_>>());
    Figures {
        writes_per_sec: of(|f| f.writes_per_sec),
        truncate_per_sec: of(|f| f.truncate_per_sec),
        persist_per_sec: of(|f| f.persist_per_sec),
        wal_normal_per_sec: of(|f| f.wal_normal_per_sec),
        wal_full_per_sec: of(|f| f.wal_full_per_sec),
        rows_per_sec: of(|f| f.rows_per_sec),
        scans_per_sec: of(|f| f.scans_per_sec),
    }
}

fn single(args: &Args) -> Result<(), String> {
    // Rounds alternate which directory goes first, so that neither always
    // pays for the other's dirty pages being written back.
    let mut mount = Vec::new();
    let mut plain = Vec::new();
    for round in 0..args.rounds {
        for on_mount in [round % 2 == 0, round % 2 == 1] {
            if on_mount {
                mount
                    .push(run_single(&args.mount, args).map_err(|e| {
                        format!("bench on the mount {}: {e}", args.mount.display())
                    })?);
            } else {
                plain.push(
                    run_single(&args.plain, args)
                        .map_err(|e| format!("bench on {}: {e}", args.plain.display()))?,
                );
            }
        }
    }
    println!(
        "{:<44} {:>12} {:>12} {:>8}   (median of {} rounds)",
        "figure", "litefs", "plain", "ratio", args.rounds
    );
    let (mount, plain) = (median_figures(&mount), median_figures(&plain));
    let rows = [
        (
            "single-row write txns/s (DELETE, FULL)",
            mount.writes_per_sec,
            plain.writes_per_sec,
        ),
        (
            "single-row write txns/s (TRUNCATE, FULL)",
            mount.truncate_per_sec,
            plain.truncate_per_sec,
        ),
        (
            "single-row write txns/s (PERSIST, FULL)",
            mount.persist_per_sec,
            plain.persist_per_sec,
        ),
        (
            "single-row write txns/s (WAL, NORMAL)",
            mount.wal_normal_per_sec,
            plain.wal_normal_per_sec,
        ),
        (
            "single-row write txns/s (WAL, FULL)",
            mount.wal_full_per_sec,
            plain.wal_full_per_sec,
        ),
        ("bulk insert rows/s", mount.rows_per_sec, plain.rows_per_sec),
        (
            "full-scan reads/s",
            mount.scans_per_sec,
            plain.scans_per_sec,
        ),
    ];
    for (name, m, p) in rows {
        println!("{name:<44} {m:>12.1} {p:>12.1} {:>8.2}", m / p);
    }
    if let Some(pid) = args.pid {
        print_peak_rss("litefs daemon peak RSS", pid);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// replica-reads: reads on a replica against a plain directory

/// The database `single` leaves in both directories.
const BULK_DB: &str = "bench-bulk.db";
/// How long the full scans run on each side per round.
const SCAN_TIME: Duration = Duration::from_secs(2);
/// Autocommit point selects per side per round (as speedtest1's test 410).
const POINT_SELECTS: u32 = 17_500;

/// Read figures for one side.
struct ReadFigures {
    scans_per_sec: f64,
    selects_per_sec: f64,
}

/// What the bulk table holds: row count, sum(n), max(rowid).
#[derive(Clone, Copy, PartialEq, Debug)]
struct Contents {
    rows: i64,
    sum: i64,
    max_rowid: i64,
}

/// Opens `path` read-only, with a busy timeout as applications on a
/// replica set.
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn contents(path: &Path) -> rusqlite::Result<Contents> {
    let conn = open_read_only(path)?;
    conn.query_row(
        "SELECT count(*), coalesce(sum(n), 0), coalesce(max(rowid), 0) FROM t",
        [],
        |r| {
            Ok(Contents {
                rows: r.get(0)?,
                sum: r.get(1)?,
                max_rowid: r.get(2)?,
            })
        },
    )
}

/// Full scans (`SELECT sum(n)`), a fresh connection each, for
/// `SCAN_TIME`; each sum must be `expect.sum`.
fn scans_per_sec(path: &Path, expect: Contents) -> Result<f64, String> {
    let start = Instant::now();
    let mut scans = 0u32;
    while start.elapsed() < SCAN_TIME {
        let sum: i64 = open_read_only(path)
            .and_then(|conn| conn.query_row("SELECT sum(n) FROM t", [], |r| r.get(0)))
            .map_err(|e| format!("full scan: {e}"))?;
        if sum != expect.sum {
            return Err(format!("full scan: sum(n) {sum}, expected {}", expect.sum));
        }
        scans += 1;
    }
    Ok(scans as f64 / start.elapsed().as_secs_f64())
}

/// `POINT_SELECTS` autocommit `SELECT * FROM t WHERE rowid = ?` with
/// random rowids (the same sequence for both sides of a round) on one
/// connection; each must find its row.
fn point_selects_per_sec(path: &Path, expect: Contents, seed: u64) -> Result<f64, String> {
    let conn = open_read_only(path).map_err(|e| format!("opening: {e}"))?;
    let mut stmt = conn
        .prepare("SELECT * FROM t WHERE rowid = ?1")
        .map_err(|e| format!("preparing the point select: {e}"))?;
    // splitmix64: the bench needs no more than a spread of rowids.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let max = expect.max_rowid as u64;
    let start = Instant::now();
    for _ in 0..POINT_SELECTS {
        let rowid = 1 + (next() % max) as i64;
        let (id, v, _n): (i64, String, i64) = stmt
            .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| format!("point select of rowid {rowid}: {e}"))?;
        if id != rowid || v.is_empty() {
            return Err(format!("point select of rowid {rowid}: got row {id} {v:?}"));
        }
    }
    Ok(POINT_SELECTS as f64 / start.elapsed().as_secs_f64())
}

fn read_figures(path: &Path, expect: Contents, seed: u64) -> Result<ReadFigures, String> {
    Ok(ReadFigures {
        scans_per_sec: scans_per_sec(path, expect)?,
        selects_per_sec: point_selects_per_sec(path, expect, seed)?,
    })
}

fn replica_reads(args: &Args) -> Result<(), String> {
    if args.primary_port != 0 {
        wait_caught_up(args)?;
    }
    let replica_db = args.replica.join(BULK_DB);
    let plain_db = args.plain.join(BULK_DB);
    let plain_contents = contents(&plain_db)
        .map_err(|e| format!("reading the plain copy {}: {e}", plain_db.display()))?;
    let replica_contents = contents(&replica_db)
        .map_err(|e| format!("reading the replica's copy {}: {e}", replica_db.display()))?;
    if plain_contents.rows == 0 || plain_contents.max_rowid != plain_contents.rows {
        return Err(format!(
            "the plain copy {} is not what `bench single` leaves (rows 1..N): {plain_contents:?}",
            plain_db.display()
        ));
    }
    if replica_contents != plain_contents {
        return Err(format!(
            "the replica's {} does not hold the plain copy's rows: replica {} rows (sum(n) {}), \
             plain {} rows (sum(n) {})",
            replica_db.display(),
            replica_contents.rows,
            replica_contents.sum,
            plain_contents.rows,
            plain_contents.sum
        ));
    }

    let mut replica = Vec::new();
    let mut plain = Vec::new();
    for round in 0..args.rounds {
        let seed = u64::from(round) + 1;
        for on_replica in [round % 2 == 0, round % 2 == 1] {
            if on_replica {
                replica.push(
                    read_figures(&replica_db, replica_contents, seed)
                        .map_err(|e| format!("on the replica {}: {e}", replica_db.display()))?,
                );
            } else {
                plain.push(
                    read_figures(&plain_db, plain_contents, seed)
                        .map_err(|e| format!("on {}: {e}", plain_db.display()))?,
                );
            }
        }
    }
    let of = |sides: &[ReadFigures], figure: fn(&ReadFigures) -> f64| {
        median(&sides.iter().map(figure).collect::<Vec<_>>())
    };
    println!(
        "reads of {BULK_DB} ({} rows, opened read-only) on the replica and in the plain directory:",
        plain_contents.rows
    );
    println!(
        "{:<44} {:>14} {:>12} {:>8}   (median of {} rounds)",
        "figure", "litefs replica", "plain", "ratio", args.rounds
    );
    let rows = [
        (
            "full-scan reads/s (fresh connection each)".to_string(),
            of(&replica, |f| f.scans_per_sec),
            of(&plain, |f| f.scans_per_sec),
        ),
        (
            format!("point selects/s ({POINT_SELECTS} by random rowid)"),
            of(&replica, |f| f.selects_per_sec),
            of(&plain, |f| f.selects_per_sec),
        ),
    ];
    for (name, r, p) in rows {
        println!("{name:<44} {r:>14.1} {p:>12.1} {:>8.2}", r / p);
    }
    Ok(())
}

// ---------------------------------------------------------------------------

/// Peak resident set size of a process, from /proc (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn print_peak_rss(what: &str, pid: u32) {
    match peak_rss_kib(pid) {
        Some(kib) => println!("{what:<44} {:>9.1} MiB", kib as f64 / 1024.0),
        None => println!("{what}: unavailable (pid {pid})"),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match args.mode.as_str() {
        "single" => single(&args),
        "reader" => reader(&args),
        "replica-reads" => replica_reads(&args),
        "writer-under-readers" => writer_under_readers(&args),
        "catch-up" => catch_up(&args),
        "sync" => sync::sync(&args),
        _ => lag(&args),
    };
    if let Err(e) = result {
        eprintln!("bench {}: {e}", args.mode);
        std::process::exit(1);
    }
}
