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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFuse {
    pub(super) dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawData {
    pub(super) dir: Option<String>,
    pub(super) retention: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) addr: Option<String>,
    pub(super) token: Option<String>,
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
