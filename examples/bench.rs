//! The litefs benchmark: the same SQLite workloads on a litefs mount and on
//! a plain directory of the same disk, with the ratio of each figure.
//!
//! Run it through `scripts/bench.sh`, which builds litefs in release mode,
//! mounts it, and passes the directories and the daemon's pid:
//!
//! ```text
//! bench --mount DIR --plain DIR [--pid PID] [--writes N] [--rows N]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

struct Args {
    mount: PathBuf,
    plain: PathBuf,
    pid: Option<u32>,
    writes: u32,
    rows: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mount: PathBuf::new(),
        plain: PathBuf::new(),
        pid: None,
        writes: 1000,
        rows: 200_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mount" => args.mount = value.into(),
            "--plain" => args.plain = value.into(),
            "--pid" => args.pid = Some(value.parse().map_err(|e| format!("--pid: {e}"))?),
            "--writes" => args.writes = value.parse().map_err(|e| format!("--writes: {e}"))?,
            "--rows" => args.rows = value.parse().map_err(|e| format!("--rows: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.mount.as_os_str().is_empty() || args.plain.as_os_str().is_empty() {
        return Err(
            "usage: bench --mount DIR --plain DIR [--pid PID] [--writes N] [--rows N]".into(),
        );
    }
    Ok(args)
}

/// Figures for one directory.
struct Figures {
    writes_per_sec: f64,
    rows_per_sec: f64,
    scans_per_sec: f64,
}

fn open(dir: &Path, name: &str) -> rusqlite::Result<Connection> {
    let path = dir.join(name);
    let conn = Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

fn run(dir: &Path, args: &Args) -> rusqlite::Result<Figures> {
    // Single-row write transactions.
    let conn = open(dir, "bench-writes.db")?;
    conn.execute_batch("DROP TABLE IF EXISTS t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")?;
    let start = Instant::now();
    for i in 0..args.writes {
        conn.execute("INSERT INTO t(v) VALUES(?1)", [format!("row {i}")])?;
    }
    let writes_per_sec = args.writes as f64 / start.elapsed().as_secs_f64();
    drop(conn);

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
        rows_per_sec,
        scans_per_sec,
    })
}

/// Peak resident set size of a process, from /proc (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let mount = run(&args.mount, &args).unwrap_or_else(|e| {
        eprintln!("bench on the mount {}: {e}", args.mount.display());
        std::process::exit(1);
    });
    let plain = run(&args.plain, &args).unwrap_or_else(|e| {
        eprintln!("bench on {}: {e}", args.plain.display());
        std::process::exit(1);
    });
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "figure", "litefs", "plain", "ratio"
    );
    let rows = [
        (
            "single-row write txns/s (DELETE, FULL)",
            mount.writes_per_sec,
            plain.writes_per_sec,
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
        match peak_rss_kib(pid) {
            Some(kib) => println!(
                "{:<44} {:>9.1} MiB",
                "litefs daemon peak RSS",
                kib as f64 / 1024.0
            ),
            None => println!("litefs daemon peak RSS: unavailable (pid {pid})"),
        }
    }
}
