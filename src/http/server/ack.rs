//! What replicas hold durably: `POST /ack?node=<id>` with a position list
//! (the stream request's format, `wire::format_positions`), sent by a
//! replica after it has queued received LTX files durably
//! (`node/replica.rs`). The primary keeps, per replica node, the newest
//! position of each database it acknowledged and when; `/info` shows them
//! (`litefs status`). Acknowledgements only inform: no commit waits for
//! them.
//!
//! Locks: `Acks` is one mutex, a leaf: taken to record or read, never while
//! anything else is taken.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::conn::Request;
use super::{positions_json, respond_text, Shared};
use crate::http::wire;
use crate::store::Position;

/// How long an acknowledgement is shown after the last one from its node:
/// a replica that stopped acknowledging is gone or no longer follows.
const SHOWN_FOR: Duration = Duration::from_secs(60);

/// The longest node id accepted (16 hex digits).
const MAX_NODE_LEN: usize = 16;

/// One replica node's acknowledgements.
#[derive(Debug, Clone)]
struct Acked {
    /// Where the last one came from.
    peer: SocketAddr,
    /// When the last one came.
    at: Instant,
    /// The newest position acknowledged for each database.
    dbs: BTreeMap<String, Position>,
}

/// Every replica node's acknowledgements, by node id.
#[derive(Debug, Default)]
pub(super) struct Acks(Mutex<BTreeMap<String, Acked>>);

impl Acks {
    fn record(&self, node: &str, peer: SocketAddr, dbs: BTreeMap<String, Position>) {
        let mut acks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = acks.entry(node.to_string()).or_insert_with(|| Acked {
            peer,
            at: Instant::now(),
            dbs: BTreeMap::new(),
        });
        entry.peer = peer;
        entry.at = Instant::now();
        for (name, pos) in dbs {
            let newest = entry.dbs.entry(name).or_insert(pos);
            if pos.txid >= newest.txid {
                *newest = pos;
            }
        }
    }

    /// `[{"node": id, "peer": addr, "age_seconds": f64, "dbs": {name:
    /// "txid/checksum"}}]`, for the nodes heard from within `SHOWN_FOR`.
    pub(super) fn json(&self) -> String {
        let acks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<String> = acks
            .iter()
            .filter(|(_, acked)| acked.at.elapsed() < SHOWN_FOR)
            .map(|(node, acked)| {
                format!(
                    "{{\"node\":{},\"peer\":{},\"age_seconds\":{:.3},\"dbs\":{{{}}}}}",
                    crate::json::string(node),
                    crate::json::string(&acked.peer.to_string()),
                    acked.at.elapsed().as_secs_f64(),
                    positions_json(acked.dbs.iter().map(|(name, pos)| (name.as_str(), *pos)))
                )
            })
            .collect();
        format!("[{}]", entries.join(","))
    }
}

/// Answers `POST /ack`: records what the replica node `node=` holds.
pub(super) fn ack(shared: &Shared, mut request: Request, query: &str) -> u16 {
    let peer = request.peer();
    if !shared.serving.load(std::sync::atomic::Ordering::SeqCst) {
        return respond_text(request, 503, "not the primary", &[]);
    }
    let node = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("node="))
        .unwrap_or("");
    if node.is_empty() || node.len() > MAX_NODE_LEN || !node.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let message = "bad request: `node=` must be the replica's node id (16 hex digits)";
        return respond_text(request, 400, message, &[]);
    }
    let mut body = Vec::new();
    if let Err(err) = std::io::Read::read_to_end(&mut request.body(), &mut body) {
        log::debug!("HTTP server: reading an acknowledgement from {peer} failed: {err}");
        return respond_text(request, 400, "cannot read the request body", &[]);
    }
    match wire::parse_positions(&body) {
        Ok(dbs) => {
            shared.acks.record(node, peer, dbs);
            respond_text(request, 200, "ok", &[])
        }
        Err(msg) => {
            log::debug!("HTTP server: bad acknowledgement from {peer}: {msg:?}");
            respond_text(request, 400, &format!("bad position list: {msg}"), &[])
        }
    }
}
