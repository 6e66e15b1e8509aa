//! The workloads the harness records, each on its own fresh disk, and
//! what every crash state of one must show.
//!
//! Every database a workload writes has one table,
//! `t(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v BLOB)`; its
//! transaction `n` (counted from 1) inserts `rows` rows of batch `n`. So a
//! crash state shows whole transactions as batches 1..=m, each with
//! exactly `rows` rows, and the marks say which m it must at least reach.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::node::Node;
use crate::recorder::{Mark, Recorder};

/// The litefs processes of a workload: the one whose data directory is
/// on the recorded disk, and for `Workload::Replica` its primary (on a
/// disk of its own, not recorded).
pub struct Nodes {
    pub recorded: Node,
    pub primary: Option<Node>,
}

impl Nodes {
    /// The mount the workload writes through.
    fn writer(&self) -> &Node {
        self.primary.as_ref().unwrap_or(&self.recorded)
    }
}

/// One database of a workload and how its transactions look.
#[derive(Clone, Debug)]
pub struct DbSpec {
    pub name: String,
    /// Rows each transaction inserts.
    pub rows: u64,
}

/// A workload: what it writes, and litefs's config for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Single-row commits in a rollback-journal mode, synchronous=FULL.
    Single(&'static str),
    /// Commits of 3,000 rows (about 400 KiB: more than SQLite's page
    /// cache holds, so pages reach the file before COMMIT).
    Bulk(&'static str),
    /// Single-row commits in WAL mode with `synchronous` FULL or NORMAL.
    Wal(&'static str),
    /// WAL (FULL) commits with a TRUNCATE checkpoint every 4 commits.
    Checkpoint,
    /// Single-row DELETE-mode commits while retention deletes LTX files.
    Retention,
    /// The recorded node is a replica: it receives and applies commits
    /// one by one, then a burst (queued, merged), then is stopped while
    /// retention on the primary deletes what it lacks and started again
    /// to receive a snapshot.
    Replica,
}

/// Every workload, in the order `scripts/powerloss.sh` runs them.
pub const ALL: &[Workload] = &[
    Workload::Single("delete"),
    Workload::Single("truncate"),
    Workload::Single("persist"),
    Workload::Bulk("delete"),
    Workload::Wal("full"),
    Workload::Wal("normal"),
    Workload::Bulk("wal"),
    Workload::Checkpoint,
    Workload::Retention,
    Workload::Replica,
];

const BULK_ROWS: u64 = 3000;

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::Single(mode) => format!("single-row {mode}"),
            Workload::Bulk(mode) => format!("bulk {mode}"),
            Workload::Wal(sync) => format!("single-row wal {sync}"),
            Workload::Checkpoint => "wal checkpoint".into(),
            Workload::Retention => "retention".into(),
            Workload::Replica => "replica".into(),
        }
    }

    /// The databases it writes.
    pub fn dbs(self) -> Vec<DbSpec> {
        let rows = match self {
            Workload::Bulk(_) => BULK_ROWS,
            _ => 1,
        };
        vec![DbSpec {
            name: "app.db".into(),
            rows,
        }]
    }

    /// Extra config for the recorded node, beside its mount and data
    /// directories; `primary` is the URL of the workload's primary.
    pub fn yaml(self, primary: Option<&str>) -> String {
        match (self, primary) {
            (Workload::Retention, _) => RETENTION.into(),
            (Workload::Replica, Some(url)) => replica_yaml(url),
            _ => String::new(),
        }
    }

    /// Extra config for litefs on a crash state: as recorded, but a
    /// replica's primary is gone (nothing changes under the checks).
    pub fn check_yaml(self) -> String {
        self.yaml(Some("http://127.0.0.1:1"))
    }

    /// Whether a commit that returned is promised to survive power loss
    /// on the recorded node. A replica promises no commit of its own:
    /// what it holds must be whole and consistent.
    fn durable(self) -> bool {
        !matches!(self, Workload::Wal("normal") | Workload::Replica)
    }

    /// Starts the workload's nodes: the recorded one with its data in
    /// `data`, under `work`.
    pub fn start(self, bin: &Path, work: &Path, data: &Path) -> Result<Nodes, String> {
        let primary = match self {
            Workload::Replica => {
                let dir = work.join("primary");
                Some(Node::start(bin, &dir, &dir.join("data"), RETENTION)?)
            }
            _ => None,
        };
        let yaml = self.yaml(primary.as_ref().map(|p| p.url()).as_deref());
        let recorded = Node::start(bin, &work.join("recorded-node"), data, &yaml)?;
        Ok(Nodes { recorded, primary })
    }

    fn journal_mode(self) -> &'static str {
        match self {
            Workload::Single(mode) | Workload::Bulk(mode) => mode,
            Workload::Wal(_) | Workload::Checkpoint => "wal",
            Workload::Retention | Workload::Replica => "delete",
        }
    }

    fn synchronous(self) -> &'static str {
        match self {
            Workload::Wal(sync) => sync,
            _ => "full",
        }
    }

    fn txns(self) -> u64 {
        match self {
            Workload::Bulk(_) => 4,
            Workload::Wal(_) | Workload::Checkpoint => 40,
            _ => 25,
        }
    }

    /// Before recording: creates the databases (and waits for a replica
    /// to have them).
    pub fn setup(self, nodes: &Nodes) -> Result<(), String> {
        for spec in self.dbs() {
            let conn = self.open(&nodes.writer().mount, &spec.name)?;
            conn.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v BLOB)",
            )
            .map_err(|e| format!("{}: create the table: {e}", spec.name))?;
            if let Some(primary) = &nodes.primary {
                caught_up(primary, &nodes.recorded, &spec.name)?;
            }
        }
        Ok(())
    }

    /// While recording: commits the transactions, marking each that
    /// returned.
    pub fn run(self, nodes: &mut Nodes, recorder: &Recorder) -> Result<(), String> {
        if self == Workload::Replica {
            return replica_run(nodes, recorder);
        }
        let mnt = &nodes.writer().mount;
        for spec in self.dbs() {
            let conn = self.open(mnt, &spec.name)?;
            for n in 1..=self.txns() {
                insert_batch(&conn, n, spec.rows)
                    .map_err(|e| format!("{}: transaction {n}: {e}", spec.name))?;
                recorder.mark(Mark::Committed {
                    db: spec.name.clone(),
                    n,
                    durable: self.durable(),
                });
                if self == Workload::Checkpoint && n % 4 == 0 {
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(|e| format!("{}: checkpoint after {n}: {e}", spec.name))?;
                }
            }
        }
        Ok(())
    }

    fn open(self, mnt: &Path, name: &str) -> Result<Connection, String> {
        let path = mnt.join(name);
        let conn = Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mode: String = conn
            .query_row(
                &format!("PRAGMA journal_mode={}", self.journal_mode()),
                [],
                |r| r.get(0),
            )
            .map_err(|e| format!("{name}: journal_mode: {e}"))?;
        if mode != self.journal_mode() {
            return Err(format!(
                "{name}: journal_mode is {mode}, not {}",
                self.journal_mode()
            ));
        }
        conn.execute_batch(&format!("PRAGMA synchronous={}", self.synchronous()))
            .map_err(|e| format!("{name}: pragmas: {e}"))?;
        Ok(conn)
    }
}

/// Commits transaction `n`: `rows` rows of batch `n`.
fn insert_batch(conn: &Connection, n: u64, rows: u64) -> rusqlite::Result<()> {
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2) \
         INSERT INTO t(batch, v) SELECT ?1, randomblob(100) FROM c",
        (n as i64, rows as i64),
    )
    .map(|_| ())
}

const RETENTION: &str = "data:\n  retention: 50ms\n  retention-monitor-interval: 50ms\n";

fn replica_yaml(primary_url: &str) -> String {
    format!(
        "lease:\n  type: static\n  candidate: false\n  hostname: primary-host\n  \
         advertise-url: \"{primary_url}\"\n"
    )
}

/// How long a replica may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Polls until `replica`'s position of `db` is `primary`'s.
fn caught_up(primary: &Node, replica: &Node, db: &str) -> Result<(), String> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let want = primary.pos(db);
        if !want.is_empty() && replica.pos(db) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{db}: the replica is at {:?}, the primary at {want:?} after {CATCH_UP:?}",
                replica.pos(db)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `Workload::Replica`: single-row commits on the primary, each waited
/// for on the replica; a burst; then the replica stopped until retention
/// on the primary deleted what it lacks, and started again (a snapshot).
fn replica_run(nodes: &mut Nodes, recorder: &Recorder) -> Result<(), String> {
    let primary = nodes.primary.as_ref().ok_or("no primary")?;
    let db = "app.db";
    let conn = Workload::Replica.open(&primary.mount, db)?;
    let mut n = 0;
    let commit = |n: &mut u64| -> Result<(), String> {
        *n += 1;
        insert_batch(&conn, *n, 1).map_err(|e| format!("{db}: transaction {n}: {e}"))?;
        recorder.mark(Mark::Committed {
            db: db.into(),
            n: *n,
            durable: false,
        });
        Ok(())
    };
    for _ in 0..10 {
        commit(&mut n)?;
        caught_up(primary, &nodes.recorded, db)?;
    }
    for _ in 0..15 {
        commit(&mut n)?;
    }
    caught_up(primary, &nodes.recorded, db)?;
    let behind = txid(&nodes.recorded.pos(db));
    nodes.recorded.stop()?;
    for _ in 0..5 {
        commit(&mut n)?;
    }
    // Retention keeps only files newer than 50 ms (and the newest).
    let ltx_dir = primary.data.join("dbs").join(db).join("ltx");
    let deadline = Instant::now() + CATCH_UP;
    while oldest_ltx(&ltx_dir) <= behind + 1 {
        if Instant::now() > deadline {
            return Err("retention on the primary deleted nothing".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes.recorded.restart()?;
    caught_up(primary, &nodes.recorded, db)?;
    if !primary.log_text().contains("sending a snapshot") {
        return Err("the restarted replica caught up without a snapshot".into());
    }
    for _ in 0..5 {
        commit(&mut n)?;
        caught_up(primary, &nodes.recorded, db)?;
    }
    Ok(())
}

/// The TXID of a position `<txid>/<checksum>`.
fn txid(pos: &str) -> u64 {
    pos.split('/')
        .next()
        .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
        .unwrap_or(0)
}

/// The smallest first TXID of an LTX file in `dir` (0 when none).
fn oldest_ltx(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| litefs::ltx::parse_filename(&name).map(|(min, _)| min))
        .min()
        .unwrap_or(0)
}
