//! `bench lag` and its reader processes: the replication lag from a
//! primary to a replica, with or without readers on the replica (see
//! main.rs for the modes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::node_info::info;
use super::{open, print_peak_rss, Args, CATCH_UP_DEADLINE, POLL, TXN_DEADLINE};

/// The TXID in a `<name>-pos` file (`%016x/%016x\n`).
pub(crate) fn read_txid(pos_file: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(pos_file)
        .map_err(|e| format!("reading {}: {e}", pos_file.display()))?;
    let txid = text.split('/').next().unwrap_or_default();
    u64::from_str_radix(txid, 16)
        .map_err(|e| format!("{}: bad position {text:?}: {e}", pos_file.display()))
}

/// Waits until the replica's `/info` lists every database at the
/// primary's position (the replica may be replaying the `single` mode's
/// databases when the lag mode starts).
pub(crate) fn wait_caught_up(args: &Args) -> Result<(), String> {
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

/// Opens `db` on the primary (in WAL mode with synchronous=NORMAL when
/// `--journal wal`), makes a fresh table `t(id INTEGER PRIMARY KEY, v
/// <v_type>)` and waits until the replica has it.
pub(crate) fn open_primary_table(
    args: &Args,
    db: &str,
    v_type: &str,
) -> Result<Connection, String> {
    let sql_err = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    let primary = open(&args.primary, db).map_err(sql_err("opening the primary's database"))?;
    if args.journal == "wal" {
        primary
            .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .and_then(|()| primary.execute_batch("PRAGMA synchronous=NORMAL;"))
            .map_err(sql_err("switching the primary's database to WAL"))?;
    }
    primary
        .execute_batch(&format!(
            "DROP TABLE IF EXISTS t; CREATE TABLE t(id INTEGER PRIMARY KEY, v {v_type});"
        ))
        .map_err(sql_err("creating the table on the primary"))?;
    wait_caught_up(args)?;
    Ok(primary)
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
    let primary = open_primary_table(args, db, "TEXT")?;

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
pub(crate) struct Readers {
    stop: PathBuf,
    children: Vec<std::process::Child>,
}

impl Readers {
    pub(crate) fn start(args: &Args, db: &Path) -> Result<Readers, String> {
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
        let mut errors = 0u64;
        for child in self.children.drain(..) {
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    let mut fields = text.split_whitespace();
                    reads.push(fields.next().unwrap_or("?").to_string());
                    errors += fields.next().and_then(|e| e.parse().ok()).unwrap_or(0);
                }
                Ok(out) => {
                    errors += 1;
                    eprintln!("bench: a reader failed: {}", out.status)
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("bench: a reader: {e}")
                }
            }
        }
        let _ = std::fs::remove_file(&self.stop);
        println!(
            "  reads per reader process during the run: {}; reader errors: {errors} (must be 0)",
            reads.join(", ")
        );
    }
}

/// `reader` mode: one connection, `SELECT count(*), max(id)` in a tight
/// loop until the stop file exists; prints the number of reads and of
/// errors (a failed read, or a count that is not the newest id). A busy
/// timeout, as applications on a replica set: an apply holds readers out
/// while it writes.
pub(crate) fn reader(args: &Args) -> Result<(), String> {
    // An application's priority, whatever the bench runs at.
    set_nice(0);
    let conn = Connection::open_with_flags(&args.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", args.db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| format!("busy timeout: {e}"))?;
    let (mut reads, mut errors) = (0u64, 0u64);
    while !args.stop.exists() {
        let read = conn.query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
        });
        // Counted, not fatal: the bench reports how many it saw.
        match read {
            Ok((count, max)) if count == max.unwrap_or(0) => {}
            Ok((count, max)) => {
                errors += 1;
                eprintln!("bench: a torn read: count {count}, max(id) {max:?}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("bench: a read failed: {e}");
            }
        }
        reads += 1;
    }
    println!("{reads} {errors}");
    Ok(())
}

/// The pause before each of `writer-under-readers`' commits.
const WRITER_PAUSE: Duration = Duration::from_millis(5);

/// `writer-under-readers`: single-row commits (DELETE, FULL, busy timeout
/// 30 s) on a plain directory's database while `args.readers` reader
/// processes query it; prints each commit's time, p50 p99 max.
pub(crate) fn writer_under_readers(args: &Args) -> Result<(), String> {
    let db = args.plain.join("bench-writer-under-readers.db");
    for suffix in ["", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let conn = Connection::open(&db).map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA busy_timeout=30000; \
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .map_err(|e| format!("creating the table: {e}"))?;
    let _readers = Readers::start(args, &db)?;
    // As the lag run's measuring process: readers stay at 0.
    set_nice(-10);
    let mut times = Vec::with_capacity(args.txns as usize);
    let started = Instant::now();
    for id in 1..=i64::from(args.txns) {
        // Readers back in their loop first, as in the lag run (one
        // transaction every few milliseconds): back to back, the writer
        // would keep them asleep in their busy handlers.
        std::thread::sleep(WRITER_PAUSE);
        let begun = Instant::now();
        conn.execute(
            "INSERT INTO t(id, v) VALUES(?1, ?2)",
            rusqlite::params![id, format!("row {id}")],
        )
        .map_err(|e| format!("committing row {id}: {e}"))?;
        times.push(begun.elapsed());
    }
    let elapsed = started.elapsed();
    times.sort();
    println!(
        "SQLite's own writer on the plain directory, {} single-row commits (DELETE, FULL; {} ms \
         apart) with {} reader processes on its database ({:.1} s in all), each commit's time:\n  \
         p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        times.len(),
        WRITER_PAUSE.as_millis(),
        args.readers,
        elapsed.as_secs_f64(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(times[times.len() - 1]),
    );
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
pub(crate) fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn lag(args: &Args) -> Result<(), String> {
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
