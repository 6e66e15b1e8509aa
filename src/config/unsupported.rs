//! Go LiteFS (v0.5.14) keys for features litefs does not have. Each is
//! refused by name, with one line saying what to do instead, so a config
//! written for the Go LiteFS never silently loses a setting. A key whose
//! value turns its feature off (`false`, an empty string or list, or no
//! value) asks for what litefs does anyway and is accepted.

use std::path::Path;

use serde_yaml::Value;

use super::raw::RawFile;
use super::Error;

const PROXY: (&str, &str) = (
    "the HTTP proxy (`proxy`)",
    "send writes to the primary yourself (on a replica, `<mount>/.primary` names it) or \
     put a proxy of your own in front; remove the `proxy` block",
);
const BACKUP: (&str, &str) = (
    "backups to LiteFS Cloud or a file (`backup`)",
    "back a database up from any node with `sqlite3 <mount>/<db> \".backup FILE\"`; \
     remove the `backup` block",
);
const TRACING: (&str, &str) = (
    "the trace log (`tracing`)",
    "`log.debug: true` (or RUST_LOG=debug) logs every replication step; remove the \
     `tracing` block",
);

/// Refuses the first unsupported key that asks for its feature.
pub(super) fn check(raw: &RawFile, source: &Path) -> Result<(), Error> {
    let mut keys: Vec<(&str, Option<&Value>, (&str, &str))> = vec![
        (
            "skip-sync",
            raw.skip_sync.as_ref(),
            (
                "starting before the node has synced with the cluster",
                "exec starts once the node is ready (`exec-wait`); remove the key or set it \
                 to false",
            ),
        ),
        (
            "strict-verify",
            raw.strict_verify.as_ref(),
            (
                "re-reading the whole database after every transaction",
                "litefs checks every LTX file's checksums and keeps a rolling database \
                 checksum; check a database file by hand with `litefs ltx checksum`; remove \
                 the key or set it to false",
            ),
        ),
    ];
    if let Some(data) = &raw.data {
        keys.push((
            "data.compress",
            data.compress.as_ref(),
            (
                "compressed LTX files",
                "litefs writes LTX files uncompressed (the format other tools read); remove \
                 the key or set it to false",
            ),
        ));
    }
    if let Some(http) = &raw.http {
        keys.push((
            "http.snapshot-timeout",
            http.snapshot_timeout.as_ref(),
            (
                "a time limit on sending a snapshot",
                "a snapshot streams for as long as it takes, and a replica gives up only on a \
                 link silent for 5 s; remove the key",
            ),
        ));
    }
    if let Some(lease) = &raw.lease {
        keys.push((
            "lease.promote",
            lease.promote.as_ref(),
            (
                "taking the lease over from a running primary",
                "a candidate takes the lease when the primary stops, and SIGTERM makes a \
                 primary release it at once; remove the key or set it to false",
            ),
        ));
        keys.push((
            "lease.databases",
            lease.databases.as_ref(),
            (
                "replicating only some databases",
                "every node replicates every database on the mount; keep databases that \
                 must not replicate outside it, and remove the key",
            ),
        ));
    }
    if let Some(proxy) = &raw.proxy {
        for (key, value) in [
            ("proxy.addr", &proxy.addr),
            ("proxy.target", &proxy.target),
            ("proxy.db", &proxy.db),
            ("proxy.max-lag", &proxy.max_lag),
            ("proxy.debug", &proxy.debug),
            ("proxy.passthrough", &proxy.passthrough),
            ("proxy.always-forward", &proxy.always_forward),
            (
                "proxy.primary-redirect-timeout",
                &proxy.primary_redirect_timeout,
            ),
            ("proxy.read-timeout", &proxy.read_timeout),
            ("proxy.read-header-timeout", &proxy.read_header_timeout),
            ("proxy.write-timeout", &proxy.write_timeout),
            ("proxy.idle-timeout", &proxy.idle_timeout),
        ] {
            keys.push((key, value.as_ref(), PROXY));
        }
    }
    if let Some(backup) = &raw.backup {
        for (key, value) in [
            ("backup.type", &backup.kind),
            ("backup.path", &backup.path),
            ("backup.url", &backup.url),
            ("backup.cluster", &backup.cluster),
            ("backup.auth-token", &backup.auth_token),
        ] {
            keys.push((key, value.as_ref(), BACKUP));
        }
    }
    if let Some(tracing) = &raw.tracing {
        for (key, value) in [
            ("tracing.enabled", &tracing.enabled),
            ("tracing.path", &tracing.path),
            ("tracing.max-size", &tracing.max_size),
            ("tracing.max-count", &tracing.max_count),
            ("tracing.compress", &tracing.compress),
        ] {
            keys.push((key, value.as_ref(), TRACING));
        }
    }
    for (key, value, (feature, instead)) in keys {
        if value.is_some_and(asks_for_it) {
            return Err(Error::Unsupported {
                path: source.to_path_buf(),
                key: key.to_string(),
                feature: feature.to_string(),
                instead: instead.to_string(),
            });
        }
    }
    Ok(())
}

/// Whether a value asks for its feature: anything but `false`, `null`, an
/// empty string, list or mapping.
fn asks_for_it(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => !map.is_empty(),
        _ => true,
    }
}
