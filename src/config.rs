//! The litefs configuration file: finding it, reading it, and turning it into
//! a validated [`Config`].
//!
//! The file is YAML. Two spellings of the same settings are accepted so that
//! both the seed document's example and configs written for the Go LiteFS
//! (v0.5.14, `cmd/litefs/config.go`) load unchanged; giving one setting in
//! both is an error. The keys, their defaults and their bounds are listed
//! once, in README.md's "Configuration" table: change it with the code.
//! Go LiteFS keys for features litefs lacks are refused by name, unless
//! their value turns the feature off (`config/unsupported.rs`).
//!
//! Before parsing, `$VAR` and `${VAR}` are replaced by the environment
//! variable's value (an unset variable becomes the empty string, as Go's
//! `os.ExpandEnv` does) and `$$` by a single `$`, everywhere in the file,
//! comments included. Relative paths are taken relative to the directory
//! that holds the config file, so a config behaves the same from any working
//! directory. Unknown keys, bad values and the same setting given in both
//! spellings are errors that name the file, the key and what is allowed: a
//! setting that is silently ignored would change behaviour without a word.
//!
//! This file holds the resolved types and how the file becomes a `Config`;
//! `config/raw.rs` the file as written (the serde types) and the errors
//! serde reports; `config/lease.rs` the lease and Consul settings;
//! `config/exec.rs` the `exec` and `exec-wait` keys;
//! `config/replication.rs` the `replication:` keys;
//! `config/unsupported.rs` the Go LiteFS keys litefs refuses;
//! `config/values.rs` the values inside it (expansion, durations, URLs,
//! addresses, paths).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

/// The config file name searched for by [`find_config`].
pub const FILE_NAME: &str = "litefs.yml";
/// Default HTTP bind address: every interface, port 20202.
pub const DEFAULT_HTTP_ADDR: &str = ":20202";
/// Default Consul KV key that holds the primary's lease.
pub const DEFAULT_CONSUL_KEY: &str = "litefs/primary";
/// Default Consul session TTL.
pub const DEFAULT_CONSUL_TTL: Duration = Duration::from_secs(10);
/// Smallest session TTL Consul accepts.
pub const MIN_CONSUL_TTL: Duration = Duration::from_secs(10);
/// Largest session TTL Consul accepts.
pub const MAX_CONSUL_TTL: Duration = Duration::from_secs(86_400);
/// Default Consul session lock delay.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(1);
/// Largest session lock delay Consul accepts.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Default time LTX files are kept (the newest file is always kept).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);
/// Sets of set-aside files kept per database under `lost/` by default.
pub const DEFAULT_LOST_KEEP: usize = 10;
/// Shortest `data.retention-monitor-interval` (also the floor of the
/// default).
pub const MIN_RETENTION_MONITOR_INTERVAL: Duration = Duration::from_millis(50);
/// Longest default retention check interval.
pub const MAX_DEFAULT_RETENTION_MONITOR_INTERVAL: Duration = Duration::from_secs(60);
/// Range of `lease.reconnect-delay`.
pub const RECONNECT_DELAY_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(600));
/// Longest `lease.demote-delay`.
pub const MAX_DEMOTE_DELAY: Duration = Duration::from_secs(3600);

mod exec;
mod lease;
mod raw;
mod replication;
mod unsupported;
mod values;

pub use exec::{ExecCommand, ExecWait, Program};
use lease::{lease_config, HttpTls};
use raw::{yaml_error, RawFile};
pub use replication::{ReplicationConfig, SyncFailover, SyncFallback};
use values::{absolute, base_dir, format_duration, split_host_port};
pub use values::{check_http_url, expand_env, expand_with, parse_duration};

const DURATION_HELP: &str =
    "use a number with a unit (ns, us, ms, s, m, h), e.g. 10s, 1m30s, 500ms, 1h";
const URL_HELP: &str = "it must look like http://host[:port][/path] (or https://)";

/// A complete, validated litefs configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the FUSE file system is mounted (absolute).
    pub mount_dir: PathBuf,
    /// Where the real database files and LTX files live (absolute).
    pub data_dir: PathBuf,
    /// HTTP bind address as written, `host:port` or `:port` (see
    /// [`Config::http_bind_addr`]).
    pub http_addr: String,
    /// The cluster's shared secret (`http.token`): when set, every HTTP
    /// request must carry `Authorization: Bearer <token>`, and this node
    /// sends it to the primary.
    pub http_token: Option<String>,
    /// The node's certificate and key (`http.tls-cert`, `http.tls-key`),
    /// loaded and checked: when set, the server speaks only TLS.
    pub http_tls: Option<crate::tls::ServerTls>,
    /// The CA certificates (`http.tls-ca`), loaded: what an `https://`
    /// primary, or node for `import`/`export`, is verified against.
    pub http_tls_ca: Option<crate::tls::ClientTls>,
    /// Who decides which node is primary.
    pub lease: LeaseConfig,
    /// How long LTX files are kept; the newest one is always kept.
    pub retention: Duration,
    /// How often the retention thread runs (`data.retention-monitor-interval`);
    /// `None` for the default, see [`Config::retention_interval`].
    pub retention_monitor_interval: Option<Duration>,
    /// How many sets of set-aside files `lost/<db>/` keeps per database
    /// (`data.lost-keep`); 0 keeps every one.
    pub lost_keep: usize,
    /// Exit (status 1) on a fatal lease or replication error instead of
    /// retrying (`exit-on-error`).
    pub exit_on_error: bool,
    /// Log format and levels (`log:`).
    pub log: LogConfig,
    /// Mount options (`fuse:` besides `dir`).
    pub fuse: FuseConfig,
    /// The application to start once the node is ready (`exec`), in
    /// order; empty for none.
    pub exec: Vec<ExecCommand>,
    /// When `exec` starts (`exec-wait`).
    pub exec_wait: ExecWait,
    /// Whether commits wait for replicas (`replication:`).
    pub replication: ReplicationConfig,
}

/// How litefs logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// `log.format`.
    pub format: LogFormat,
    /// `log.debug`: litefs's debug lines (when `RUST_LOG` is unset).
    pub debug: bool,
    /// `log.timestamp`; `None`: timestamps except under systemd's journal.
    pub timestamp: Option<bool>,
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's text lines.
    #[default]
    Text,
    /// One JSON object per line: `time`, `level`, `target`, `msg`.
    Json,
}

/// Mount options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FuseConfig {
    /// `fuse.allow-other`; `None`: on when litefs runs as root.
    pub allow_other: Option<bool>,
    /// `fuse.debug`: log every FUSE request (when `RUST_LOG` is unset).
    pub debug: bool,
    /// `fuse.passthrough` (litefs only): the primary's WAL and rollback
    /// journals pass through the kernel to their backing files where the
    /// kernel allows it.
    pub passthrough: bool,
    /// `fuse.keep-cpus-awake` (litefs only): while databases are written,
    /// ask the kernel for awake CPUs (`crate::cpu_wake`).
    pub keep_cpus_awake: bool,
}

/// Lease settings: which kind of lease, and how this node presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Static (one fixed primary) or Consul (elected).
    pub kind: LeaseKind,
    /// Whether this node may become primary. With a static lease, the
    /// candidate node is the primary and the others replicate from it.
    pub candidate: bool,
    /// The primary's hostname for a static replica; this node's hostname
    /// otherwise. Shown in `.primary` on replicas.
    pub hostname: String,
    /// The primary's URL for a static replica; this node's URL otherwise.
    /// Always `http://host[:port][/path]` without a trailing slash.
    pub advertise_url: String,
    /// Consul settings; `Some` exactly when `kind` is [`LeaseKind::Consul`].
    pub consul: Option<ConsulConfig>,
    /// `lease.reconnect-delay`: the longest pause between retries to reach
    /// the primary or Consul (they start at 100ms, or this if shorter, and
    /// double); `None` keeps the built-in caps (5s and 2s).
    pub reconnect_delay: Option<Duration>,
    /// `lease.demote-delay`: how long a node that lost the lease (it could
    /// not renew it, or Consul says it is gone) waits before it tries to
    /// take it again; it follows any other primary meanwhile.
    pub demote_delay: Duration,
}

/// The kind of lease that decides the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// A fixed primary named in the config; no external service.
    Static,
    /// A lease held in Consul through a session and a KV key.
    Consul,
}

/// How to reach Consul and what lease to hold there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Consul's HTTP API, `http://host[:port]`, without a trailing slash.
    pub url: String,
    /// The KV key whose holder is primary.
    pub key: String,
    /// Session TTL, between 10s and 24h.
    pub ttl: Duration,
    /// Session lock delay, at most 60s.
    pub lock_delay: Duration,
}

impl Config {
    /// The address to bind the HTTP server to: `:20202` becomes
    /// `0.0.0.0:20202`, anything else is returned as written.
    pub fn http_bind_addr(&self) -> String {
        match self.http_addr.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => self.http_addr.clone(),
        }
    }

    /// How often the retention thread runs: `data.retention-monitor-interval`,
    /// or a quarter of the retention between 50ms and 1m.
    pub fn retention_interval(&self) -> Duration {
        self.retention_monitor_interval.unwrap_or_else(|| {
            (self.retention / 4).clamp(
                MIN_RETENTION_MONITOR_INTERVAL,
                MAX_DEFAULT_RETENTION_MONITOR_INTERVAL,
            )
        })
    }

    /// The port of the HTTP address (validated when the config was parsed).
    pub fn http_port(&self) -> u16 {
        split_host_port(&self.http_addr).map_or(0, |(_, port)| port)
    }
}

/// Everything that can go wrong finding, reading or validating a config.
#[derive(Debug)]
pub enum Error {
    /// The config file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// No config file exists in any of the searched places.
    NotFound { searched: Vec<PathBuf> },
    /// The file is not valid YAML, or a value has the wrong type.
    Yaml { path: PathBuf, message: String },
    /// A key that litefs does not know (most likely a typo).
    UnknownKey {
        path: PathBuf,
        /// The dotted key, e.g. `http.adr`.
        key: String,
        /// Where it is, e.g. " at line 3 column 3", or empty.
        location: String,
        /// The keys allowed at that place.
        allowed: String,
    },
    /// A setting is missing or has a value that is not allowed.
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A Go LiteFS key for a feature litefs does not have.
    Unsupported {
        path: PathBuf,
        key: String,
        /// The feature, e.g. "the HTTP proxy".
        feature: String,
        /// What to do instead.
        instead: String,
    },
    /// The same setting is given in both spellings.
    Conflict {
        path: PathBuf,
        key: String,
        other: String,
    },
    /// `$VAR` / `${VAR}` expansion failed (an unterminated `${`).
    Expand { path: PathBuf, message: String },
    /// This machine's hostname could not be found for a default.
    Hostname { path: PathBuf, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            Error::NotFound { searched } => {
                let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "no config file found (looked for {}); pass one with -config PATH",
                    list.join(", ")
                )
            }
            Error::Yaml { path, message } => write!(f, "{}: {message}", path.display()),
            Error::UnknownKey {
                path,
                key,
                location,
                allowed,
            } => write!(
                f,
                "{}: unknown key `{key}`{location}; allowed here: {allowed}",
                path.display()
            ),
            Error::Invalid { path, key, message } => {
                write!(f, "{}: {key}: {message}", path.display())
            }
            Error::Unsupported {
                path,
                key,
                feature,
                instead,
            } => write!(
                f,
                "{}: `{key}`: {feature} is not supported by this litefs; {instead}",
                path.display()
            ),
            Error::Conflict { path, key, other } => write!(
                f,
                "{}: `{key}` and `{other}` are two spellings of the same setting; keep only one",
                path.display()
            ),
            Error::Expand { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Hostname { path, source } => write!(
                f,
                "{}: cannot determine this machine's hostname ({source}); set lease.hostname",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read { source, .. } | Error::Hostname { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The places searched for a config file, in order: `./litefs.yml`,
/// `~/litefs.yml` (when `$HOME` is set), `/etc/litefs.yml`.
pub fn search_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(".").join(FILE_NAME)];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        paths.push(PathBuf::from(home).join(FILE_NAME));
    }
    paths.push(PathBuf::from("/etc").join(FILE_NAME));
    paths
}

/// Returns the first of `paths` that is an existing file; the error lists
/// every path looked at.
pub fn find_first(paths: &[PathBuf]) -> Result<PathBuf, Error> {
    paths
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::NotFound {
            searched: paths.to_vec(),
        })
}

/// Finds the config file in the default places ([`search_paths`]).
pub fn find_config() -> Result<PathBuf, Error> {
    find_first(&search_paths())
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<Config, Error> {
    let read_error = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    // Read at most one byte past the limit: a config is a few hundred
    // bytes, and a wrong path (a device, a huge file) must not be slurped.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            io::Read::read_to_string(&mut io::Read::take(f, MAX_CONFIG_LEN + 1), &mut text)
        })
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_LEN {
        return Err(read_error(io::Error::other(format!(
            "it is larger than {} KiB, which no litefs config is; is this the right file?",
            MAX_CONFIG_LEN / 1024
        ))));
    }
    parse(&text, path)
}

/// The largest config file litefs reads.
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Parses config text. `source` names the file in errors, and relative
/// paths in the config are resolved against its directory.
pub fn parse(text: &str, source: &Path) -> Result<Config, Error> {
    let expanded = expand_env(text, source)?;
    let raw: RawFile = serde_yaml::from_str(&expanded).map_err(|e| yaml_error(source, e))?;
    resolve(raw, source)
}

/// Applies defaults and checks every value.
fn resolve(raw: RawFile, source: &Path) -> Result<Config, Error> {
    unsupported::check(&raw, source)?;
    let fuse = raw.fuse.unwrap_or_default();
    let data = raw.data.unwrap_or_default();
    let mount = pick(source, raw.mount_dir, "mount-dir", fuse.dir, "fuse.dir")?;
    let data_dir = pick(source, raw.data_dir, "data-dir", data.dir, "data.dir")?;
    let (mount_dir, data_dir) = directories(source, mount, data_dir)?;
    let retention = match data.retention {
        Some(value) => duration_value(source, "data.retention", &value)?,
        None => DEFAULT_RETENTION,
    };
    let retention_monitor_interval = match data.retention_monitor_interval {
        Some(value) => Some(duration_in(
            source,
            "data.retention-monitor-interval",
            &value,
            MIN_RETENTION_MONITOR_INTERVAL,
            Duration::MAX,
        )?),
        None => None,
    };
    let lost_keep = match data.lost_keep {
        Some(value) => {
            let expected = "a whole number of sets to keep per database (0: keep all)";
            let n = whole_number(source, "data.lost-keep", &value, u64::MAX, expected)?;
            usize::try_from(n).unwrap_or(usize::MAX)
        }
        None => DEFAULT_LOST_KEEP,
    };
    let raw_log = raw.log.unwrap_or_default();
    let log = LogConfig {
        format: one_of(
            source,
            "log.format",
            raw_log.format.as_deref(),
            LogFormat::Text,
            "a log format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
        debug: raw_log.debug.unwrap_or(false),
        timestamp: raw_log.timestamp,
    };
    let fuse = FuseConfig {
        allow_other: fuse.allow_other,
        debug: fuse.debug.unwrap_or(false),
        passthrough: fuse.passthrough.unwrap_or(true),
        keep_cpus_awake: fuse.keep_cpus_awake.unwrap_or(true),
    };

    let raw_http = raw.http.unwrap_or_default();
    let (http_tls, http_tls_ca) = tls_config(source, &raw_http)?;
    let http_token = match raw_http.token {
        Some(token) if token.is_empty() => {
            return Err(invalid(
                source,
                "http.token",
                "is empty (an unset environment variable?); give the cluster's shared secret \
                 or leave the key out",
            ))
        }
        Some(token) if token.chars().any(|c| c.is_control() || c == ' ') => {
            return Err(invalid(
                source,
                "http.token",
                "holds spaces or control characters, which an HTTP header cannot carry",
            ))
        }
        token => token,
    };
    let http_addr = raw_http
        .addr
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
    let Some((_, port)) = split_host_port(&http_addr) else {
        return Err(invalid(
            source,
            "http.addr",
            format!("`{http_addr}` is not an address; write `:PORT` or `HOST:PORT`, e.g. `:20202`"),
        ));
    };

    let tls = HttpTls {
        serves: http_tls.is_some(),
        verifies: http_tls_ca.is_some(),
    };
    let lease = lease_config(source, raw.lease.unwrap_or_default(), raw.consul, port, tls)?;
    Ok(Config {
        mount_dir,
        data_dir,
        http_addr,
        http_token,
        http_tls,
        http_tls_ca,
        lease,
        retention,
        retention_monitor_interval,
        lost_keep,
        exit_on_error: raw.exit_on_error.unwrap_or(false),
        log,
        fuse,
        exec: exec::exec_commands(source, raw.exec)?,
        exec_wait: exec::exec_wait(source, raw.exec_wait)?,
        replication: replication::replication_config(source, raw.replication)?,
    })
}

/// Loads `http.tls-cert` with `http.tls-key` (both or neither) and
/// `http.tls-ca`, relative to the config file; a file that cannot be used
/// is an error naming the key, the file and what is wrong.
fn tls_config(
    source: &Path,
    http: &raw::RawHttp,
) -> Result<(Option<crate::tls::ServerTls>, Option<crate::tls::ClientTls>), Error> {
    let base = base_dir(source);
    let path = |key: &str, value: &Option<String>| -> Result<Option<PathBuf>, Error> {
        match value {
            None => Ok(None),
            Some(_) if !crate::tls::BUILT => Err(invalid(source, key, crate::tls::NOT_BUILT)),
            Some(text) if text.trim().is_empty() => Err(invalid(
                source,
                key,
                "is empty (an unset environment variable?); give a PEM file or leave the key out",
            )),
            Some(text) => Ok(Some(absolute(&base, text))),
        }
    };
    let cert = path("http.tls-cert", &http.tls_cert)?;
    let key = path("http.tls-key", &http.tls_key)?;
    let ca = path("http.tls-ca", &http.tls_ca)?;
    let server = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                source,
                "http.tls-key",
                "is required with http.tls-cert: the certificate's private key (PEM)",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                source,
                "http.tls-cert",
                "is required with http.tls-key: the node's certificate chain (PEM)",
            ))
        }
        (Some(cert), Some(key)) => {
            let loaded = crate::tls::ServerTls::load(&cert, &key).map_err(|err| {
                let which = if err.path == key {
                    "http.tls-key"
                } else {
                    "http.tls-cert"
                };
                invalid(source, which, err.to_string())
            })?;
            Some(loaded)
        }
    };
    let client = match ca {
        None => None,
        Some(ca) => Some(
            crate::tls::ClientTls::load(&ca)
                .map_err(|err| invalid(source, "http.tls-ca", err.to_string()))?,
        ),
    };
    Ok((server, client))
}

/// `value` of `key` as a whole number up to `max`; otherwise an error
/// saying what was `expected` and what was found.
fn whole_number(
    source: &Path,
    key: &str,
    value: &Value,
    max: u64,
    expected: &str,
) -> Result<u64, Error> {
    match value {
        Value::Number(n) if n.as_u64().is_some_and(|n| n <= max) => Ok(n.as_u64().unwrap_or(0)),
        other => Err(invalid(
            source,
            key,
            format!(
                "expected {expected}, not `{}`",
                serde_yaml::to_string(other).unwrap_or_default().trim()
            ),
        )),
    }
}

/// The value of `key` among `allowed` (its spelling and what it means),
/// `default` when the key is absent; otherwise an error listing them.
/// `what` names the kind of value ("a log format").
fn one_of<T: Copy>(
    source: &Path,
    key: &str,
    value: Option<&str>,
    default: T,
    what: &str,
    allowed: &[(&str, T)],
) -> Result<T, Error> {
    let Some(value) = value else {
        return Ok(default);
    };
    match allowed.iter().find(|(name, _)| *name == value) {
        Some((_, meaning)) => Ok(*meaning),
        None => {
            let names: Vec<String> = allowed
                .iter()
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            Err(invalid(
                source,
                key,
                format!("`{value}` is not {what}; allowed: {}", names.join(", ")),
            ))
        }
    }
}

/// An [`Error::Invalid`] for `key` in `source`.
fn invalid(source: &Path, key: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        path: source.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Resolves the mount and data directories (given as text, with the key
/// they came from) against the config file's directory.
fn directories(
    source: &Path,
    mount: Option<(String, &'static str)>,
    data: Option<(String, &'static str)>,
) -> Result<(PathBuf, PathBuf), Error> {
    let base_dir = base_dir(source);
    let Some((mount_text, mount_key)) = mount else {
        return Err(invalid(
            source,
            "mount-dir",
            "is required: the directory to mount the file system at (also spelled fuse.dir)",
        ));
    };
    if mount_text.trim().is_empty() {
        return Err(invalid(
            source,
            mount_key,
            "is empty (an unset environment variable?); give the directory to mount at",
        ));
    }
    let mount_dir = absolute(&base_dir, &mount_text);
    let (Some(parent), Some(name)) = (mount_dir.parent(), mount_dir.file_name()) else {
        return Err(invalid(
            source,
            mount_key,
            format!(
                "`{}` has no final directory name; mount somewhere else",
                mount_dir.display()
            ),
        ));
    };
    let default_data_dir = parent.join(format!(".{}", name.to_string_lossy()));
    let Some((data_text, data_key)) = data else {
        return Ok((mount_dir, default_data_dir));
    };
    if data_text.trim().is_empty() {
        return Err(invalid(
            source,
            data_key,
            "is empty (an unset environment variable?); remove it for the default or give \
             a directory",
        ));
    }
    let data_dir = absolute(&base_dir, &data_text);
    if data_dir.parent().is_none() {
        return Err(invalid(
            source,
            data_key,
            "is the root directory `/`; give litefs a directory of its own",
        ));
    }
    if mount_dir.starts_with(&data_dir) {
        return Err(invalid(
            source,
            data_key,
            format!(
                "`{}` contains the mount directory `{}`; keep them apart",
                data_dir.display(),
                mount_dir.display()
            ),
        ));
    }
    if data_dir.starts_with(&mount_dir) {
        return Err(invalid(
            source,
            data_key,
            format!(
                "`{}` is inside the mount directory `{}`; it must be outside it",
                data_dir.display(),
                mount_dir.display()
            ),
        ));
    }
    Ok((mount_dir, data_dir))
}

/// Returns whichever of two spellings is given, with its key name; both
/// at once is a [`Error::Conflict`].
fn pick<T>(
    source: &Path,
    first: Option<T>,
    first_key: &'static str,
    second: Option<T>,
    second_key: &'static str,
) -> Result<Option<(T, &'static str)>, Error> {
    match (first, second) {
        (Some(_), Some(_)) => Err(Error::Conflict {
            path: source.to_path_buf(),
            key: first_key.to_string(),
            other: second_key.to_string(),
        }),
        (Some(v), None) => Ok(Some((v, first_key))),
        (None, Some(v)) => Ok(Some((v, second_key))),
        (None, None) => Ok(None),
    }
}

/// Reads a duration value: a string like `10s`, or the number 0.
fn duration_value(source: &Path, key: &str, value: &Value) -> Result<Duration, Error> {
    match value {
        Value::String(text) => {
            parse_duration(text).map_err(|m| invalid(source, key, format!("{m}; {DURATION_HELP}")))
        }
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
        Value::Number(n) => Err(invalid(
            source,
            key,
            format!("`{n}` has no unit; {DURATION_HELP}"),
        )),
        _ => Err(invalid(
            source,
            key,
            format!("expected a duration; {DURATION_HELP}"),
        )),
    }
}

/// Reads a duration that must lie in `min..=max`.
fn duration_in(
    source: &Path,
    key: &str,
    value: &Value,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    let d = duration_value(source, key, value)?;
    if d < min {
        return Err(invalid(
            source,
            key,
            format!(
                "{} is too short: at least {}",
                format_duration(d),
                format_duration(min)
            ),
        ));
    }
    if d > max {
        return Err(invalid(
            source,
            key,
            format!(
                "{} is too long: at most {}",
                format_duration(d),
                format_duration(max)
            ),
        ));
    }
    Ok(d)
}
