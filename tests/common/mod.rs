//! Test harness: real litefs processes on real FUSE mounts, and the
//! helpers the test files share (polling, free ports, temp dirs, the
//! sqlite3 CLI, positions, a node's log and HTTP answers).
//!
//! A `Node` owns one litefs process with its own config, mount and data
//! directory under a temp dir. Dropping it stops the process and unmounts
//! (also when a test panics), so no test leaves a mount behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long start-up and shutdown may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long a replica may take to catch up with its primary.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// One litefs process under test.
pub struct Node {
    pub dir: PathBuf,
    pub mount: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    /// Extra environment for the litefs process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// Writes a config under `dir` (extra YAML appended) and starts litefs.
    pub fn start_in(dir: &Path, extra_yaml: &str) -> Node {
        Node::start_with(dir, |_| extra_yaml.to_string())
    }

    /// Like `start_in`, but the extra YAML is made from the node's HTTP
    /// port (for configs that advertise the node's own URL).
    pub fn start_with(dir: &Path, extra_yaml: impl FnOnce(u16) -> String) -> Node {
        Node::start_with_env(dir, extra_yaml, &[])
    }

    /// Like `start_with`, with extra environment variables for litefs.
    pub fn start_with_env(
        dir: &Path,
        extra_yaml: impl FnOnce(u16) -> String,
        env: &[(&str, &str)],
    ) -> Node {
        let mut node = Node::configure(dir, extra_yaml, env);
        node.restart();
        node
    }

    /// Writes a config like `start_in` and starts `litefs -config X ARGS`
    /// without waiting for the mount: with a command to run (`-- CMD`),
    /// litefs may be done before the mount is seen. See `wait_exit`.
    pub fn spawn_in(dir: &Path, extra_yaml: &str, args: &[&str]) -> Node {
        let mut node = Node::configure(dir, |_| extra_yaml.to_string(), &[]);
        node.spawn(args);
        node
    }

    /// Writes the config; starts nothing.
    fn configure(dir: &Path, extra_yaml: impl FnOnce(u16) -> String, env: &[(&str, &str)]) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let extra_yaml = extra_yaml(port);
        let mount = dir.join("mnt");
        let data = dir.join("data");
        let config = dir.join("litefs.yml");
        std::fs::write(
            &config,
            format!(
                "mount-dir: \"{}\"\ndata-dir: \"{}\"\nhttp:\n  addr: \"127.0.0.1:{port}\"\n{extra_yaml}",
                mount.display(),
                data.display()
            ),
        )
        .unwrap();
        Node {
            dir: dir.to_path_buf(),
            mount,
            data,
            config,
            log: dir.join("litefs.log"),
            port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        }
    }

    /// Starts litefs again with the same config (after `stop` or `kill9`).
    pub fn restart(&mut self) {
        self.spawn(&[]);
        self.wait_mounted();
    }

    /// Starts `litefs -config X ARGS`.
    fn spawn(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "litefs is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_litefs"))
            .arg("-config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,litefs=debug".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start litefs");
        self.child = Some(child);
    }

    /// Waits for litefs to exit by itself (within `DEADLINE`).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("litefs is not running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "litefs did not exit in time; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the mount is up; fails with the log if litefs exits.
    pub fn wait_mounted(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if is_live_mount(&self.mount) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "litefs exited with {status} before mounting; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "litefs did not mount in time; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("litefs is not running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                // A thread stuck in a request to its own mount keeps a
                // killed litefs from exiting until its FUSE connection is
                // aborted: abort it, so the test ends and cleans up.
                let aborted = abort_fuse_connection(&self.mount);
                let _ = child.wait();
                panic!(
                    "litefs did not exit after signal {signal} (FUSE connection aborted: \
                     {aborted:?}); log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Clean stop (SIGTERM); asserts success and that the mount is gone.
    pub fn stop(&mut self) {
        let status = self.signal_and_wait(libc::SIGTERM);
        assert!(
            status.success(),
            "litefs exited with {status}; log:\n{}",
            self.log_text()
        );
        assert!(
            !is_mounted(&self.mount),
            "mount still present after clean stop"
        );
    }

    /// kill -9: leaves a dead mount behind, as a crash would.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// True while the litefs process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The database's path on the mount.
    pub fn db(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    /// The database's backing file in the data directory.
    pub fn data_db(&self, name: &str) -> PathBuf {
        self.data.join("dbs").join(name).join("database")
    }

    /// The database's LTX files, sorted, as the data directory lists them
    /// (litefs is not asked).
    pub fn ltx_files(&self, name: &str) -> Vec<PathBuf> {
        let dir = self.data.join("dbs").join(name).join("ltx");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().map(|x| x == "ltx").unwrap_or(false))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
    }

    /// Reads `<name>-pos` from the mount.
    pub fn pos(&self, name: &str) -> String {
        let path = self.mount.join(format!("{name}-pos"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            let listing: Vec<_> = std::fs::read_dir(&self.mount)
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            panic!(
                "reading {}: {e}; the mount lists {listing:?}",
                path.display()
            )
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mount)
                .output();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
        // A step-down marks the WAL immutable; a test that ends with this
        // node a replica would leave a temp dir nobody can remove.
        if let Ok(dbs) = std::fs::read_dir(self.data.join("dbs")) {
            for db in dbs.flatten() {
                let wal = db.path().join("wal");
                if wal.exists() {
                    let _ = Command::new("chattr").arg("-i").arg(&wal).output();
                }
            }
        }
    }
}

/// True when a working file system is mounted at `path`: it can be listed
/// (a stale mount from a crash cannot), and, checked after that, it is on
/// another device than its parent (the bare directory is not). In that
/// order, a stale mount being replaced can never pass for a live one.
/// Aborts the FUSE connection of the mount at `mount` through fusectl
/// (mounted on /sys/fs/fuse/connections if it is not yet).
pub fn abort_fuse_connection(mount: &Path) -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let target = mount.to_str().ok_or("mount path is not UTF-8")?;
    let dev = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == target)
        .map(|f| f[2].to_string())
        .ok_or_else(|| format!("{target} is not mounted"))?;
    let minor = dev.split(':').nth(1).ok_or("no minor device number")?;
    let connections = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(connections).map_or(true, |mut d| d.next().is_none()) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status();
    }
    std::fs::write(connections.join(minor).join("abort"), "1").map_err(|e| e.to_string())
}

pub fn is_live_mount(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Read an entry: opening the directory alone never reaches litefs.
    if std::fs::read_dir(path)
        .and_then(|mut rd| rd.next().transpose())
        .is_err()
    {
        return false;
    }
    let (Ok(dir), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    dir.dev() != parent.dev()
}

/// True when `path` is a mount point (per /proc/self/mounts).
pub fn is_mounted(path: &Path) -> bool {
    mount_options(path).is_some()
}

/// The options of the mount at `path` (per /proc/self/mounts), `None`
/// when nothing is mounted there.
pub fn mount_options(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(3))
        .map(str::to_string)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A connection to `path` switched to WAL mode (checked), with a 10 s busy
/// timeout, then `pragmas` run.
pub fn open_wal(path: &Path, pragmas: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(pragmas).unwrap();
    conn
}

/// Runs the sqlite3 CLI on `db` with `sql` on stdin.
pub fn sqlite3(db: &Path, sql: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sqlite3 CLI (install with scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs sqlite3 and asserts success; returns stdout.
pub fn sqlite3_ok(db: &Path, sql: &str) -> String {
    let out = sqlite3(db, sql);
    assert!(
        out.status.success(),
        "sqlite3 {} failed: {}\nSQL: {sql}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `cond` until true or the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks the pauses between retries: 100 ms first, each next one twice
/// the last, up to `cap`. Each is at least that (the retry cannot come
/// sooner), and together they are at most twice what they add up to (a
/// pause that grew past the cap would be far more).
pub fn assert_backoff(gaps: &[Duration], cap: Duration) {
    let mut want = Duration::from_millis(100).min(cap);
    let mut total = Duration::ZERO;
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap + Duration::from_millis(10) >= want,
            "pause {i} was {gap:?}, not {want:?}: {gaps:?}"
        );
        total += want;
        want = (want * 2).min(cap);
    }
    let sum: Duration = gaps.iter().sum();
    assert!(
        sum <= total * 2,
        "the pauses {gaps:?} add up to {sum:?}, not about {total:?}"
    );
}

/// A fresh temp dir for one test.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("litefs-{name}-"))
        .tempdir()
        .unwrap()
}

/// Waits until `replica` shows the same position for `db` as `primary`.
pub fn wait_caught_up(primary: &Node, replica: &Node, db: &str) {
    let want = primary.pos(db);
    wait_for(
        &format!("{} to reach {}", replica.dir.display(), want.trim()),
        CATCH_UP,
        || {
            std::fs::read_to_string(replica.mount.join(format!("{db}-pos")))
                .map(|p| p == want)
                .unwrap_or(false)
        },
    );
}

/// Same position, same bytes, same checksum computed from the file.
pub fn assert_identical(primary: &Node, replica: &Node, db: &str) {
    assert_eq!(primary.pos(db), replica.pos(db));
    let a = std::fs::read(primary.data_db(db)).unwrap();
    let b = std::fs::read(replica.data_db(db)).unwrap();
    assert!(
        a == b,
        "{db} differs between {} and {}",
        primary.dir.display(),
        replica.dir.display()
    );
    assert_eq!(
        litefs::store::database_checksum(&replica.data_db(db)).unwrap(),
        litefs::store::database_checksum(&primary.data_db(db)).unwrap()
    );
}

/// A tiny deterministic PRNG (xorshift) so failures can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock (or `LITEFS_TEST_SEED`), the seed printed
    /// under `what` so a failing run can be replayed.
    pub fn from_clock(what: &str) -> Rng {
        let seed = std::env::var("LITEFS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{what} seed {seed} (replay with LITEFS_TEST_SEED={seed})");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The lease section of a static replica of `primary` (hostname
/// `primary-host`).
pub fn replica_yaml(primary: &Node) -> String {
    replica_yaml_for(&format!("http://127.0.0.1:{}", primary.port))
}

/// The lease section of a static replica of the primary at `url`
/// (hostname `primary-host`).
pub fn replica_yaml_for(url: &str) -> String {
    format!(
        "lease:\n  type: static\n  candidate: false\n  hostname: primary-host\n  advertise-url: \"{url}\"\n"
    )
}

/// The TXID of `db`'s position on `node` (`<name>-pos`).
pub fn txid(node: &Node, db: &str) -> u64 {
    let pos = node.pos(db);
    let hex = pos.split('/').next().unwrap_or_default();
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{db}: -pos {pos:?}: {e}"))
}

/// The position `<name>-pos` must show: the newest LTX file's TXID and
/// post-apply checksum.
pub fn newest_ltx_pos(node: &Node, db: &str) -> String {
    let files = node.ltx_files(db);
    let newest = files.last().expect("no LTX file");
    let (header, trailer) = litefs::ltx::read_header_and_trailer(newest).unwrap();
    format!(
        "{:016x}/{:016x}\n",
        header.max_txid, trailer.post_apply_checksum
    )
}

/// Replays every LTX file of `db` onto an empty store and checks the result
/// is byte-identical to the node's database file.
pub fn assert_replay_identical(node: &Node, db: &str) {
    let replay_dir = temp_dir("replay");
    let replay = litefs::store::Store::open(replay_dir.path()).unwrap();
    let target = replay.create_db(db).unwrap();
    let files = node.ltx_files(db);
    let mut next = 1;
    for file in &files {
        let (header, _) = litefs::ltx::read_header_and_trailer(file).unwrap();
        assert_eq!(header.min_txid, next, "LTX files are not contiguous");
        target.apply_ltx(file).unwrap();
        next = header.max_txid + 1;
    }
    let original = std::fs::read(node.data_db(db)).unwrap();
    let replayed = std::fs::read(target.database_path()).unwrap();
    assert!(
        original == replayed,
        "replayed {db} differs from the original"
    );
    assert_eq!(format!("{}\n", target.pos()), node.pos(db));
    assert_eq!(
        litefs::store::database_checksum(&node.data_db(db)).unwrap(),
        target.pos().checksum
    );
}

/// Kills `node` with SIGKILL `rounds` times while a writer thread commits
/// single-row transactions into table `t(i INTEGER PRIMARY KEY, b BLOB)`
/// of `db` (which must exist), at a random moment after at least one
/// commit each round; `setup` runs on each round's fresh connection (e.g.
/// a `synchronous` pragma). After each restart: the position is the
/// newest LTX file's, the database file's checksum is its post-apply
/// checksum, integrity_check passes, and no acknowledged row is missing.
pub fn kill9_during_writes(
    node: &mut Node,
    db: &str,
    rounds: usize,
    rng: &mut Rng,
    setup: impl Fn(usize) -> String,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let path = node.db(db);
    let committed = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let mut next_i = 1i64;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (path, committed, stop) = (path.clone(), committed.clone(), stop.clone());
            let (start, setup_sql) = (next_i, setup(round));
            std::thread::spawn(move || {
                let mut i = start;
                let Ok(conn) = rusqlite::Connection::open(&path) else {
                    return i;
                };
                let ready = conn
                    .busy_timeout(Duration::from_secs(5))
                    .and_then(|()| conn.execute_batch(&setup_sql));
                if ready.is_err() {
                    return i;
                }
                while !stop.load(Ordering::Relaxed) {
                    let res = conn.execute(
                        "INSERT INTO t(i, b) VALUES(?1, randomblob(?2))",
                        rusqlite::params![i, 100 + (i % 7) * 900],
                    );
                    match res {
                        Ok(_) => {
                            committed.lock().unwrap().insert(i);
                            i += 1;
                        }
                        Err(_) => break,
                    }
                }
                i + 1
            })
        };
        // Let the writer commit something, then kill at a random moment.
        let committed_before = committed.lock().unwrap().len();
        wait_for("a commit", Duration::from_secs(30), || {
            committed.lock().unwrap().len() > committed_before
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        next_i = writer.join().unwrap();
        node.restart();

        assert_eq!(node.pos(db), newest_ltx_pos(node, db), "round {round}");
        let files = node.ltx_files(db);
        let (_, trailer) = litefs::ltx::read_header_and_trailer(files.last().unwrap()).unwrap();
        assert_eq!(
            litefs::store::database_checksum(&node.data_db(db)).unwrap(),
            trailer.post_apply_checksum,
            "round {round}"
        );
        assert_eq!(
            sqlite3_ok(&path, "PRAGMA integrity_check;"),
            "ok\n",
            "round {round}"
        );
        let present: std::collections::BTreeSet<i64> = sqlite3_ok(&path, "SELECT i FROM t;")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let committed = committed.lock().unwrap();
        let lost: Vec<_> = committed.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged rows lost: {lost:?}"
        );
    }
    assert_replay_identical(node, db);
}

/// `litefs_fuse_operations_total{op="write"}` of the node's `/metrics`:
/// the writes that reached litefs (none of those that pass through).
pub fn fuse_writes(node: &Node) -> u64 {
    fuse_ops(node, "write")
}

/// `litefs_fuse_operations_total{op="<op>"}` of the node's `/metrics`: the
/// requests of that kind the kernel sent litefs.
pub fn fuse_ops(node: &Node, op: &str) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", node.port);
    let body = ureq::get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap();
    let series = format!("litefs_fuse_operations_total{{op=\"{op}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Runs the litefs binary with `args` (RUST_LOG=warn) and returns its output.
pub fn litefs_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_litefs"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run litefs")
}

/// A command's stdout then stderr, as text (for assertions and messages).
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many times `needle` occurs in `node`'s log.
pub fn count_in_log(node: &Node, needle: &str) -> usize {
    node.log_text().matches(needle).count()
}

/// Sends `method` (GET or POST) for `path` to the node HTTP server on
/// loopback `port`, with `token` as its bearer token when given; returns
/// the status, the Content-Type and the body (at most 1 MiB).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match (method, auth) {
        ("POST", Some(auth)) => agent.post(&url).header("Authorization", auth).send(""),
        ("POST", None) => agent.post(&url).send(""),
        (_, Some(auth)) => agent.get(&url).header("Authorization", auth).call(),
        (_, None) => agent.get(&url).call(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    (status, content_type, body)
}

/// Stops a node's litefs with SIGSTOP until `resume` or drop (SIGCONT),
/// so that a failing test never leaves a stopped litefs behind its mount.
pub struct Paused(Option<u32>);

impl Paused {
    pub fn pause(node: &Node) -> Paused {
        let pid = node.pid().expect("the node runs");
        // SAFETY: a signal to a child process this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Paused(Some(pid))
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}
