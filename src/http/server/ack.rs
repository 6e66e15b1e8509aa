//! What replicas hold durably: `POST /ack?node=<id>` with a position list
//! (the stream request's format, `wire::format_positions`), sent by a
//! replica after it has queued received LTX files durably
//! (`node/replica.rs`). The primary keeps, per replica node, the newest
//! position of each database it acknowledged and when; `/info` shows them
//! (`litefs status`), and synchronous commits wait for them: both live in
//! the store (`store/acks.rs`).

use super::conn::Request;
use super::{positions_json, respond_text, Shared};
use crate::http::wire;

/// The longest node id accepted (16 hex digits).
const MAX_NODE_LEN: usize = 16;

/// `[{"node": id, "peer": addr, "age_seconds": f64, "in_sync": bool, "dbs":
/// {name: "txid/checksum"}}]`, for the nodes heard from lately
/// (`Acks::recent`); `in_sync`: the node holds the newest position of every
/// database.
pub(super) fn json(shared: &Shared) -> String {
    let store = &shared.store;
    let in_sync = store.acks().in_sync(&store.positions());
    let entries: Vec<String> = store
        .acks()
        .recent()
        .into_iter()
        .map(|acked| {
            format!(
                "{{\"node\":{},\"peer\":{},\"age_seconds\":{:.3},\"in_sync\":{},\"dbs\":{{{}}}}}",
                crate::json::string(&acked.node),
                crate::json::string(&acked.peer.to_string()),
                acked.age.as_secs_f64(),
                in_sync.contains(&acked.node),
                positions_json(acked.dbs.iter().map(|(name, pos)| (name.as_str(), *pos)))
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// The replica's node id in a request's query (`node=`, 16 hex digits),
/// if it is there and well formed.
pub(super) fn node_id(query: &str) -> Option<&str> {
    let node = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("node="))?;
    (!node.is_empty() && node.len() <= MAX_NODE_LEN && node.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(node)
}

/// Answers `POST /ack`: records what the replica node `node=` holds.
pub(super) fn ack(shared: &Shared, mut request: Request, query: &str) -> u16 {
    let peer = request.peer();
    if !shared.serving.load(std::sync::atomic::Ordering::SeqCst) {
        return respond_text(request, 503, "not the primary", &[]);
    }
    let Some(node) = node_id(query) else {
        let message = "bad request: `node=` must be the replica's node id (16 hex digits)";
        return respond_text(request, 400, message, &[]);
    };
    let mut body = Vec::new();
    if let Err(err) = std::io::Read::read_to_end(&mut request.body(), &mut body) {
        log::debug!("HTTP server: reading an acknowledgement from {peer} failed: {err}");
        return respond_text(request, 400, "cannot read the request body", &[]);
    }
    match wire::parse_positions(&body) {
        Ok(dbs) => {
            let store = &shared.store;
            store.acks().record(node, peer, dbs, &|| store.positions());
            respond_text(request, 200, "ok", &[])
        }
        Err(msg) => {
            log::debug!("HTTP server: bad acknowledgement from {peer}: {msg:?}");
            respond_text(request, 400, &format!("bad position list: {msg}"), &[])
        }
    }
}

/// `{"replicas": N, "degraded": bool, "in_sync_set": [id, ...] or null}`:
/// synchronous replication as this node runs it (`replication.sync`; the
/// in-sync set published with a Consul lease).
pub(super) fn sync_json(shared: &Shared) -> String {
    let (replicas, degraded, members) = shared.store.acks().sync_status();
    let set = match members {
        Some(members) => format!(
            "[{}]",
            members
                .iter()
                .map(|node| crate::json::string(node))
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => "null".to_string(),
    };
    format!("{{\"replicas\":{replicas},\"degraded\":{degraded},\"in_sync_set\":{set}}}")
}
