//! A real Consul agent for tests: `consul agent -dev` on free loopback
//! ports, ready when it has elected itself leader and accepts sessions.
//! Dropping the guard kills the agent by its pid (also when a test panics).
//!
//! The binary is `$LITEFS_CONSUL`, else the one `scripts/setup.sh` unpacks
//! into `.local/consul/usr/bin/consul`, else `consul` on `PATH`.
//!
//! Include it with `#[path = "common/consul.rs"] mod consul;` beside
//! `mod common;`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

/// How long the agent may take to become ready.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One running `consul agent -dev`.
pub struct ConsulAgent {
    child: Child,
    /// `http://127.0.0.1:<port>`, the HTTP API.
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsulAgent {
    /// Starts an agent and waits until it answers and accepts sessions.
    ///
    /// `free_port`'s ports are free when chosen, not necessarily when the
    /// agent binds them (tests running beside this one bind ports too):
    /// an agent that exits because a port was taken is started again on
    /// new ports, a few times.
    pub fn start() -> ConsulAgent {
        const TRIES: u32 = 5;
        for attempt in 1..=TRIES {
            let mut agent = ConsulAgent::spawn();
            match agent.wait_ready() {
                Ok(()) => return agent,
                Err(log) if attempt < TRIES && log.contains("address already in use") => {}
                Err(log) => panic!("consul exited early:\n{log}"),
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Starts `consul agent -dev` on fresh loopback ports.
    fn spawn() -> ConsulAgent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("consul.log");
        let http_port = free_port();
        let server_port = free_port();
        let serf_lan_port = free_port();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(consul_binary())
            .args([
                "agent",
                "-dev",
                "-client",
                "127.0.0.1",
                "-bind",
                "127.0.0.1",
            ])
            .args(["-node", &format!("litefs-test-{http_port}")])
            .args(["-http-port", &http_port.to_string()])
            .args(["-server-port", &server_port.to_string()])
            .args(["-serf-lan-port", &serf_lan_port.to_string()])
            .args([
                "-serf-wan-port",
                "-1",
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/setup.sh to install Consul",
                    consul_binary().display()
                )
            });
        ConsulAgent {
            child,
            url: format!("http://127.0.0.1:{http_port}"),
            log,
            _dir: dir,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the agent (SIGSTOP): connections are accepted by the kernel
    /// but never answered, like a hung Consul.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws an agent frozen by [`ConsulAgent::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The end of the agent's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it is not reaped before
        // drop, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.child.id());
    }

    /// Polls until the agent has a leader and creates sessions (the node
    /// must be registered first); `Err` with the end of its log when it
    /// exited instead.
    fn wait_ready(&mut self) -> Result<(), String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("({status})\n{}", self.log_tail()));
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "consul at {} not ready after {START_DEADLINE:?}:\n{}",
                    self.url,
                    self.log_tail()
                );
            }
            if self.session_works(&agent) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn session_works(&self, agent: &ureq::Agent) -> bool {
        let leader = agent
            .get(format!("{}/v1/status/leader", self.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if leader.trim().trim_matches('"').is_empty() {
            return false;
        }
        let created = agent
            .put(format!("{}/v1/session/create", self.url))
            .send("{\"TTL\": \"10s\"}")
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|mut r| r.body_mut().read_to_string().ok());
        let Some(body) = created else {
            return false;
        };
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let Ok(created) = serde_yaml::from_str::<Created>(&body) else {
            return false;
        };
        let _ = agent
            .put(format!("{}/v1/session/destroy/{}", self.url, created.id))
            .send_empty();
        true
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Consul binary to run.
pub fn consul_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LITEFS_CONSUL") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/consul/usr/bin/consul");
    if local.exists() {
        return local;
    }
    PathBuf::from("consul")
}
