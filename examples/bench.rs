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
//!           [--pid PID] [--replica-pid PID] [--txns N]
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
//! replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

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
}

const USAGE: &str =
    "usage: bench single --mount DIR --plain DIR [--pid PID] [--writes N] [--rows N]
       bench replica-reads --replica DIR --plain DIR [--primary-port PORT --replica-port PORT] \
[--rounds N]
       bench lag --primary DIR --primary-port PORT --replica DIR --replica-port PORT \
[--pid PID] [--replica-pid PID] [--txns N] [--readers N] [--journal delete|wal]
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
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let missing = match args.mode.as_str() {
        "single" => {
            args.mount.as_os_str().is_empty()
                || args.plain.as_os_str().is_empty()
                || args.rounds == 0
        }
        "lag" => {
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
// lag: primary to replica

/// What `GET /info` answers.
#[derive(serde::Deserialize)]
struct Info {
    primary: bool,
    dbs: BTreeMap<String, String>,
}

fn info(port: u16) -> Result<Info, String> {
    let url = format!("http://127.0.0.1:{port}/info");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let body = agent
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|e| format!("GET {url}: {e}"))?;
    serde_yaml::from_str(&body).map_err(|e| format!("GET {url}: bad answer {body:?}: {e}"))
}

/// The TXID in a `<name>-pos` file (`%016x/%016x\n`).
fn read_txid(pos_file: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(pos_file)
        .map_err(|e| format!("reading {}: {e}", pos_file.display()))?;
    let txid = text.split('/').next().unwrap_or_default();
    u64::from_str_radix(txid, 16)
        .map_err(|e| format!("{}: bad position {text:?}: {e}", pos_file.display()))
}

/// Waits until the replica's `/info` lists every database at the
/// primary's position (the replica may be replaying the `single` mode's
/// databases when the lag mode starts).
fn wait_caught_up(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let primary = info(args.primary_port)?;
        let replica = info(args.replica_port)?;
        if !primary.primary || replica.primary {
            return Err(format!(
                "expected port {} to be the primary and {} a replica, /info says otherwise",
                args.primary_port, args.replica_port
            ));
        }
        if primary.dbs == replica.dbs {
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_DEADLINE {
            return Err(format!(
                "the replica did not catch up within {CATCH_UP_DEADLINE:?}: primary {:?}, \
                 replica {:?}",
                primary.dbs, replica.dbs
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One transaction's way to the replica, timed from COMMIT returning on
/// the primary.
#[derive(Clone, Copy)]
struct Lag {
    /// Until the replica's `-pos` file showed the transaction's TXID.
    position: Duration,
    /// Until a query on the replica returned the row: the figure.
    readable: Duration,
}

/// Commits `args.txns` single-row transactions on the primary and times
/// each one's way to the replica.
fn measure_lag(args: &Args) -> Result<Vec<Lag>, String> {
    let wal = args.journal == "wal";
    let db = if wal {
        "bench-lag-wal.db"
    } else {
        "bench-lag.db"
    };
    let sql_err = |what: &str| {
        let what = what.to_string();
        move |e: rusqlite::Error| format!("{what}: {e}")
    };
    let primary = open(&args.primary, db).map_err(sql_err("opening the primary's database"))?;
    if wal {
        primary
            .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .and_then(|()| primary.execute_batch("PRAGMA synchronous=NORMAL;"))
            .map_err(sql_err("switching the primary's database to WAL"))?;
    }
    primary
        .execute_batch("DROP TABLE IF EXISTS t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .map_err(sql_err("creating the table on the primary"))?;
    wait_caught_up(args)?;

    let replica =
        Connection::open_with_flags(args.replica.join(db), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql_err("opening the replica's database"))?;
    replica
        .busy_timeout(Duration::from_secs(1))
        .map_err(sql_err("setting the replica's busy timeout"))?;
    let _readers = Readers::start(args, &args.replica.join(db))?;
    if args.readers > 0 {
        // The readers would otherwise also delay this process's polling of
        // the replica (5 busy processes on a 2-core machine), which would
        // measure the scheduler, not replication. Readers stay at 0.
        set_nice(-10);
    }
    let primary_pos = args.primary.join(format!("{db}-pos"));
    let replica_pos = args.replica.join(format!("{db}-pos"));
    let mut last_txid = read_txid(&primary_pos)?;
    let mut lags = Vec::with_capacity(args.txns as usize);
    for id in 1..=i64::from(args.txns) {
        primary
            .execute(
                "INSERT INTO t(id, v) VALUES(?1, ?2)",
                rusqlite::params![id, format!("row {id}")],
            )
            .map_err(sql_err("inserting on the primary"))?;
        let committed = Instant::now();
        let txid = read_txid(&primary_pos)?;
        if txid != last_txid + 1 {
            return Err(format!(
                "the primary's position went from TXID {last_txid} to {txid} for one \
                 transaction (row {id})"
            ));
        }
        last_txid = txid;

        // The position file first (it takes no SQLite lock, so polling it
        // does not get in the way of the replica's apply), then the row.
        while read_txid(&replica_pos)? < txid {
            if committed.elapsed() > TXN_DEADLINE {
                return Err(format!(
                    "TXID {txid} (row {id}) did not reach the replica within {TXN_DEADLINE:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
        let position = committed.elapsed();
        loop {
            let found: Option<String> = replica
                .query_row("SELECT v FROM t WHERE id = ?1", [id], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(sql_err("reading the row on the replica"))?;
            if found.is_some() {
                break;
            }
            if committed.elapsed() > TXN_DEADLINE {
                return Err(format!(
                    "row {id} was not readable on the replica within {TXN_DEADLINE:?}, although \
                     its position reached TXID {txid}"
                ));
            }
            std::thread::sleep(POLL);
        }
        lags.push(Lag {
            position,
            readable: committed.elapsed(),
        });
    }
    Ok(lags)
}

/// Reader processes (this program in `reader` mode) querying the replica
/// in a tight loop, each on one persistent connection; stopped and checked
/// when dropped.
struct Readers {
    stop: PathBuf,
    children: Vec<std::process::Child>,
}

impl Readers {
    fn start(args: &Args, db: &Path) -> Result<Readers, String> {
        let stop = std::env::temp_dir().join(format!("litefs-bench-stop-{}", std::process::id()));
        let _ = std::fs::remove_file(&stop);
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut children = Vec::new();
        for _ in 0..args.readers {
            let child = std::process::Command::new(&exe)
                .args(["reader", "--db"])
                .arg(db)
                .arg("--stop")
                .arg(&stop)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting a reader: {e}"))?;
            children.push(child);
        }
        Ok(Readers { stop, children })
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let _ = std::fs::write(&self.stop, b"");
        let mut reads = Vec::new();
        for child in self.children.drain(..) {
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {
                    reads.push(String::from_utf8_lossy(&out.stdout).trim().to_string())
                }
                Ok(out) => eprintln!("bench: a reader failed: {}", out.status),
                Err(e) => eprintln!("bench: a reader: {e}"),
            }
        }
        let _ = std::fs::remove_file(&self.stop);
        println!(
            "  reads per reader process during the run: {}",
            reads.join(", ")
        );
    }
}

/// `reader` mode: one connection, `SELECT count(*), max(id)` in a tight
/// loop until the stop file exists; prints the number of reads. A busy
/// timeout, as applications on a replica set: an apply holds readers out
/// while it writes.
fn reader(args: &Args) -> Result<(), String> {
    // An application's priority, whatever the bench runs at.
    set_nice(0);
    let conn = Connection::open_with_flags(&args.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", args.db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| format!("busy timeout: {e}"))?;
    let mut reads = 0u64;
    while !args.stop.exists() {
        let (count, max): (i64, Option<i64>) = conn
            .query_row("SELECT count(*), max(id) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| format!("reading: {e}"))?;
        if count != max.unwrap_or(0) {
            return Err(format!("a torn read: count {count}, max(id) {max:?}"));
        }
        reads += 1;
    }
    println!("{reads}");
    Ok(())
}

/// Sets this process's niceness (root only for negative values; a
/// failure leaves it as it was, with a note).
fn set_nice(nice: i32) {
    // SAFETY: setpriority takes no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        eprintln!(
            "bench: cannot set niceness {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The value at `fraction` (0..=1) of sorted `values`, nearest rank.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn lag(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let lags = measure_lag(args)?;
    let elapsed = started.elapsed();
    // The slowest transactions by row, to tell a one-off from a pattern.
    let mut slowest: Vec<(usize, Lag)> = lags.iter().copied().enumerate().collect();
    slowest.sort_by_key(|&(_, lag)| std::cmp::Reverse(lag.readable));
    slowest.truncate(5);
    let mut readable: Vec<Duration> = lags.iter().map(|l| l.readable).collect();
    readable.sort();
    let mut position: Vec<Duration> = lags.iter().map(|l| l.position).collect();
    position.sort();
    println!(
        "replication lag, COMMIT on the primary to the row readable on the replica, over {} \
         single-row txns ({}; {} reader processes on the replica{}; {:.1} s in all):",
        readable.len(),
        if args.journal == "wal" {
            "WAL, NORMAL"
        } else {
            "DELETE, FULL"
        },
        args.readers,
        if args.readers > 0 {
            ", this measuring process at nice -10"
        } else {
            ""
        },
        elapsed.as_secs_f64()
    );
    println!(
        "  p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        ms(percentile(&readable, 0.50)),
        ms(percentile(&readable, 0.99)),
        ms(readable[readable.len() - 1]),
    );
    println!(
        "  (until the replica's -pos showed the TXID: p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms)",
        ms(percentile(&position, 0.50)),
        ms(percentile(&position, 0.99)),
        ms(position[position.len() - 1]),
    );
    let slowest: Vec<String> = slowest
        .iter()
        .map(|(i, lag)| {
            format!(
                "row {} {:.1} ms (-pos {:.1} ms)",
                i + 1,
                ms(lag.readable),
                ms(lag.position)
            )
        })
        .collect();
    println!("  slowest: {}", slowest.join(", "));
    if let Some(pid) = args.pid {
        print_peak_rss("primary daemon peak RSS (whole run)", pid);
    }
    if let Some(pid) = args.replica_pid {
        print_peak_rss("replica daemon peak RSS", pid);
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
        _ => lag(&args),
    };
    if let Err(e) = result {
        eprintln!("bench {}: {e}", args.mode);
        std::process::exit(1);
    }
}
