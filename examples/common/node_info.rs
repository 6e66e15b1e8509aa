//! A litefs node's `GET /info`, for the bench examples (included with
//! `#[path]` by each: examples share no crate of their own).

use std::collections::BTreeMap;
use std::time::Duration;

/// What `GET /info` answers.
#[derive(serde::Deserialize)]
pub struct Info {
    pub primary: bool,
    pub dbs: BTreeMap<String, String>,
}

/// `GET /info` of the node on loopback `port` (5 s at most).
pub fn info(port: u16) -> Result<Info, String> {
    let url = format!("http://127.0.0.1:{port}/info");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let body = agent
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|e| format!("GET {url}: {e}"))?;
    serde_yaml::from_str(&body).map_err(|e| format!("GET {url}: bad answer {body:?}: {e}"))
}
