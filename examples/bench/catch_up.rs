//! `bench catch-up`: does a replica keep up with its primary? One client
//! commits `--txns` single-row transactions on the primary as fast as it
//! can (autocommit, one connection); the figures are the primary's commit
//! rate, the replica's apply rate over the same span, and how long after
//! the last COMMIT returned the replica's `-pos` showed its TXID. A replica
//! that applies slower than its primary commits falls further behind with
//! every commit, and that last figure grows with `--txns`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::lag::{open_primary_table, read_txid, Readers};
use super::{Args, POLL};

/// How long the replica may take to reach the last commit before the
/// bench gives up (the figure is then "more than this").
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

pub(crate) fn catch_up(args: &Args) -> Result<(), String> {
    let wal = args.journal == "wal";
    let db = if wal {
        "bench-catch-up-wal.db"
    } else {
        "bench-catch-up.db"
    };
    let sql_err = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    let primary = open_primary_table(args, db, "BLOB")?;
    let _readers = Readers::start(args, &args.replica.join(db))?;

    let primary_pos = args.primary.join(format!("{db}-pos"));
    let replica_pos = args.replica.join(format!("{db}-pos"));
    let first = read_txid(&primary_pos)?;
    let cpu_before = [args.pid, args.replica_pid].map(cpu_seconds);
    let started = Instant::now();
    let mut stmt = primary
        .prepare("INSERT INTO t(id, v) VALUES(?1, randomblob(100))")
        .map_err(sql_err("preparing the insert"))?;
    for id in 1..=i64::from(args.txns) {
        stmt.execute([id])
            .map_err(|e| format!("inserting row {id} on the primary: {e}"))?;
    }
    let committed = Instant::now();
    let last = read_txid(&primary_pos)?;
    let replica_at_end = read_txid(&replica_pos)?;
    let caught_up = wait_for_txid(&replica_pos, last, committed)?;
    let cpu_after = [args.pid, args.replica_pid].map(cpu_seconds);
    let commit_secs = (committed - started).as_secs_f64();
    let applied_secs = caught_up.map(|d| commit_secs + d.as_secs_f64());
    println!(
        "catch-up, {} single-row commits ({}) as fast as one client can, {} reader processes \
         on the replica:",
        last - first,
        if wal { "WAL, NORMAL" } else { "DELETE, FULL" },
        args.readers,
    );
    println!(
        "  primary {:.0} commits/s; the replica was {} transactions behind at the last COMMIT",
        (last - first) as f64 / commit_secs,
        last.saturating_sub(replica_at_end),
    );
    match (caught_up, applied_secs) {
        (Some(d), Some(secs)) => println!(
            "  replica {:.0} transactions/s end to end; reached the last commit {:.3} s after it \
             (must be < 2 s)",
            (last - first) as f64 / secs,
            d.as_secs_f64()
        ),
        _ => println!(
            "  replica did not reach the last commit within {} s (at TXID {} of {last})",
            CATCH_UP_LIMIT.as_secs(),
            read_txid(&replica_pos)?
        ),
    }
    if let ([Some(p0), Some(r0)], [Some(p1), Some(r1)]) = (cpu_before, cpu_after) {
        println!(
            "  CPU time until then: primary daemon {:.2} s, replica daemon {:.2} s",
            p1 - p0,
            r1 - r0
        );
    }
    Ok(())
}

/// The CPU time (user and system) process `pid` has used, in seconds.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf takes no pointers.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second as f64)
}

/// Polls the `-pos` file at `pos_file` until it shows `txid`: the time
/// from `since`, or None past `CATCH_UP_LIMIT`.
fn wait_for_txid(pos_file: &Path, txid: u64, since: Instant) -> Result<Option<Duration>, String> {
    while read_txid(pos_file)? < txid {
        if since.elapsed() > CATCH_UP_LIMIT {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
    Ok(Some(since.elapsed()))
}
