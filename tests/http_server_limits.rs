//! The HTTP server's connection limits: one client cannot take a node
//! down.
//!
//! - With small limits in-process: a client over its connections, or a
//!   server over its total, is answered 503 at once while other clients
//!   still get in; a client over its stream slots gets 503 while another
//!   client's replica streams; a silent client is cut off with 408 at the
//!   head deadline; and every slot comes back.
//! - With real litefs processes: 2,000 slow, half-open and oversized
//!   connections from one client against a primary. During and after
//!   them a real replica keeps replicating, local commits succeed and
//!   other clients are served; the primary's descriptors stay within its
//!   per-client cap, and afterwards its descriptor count and RSS return
//!   near their baseline.
//!
//! The hostile client connects to 127.0.0.1 from 127.0.0.2 (every 127/8
//! address is loopback on Linux), so it is another client than the
//! replica. Needs root and /dev/fuse for the processes.
//!
//! How the server answers a single bad request is in
//! tests/http_server_bad_requests.rs.

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{replica_yaml, sqlite3_ok, temp_dir, wait_caught_up, wait_for, Node, CATCH_UP};
use litefs::http::{Limits, Server, HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT};
use litefs::store::Store;

const HOSTILE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A TCP connection to `to` from the address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only: {to}")
    };
    fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket owned by the TcpStream at once; bind and
    // connect get valid sockaddr_in structs and their size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(SocketAddrV4::new(from, 0));
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(to);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// The status of the answer on `conn` (reading at most `wait`), `Some(0)`
/// when it closed without one, `None` when nothing came yet.
fn status_within(conn: &mut TcpStream, wait: Duration) -> Option<u16> {
    conn.set_read_timeout(Some(wait)).unwrap();
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match conn.read(&mut head[got..]) {
            Ok(0) => return Some(0),
            Ok(n) => got += n,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(0),
        }
    }
    let text = String::from_utf8_lossy(&head);
    Some(text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// Sends `request` from `from` and returns the status and the rest.
fn request_from(from: Ipv4Addr, to: SocketAddr, request: &str) -> (u16, String) {
    let mut conn = connect_from(from, to).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

const GET_INFO: &str = "GET /info HTTP/1.1\r\nHost: x\r\n\r\n";
const POST_STREAM: &str = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";

fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        assert!(
            limit.rlim_cur >= 2_500,
            "this test needs 2,500 descriptors; the hard limit is {}",
            limit.rlim_cur
        );
    }
}

/// Opens `n` connections from `from` that never send a byte.
fn silent_connections(from: Ipv4Addr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect_from(from, to).unwrap()).collect()
}

/// Waits until `server` counts `n` open connections.
fn wait_open(server: &Server, n: u64) {
    wait_for(&format!("{n} open connections"), CATCH_UP, || {
        server.stats().connections_open == n
    })
}

#[test]
fn caps_refuse_at_once_while_other_clients_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // The head deadline is far beyond the test's own pace, so silent
    // connections keep their slots however slow the machine is, and a
    // refusal that waited for a slot would take at least that long.
    let head_timeout = Duration::from_secs(120);
    let limits = Limits {
        max_connections: 6,
        max_connections_per_client: 3,
        max_streams_per_client: 1,
        head_timeout,
        ..Limits::default()
    };
    let server = Server::start_with("127.0.0.1:0", store, None, limits).unwrap();
    let addr = server.local_addr();
    let refused_at_once = |from: Ipv4Addr, expect: &str| {
        let asked = Instant::now();
        let (status, text) = request_from(from, addr, GET_INFO);
        assert_eq!(status, 503, "{text}");
        assert!(text.contains(expect), "{text}");
        assert!(asked.elapsed() < head_timeout / 4, "refusals must not wait");
    };

    // One client's three silent connections fill its share.
    let mut silent = silent_connections(HOSTILE, addr, 3);
    wait_open(&server, 3);
    refused_at_once(HOSTILE, "too many connections from this address");
    // Another client is served.
    let (status, text) = request_from(Ipv4Addr::LOCALHOST, addr, GET_INFO);
    assert_eq!(status, 200, "{text}");
    // Its slot is given back just after the answer is closed; a
    // connection that came before that would be over the total.
    wait_open(&server, 3);

    // A second client fills the server; a third is refused at once.
    silent.extend(silent_connections(Ipv4Addr::new(127, 0, 0, 3), addr, 3));
    wait_open(&server, 6);
    refused_at_once(Ipv4Addr::new(127, 0, 0, 4), "too many connections\n");

    // Slots come back when their clients leave.
    drop(silent);
    wait_open(&server, 0);

    // Stream slots: one per client here. A second stream from the same
    // client is refused, another client's replica streams.
    let mut first = connect_from(HOSTILE, addr).unwrap();
    first.write_all(POST_STREAM.as_bytes()).unwrap();
    assert_eq!(
        status_within(&mut first, Duration::from_secs(10)),
        Some(200)
    );
    let (status, text) = request_from(HOSTILE, addr, POST_STREAM);
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("too many streams from this address"),
        "{text}"
    );
    let mut replica = connect_from(Ipv4Addr::LOCALHOST, addr).unwrap();
    replica.write_all(POST_STREAM.as_bytes()).unwrap();
    assert_eq!(
        status_within(&mut replica, Duration::from_secs(10)),
        Some(200)
    );
    // Once the first stream is gone its slot comes back.
    drop(first);
    wait_for("the dropped stream to end", CATCH_UP, || {
        server.stats().streams_active == 1
    });
    let mut again = connect_from(HOSTILE, addr).unwrap();
    again.write_all(POST_STREAM.as_bytes()).unwrap();
    assert_eq!(
        status_within(&mut again, Duration::from_secs(10)),
        Some(200)
    );
    drop((again, replica));
    wait_open(&server, 0);
    server.shutdown();
}

#[test]
fn silent_clients_are_cut_off_at_the_head_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let head_timeout = Duration::from_secs(1);
    let limits = Limits {
        head_timeout,
        ..Limits::default()
    };
    let server = Server::start_with("127.0.0.1:0", store, None, limits).unwrap();
    let addr = server.local_addr();

    let started = Instant::now();
    let mut silent = silent_connections(HOSTILE, addr, 3);
    for conn in &mut silent {
        assert_eq!(status_within(conn, Duration::from_secs(30)), Some(408));
    }
    assert!(started.elapsed() >= head_timeout);
    // Their slots come back though the clients still hold their ends.
    wait_open(&server, 0);
    drop(silent);
    server.shutdown();
}

/// The number of open descriptors of process `pid`.
fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count() as u64)
        .unwrap_or(0)
}

/// The resident set size of process `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples a process's descriptors and RSS until stopped; keeps the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_fds: Arc<AtomicU64>,
    peak_rss: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_fds = Arc::new(AtomicU64::new(0));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, peak_fds, peak_rss) = (stop.clone(), peak_fds.clone(), peak_rss.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    peak_fds.fetch_max(fd_count(pid), Ordering::SeqCst);
                    peak_rss.fetch_max(rss_kb(pid), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler {
            stop,
            peak_fds,
            peak_rss,
            handle,
        }
    }

    /// (peak descriptors, peak RSS in kB).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap();
        (
            self.peak_fds.load(Ordering::SeqCst),
            self.peak_rss.load(Ordering::SeqCst),
        )
    }
}

/// What the hostile client sends on its `i`th connection: nothing, half a
/// header line, or a head declaring a huge body that never comes.
fn hostile_bytes(i: usize) -> &'static [u8] {
    match i % 6 {
        0 | 3 => b"",
        1 | 4 => b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Le",
        2 => {
            b"POST /import?name=huge.db HTTP/1.1\r\nHost: x\r\n\
               Content-Length: 1000000000000000000\r\n\r\nSQLite format 3\0"
        }
        _ => b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    }
}

/// What one flood did to the primary.
struct Flood {
    statuses: std::collections::BTreeMap<u16, usize>,
    peak_fds: u64,
    peak_rss: u64,
}

/// Opens 2,000 hostile connections to the primary at `addr` (process
/// `pid`) from `sources` in turn; while they are open, commits `rows`
/// through the mount and checks that each reaches the replica (and, when
/// `other_client_served`, that another client gets `/info`); then checks
/// that every one of them was answered within the head deadline, closes
/// them and waits for the descriptors and RSS to come back near `base`.
fn flood(
    nodes: (&Node, &Node),
    sources: &[Ipv4Addr],
    rows: std::ops::Range<u32>,
    other_client_served: bool,
    base: (u64, u64),
) -> Flood {
    let (primary, replica) = nodes;
    let pid = primary.pid().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", primary.port).parse().unwrap();
    let db = primary.db("h.db");
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let mut hostile = Vec::with_capacity(2_000);
    for i in 0..2_000 {
        let mut conn = connect_from(sources[i % sources.len()], addr).unwrap();
        // A refused connection may be closed before the bytes go out.
        let _ = conn.write_all(hostile_bytes(i / sources.len()));
        hostile.push(conn);
    }
    let opened_in = started.elapsed();
    assert!(opened_in < Duration::from_secs(60), "{opened_in:?}");

    // While they are open: commits succeed and replicate.
    if other_client_served {
        let (status, text) = request_from(Ipv4Addr::LOCALHOST, addr, GET_INFO);
        assert_eq!(status, 200, "{text}");
    }
    for i in rows.clone() {
        sqlite3_ok(&db, &format!("INSERT INTO t VALUES({i});"));
        wait_caught_up(primary, replica, "h.db");
    }
    assert_eq!(
        sqlite3_ok(&replica.db("h.db"), "SELECT count(*) FROM t;"),
        format!("{}\n", rows.end)
    );

    // Every hostile connection is answered and cut off within the head
    // deadline (plus slack for a slow machine): 503 beyond a cap, 413 for
    // a declared body over the limit, 408 when silent.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let deadline = Instant::now() + HEAD_TIMEOUT + Duration::from_secs(20);
    for conn in &mut hostile {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = status_within(conn, left.max(Duration::from_millis(1)));
        *statuses.entry(status.unwrap_or(1)).or_default() += 1;
    }
    let answered_in = started.elapsed();
    assert_eq!(
        statuses.get(&1),
        None,
        "some were never answered: {statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| [0, 408, 413, 503].contains(s)),
        "{statuses:?}"
    );
    for status in [408, 413, 503] {
        assert!(statuses.contains_key(&status), "no {status}: {statuses:?}");
    }

    // After: everything comes back.
    drop(hostile);
    let (base_fds, base_rss) = base;
    let settle = Instant::now() + Duration::from_secs(30);
    while (fd_count(pid) > base_fds + 20 || rss_kb(pid) > base_rss + 30 * 1024)
        && Instant::now() < settle
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (peak_fds, peak_rss) = sampler.finish();
    let (after_fds, after_rss) = (fd_count(pid), rss_kb(pid));
    eprintln!(
        "{} hostile clients: 2,000 connections opened in {opened_in:?}, all answered \
         after {answered_in:?}: {statuses:?}; primary descriptors {base_fds} -> peak \
         {peak_fds} -> {after_fds}, RSS {base_rss} kB -> peak {peak_rss} kB -> {after_rss} kB",
        sources.len()
    );
    assert!(
        after_fds <= base_fds + 20,
        "{after_fds} descriptors, baseline {base_fds}"
    );
    assert!(
        after_rss <= base_rss + 30 * 1024,
        "RSS {after_rss} kB, baseline {base_rss} kB"
    );
    // The server is still there, and nothing half-imported is left.
    let (status, text) = request_from(Ipv4Addr::LOCALHOST, addr, GET_INFO);
    assert_eq!(status, 200, "{text}");
    let incoming = primary.data.join("incoming");
    let leftovers: Vec<_> = std::fs::read_dir(&incoming)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Flood {
        statuses,
        peak_fds,
        peak_rss,
    }
}

#[test]
fn two_thousand_hostile_connections_take_nothing_down() {
    raise_open_file_limit();
    let dir = temp_dir("hostile-clients");
    let primary = Node::start_in(&dir.path().join("primary"), "");
    let replica = Node::start_in(&dir.path().join("replica"), &replica_yaml(&primary));
    sqlite3_ok(
        &primary.db("h.db"),
        "CREATE TABLE t(x); INSERT INTO t VALUES(0);",
    );
    wait_caught_up(&primary, &replica, "h.db");
    let pid = primary.pid().unwrap();
    let base = (fd_count(pid), rss_kb(pid));

    // One client: it gets its share and no more, and every other client
    // (the replica, an /info) is served throughout.
    let one = flood((&primary, &replica), &[HOSTILE], 1..21, true, base);
    assert!(
        one.peak_fds <= base.0 + MAX_CONNECTIONS_PER_CLIENT as u64 + 40,
        "the primary held {} descriptors (baseline {})",
        one.peak_fds,
        base.0
    );
    assert!(one.statuses[&503] >= 1_000, "{:?}", one.statuses);

    // Forty clients together fill the server: new connections wait for a
    // slot, but the replica's stream and local commits go on, and the
    // server holds no more than its total.
    let many: Vec<Ipv4Addr> = (10..50).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let all = flood((&primary, &replica), &many, 21..41, false, base);
    assert!(
        all.peak_fds <= base.0 + MAX_CONNECTIONS as u64 + 40,
        "the primary held {} descriptors (baseline {})",
        all.peak_fds,
        base.0
    );
    eprintln!(
        "peak RSS: {} kB with one client, {} kB with forty",
        one.peak_rss, all.peak_rss
    );

    // The refusals were logged once, not once each.
    let log = primary.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warnings.len() <= 2, "{warnings:#?}");
    assert!(
        log.contains("too many connections from this address"),
        "{log}"
    );
}
