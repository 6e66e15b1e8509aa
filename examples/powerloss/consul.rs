//! A Consul dev agent for the step-down workload, on fresh loopback ports,
//! and the one call the workload makes of it: ending the primary's
//! session, which takes the lease from it. Dropping it kills the agent.
//!
//! The binary is `$LITEFS_CONSUL`, else `.local/consul/usr/bin/consul`
//! (from `scripts/setup.sh`), else `consul` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Consul {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Consul {
    /// Starts `consul agent -dev` logging to `dir/consul.log` and waits
    /// until it has a leader and creates sessions. Ports are free when
    /// chosen, not always when the agent binds them: one that was taken
    /// in between makes the agent exit, and it is started again on new
    /// ports, a few times.
    pub fn start(dir: &Path) -> Result<Consul, String> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Consul::start_once(dir) {
                Err(e) if tries < 5 && e.contains("address already in use") => {}
                other => return other,
            }
        }
    }

    fn start_once(dir: &Path) -> Result<Consul, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("consul.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let http_port = crate::node::free_port()?;
        let port = |p: Result<u16, String>| p.map(|p| p.to_string());
        let child = Command::new(binary())
            .args([
                "agent",
                "-dev",
                "-client",
                "127.0.0.1",
                "-bind",
                "127.0.0.1",
            ])
            .args(["-node", &format!("powerloss-{http_port}")])
            .args(["-http-port", &http_port.to_string()])
            .args(["-server-port", &port(crate::node::free_port())?])
            .args(["-serf-lan-port", &port(crate::node::free_port())?])
            .args([
                "-serf-wan-port",
                "-1",
                "-dns-port",
                "-1",
                "-grpc-port",
                "-1",
            ])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| {
                format!(
                    "start {} ({e}); run scripts/setup.sh to install Consul",
                    binary().display()
                )
            })?;
        let mut consul = Consul {
            child,
            url: format!("http://127.0.0.1:{http_port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !consul.ready() {
            if let Ok(Some(status)) = consul.child.try_wait() {
                return Err(format!(
                    "consul exited with {status}: {}",
                    consul.log_text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("consul not ready in 30 s: {}", consul.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(consul)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ready(&self) -> bool {
        let created = agent()
            .put(format!("{}/v1/session/create", self.url))
            .send("{\"TTL\": \"10s\"}");
        created.is_ok_and(|r| r.status() == 200)
    }

    /// Ends the session that holds `key`: its holder loses the lease at
    /// its next renewal and steps down.
    pub fn end_session_of(&self, key: &str) -> Result<(), String> {
        let url = format!("{}/v1/kv/{key}", self.url);
        let body = agent()
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .map_err(|e| format!("GET {url}: {e}"))?;
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "Session")]
            session: Option<String>,
        }
        let entries: Vec<Entry> =
            serde_yaml::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))?;
        let session = entries
            .into_iter()
            .find_map(|e| e.session)
            .ok_or_else(|| format!("{key} is not held: {body}"))?;
        let url = format!("{}/v1/session/destroy/{session}", self.url);
        agent()
            .put(&url)
            .send_empty()
            .map_err(|e| format!("PUT {url}: {e}"))?;
        Ok(())
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LITEFS_CONSUL") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/consul/usr/bin/consul");
    if local.exists() {
        return local;
    }
    PathBuf::from("consul")
}
