//! The workloads the harness records, each on its own fresh disk, and
//! what every crash state of one must show.
//!
//! Every database a workload writes has one table,
//! `t(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v BLOB)`; its
//! transaction `n` (counted from 1) inserts `rows` rows of batch `n`. So a
//! crash state shows whole transactions as batches 1..=m, each with
//! exactly `rows` rows, and the marks say which m it must at least reach.

use std::path::Path;

use rusqlite::Connection;

use crate::recorder::{Mark, Recorder};

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

    /// Extra config for litefs, beside its mount and data directories.
    pub fn yaml(self) -> &'static str {
        match self {
            Workload::Retention => "data:\n  retention: 50ms\n  retention-monitor-interval: 50ms\n",
            _ => "",
        }
    }

    /// Whether a commit that returned is promised to survive power loss.
    fn durable(self) -> bool {
        self != Workload::Wal("normal")
    }

    fn journal_mode(self) -> &'static str {
        match self {
            Workload::Single(mode) | Workload::Bulk(mode) => mode,
            Workload::Wal(_) | Workload::Checkpoint => "wal",
            Workload::Retention => "delete",
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

    /// Before recording: creates the databases on the mount `mnt`.
    pub fn setup(self, mnt: &Path) -> Result<(), String> {
        for spec in self.dbs() {
            let conn = self.open(mnt, &spec.name)?;
            conn.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v BLOB)",
            )
            .map_err(|e| format!("{}: create the table: {e}", spec.name))?;
        }
        Ok(())
    }

    /// While recording: commits the transactions, marking each that
    /// returned.
    pub fn run(self, mnt: &Path, recorder: &Recorder) -> Result<(), String> {
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
