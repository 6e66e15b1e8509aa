//! The step-down workload: the recorded node is the primary by a Consul
//! lease, with a standby candidate beside it (off the recorded disk). It
//! commits in WAL mode (FULL); then its Consul session is ended, so it
//! loses the lease and steps down (the WAL folded into the database file,
//! the companions sealed) while the standby takes over; the standby's
//! commits then reach it as a replica.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::consul::Consul;
use crate::node::Node;
use crate::node_info;
use crate::recorder::{Mark, Recorder};
use crate::workloads::{caught_up, insert_batch, DbSpec, Nodes, Workload};

/// The lease's key in Consul.
const KEY: &str = "litefs/powerloss";
/// How long the lease may take to move.
const MOVE_DEADLINE: Duration = Duration::from_secs(60);

fn lease_yaml(hostname: &str, port: u16, consul_url: &str) -> String {
    format!(
        "lease:\n  type: consul\n  candidate: true\n  hostname: {hostname}\n  \
         advertise-url: \"http://127.0.0.1:{port}\"\n  consul:\n    url: \"{consul_url}\"\n    \
         key: \"{KEY}\"\n    ttl: 10s\n    lock-delay: 1s\n"
    )
}

/// Starts Consul, the recorded node (data in `data`) until it is the
/// primary, then the standby.
pub fn start(bin: &Path, work: &Path, data: &Path) -> Result<Nodes, String> {
    let consul = Consul::start(&work.join("consul"))?;
    let recorded = Node::start_with(bin, &work.join("recorded-node"), data, |port| {
        lease_yaml("recorded", port, &consul.url)
    })?;
    wait_role(&recorded, true)?;
    let standby_dir = work.join("standby");
    let standby = Node::start_with(bin, &standby_dir, &standby_dir.join("data"), |port| {
        lease_yaml("standby", port, &consul.url)
    })?;
    wait_role(&standby, false)?;
    Ok(Nodes {
        recorded,
        primary: None,
        standby: Some(standby),
        bin: bin.to_path_buf(),
        work: work.to_path_buf(),
        consul: Some(consul),
    })
}

/// Polls `GET /info` until `node` is (or is not) the primary.
fn wait_role(node: &Node, primary: bool) -> Result<(), String> {
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        if node_info::info(node.port()).is_ok_and(|i| i.primary == primary) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} is not {} after {MOVE_DEADLINE:?}",
                node.url(),
                if primary { "the primary" } else { "a replica" }
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ten commits on the recorded primary, the step-down, five on the new
/// primary, and the recorded node caught up with them.
pub fn run(nodes: &Nodes, recorder: &Recorder) -> Result<(), String> {
    let w = Workload::StepDown;
    let spec = DbSpec::new("app.db", 1);
    let (Some(consul), Some(standby)) = (&nodes.consul, &nodes.standby) else {
        return Err("the step-down workload needs Consul and a standby".into());
    };
    let conn = w.open(&nodes.recorded.mount, &spec.name)?;
    for n in 1..=10 {
        w.commit(&conn, &spec, n, recorder)?;
    }
    // The standby has every commit before it takes over: what replication
    // may lose in a failover is not what this workload is about.
    caught_up(&nodes.recorded, standby, &spec.name)?;
    // Ended sessions until the standby holds the lease (the old primary,
    // a candidate too, could take it back first).
    let deadline = Instant::now() + MOVE_DEADLINE;
    while !node_info::info(standby.port()).is_ok_and(|i| i.primary) {
        if Instant::now() > deadline {
            return Err(format!(
                "the standby is not primary after {MOVE_DEADLINE:?}"
            ));
        }
        if node_info::info(nodes.recorded.port()).is_ok_and(|i| i.primary) {
            let _ = consul.end_session_of(KEY);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_role(&nodes.recorded, false)?;
    // The role changes first; the WAL is folded just after.
    let folded = "moved the WAL into the database file at step-down";
    let deadline = Instant::now() + MOVE_DEADLINE;
    while !nodes.recorded.log_text().contains(folded) {
        if Instant::now() > deadline {
            return Err(format!(
                "the step-down did not fold the WAL:\n{}",
                nodes.recorded.log_tail(30)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    let conn = w.open(&standby.mount, &spec.name)?;
    for n in 11..=15 {
        insert_batch(&conn, &spec, n).map_err(|e| format!("app.db on the standby: {n}: {e}"))?;
        // The recorded node promises nothing of these: it is a replica.
        recorder.mark(Mark::Committed {
            db: spec.key.clone(),
            n,
            durable: false,
        })?;
    }
    caught_up(standby, &nodes.recorded, &spec.name)
}
