//! The config file as written: the serde types YAML is read into, before
//! defaults and validation, and the translation of serde_yaml's errors into
//! [`Error`]s that name the whole dotted key. Every struct denies unknown
//! fields, so a typo is an error rather than a silent default.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use super::Error;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(rename = "mount-dir")]
    pub(super) mount_dir: Option<String>,
    #[serde(rename = "data-dir")]
    pub(super) data_dir: Option<String>,
    pub(super) fuse: Option<RawFuse>,
    pub(super) data: Option<RawData>,
    pub(super) http: Option<RawHttp>,
    pub(super) lease: Option<RawLease>,
    pub(super) consul: Option<RawSeedConsul>,
    pub(super) log: Option<RawLog>,
    pub(super) replication: Option<RawReplication>,
    #[serde(rename = "exit-on-error")]
    pub(super) exit_on_error: Option<bool>,
    pub(super) exec: Option<Value>,
    #[serde(rename = "exec-wait")]
    pub(super) exec_wait: Option<String>,
    // Go LiteFS keys of features litefs does not have (see unsupported.rs).
    #[serde(rename = "skip-sync")]
    pub(super) skip_sync: Option<Value>,
    #[serde(rename = "strict-verify")]
    pub(super) strict_verify: Option<Value>,
    pub(super) proxy: Option<RawProxy>,
    pub(super) backup: Option<RawBackup>,
    pub(super) tracing: Option<RawTracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFuse {
    pub(super) dir: Option<String>,
    #[serde(rename = "allow-other")]
    pub(super) allow_other: Option<bool>,
    pub(super) debug: Option<bool>,
    pub(super) passthrough: Option<bool>,
    #[serde(rename = "keep-cpus-awake")]
    pub(super) keep_cpus_awake: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawData {
    pub(super) dir: Option<String>,
    pub(super) retention: Option<Value>,
    #[serde(rename = "retention-monitor-interval")]
    pub(super) retention_monitor_interval: Option<Value>,
    #[serde(rename = "lost-keep")]
    pub(super) lost_keep: Option<Value>,
    pub(super) compress: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) addr: Option<String>,
    pub(super) token: Option<String>,
    #[serde(rename = "tls-cert")]
    pub(super) tls_cert: Option<String>,
    #[serde(rename = "tls-key")]
    pub(super) tls_key: Option<String>,
    #[serde(rename = "tls-ca")]
    pub(super) tls_ca: Option<String>,
    #[serde(rename = "snapshot-timeout")]
    pub(super) snapshot_timeout: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLease {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) candidate: Option<bool>,
    pub(super) hostname: Option<String>,
    #[serde(rename = "advertise-url")]
    pub(super) advertise_url: Option<String>,
    pub(super) consul: Option<RawLeaseConsul>,
    #[serde(rename = "reconnect-delay")]
    pub(super) reconnect_delay: Option<Value>,
    #[serde(rename = "demote-delay")]
    pub(super) demote_delay: Option<Value>,
    pub(super) promote: Option<Value>,
    pub(super) databases: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLeaseConsul {
    pub(super) url: Option<String>,
    pub(super) key: Option<String>,
    pub(super) ttl: Option<Value>,
    #[serde(rename = "lock-delay")]
    pub(super) lock_delay: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplication {
    pub(super) sync: Option<Value>,
    #[serde(rename = "sync-timeout")]
    pub(super) sync_timeout: Option<Value>,
    #[serde(rename = "sync-fallback")]
    pub(super) sync_fallback: Option<String>,
    #[serde(rename = "sync-failover")]
    pub(super) sync_failover: Option<String>,
    #[serde(rename = "max-lag")]
    pub(super) max_lag: Option<Value>,
    #[serde(rename = "max-lag-wait")]
    pub(super) max_lag_wait: Option<Value>,
    #[serde(rename = "max-lag-txns")]
    pub(super) max_lag_txns: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) timestamp: Option<bool>,
    pub(super) debug: Option<bool>,
}

/// Go LiteFS's HTTP proxy, which litefs does not have: read only to name
/// the key that is refused (a typo in it is still an unknown key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) addr: Option<Value>,
    pub(super) target: Option<Value>,
    pub(super) db: Option<Value>,
    #[serde(rename = "max-lag")]
    pub(super) max_lag: Option<Value>,
    pub(super) debug: Option<Value>,
    pub(super) passthrough: Option<Value>,
    #[serde(rename = "always-forward")]
    pub(super) always_forward: Option<Value>,
    #[serde(rename = "primary-redirect-timeout")]
    pub(super) primary_redirect_timeout: Option<Value>,
    #[serde(rename = "read-timeout")]
    pub(super) read_timeout: Option<Value>,
    #[serde(rename = "read-header-timeout")]
    pub(super) read_header_timeout: Option<Value>,
    #[serde(rename = "write-timeout")]
    pub(super) write_timeout: Option<Value>,
    #[serde(rename = "idle-timeout")]
    pub(super) idle_timeout: Option<Value>,
}

/// Go LiteFS's backup service (LiteFS Cloud or a file), which litefs does
/// not have.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    #[serde(rename = "type")]
    pub(super) kind: Option<Value>,
    pub(super) path: Option<Value>,
    pub(super) url: Option<Value>,
    pub(super) cluster: Option<Value>,
    #[serde(rename = "auth-token")]
    pub(super) auth_token: Option<Value>,
}

/// Go LiteFS's on-disk trace log, which litefs does not have.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    pub(super) enabled: Option<Value>,
    pub(super) path: Option<Value>,
    #[serde(rename = "max-size")]
    pub(super) max_size: Option<Value>,
    #[serde(rename = "max-count")]
    pub(super) max_count: Option<Value>,
    pub(super) compress: Option<Value>,
}

/// The seed's top-level `consul:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSeedConsul {
    pub(super) url: Option<String>,
    #[serde(rename = "advertise-url")]
    pub(super) advertise_url: Option<String>,
    pub(super) key: Option<String>,
    pub(super) ttl: Option<Value>,
    #[serde(rename = "lock-delay")]
    pub(super) lock_delay: Option<Value>,
}

/// Turns a serde_yaml error into an [`Error`], recognising unknown keys so
/// the message names the full dotted key.
pub(super) fn yaml_error(path: &Path, err: serde_yaml::Error) -> Error {
    let mut message = err.to_string();
    let location = err
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()));
    if let Some(loc) = &location {
        if let Some(stripped) = message.strip_suffix(loc.as_str()) {
            message = stripped.to_string();
        }
    }
    let location = location.unwrap_or_default();
    const UNKNOWN: &str = "unknown field `";
    if let Some(at) = message.find(UNKNOWN) {
        let parent = message[..at].trim_end().trim_end_matches(':');
        let rest = &message[at + UNKNOWN.len()..];
        if let Some(end) = rest.find('`') {
            let name = &rest[..end];
            let key = if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}.{name}")
            };
            let expected = rest[end + 1..].trim_start_matches(',').trim();
            let allowed = expected
                .strip_prefix("expected one of ")
                .or_else(|| expected.strip_prefix("expected "))
                .unwrap_or(expected);
            return Error::UnknownKey {
                path: path.to_path_buf(),
                key,
                location,
                allowed: allowed.to_string(),
            };
        }
    }
    Error::Yaml {
        path: path.to_path_buf(),
        message: format!("{message}{location}"),
    }
}
