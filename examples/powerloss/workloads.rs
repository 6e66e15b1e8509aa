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
    /// For `Workload::StepDown`: the candidate that takes over.
    pub standby: Option<Node>,
    /// The litefs binary (for `litefs import`).
    pub bin: std::path::PathBuf,
    /// The workload's directory, off the recorded disk.
    pub work: std::path::PathBuf,
    /// For `Workload::StepDown`: the lease's Consul (stopped last).
    pub consul: Option<crate::consul::Consul>,
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
    /// What marks call it: the name, or a later generation's own key.
    pub key: String,
    /// The file's name on the mount.
    pub name: String,
    /// Its table (a later generation of a name has its own).
    pub table: &'static str,
    /// Rows each transaction inserts.
    pub rows: u64,
    /// Each transaction `n` is followed by a write in place, without
    /// SQLite, of `user_version` = n (`Workload::EditInPlace`).
    pub edits: bool,
}

impl DbSpec {
    pub fn new(name: &str, rows: u64) -> DbSpec {
        DbSpec {
            key: name.into(),
            name: name.into(),
            table: "t",
            rows,
            edits: false,
        }
    }
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
    /// Single-row commits, the database deleted (`rm` on the mount), and
    /// created again with commits of its own.
    Recreate,
    /// `litefs import` replacing a database, five times.
    Import,
    /// WAL commits on a Consul-leased primary, which then steps down
    /// (`step_down.rs`).
    StepDown,
    /// A database written over with plain writes (`cat x > name`), five
    /// times: each a transaction at its close.
    CopyIn,
    /// Single-row commits, each followed by a write of part of page 1
    /// (change counter, `user_version`) by a program that is not SQLite:
    /// a transaction of its own.
    EditInPlace,
    /// Synchronous replication (`replication.sync: 1`) in a journal mode:
    /// before each commit, one made while the (unrecorded) replica is
    /// stopped, which times out and is taken back (`Db::take_back`); it
    /// must never come back.
    TakeBack(&'static str),
}

/// Every workload, in the order `scripts/powerloss.sh` runs them.
pub const ALL: &[Workload] = &[
    Workload::Single("delete"),
    Workload::Single("truncate"),
    Workload::Single("persist"),
    Workload::Bulk("delete"),
    Workload::Bulk("truncate"),
    Workload::Bulk("persist"),
    Workload::Wal("full"),
    Workload::Wal("normal"),
    Workload::Bulk("wal"),
    Workload::Checkpoint,
    Workload::Retention,
    Workload::Replica,
    Workload::Recreate,
    Workload::Import,
    Workload::CopyIn,
    Workload::EditInPlace,
    Workload::TakeBack("delete"),
    Workload::TakeBack("wal"),
    Workload::StepDown,
];

const BULK_ROWS: u64 = 3000;

/// `Workload::TakeBack`: the refused commit before transaction `n`
/// inserts batch `DOOMED_BATCH + n`.
pub const DOOMED_BATCH: u64 = 1000;

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::Single(mode) => format!("single-row {mode}"),
            Workload::Bulk(mode) => format!("bulk {mode}"),
            Workload::Wal(sync) => format!("single-row wal {sync}"),
            Workload::Checkpoint => "wal checkpoint".into(),
            Workload::Retention => "retention".into(),
            Workload::Replica => "replica".into(),
            Workload::Recreate => "delete and create again".into(),
            Workload::Import => "import".into(),
            Workload::StepDown => "step-down".into(),
            Workload::CopyIn => "copy-in".into(),
            Workload::EditInPlace => "edit in place".into(),
            Workload::TakeBack(mode) => format!("take-back {mode}"),
        }
    }

    /// The databases it writes.
    pub fn dbs(self) -> Vec<DbSpec> {
        let rows = match self {
            Workload::Bulk(_) => BULK_ROWS,
            _ => 1,
        };
        match self {
            Workload::Recreate => vec![
                DbSpec::new("app.db", 1),
                DbSpec {
                    key: "app.db created again".into(),
                    table: "u",
                    ..DbSpec::new("app.db", 1)
                },
            ],
            Workload::Import => vec![DbSpec::new("imported.db", 1)],
            Workload::CopyIn => vec![DbSpec::new("copied.db", 1)],
            Workload::EditInPlace => vec![DbSpec {
                edits: true,
                ..DbSpec::new("edited.db", 1)
            }],
            _ => vec![DbSpec::new("app.db", rows)],
        }
    }

    /// Extra config for the recorded node, beside its mount and data
    /// directories; `primary` is the URL of the workload's primary.
    pub fn yaml(self, primary: Option<&str>) -> String {
        match (self, primary) {
            (Workload::Retention, _) => RETENTION.into(),
            (Workload::TakeBack(_), _) => SYNC.into(),
            (Workload::Replica, Some(url)) => replica_yaml(url),
            _ => String::new(),
        }
    }

    /// Extra config for litefs on a crash state: as recorded, but a
    /// replica's primary is gone (nothing changes under the checks).
    pub fn check_yaml(self) -> String {
        match self {
            // No replica to wait for: SQLite's rollback of a hot journal
            // must not wait.
            Workload::TakeBack(_) => String::new(),
            _ => self.yaml(Some("http://127.0.0.1:1")),
        }
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
        if self == Workload::StepDown {
            return crate::step_down::start(bin, work, data);
        }
        let primary = match self {
            Workload::Replica => {
                let dir = work.join("primary");
                Some(Node::start(bin, &dir, &dir.join("data"), RETENTION)?)
            }
            _ => None,
        };
        let yaml = self.yaml(primary.as_ref().map(|p| p.url()).as_deref());
        let recorded = Node::start(bin, &work.join("recorded-node"), data, &yaml)?;
        // `TakeBack`: the replica the recorded primary waits for.
        let standby = match self {
            Workload::TakeBack(_) => {
                let dir = work.join("replica");
                let yaml = replica_yaml(&recorded.url());
                Some(Node::start(bin, &dir, &dir.join("data"), &yaml)?)
            }
            _ => None,
        };
        Ok(Nodes {
            recorded,
            primary,
            standby,
            bin: bin.to_path_buf(),
            work: work.to_path_buf(),
            consul: None,
        })
    }

    fn journal_mode(self) -> &'static str {
        match self {
            Workload::Single(mode) | Workload::Bulk(mode) | Workload::TakeBack(mode) => mode,
            Workload::Wal(_) | Workload::Checkpoint | Workload::StepDown => "wal",
            Workload::Retention
            | Workload::Replica
            | Workload::Recreate
            | Workload::Import
            | Workload::CopyIn
            | Workload::EditInPlace => "delete",
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
            Workload::TakeBack(_) => 12,
            Workload::Wal(_) | Workload::Checkpoint => 40,
            _ => 25,
        }
    }

    /// Before recording: creates the databases (and waits for a replica
    /// to have them).
    pub fn setup(self, nodes: &Nodes) -> Result<(), String> {
        match self {
            Workload::Import => return import(nodes, "imported.db", 0),
            Workload::CopyIn => return copy_in(nodes, "copied.db", 0),
            _ => {}
        }
        let spec = &self.dbs()[0];
        let conn = self.open(&nodes.writer().mount, &spec.name)?;
        create_table(&conn, spec)?;
        if let Some(primary) = &nodes.primary {
            caught_up(primary, &nodes.recorded, &spec.name)?;
        }
        if let Some(standby) = &nodes.standby {
            caught_up(&nodes.recorded, standby, &spec.name)?;
        }
        Ok(())
    }

    /// While recording: commits the transactions, marking each that
    /// returned.
    pub fn run(self, nodes: &mut Nodes, recorder: &Recorder) -> Result<(), String> {
        match self {
            Workload::Replica => return replica_run(nodes, recorder),
            Workload::Import | Workload::CopyIn => return import_run(self, nodes, recorder),
            Workload::Recreate => return recreate_run(nodes, recorder),
            Workload::StepDown => return crate::step_down::run(nodes, recorder),
            Workload::TakeBack(_) => return take_back_run(self, nodes, recorder),
            _ => {}
        }
        let spec = &self.dbs()[0];
        let conn = self.open(&nodes.writer().mount, &spec.name)?;
        for n in 1..=self.txns() {
            if spec.edits {
                insert_batch(&conn, spec, n)
                    .map_err(|e| format!("{}: transaction {n}: {e}", spec.key))?;
                edit_in_place(&nodes.writer().mount.join(&spec.name), n)?;
                recorder.mark(Mark::Committed {
                    db: spec.key.clone(),
                    n,
                    durable: self.durable(),
                })?;
                continue;
            }
            self.commit(&conn, spec, n, recorder)?;
            if self == Workload::Checkpoint && n % 4 == 0 {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(|e| format!("{}: checkpoint after {n}: {e}", spec.name))?;
            }
        }
        Ok(())
    }

    /// Commits transaction `n` of `spec` and marks it.
    pub fn commit(
        self,
        conn: &Connection,
        spec: &DbSpec,
        n: u64,
        recorder: &Recorder,
    ) -> Result<(), String> {
        insert_batch(conn, spec, n).map_err(|e| format!("{}: transaction {n}: {e}", spec.key))?;
        recorder.mark(Mark::Committed {
            db: spec.key.clone(),
            n,
            durable: self.durable(),
        })?;
        Ok(())
    }

    pub fn open(self, mnt: &Path, name: &str) -> Result<Connection, String> {
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

/// Writes `user_version` = `n` into the database at `path` in place, as a
/// program that is not SQLite does (opened read-write without
/// O_NOFOLLOW): one write of bytes 24..96 of page 1, with the change
/// counter moved on so that SQLite's connections drop their cache.
fn edit_in_place(path: &Path, n: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let fail = |e: std::io::Error| format!("{}: edit in place {n}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(fail)?;
    let mut head = [0u8; 96];
    file.read_exact_at(&mut head, 0).map_err(fail)?;
    let counter = u32::from_be_bytes([head[24], head[25], head[26], head[27]]).wrapping_add(1);
    head[24..28].copy_from_slice(&counter.to_be_bytes());
    head[60..64].copy_from_slice(&(n as u32).to_be_bytes());
    head[92..96].copy_from_slice(&counter.to_be_bytes());
    file.write_all_at(&head[24..96], 24).map_err(fail)
}

/// Creates the table of `spec`.
fn create_table(conn: &Connection, spec: &DbSpec) -> Result<(), String> {
    conn.execute_batch(&format!(
        "CREATE TABLE {}(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v BLOB)",
        spec.table
    ))
    .map_err(|e| format!("{}: create the table: {e}", spec.key))
}

/// Inserts transaction `n` of `spec`: its rows of batch `n`.
pub fn insert_batch(conn: &Connection, spec: &DbSpec, n: u64) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2) \
             INSERT INTO {}(batch, v) SELECT ?1, randomblob(100) FROM c",
            spec.table
        ),
        (n as i64, spec.rows as i64),
    )
    .map(|_| ())
}

/// `Workload::Recreate`: 8 commits, `rm` of the database, then the name
/// created again (its own table) and 8 commits into it.
fn recreate_run(nodes: &Nodes, recorder: &Recorder) -> Result<(), String> {
    let w = Workload::Recreate;
    let [first, second] = &w.dbs()[..] else {
        return Err("two generations expected".into());
    };
    let path = nodes.recorded.mount.join(&first.name);
    let conn = w.open(&nodes.recorded.mount, &first.name)?;
    for n in 1..=8 {
        w.commit(&conn, first, n, recorder)?;
    }
    drop(conn);
    recorder.mark(Mark::Deleted {
        db: first.key.clone(),
        done: false,
    })?;
    std::fs::remove_file(&path).map_err(|e| format!("rm {}: {e}", path.display()))?;
    recorder.mark(Mark::Deleted {
        db: first.key.clone(),
        done: true,
    })?;
    let conn = w.open(&nodes.recorded.mount, &second.name)?;
    create_table(&conn, second)?;
    for n in 1..=8 {
        w.commit(&conn, second, n, recorder)?;
    }
    Ok(())
}

/// `Workload::Import` and `Workload::CopyIn`: five imports or copies,
/// number `v` holding transactions (batches) 1..=3v; each marked as
/// transaction 3v once it returned.
fn import_run(w: Workload, nodes: &Nodes, recorder: &Recorder) -> Result<(), String> {
    let name = &w.dbs()[0].name;
    for v in 1..=5 {
        if w == Workload::CopyIn {
            copy_in(nodes, name, 3 * v)?;
        } else {
            import(nodes, name, 3 * v)?;
        }
        recorder.mark(Mark::Committed {
            db: name.clone(),
            n: 3 * v,
            durable: true,
        })?;
    }
    Ok(())
}

/// `litefs import`s a database of `batches` single-row batches as `name`.
fn import(nodes: &Nodes, name: &str, batches: u64) -> Result<(), String> {
    let source = source_db(nodes, name, batches)?;
    let out = std::process::Command::new(&nodes.bin)
        .args(["import", "-name", name, "-url", &nodes.recorded.url()])
        .arg(&source)
        .output()
        .map_err(|e| format!("litefs import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "litefs import of {batches} batches: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Writes a database of `batches` single-row batches over `name` on the
/// mount with plain writes, as `cat source > name` does: one transaction
/// once the file is closed (the close's result is checked).
fn copy_in(nodes: &Nodes, name: &str, batches: u64) -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let source = source_db(nodes, name, batches)?;
    let bytes = std::fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let path = nodes.recorded.mount.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the descriptor is ours, closed once.
    if unsafe { libc::close(file.into_raw_fd()) } != 0 {
        return Err(format!(
            "closing {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A database of `batches` single-row batches of `name`'s table, made in
/// the harness's own directory (not on the recorded disk).
fn source_db(nodes: &Nodes, name: &str, batches: u64) -> Result<std::path::PathBuf, String> {
    let source = nodes.work.join("source.db");
    let _ = std::fs::remove_file(&source);
    let conn = Connection::open(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let spec = DbSpec::new(name, 1);
    create_table(&conn, &spec)?;
    for n in 1..=batches {
        insert_batch(&conn, &spec, n).map_err(|e| format!("{}: {e}", source.display()))?;
    }
    Ok(source)
}

const RETENTION: &str = "data:\n  retention: 50ms\n  retention-monitor-interval: 50ms\n";

/// `Workload::TakeBack`'s primary: each commit waits for the replica,
/// and fails, taken back, after 100 ms.
const SYNC: &str = "replication:\n  sync: 1\n  sync-timeout: 100ms\n";

fn replica_yaml(primary_url: &str) -> String {
    format!(
        "lease:\n  type: static\n  candidate: false\n  hostname: primary-host\n  \
         advertise-url: \"{primary_url}\"\n"
    )
}

/// How long a replica may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Polls until `replica`'s position of `db` is `primary`'s.
pub fn caught_up(primary: &Node, replica: &Node, db: &str) -> Result<(), String> {
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
        insert_batch(&conn, &DbSpec::new(db, 1), *n)
            .map_err(|e| format!("{db}: transaction {n}: {e}"))?;
        recorder.mark(Mark::Committed {
            db: db.into(),
            n: *n,
            durable: false,
        })?;
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

/// `Workload::TakeBack`: before each commit, one made with the replica
/// stopped, which must fail (its batch number is past every committed
/// one, so a crash state that kept it fails the check).
fn take_back_run(w: Workload, nodes: &Nodes, recorder: &Recorder) -> Result<(), String> {
    let replica = nodes.standby.as_ref().ok_or("no replica")?;
    let pid = replica.pid().ok_or("the replica is not running")? as i32;
    let spec = &w.dbs()[0];
    let conn = w.open(&nodes.recorded.mount, &spec.name)?;
    let signal = |signal| {
        // SAFETY: kill(2) of a child of this process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(format!(
                "signal {signal} to the replica: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    for n in 1..=w.txns() {
        signal(libc::SIGSTOP)?;
        let doomed = insert_batch(&conn, spec, DOOMED_BATCH + n);
        signal(libc::SIGCONT)?;
        if doomed.is_ok() {
            return Err(format!(
                "{}: a commit returned while the only replica was stopped",
                spec.name
            ));
        }
        recorder.mark(Mark::Refused {
            db: spec.key.clone(),
            n,
        })?;
        w.commit(&conn, spec, n, recorder)?;
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
