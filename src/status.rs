//! `litefs status`: what a running node is and holds, asked of its HTTP
//! API (`GET /info`, see `http/server.rs`) with the config's token and
//! CAs, as `litefs import` and `export` do (`transfer.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::transfer::{get, Error, Target};

/// `GET /info`'s answer. Fields a node does not send are left at their
/// defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Info {
    pub primary: bool,
    /// The primary a replica follows.
    pub primary_hostname: Option<String>,
    /// A replica's lag behind its primary, in seconds.
    pub lag_seconds: f64,
    /// Replication streams the node serves.
    pub streams: u64,
    /// Each database's position, `TXID/checksum` in hex.
    pub dbs: BTreeMap<String, String>,
    /// Each database's lag on a replica, in seconds.
    pub db_lag_seconds: BTreeMap<String, f64>,
    /// On a primary: the replicas streaming from it.
    pub replicas: Vec<Replica>,
    /// On a primary: what replica nodes said they hold durably.
    pub acknowledged: Vec<Acknowledged>,
    /// Synchronous replication as the node runs it.
    pub sync: SyncStatus,
    /// The lease: kind, holder, TTL.
    pub lease: Option<LeaseStatus>,
}

/// The lease as a node sees it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// `consul` or `static`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The node holding it (this one while it is primary), when known.
    pub holder: Option<String>,
    /// The Consul session's TTL in seconds; none for a static lease.
    pub ttl_seconds: Option<f64>,
}

/// Synchronous replication (`replication.sync`) on a node.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// How many replicas each commit waits for; 0: asynchronous.
    pub replicas: u32,
    /// Commits stopped waiting after a timeout (`sync-fallback: async`).
    pub degraded: bool,
    /// With a Consul lease: the replica nodes commits wait for, which
    /// failover candidates must be among.
    pub in_sync_set: Option<Vec<String>>,
}

/// What a replica node told the primary it holds durably (`POST /ack`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Acknowledged {
    /// Its node id.
    pub node: String,
    /// Where its last acknowledgement came from.
    pub peer: String,
    /// Seconds since its last acknowledgement.
    pub age_seconds: f64,
    /// Each database's position it holds.
    pub dbs: BTreeMap<String, String>,
}

/// A replica streaming from a primary, as the primary sees it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Replica {
    /// Its address, `host:port` of its connection.
    pub peer: String,
    /// Each database's position the replica listed when it connected or
    /// was sent since (sent is not yet applied).
    pub sent: BTreeMap<String, String>,
}

/// Asks the node at `target` for its status; returns the answer as sent
/// (JSON) and parsed.
pub fn fetch(target: &Target) -> Result<(String, Info), Error> {
    let url = format!("{}/info", target.url);
    let mut body = get(target, &url)?;
    let text = body.read_to_string().map_err(|err| Error::Request {
        url: url.clone(),
        reason: err.to_string(),
    })?;
    // JSON is YAML: no JSON parser needed beside the config's.
    let info = serde_yaml::from_str(&text).map_err(|err| Error::Damaged {
        url,
        reason: format!("not a status: {err}"),
    })?;
    Ok((text, info))
}

/// `info` of the node at `url` for people: a line for the node, one per
/// database, and on a primary one per streaming replica (what it was
/// sent) and one per replica node that acknowledged (what it holds).
pub fn format(url: &str, info: &Info) -> String {
    let mut out = if info.primary {
        format!(
            "{url}: primary, {} replication stream{}\n",
            info.streams,
            if info.streams == 1 { "" } else { "s" }
        )
    } else {
        match &info.primary_hostname {
            Some(host) => format!(
                "{url}: replica of {host}, {:.3} s behind\n",
                info.lag_seconds
            ),
            None => format!("{url}: replica, no primary known\n"),
        }
    };
    if let Some(lease) = &info.lease {
        out.push_str(&format!(
            "  lease: {}, held by {}{}\n",
            lease.kind,
            lease.holder.as_deref().unwrap_or("no one known"),
            lease
                .ttl_seconds
                .map_or(String::new(), |ttl| format!(", session TTL {ttl:.0} s"))
        ));
    }
    if info.dbs.is_empty() {
        out.push_str("  no databases\n");
    }
    let width = info.dbs.keys().map(|name| name.len()).max().unwrap_or(0);
    for (name, pos) in &info.dbs {
        let (txid, checksum) = pos.split_once('/').unwrap_or((pos, ""));
        out.push_str(&format!(
            "  {name:<width$}  TXID {txid}  checksum {checksum}"
        ));
        if !info.primary {
            let lag = info.db_lag_seconds.get(name).copied().unwrap_or(0.0);
            out.push_str(&format!("  {lag:.3} s behind"));
        }
        out.push('\n');
    }
    if info.primary && info.sync.replicas > 0 {
        out.push_str(&format!(
            "  synchronous replication: each commit waits for {} replica{}{}\n",
            info.sync.replicas,
            if info.sync.replicas == 1 { "" } else { "s" },
            match (&info.sync.in_sync_set, info.sync.degraded) {
                (_, true) => "; degraded to asynchronous after a timeout".to_string(),
                (Some(set), false) if set.is_empty() => "; no replica in sync yet".to_string(),
                (Some(set), false) => format!("; in sync: {}", set.join(", ")),
                (None, false) => String::new(),
            }
        ));
    }
    for acked in &info.acknowledged {
        let lacking = not_newest(&info.dbs, &acked.dbs);
        let holds = if lacking.is_empty() {
            "holds the newest of every database".to_string()
        } else {
            format!("lacks the newest of {}", lacking.join(", "))
        };
        out.push_str(&format!(
            "  replica node {} ({}): {holds} ({:.1} s ago)\n",
            acked.node, acked.peer, acked.age_seconds
        ));
    }
    for replica in &info.replicas {
        let behind = not_newest(&info.dbs, &replica.sent);
        if behind.is_empty() {
            out.push_str(&format!("  replica {}: sent everything\n", replica.peer));
        } else {
            out.push_str(&format!(
                "  replica {}: not yet sent the newest of {}\n",
                replica.peer,
                behind.join(", ")
            ));
        }
    }
    out
}

/// The databases of `dbs` (name to position) whose position `have` lacks.
fn not_newest<'a>(
    dbs: &'a BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    dbs.iter()
        .filter(|(name, pos)| have.get(*name) != Some(*pos))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_primary_and_a_replica() {
        let text = r#"{"primary":false,"primary_hostname":"node-a","lag_seconds":0.250,"streams":0,"dbs":{"app.db":"000000000000000c/8ac9ad6990f12445"},"db_lag_seconds":{"app.db":0.250}}"#;
        let info: Info = serde_yaml::from_str(text).unwrap();
        assert_eq!(
            format("http://b:20202", &info),
            "http://b:20202: replica of node-a, 0.250 s behind\n  app.db  TXID \
             000000000000000c  checksum 8ac9ad6990f12445  0.250 s behind\n"
        );
        let info: Info = serde_yaml::from_str(
            r#"{"primary":true,"streams":2,"dbs":{"a.db":"0000000000000002/0000000000000009"},
                "replicas":[{"peer":"10.0.0.2:4000","sent":{"a.db":"0000000000000002/0000000000000009"}},
                            {"peer":"10.0.0.3:4000","sent":{}}]}"#,
        )
        .unwrap();
        assert_eq!(
            format("http://a:20202", &info),
            "http://a:20202: primary, 2 replication streams\n  a.db  TXID 0000000000000002  \
             checksum 0000000000000009\n  replica 10.0.0.2:4000: sent everything\n  replica \
             10.0.0.3:4000: not yet sent the newest of a.db\n"
        );
    }
}
