//! The failover benchmark: how long writes are impossible when the primary
//! hands over cleanly (SIGINT) and when it dies (kill -9).
//!
//! Run it through `scripts/bench.sh --failover`, which builds litefs, starts
//! a Consul dev agent, writes one config per node (Consul lease, both
//! candidates) and passes the nodes' directories and HTTP ports:
//!
//! ```text
//! bench_failover --litefs BIN --node PORT:DIR --node PORT:DIR [--runs N]
//! ```
//!
//! This program starts and restarts the two litefs processes itself
//! (config `DIR/litefs.yml`, mount `DIR/mnt`, log `DIR/litefs.log`) and
//! keeps each one's pid in `DIR/litefs.pid` while it runs, so that the
//! script can clean up after it. For each run it finds the primary through
//! `GET /info`, waits until the other node has caught up, signals the
//! primary, then tries to write on the other node every few milliseconds
//! (a fresh connection each time) until a write succeeds. The time from the
//! signal to that write is the figure. The stopped node is then restarted,
//! so every run starts with two nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

#[path = "common/node_info.rs"]
mod node_info;

use node_info::{info, Info};

/// The database the runs write to.
const DB: &str = "failover.db";
/// How often the new primary is tried after the signal.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long a failover may take before the run is given up.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(90);
/// How long a node may take to start, stop, or settle into its role.
const NODE_DEADLINE: Duration = Duration::from_secs(60);

/// The two ways the primary goes away.
#[derive(Clone, Copy)]
enum Kind {
    /// SIGINT: the node gives up its lease on the way out.
    Clean,
    /// SIGKILL: the lease must expire in Consul.
    Crash,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Clean => "clean handoff (SIGINT)",
            Kind::Crash => "crash failover (kill -9)",
        }
    }

    fn signal(self) -> libc::c_int {
        match self {
            Kind::Clean => libc::SIGINT,
            Kind::Crash => libc::SIGKILL,
        }
    }
}

/// One litefs process, restartable.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    litefs: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn mount(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("litefs.pid")
    }

    /// Starts litefs and waits until its mount answers.
    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("litefs.log"))
            .map_err(|e| format!("{}: opening the log: {e}", self.name))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("{}: opening the log: {e}", self.name))?;
        let child = Command::new(&self.litefs)
            .arg("-config")
            .arg(self.dir.join("litefs.yml"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("{}: starting {}: {e}", self.name, self.litefs.display()))?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))
            .map_err(|e| format!("{}: writing the pid file: {e}", self.name))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if is_mounted(&self.mount()) && std::fs::read_dir(self.mount()).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.try_reap() {
                return Err(format!(
                    "{}: litefs exited with {status} before mounting; see {}",
                    self.name,
                    self.dir.join("litefs.log").display()
                ));
            }
            if started.elapsed() > NODE_DEADLINE {
                return Err(format!(
                    "{}: not mounted after {NODE_DEADLINE:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the running process.
    fn signal(&self, signal: libc::c_int) -> Result<(), String> {
        let child = self
            .child
            .as_ref()
            .ok_or(format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on our own child, which has not been reaped, so
        // its pid cannot have been reused.
        if unsafe { libc::kill(child.id() as libc::pid_t, signal) } != 0 {
            return Err(format!(
                "{}: kill({}, {signal}): {}",
                self.name,
                child.id(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Reaps the process if it has exited; returns its status then.
    fn try_reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        let _ = std::fs::remove_file(self.pid_file());
        Some(status)
    }

    /// Waits for the process to exit after a signal.
    fn wait_exit(&mut self) -> Result<std::process::ExitStatus, String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_reap() {
                return Ok(status);
            }
            if started.elapsed() > NODE_DEADLINE {
                return Err(format!(
                    "{}: did not exit within {NODE_DEADLINE:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn info(&self) -> Result<Info, String> {
        info(self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.signal(libc::SIGTERM);
            let started = Instant::now();
            while self.try_reap().is_none() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(self.pid_file());
            }
        }
        if is_mounted(&self.mount()) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(self.mount())
                .status();
        }
    }
}

/// True when `path` is listed in /proc/self/mounts.
fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// One write transaction on `node`'s mount, with a fresh connection: a
/// connection opened while the mount was read-only stays read-only.
fn write_once(node: &Node, run: &str) -> rusqlite::Result<()> {
    let conn = Connection::open(node.mount().join(DB))?;
    conn.execute_batch("PRAGMA journal_mode=DELETE;")?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, node TEXT, run TEXT)",
        [],
    )?;
    conn.execute(
        "INSERT INTO t(node, run) VALUES(?1, ?2)",
        [node.name.as_str(), run],
    )?;
    Ok(())
}

/// Waits until exactly one node is primary and the other has its
/// position for every database; returns the primary's index.
fn wait_settled(nodes: &[Node; 2]) -> Result<usize, String> {
    let started = Instant::now();
    loop {
        let last = match (nodes[0].info(), nodes[1].info()) {
            (Ok(a), Ok(b)) if a.primary != b.primary && a.dbs == b.dbs => {
                return Ok(if a.primary { 0 } else { 1 });
            }
            (Ok(a), Ok(b)) => format!(
                "{} primary={} {:?}; {} primary={} {:?}",
                nodes[0].name, a.primary, a.dbs, nodes[1].name, b.primary, b.dbs
            ),
            (Err(e), _) | (_, Err(e)) => e,
        };
        if started.elapsed() > NODE_DEADLINE {
            return Err(format!(
                "no settled primary/replica pair within {NODE_DEADLINE:?}; last seen: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One run: signal the primary, time until the other node takes a write,
/// restart the stopped node. Returns the time.
fn one_run(nodes: &mut [Node; 2], kind: Kind, label: &str) -> Result<Duration, String> {
    let p = wait_settled(nodes)?;
    let r = 1 - p;
    write_once(&nodes[p], &format!("{label} before"))
        .map_err(|e| format!("{}: the primary refused a write: {e}", nodes[p].name))?;
    wait_settled(nodes)?;

    let signalled = Instant::now();
    nodes[p].signal(kind.signal())?;
    let mut errors: Vec<String> = Vec::new();
    // When the old primary's process was seen gone (checked between tries).
    let mut exited: Option<(Duration, std::process::ExitStatus)> = None;
    let took = loop {
        match write_once(&nodes[r], label) {
            Ok(()) => break signalled.elapsed(),
            Err(e) => {
                let e = e.to_string();
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
        if exited.is_none() {
            exited = nodes[p]
                .try_reap()
                .map(|status| (signalled.elapsed(), status));
        }
        if signalled.elapsed() > FAILOVER_DEADLINE {
            return Err(format!(
                "{}: no write succeeded on {} within {FAILOVER_DEADLINE:?} after the signal to \
                 {}; errors seen: {errors:?}",
                kind.name(),
                nodes[r].name,
                nodes[p].name
            ));
        }
        std::thread::sleep(PROBE_EVERY);
    };
    let exited = match exited {
        Some((after, status)) => format!("{status} after {:.3} s", after.as_secs_f64()),
        None => {
            let status = nodes[p].wait_exit()?;
            format!("{status} after {:.3} s", signalled.elapsed().as_secs_f64())
        }
    };
    println!(
        "  {label}: {} -> {}: first write after {:.3} s (old primary exited: {exited}; \
         errors before: {})",
        nodes[p].name,
        nodes[r].name,
        took.as_secs_f64(),
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(" | ")
        }
    );
    nodes[p].start()?;
    Ok(took)
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

struct Args {
    litefs: PathBuf,
    nodes: Vec<(u16, PathBuf)>,
    runs: usize,
}

const USAGE: &str = "usage: bench_failover --litefs BIN --node PORT:DIR --node PORT:DIR [--runs N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        litefs: PathBuf::new(),
        nodes: Vec::new(),
        runs: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--litefs" => args.litefs = value.into(),
            "--node" => {
                let (port, dir) = value
                    .split_once(':')
                    .ok_or(format!("--node {value}: expected PORT:DIR"))?;
                let port = port
                    .parse()
                    .map_err(|_| format!("--node {value}: bad port {port}"))?;
                args.nodes.push((port, dir.into()));
            }
            "--runs" => {
                args.runs = value
                    .parse()
                    .map_err(|_| format!("--runs: not a number: {value}"))?
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.litefs.as_os_str().is_empty() || args.nodes.len() != 2 || args.runs == 0 {
        return Err(USAGE.into());
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), String> {
    let node = |(port, dir): &(u16, PathBuf)| Node {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        dir: dir.clone(),
        port: *port,
        litefs: args.litefs.clone(),
        child: None,
    };
    let mut nodes = [node(&args.nodes[0]), node(&args.nodes[1])];
    for n in nodes.iter_mut() {
        n.start()?;
    }
    // The first write creates the database on whichever node won.
    let p = wait_settled(&nodes)?;
    write_once(&nodes[p], "setup").map_err(|e| format!("first write on {}: {e}", nodes[p].name))?;

    let mut medians = Vec::new();
    for kind in [Kind::Clean, Kind::Crash] {
        println!("{}:", kind.name());
        let mut times = Vec::new();
        for i in 1..=args.runs {
            times.push(one_run(&mut nodes, kind, &format!("run {i}"))?);
        }
        medians.push((kind, median(&mut times)));
    }
    for (kind, m) in medians {
        println!(
            "{:<28} median {:.3} s over {} runs",
            kind.name(),
            m.as_secs_f64(),
            args.runs
        );
    }
    Ok(())
}

fn main() {
    // A script's background job starts with SIGINT ignored, and the litefs
    // processes started here would inherit that; give them the default, as
    // a shell would, so the clean handoff is the one a user's Ctrl-C gets.
    // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_failover: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("bench_failover: {e}");
        std::process::exit(1);
    }
}
