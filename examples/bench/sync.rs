//! `bench sync`: what synchronous replication costs a commit. One client
//! commits `--txns` single-row transactions on the primary (autocommit);
//! each COMMIT is timed. The replica reaches the primary through a TCP
//! forwarder of this process's own (`DelayProxy`) that holds every chunk
//! `--delay-ms` before passing it on, in each direction (this kernel has
//! no netem): the replica's stream and its acknowledgements both cross
//! it. `scripts/bench.sh --sync` runs it against primaries with and
//! without `replication.sync: 1`, with no delay and with 5 ms.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::lag::{open_primary_table, percentile};
use super::Args;

pub(crate) fn sync(args: &Args) -> Result<(), String> {
    let delay = Duration::from_millis(u64::from(args.delay_ms));
    DelayProxy::start(args.proxy_port, args.primary_port, delay)?;
    let db = format!("bench-sync-{}.db", args.journal);
    let primary = open_primary_table(args, &db, "BLOB")?;
    let mut stmt = primary
        .prepare("INSERT INTO t(id, v) VALUES(?1, randomblob(100))")
        .map_err(|e| format!("preparing the insert: {e}"))?;
    let mut took = Vec::with_capacity(args.txns as usize);
    let started = Instant::now();
    for id in 1..=i64::from(args.txns) {
        let at = Instant::now();
        stmt.execute([id])
            .map_err(|e| format!("inserting row {id} on the primary: {e}"))?;
        took.push(at.elapsed());
    }
    let total = started.elapsed();
    took.sort();
    println!(
        "{:<6} {:<22} {:>5} ms added: {:>7.0} commits/s, COMMIT p50 {:>6.2} ms, p99 {:>6.2} ms",
        args.label,
        if args.journal == "wal" {
            "WAL, NORMAL"
        } else {
            "DELETE, FULL"
        },
        args.delay_ms,
        f64::from(args.txns) / total.as_secs_f64(),
        percentile(&took, 0.5).as_secs_f64() * 1000.0,
        percentile(&took, 0.99).as_secs_f64() * 1000.0,
    );
    Ok(())
}

/// A TCP forwarder from a loopback port to another that delays each
/// chunk, in each direction, by a fixed time (order kept; throughput
/// not limited).
struct DelayProxy;

impl DelayProxy {
    fn start(listen: u16, upstream: u16, delay: Duration) -> Result<(), String> {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .map_err(|e| format!("listening on port {listen}: {e}"))?;
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                // As litefs's own sockets: small frames go out at once.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        forward(from, to, delay);
                    }
                }
            }
        });
        Ok(())
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read: a reader
/// thread and a writer thread with a channel between them.
fn forward(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
