//! Leader election against a real Consul agent (`consul agent -dev`), plus
//! the static lease and the lease thread's rules checked with a scripted
//! leaser and a fake Consul that answers garbage.

mod common;
#[path = "common/consul.rs"]
mod consul;
#[path = "common/scripted_lease.rs"]
mod scripted_lease;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use litefs::config::{ConsulConfig, LeaseConfig, LeaseKind};
use litefs::fatal::Fatal;
use litefs::lease::{
    leaser_from_config, spawn_lease_thread, ConsulLeaser, Error, Lease, LeaseEvent, LeaseOptions,
    Leaser, PrimaryInfo, StaticLeaser, WATCH_FAILURE_GRACE, WATCH_WAIT,
};

use common::{assert_backoff, free_port};
use consul::ConsulAgent;
use scripted_lease::{gaps, scripted, wait_for_watches, watched, LeaseThread, Script};

/// The smallest TTL Consul accepts; the one every Consul test uses.
const TTL: Duration = Duration::from_secs(10);
const LOCK_DELAY: Duration = Duration::from_secs(1);

fn info(name: &str) -> PrimaryInfo {
    PrimaryInfo {
        hostname: name.to_string(),
        advertise_url: format!("http://{name}:20202"),
    }
}

fn consul_config(url: &str, key: &str) -> ConsulConfig {
    ConsulConfig {
        url: url.to_string(),
        key: key.to_string(),
        ttl: TTL,
        lock_delay: LOCK_DELAY,
    }
}

fn consul_leaser(url: &str, key: &str, name: &str) -> ConsulLeaser {
    ConsulLeaser::new(&consul_config(url, key), info(name))
}

// ---------------------------------------------------------------------------
// ConsulLeaser against a real agent

#[test]
fn two_consul_leasers_share_one_key() {
    let agent = ConsulAgent::start();
    let key = "litefs/share";
    let mut a = consul_leaser(&agent.url, key, "node-a");
    let mut b = consul_leaser(&agent.url, key, "node-b");

    let (nobody, _) = b.primary(0, WATCH_WAIT).unwrap();
    assert_eq!(nobody, None, "no primary before anyone acquires");

    let mut lease_a = a.acquire().unwrap().expect("the first leaser acquires");
    assert_eq!(lease_a.ttl, Some(TTL));
    assert_eq!(b.primary(0, WATCH_WAIT).unwrap().0, Some(info("node-a")));
    assert_eq!(a.primary(0, WATCH_WAIT).unwrap().0, Some(info("node-a")));
    assert!(b.acquire().unwrap().is_none(), "the key is held by a");

    let before = lease_a.renewed_at;
    a.renew(&mut lease_a).unwrap();
    assert!(lease_a.renewed_at > before, "renew records the renewal");

    // A blocking query waits when nothing changes...
    let (_, index) = b.primary(0, WATCH_WAIT).unwrap();
    let started = Instant::now();
    let (same, same_index) = b.primary(index, Duration::from_secs(1)).unwrap();
    let waited = started.elapsed();
    assert_eq!(same, Some(info("node-a")));
    assert_eq!(same_index, index);
    assert!(
        waited >= Duration::from_millis(950),
        "returned after {waited:?}"
    );

    // ...and returns as soon as the key changes.
    let (started_tx, started_rx) = unbounded();
    let watcher = thread::spawn(move || {
        started_tx.send(()).unwrap();
        let answer = b.primary(index, Duration::from_secs(20)).unwrap();
        (answer, Instant::now(), b)
    });
    started_rx.recv().unwrap();
    let released_at = Instant::now();
    a.release(lease_a).unwrap();
    let ((after, new_index), returned_at, mut b) = watcher.join().unwrap();
    assert!(
        returned_at >= released_at,
        "the blocking query ended before the change"
    );
    let latency = returned_at - released_at;
    println!("blocking query returned {latency:?} after the release");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    assert_eq!(after, None, "a released key has no primary");
    assert!(new_index > index);

    // A released key is free at once (no lock delay).
    let lease_b = b
        .acquire()
        .unwrap()
        .expect("b acquires right after the release");
    assert!(released_at.elapsed() < Duration::from_secs(1));
    assert_eq!(a.primary(0, WATCH_WAIT).unwrap().0, Some(info("node-b")));

    // A destroyed session is lost for good.
    let mut stale = lease_b.clone();
    b.release(lease_b).unwrap();
    match b.renew(&mut stale) {
        Err(Error::Lost { .. }) => {}
        other => panic!("renewing a released lease: expected Lost, got {other:?}"),
    }
}

#[test]
fn renew_notices_a_key_deleted_by_hand() {
    let agent = ConsulAgent::start();
    let key = "litefs/deleted";
    let mut a = consul_leaser(&agent.url, key, "node-a");
    let mut lease = a.acquire().unwrap().unwrap();
    let response = ureq::delete(format!("{}/v1/kv/{key}", agent.url))
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    match a.renew(&mut lease) {
        Err(e @ Error::Lost { .. }) => assert!(e.to_string().contains(key), "{e}"),
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[test]
fn a_dead_holders_lease_expires_only_after_the_ttl() {
    let agent = ConsulAgent::start();
    let key = "litefs/expiry";
    let mut a = consul_leaser(&agent.url, key, "node-a");
    let mut b = consul_leaser(&agent.url, key, "node-b");
    let lease_a = a.acquire().unwrap().expect("a acquires");
    let acquired_at = Instant::now();
    // a "dies": it neither renews nor releases.
    drop((a, lease_a));

    let mut index = 0;
    let mut refused = false;
    let lease_b = loop {
        assert!(
            acquired_at.elapsed() < Duration::from_secs(50),
            "b never acquired the expired lease"
        );
        let wait = if refused {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let (primary, new_index) = b.primary(index, wait).unwrap();
        index = new_index;
        if primary.is_some() {
            refused = false;
            continue;
        }
        match b.acquire().unwrap() {
            Some(lease) => break lease,
            None => refused = true, // the lock delay
        }
    };
    let took = acquired_at.elapsed();
    println!(
        "after the holder died, the other node acquired the lease after {took:?} \
         (ttl {TTL:?}, lock delay {LOCK_DELAY:?})"
    );
    assert!(
        took >= TTL,
        "the lease moved after {took:?}, before the TTL"
    );
    assert_eq!(b.primary(0, WATCH_WAIT).unwrap().0, Some(info("node-b")));
    b.release(lease_b).unwrap();
}

// ---------------------------------------------------------------------------
// The lease thread with Consul

#[test]
fn lease_threads_fail_over_on_stop() {
    let agent = ConsulAgent::start();
    let key = "litefs/failover";
    let leaser = |name: &str| Box::new(consul_leaser(&agent.url, key, name));

    let mut a = LeaseThread::start(leaser("node-a"), true);
    assert_eq!(a.next(Duration::from_secs(5)), LeaseEvent::Primary);
    let mut b = LeaseThread::start(leaser("node-b"), true);
    assert_eq!(
        b.next(Duration::from_secs(5)),
        LeaseEvent::Replica(info("node-a"))
    );
    let mut c = LeaseThread::start(leaser("node-c"), false);
    assert_eq!(
        c.next(Duration::from_secs(5)),
        LeaseEvent::Replica(info("node-a"))
    );
    // Renewals and watches go on without repeating events.
    a.assert_quiet(Duration::from_millis(500));
    b.assert_quiet(Duration::ZERO);

    let stop_took = a.stop();
    let stopped_at = Instant::now() - stop_took;
    assert!(
        stop_took < Duration::from_secs(1),
        "stop took {stop_took:?}"
    );
    assert!(a.events.try_recv().is_err(), "no event after Primary");

    assert_eq!(b.next(Duration::from_secs(2)), LeaseEvent::NoPrimary);
    assert_eq!(b.next(Duration::from_secs(2)), LeaseEvent::Primary);
    let failover = stopped_at.elapsed();
    println!("clean failover: the other candidate was primary {failover:?} after the stop");
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );

    // The non-candidate follows the new primary and never takes the lease.
    let mut seen = Vec::new();
    while seen.last() != Some(&LeaseEvent::Replica(info("node-b"))) {
        seen.push(c.next(Duration::from_secs(5)));
    }
    assert!(
        seen.iter().all(|e| e != &LeaseEvent::Primary),
        "a non-candidate became primary: {seen:?}"
    );

    b.stop();
    // b released the key; c (not a candidate) sees no primary.
    assert_eq!(c.next(Duration::from_secs(5)), LeaseEvent::NoPrimary);
    c.assert_quiet(Duration::from_millis(500));
    let took = c.stop();
    assert!(
        took <= WATCH_WAIT + Duration::from_secs(1),
        "stop took {took:?}"
    );
}

#[test]
fn primary_steps_down_when_consul_hangs_and_recovers() {
    let agent = ConsulAgent::start();
    let mut a = LeaseThread::start(
        Box::new(consul_leaser(&agent.url, "litefs/hang", "node-a")),
        true,
    );
    assert_eq!(a.next(Duration::from_secs(5)), LeaseEvent::Primary);

    agent.pause();
    let paused_at = Instant::now();
    // The last renewal was no later than the pause, so the step-down is due
    // within TTL/2 of it, even though every request now hangs.
    assert_eq!(
        a.next(TTL / 2 + Duration::from_secs(1)),
        LeaseEvent::NoPrimary
    );
    let took = paused_at.elapsed();
    println!("with Consul hung, the primary stepped down {took:?} after the last chance to renew");
    assert!(
        took <= TTL / 2 + Duration::from_millis(300),
        "took {took:?}"
    );

    agent.resume();
    // Once Consul answers again, the old session is released and the
    // candidate takes the lease anew (never following itself as a replica).
    assert_eq!(a.next(Duration::from_secs(15)), LeaseEvent::Primary);
    assert!(a.stop() < Duration::from_secs(2));
}

#[test]
fn consul_unreachable_is_an_error_not_a_panic() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut leaser = consul_leaser(&url, "litefs/down", "node-a");
    let err = leaser.acquire().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Request { .. }), "{err:?}");
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains("create a Consul session"), "{message}");
    let err = leaser.primary(0, WATCH_WAIT).unwrap_err();
    assert!(err.to_string().contains("read the lease key"), "{err}");

    // A candidate and a follower, side by side.
    let threads = [true, false].map(|candidate| {
        let (leaser, watches) = watched(Box::new(consul_leaser(&url, "litefs/down", "node-a")));
        (LeaseThread::start(leaser, candidate), watches)
    });
    for (mut thread, watches) in threads {
        assert_eq!(thread.next(Duration::from_secs(2)), LeaseEvent::NoPrimary);
        // It keeps retrying, without repeating the event or ending, also
        // once the failures have lasted WATCH_FAILURE_GRACE (when a
        // failing watch reports NoPrimary even after another event).
        quiet_past_the_grace_then_stops(&mut thread, &watches);
    }
}

// ---------------------------------------------------------------------------
// A fake Consul that answers garbage

/// An HTTP server that answers every request with one fixed status and body
/// (and `X-Consul-Index: 7`), one connection at a time, each closed after
/// its answer.
struct FakeConsul {
    url: String,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl FakeConsul {
    fn start(status: u16, body: &'static str) -> FakeConsul {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let stop = stop.clone();
            let requests = requests.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    answer(conn, status, body, &requests);
                }
            })
        };
        FakeConsul {
            url: format!("http://{addr}"),
            addr,
            stop,
            requests,
            handle: Some(handle),
        }
    }
}

/// Reads one request (head and `Content-Length` body) from `conn`, notes
/// its `METHOD URL` in `requests`, then answers it: noted first, so a
/// caller that has its answer finds it noted.
fn answer(
    conn: std::net::TcpStream,
    status: u16,
    body: &str,
    requests: &Mutex<Vec<String>>,
) -> Option<()> {
    use std::io::{BufRead, Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = std::io::BufReader::new(&conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().ok()?;
            }
        }
    }
    std::io::copy(&mut reader.take(len), &mut std::io::sink()).ok()?;
    let mut parts = request_line.split(' ');
    let line = format!("{} {}", parts.next()?, parts.next()?);
    requests.lock().unwrap().push(line);
    let _ = (&conn).write_all(
        format!(
            "HTTP/1.1 {status} Whatever\r\nX-Consul-Index: 7\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(())
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn some_lease() -> Lease {
    Lease {
        session: "0b4c6b6e-0000-0000-0000-000000000000".to_string(),
        ttl: Some(TTL),
        renewed_at: Instant::now(),
    }
}

#[test]
fn garbage_json_is_a_clear_error() {
    let fake = FakeConsul::start(200, "<html>this is not json {");
    let mut leaser = consul_leaser(&fake.url, "litefs/garbage", "node-a");

    let err = leaser.acquire().unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("create a Consul session"), "{message}");
    assert!(message.contains("this is not json"), "{message}");

    let err = leaser.primary(0, WATCH_WAIT).unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err:?}");
    let err = leaser.renew(&mut some_lease()).unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err:?}");
}

#[test]
fn server_errors_are_clear_errors() {
    let fake = FakeConsul::start(500, "rpc error making call: No cluster leader");
    let mut leaser = consul_leaser(&fake.url, "litefs/500", "node-a");

    let err = leaser.acquire().unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err:?}");
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("No cluster leader"), "{message}");

    let err = leaser.primary(3, Duration::from_millis(10)).unwrap_err();
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err:?}");
    let err = leaser.renew(&mut some_lease()).unwrap_err();
    assert!(
        matches!(err, Error::Status { status: 500, .. }),
        "a 500 is not a lost lease: {err:?}"
    );
    // Releasing tries the key, then the session, and reports the failure.
    assert!(leaser.release(some_lease()).is_err());
    let requests = fake.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("?release="))
            && requests.iter().any(|r| r.contains("/v1/session/destroy/")),
        "{requests:?}"
    );
}

#[test]
fn bad_kv_values_are_clear_errors() {
    let fake = FakeConsul::start(
        200,
        r#"[{"Key":"litefs/bad","Value":"!!notbase64!!","Session":"s1","ModifyIndex":7}]"#,
    );
    let mut leaser = consul_leaser(&fake.url, "litefs/bad", "node-a");
    let err = leaser.primary(0, WATCH_WAIT).unwrap_err();
    assert!(err.to_string().contains("not base64"), "{err}");
}

#[test]
fn lease_thread_survives_garbage() {
    let fake = FakeConsul::start(200, "{{{ garbage");
    let (leaser, watches) = watched(Box::new(consul_leaser(
        &fake.url,
        "litefs/garbage",
        "node-a",
    )));
    let mut thread = LeaseThread::start(leaser, true);
    assert_eq!(thread.next(Duration::from_secs(2)), LeaseEvent::NoPrimary);
    // No event again, also once the failures have lasted
    // WATCH_FAILURE_GRACE.
    quiet_past_the_grace_then_stops(&mut thread, &watches);
    // Retries back off instead of hammering the server: the pauses
    // between watches double up to the cap, and the server saw only the
    // attempt to take the lease besides them.
    assert_backoff(&gaps(&watches), LeaseOptions::new(true).max_backoff);
    let requests = fake.requests.lock().unwrap().len();
    let watches = watches.lock().unwrap().len();
    assert!(
        requests <= watches + 2,
        "{requests} requests for {watches} watches"
    );
}

// ---------------------------------------------------------------------------
// The lease thread's rules, with a scripted leaser

#[test]
fn holder_renews_and_steps_down_within_half_the_ttl_when_renewals_fail() {
    let ttl = Duration::from_millis(1200);
    let (leaser, script) = scripted(
        ttl,
        Script {
            grant: true,
            ..Script::default()
        },
    );
    let mut thread = LeaseThread::start(leaser, true);
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::Primary);
    // Healthy renewals every TTL/3 keep it primary, silently.
    thread.assert_quiet(ttl * 2);
    let renews = script.lock().unwrap().renews;
    assert!((4..=8).contains(&renews), "{renews} renewals in two TTLs");

    // Now every renewal fails, and nobody else shows up as primary.
    let failing_from = Instant::now();
    {
        let mut script = script.lock().unwrap();
        script.renew_fails = Some(false);
        script.grant = false;
    }
    assert_eq!(thread.next(ttl), LeaseEvent::NoPrimary);
    let took = failing_from.elapsed();
    assert!(
        took <= ttl / 2 + Duration::from_millis(100),
        "took {took:?}"
    );
    thread.assert_quiet(Duration::from_millis(300));
    thread.stop();
    assert_eq!(
        script.lock().unwrap().releases,
        1,
        "the lease it stepped down from is released"
    );
}

#[test]
fn holder_steps_down_at_once_when_the_lease_is_lost_and_follows_the_new_primary() {
    let (leaser, script) = scripted(
        Duration::from_millis(600),
        Script {
            grant: true,
            ..Script::default()
        },
    );
    let mut thread = LeaseThread::start(leaser, true);
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::Primary);
    {
        let mut script = script.lock().unwrap();
        script.renew_fails = Some(true);
        script.grant = false;
        script.holder = Some(info("node-b"));
    }
    // The next renewal (TTL/3) finds the lease lost.
    assert_eq!(
        thread.next(Duration::from_millis(400)),
        LeaseEvent::NoPrimary
    );
    assert_eq!(
        thread.next(Duration::from_secs(1)),
        LeaseEvent::Replica(info("node-b"))
    );
    // The same answer again and again (returned without waiting) produces
    // one event only.
    thread.assert_quiet(Duration::from_millis(500));
    thread.stop();
    assert_eq!(
        script.lock().unwrap().releases,
        0,
        "a lost lease is not released"
    );
}

#[test]
fn dropping_the_receiver_stops_the_thread() {
    let (leaser, script) = scripted(
        Duration::from_secs(10),
        Script {
            grant: true,
            ..Script::default()
        },
    );
    let (tx, rx) = unbounded();
    let handle = spawn_lease_thread(leaser, true, tx, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!(rx.recv().unwrap(), LeaseEvent::Primary);
    script.lock().unwrap().renew_fails = Some(true);
    drop(rx);
    // The lease is lost at the next renewal; sending NoPrimary then fails,
    // which ends the thread.
    handle.join().unwrap();
}

// ---------------------------------------------------------------------------
// StaticLeaser

#[test]
fn static_candidate_is_always_primary() {
    let mut leaser = StaticLeaser::new(info("me"), true);
    let mut lease = leaser.acquire().unwrap().expect("the candidate holds it");
    assert_eq!(lease.ttl, None);
    assert_eq!(lease.step_down_at(), None);
    leaser.renew(&mut lease).unwrap();
    assert_eq!(
        leaser.primary(0, WATCH_WAIT).unwrap(),
        (Some(info("me")), 1)
    );
    leaser.release(lease).unwrap();

    let mut thread = LeaseThread::start(Box::new(StaticLeaser::new(info("me"), true)), true);
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::Primary);
    thread.assert_quiet(Duration::from_millis(300));
    let took = thread.stop();
    assert!(took < Duration::from_millis(500), "stop took {took:?}");
}

#[test]
fn static_replica_follows_the_configured_primary() {
    let mut leaser = StaticLeaser::new(info("primary"), false);
    assert!(leaser.acquire().unwrap().is_none());
    let started = Instant::now();
    assert_eq!(
        leaser.primary(0, WATCH_WAIT).unwrap(),
        (Some(info("primary")), 1)
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "index 0 answers at once"
    );
    // The answer never changes: the driver waits for it itself, where it
    // sees its stop flag, so the leaser answers at once.
    assert!(leaser.answer_never_changes());
    let started = Instant::now();
    assert_eq!(
        leaser.primary(1, Duration::from_secs(10)).unwrap(),
        (Some(info("primary")), 1)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the static leaser does not block"
    );

    let config = LeaseConfig {
        kind: LeaseKind::Static,
        candidate: false,
        hostname: "primary".to_string(),
        advertise_url: "http://primary:20202".to_string(),
        consul: None,
        reconnect_delay: None,
        demote_delay: Duration::ZERO,
    };
    let mut thread = LeaseThread::start(leaser_from_config(&config), false);
    assert_eq!(
        thread.next(Duration::from_secs(1)),
        LeaseEvent::Replica(info("primary"))
    );
    thread.assert_quiet(Duration::from_millis(300));
    let took = thread.stop();
    assert!(
        took <= WATCH_WAIT + Duration::from_millis(500),
        "stop took {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Options from the config: lease.demote-delay, lease.reconnect-delay,
// exit-on-error

#[test]
fn a_node_that_lost_the_lease_waits_the_demote_delay_before_taking_it_again() {
    let (leaser, script) = scripted(
        Duration::from_millis(600),
        Script {
            grant: true,
            ..Script::default()
        },
    );
    let demote_delay = Duration::from_millis(1500);
    let mut thread = LeaseThread::start_with(
        leaser,
        LeaseOptions {
            demote_delay,
            ..LeaseOptions::new(true)
        },
    );
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::Primary);
    script.lock().unwrap().renew_fails = Some(true);
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::NoPrimary);
    let lost_at = Instant::now();
    {
        let mut script = script.lock().unwrap();
        script.renew_fails = None;
        script.acquires = 0;
    }
    // The key is free all along, yet the node keeps off it for the delay.
    assert_eq!(thread.next(Duration::from_secs(4)), LeaseEvent::Primary);
    let took = lost_at.elapsed();
    assert!(
        took >= demote_delay - Duration::from_millis(50),
        "took the lease again after {took:?}"
    );
    assert!(
        took <= demote_delay + Duration::from_millis(700),
        "took {took:?}"
    );
    assert_eq!(script.lock().unwrap().acquires, 1, "no attempt before");
    thread.stop();
}

#[test]
fn reconnect_delay_caps_the_pause_between_retries_to_consul() {
    // The pauses between the first `count` watches, every one failing.
    let pauses = |max_backoff: Duration, count: usize| {
        let (leaser, _script) = scripted(
            Duration::from_secs(10),
            Script {
                watch_fails: Some(500),
                ..Script::default()
            },
        );
        let (leaser, watches) = watched(leaser);
        let started = Instant::now();
        let mut thread = LeaseThread::start_with(
            leaser,
            LeaseOptions {
                max_backoff,
                ..LeaseOptions::new(false)
            },
        );
        wait_for_watches(&watches, started, count, Duration::from_secs(20));
        thread.stop();
        gaps(&watches)[..count - 1].to_vec()
    };
    // 100ms, then 150ms again and again.
    let short = Duration::from_millis(150);
    assert_backoff(&pauses(short, 10), short);
    // The default doubles up to 2 s: 100, 200, 400, 800 ms so far, far
    // past 150ms.
    let default = LeaseOptions::new(false).max_backoff;
    assert_eq!(default, Duration::from_secs(2));
    assert_backoff(&pauses(default, 5), default);
}

#[test]
fn exit_on_error_reports_a_lost_lease_and_a_refusal_by_consul() {
    let (leaser, script) = scripted(
        Duration::from_millis(600),
        Script {
            grant: true,
            ..Script::default()
        },
    );
    let (fatal, reports) = Fatal::channel();
    let mut thread = LeaseThread::start_with(
        leaser,
        LeaseOptions {
            fatal,
            ..LeaseOptions::new(true)
        },
    );
    assert_eq!(thread.next(Duration::from_secs(1)), LeaseEvent::Primary);
    // Healthy renewals are not reported: three have been made and their
    // outcome handled once the fourth starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while script.lock().unwrap().renews < 4 {
        assert!(Instant::now() < deadline, "no 4 renewals within 5 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Ok(report) = reports.try_recv() {
        panic!("reported: {report}");
    }
    script.lock().unwrap().renew_fails = Some(true);
    let report = reports.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(report.contains("lost the lease"), "{report}");
    thread.stop();

    // A node that is refused by Consul (ACLs) cannot fix that by retrying.
    let (leaser, _script) = scripted(
        Duration::from_secs(10),
        Script {
            watch_fails: Some(403),
            ..Script::default()
        },
    );
    let (fatal, reports) = Fatal::channel();
    let mut thread = LeaseThread::start_with(
        leaser,
        LeaseOptions {
            fatal,
            ..LeaseOptions::new(false)
        },
    );
    let report = reports.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(report.contains("403") && report.contains("ACL"), "{report}");
    thread.stop();

    // With exit-on-error too, a 500 is never fatal: three failed watches
    // handled (the fourth has started), nothing reported.
    let (leaser, _script) = scripted(
        Duration::from_secs(10),
        Script {
            watch_fails: Some(500),
            ..Script::default()
        },
    );
    let (leaser, watches) = watched(leaser);
    let (fatal, reports) = Fatal::channel();
    let started = Instant::now();
    let mut thread = LeaseThread::start_with(
        leaser,
        LeaseOptions {
            fatal,
            ..LeaseOptions::new(false)
        },
    );
    wait_for_watches(&watches, started, 4, Duration::from_secs(5));
    if let Ok(report) = reports.try_recv() {
        panic!("reported: {report}");
    }
    thread.stop();
}

/// The lease thread, after its first event, sends none and keeps running
/// until two watches have started past WATCH_FAILURE_GRACE (so the first
/// one's outcome was sent), then stops promptly. `watches` holds each
/// watch's start.
fn quiet_past_the_grace_then_stops(thread: &mut LeaseThread, watches: &Mutex<Vec<Instant>>) {
    let first = watches.lock().unwrap()[0];
    wait_for_watches(
        watches,
        first + WATCH_FAILURE_GRACE,
        2,
        WATCH_FAILURE_GRACE * 3,
    );
    thread.assert_no_event();
    assert!(!thread.handle.as_ref().unwrap().is_finished());
    let took = thread.stop();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
}
