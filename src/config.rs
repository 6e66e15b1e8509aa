//! The litefs configuration file: finding it, reading it, and turning it into
//! a validated [`Config`].
//!
//! The file is YAML. Two spellings of the same settings are accepted so that
//! both the seed document's example and configs written for the Go LiteFS
//! load unchanged:
//!
//! | setting           | seed spelling          | Go LiteFS spelling        | default                       |
//! |-------------------|------------------------|---------------------------|-------------------------------|
//! | mount directory   | `mount-dir`            | `fuse.dir`                | required                      |
//! | data directory    | `data-dir`             | `data.dir`                | `.<mount name>` beside mount  |
//! | LTX retention     | —                      | `data.retention`          | 10m                           |
//! | HTTP address      | `http.addr`            | `http.addr`               | `:20202`                      |
//! | lease kind        | consul if `consul:` given | `lease.type`           | static                        |
//! | may be primary    | —                      | `lease.candidate`         | true                          |
//! | hostname          | —                      | `lease.hostname`          | this machine's hostname       |
//! | advertise URL     | `consul.advertise-url` | `lease.advertise-url`     | `http://<hostname>:<port>`    |
//! | Consul URL        | `consul.url`           | `lease.consul.url`        | required for consul           |
//! | Consul key        | `consul.key`           | `lease.consul.key`        | `litefs/primary`              |
//! | session TTL       | `consul.ttl`           | `lease.consul.ttl`        | 10s (at least 10s)            |
//! | lock delay        | `consul.lock-delay`    | `lease.consul.lock-delay` | 1s (at most 60s)              |
//!
//! Before parsing, `$VAR` and `${VAR}` are replaced by the environment
//! variable's value (an unset variable becomes the empty string, as Go's
//! `os.ExpandEnv` does) and `$$` by a single `$`. Relative paths are taken
//! relative to the directory that holds the config file. Unknown keys, bad
//! values and the same setting given in both spellings are errors that name
//! the file, the key and what is allowed.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
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

const DURATION_HELP: &str =
    "use a number with a unit (ns, us, ms, s, m, h), e.g. 10s, 1m30s, 500ms, 1h";
const URL_HELP: &str = "it must look like http://host[:port][/path]";

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
    /// Who decides which node is primary.
    pub lease: LeaseConfig,
    /// How long LTX files are kept; the newest one is always kept.
    pub retention: Duration,
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

/// Replaces `$VAR` and `${VAR}` with values from the environment (unset:
/// empty string) and `$$` with `$`.
pub fn expand_env(text: &str, source: &Path) -> Result<String, Error> {
    expand_with(text, source, |name| std::env::var(name).ok())
}

/// Like [`expand_env`], but looks variables up with `lookup`.
pub fn expand_with(
    text: &str,
    source: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let Some(end) = braced.find('}') else {
                let line = text[..text.len() - rest.len() + at].matches('\n').count() + 1;
                return Err(Error::Expand {
                    path: source.to_path_buf(),
                    message: format!(
                        "line {line}: `${{` without a closing `}}` (write `$$` for a literal `$`)"
                    ),
                });
            };
            out.push_str(&lookup_var(&braced[..end], source, &lookup));
            rest = &braced[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                // A lone `$` (before a space, a quote, the end...) stays.
                out.push('$');
            } else {
                out.push_str(&lookup_var(&after[..len], source, &lookup));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup_var(name: &str, source: &Path, lookup: &impl Fn(&str) -> Option<String>) -> String {
    match lookup(name) {
        Some(value) => value,
        None => {
            log::warn!(
                "{}: environment variable {name} is not set; using an empty string",
                source.display()
            );
            String::new()
        }
    }
}

/// Parses a Go-style duration: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`),
/// such as `10s`, `1m30s`, `1.5h`; a bare `0` is zero. The error says what
/// is wrong with the text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if s.starts_with('-') {
        return Err(format!("`{text}` is negative; durations must be 0 or more"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bad = || format!("`{text}` is not a duration");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let whole = &rest[..whole_len];
        rest = &rest[whole_len..];
        let mut frac = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            frac = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("`{text}` has a number without a unit")),
            other => return Err(format!("`{text}` has an unknown unit `{other}`")),
        };
        rest = &rest[unit_len..];
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        // Keep at most 18 fraction digits; more cannot change the result.
        let frac = &frac[..frac.len().min(18)];
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let frac_ns = frac_value * unit_ns / 10u128.pow(frac.len() as u32);
        total = whole
            .checked_mul(unit_ns)
            .and_then(|ns| ns.checked_add(frac_ns))
            .and_then(|ns| ns.checked_add(total))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("`{text}` is too long a duration"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Checks that `url` is `http://host[:port][/path]`; the error says why not.
pub fn check_http_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(format!("is empty; {URL_HELP}"));
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "`{url}` uses https, which this build of litefs does not support; {URL_HELP}"
        ));
    }
    if !lower.starts_with("http://") {
        return Err(format!("`{url}` is not an http URL; {URL_HELP}"));
    }
    let rest = &url["http://".len()..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() {
        return Err(format!("`{url}` has no host; {URL_HELP}"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}` has a user name or password, which is not supported; {URL_HELP}"
        ));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err(format!(
                "`{url}` has an unclosed `[` in its host; {URL_HELP}"
            ));
        };
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("`{url}` has junk after its host; {URL_HELP}")),
        };
        (&inner[..close], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(format!("`{url}` has an invalid host `{host}`; {URL_HELP}"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && matches!(port.parse::<u16>(), Ok(p) if p > 0);
        if !valid {
            return Err(format!(
                "`{url}` has an invalid port `{port}` (1 to 65535); {URL_HELP}"
            ));
        }
    }
    Ok(())
}

/// Splits `host:port`, `:port` or `[v6]:port`; `None` if malformed.
fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(inner) = addr.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        let (host, port) = addr.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// This machine's hostname, from /proc or gethostname(2).
fn local_hostname() -> io::Result<String> {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return Ok(name.to_string());
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes; gethostname writes at
    // most that many and we stop at the first NUL (or the buffer's end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    if name.is_empty() {
        return Err(io::Error::other("the hostname is empty"));
    }
    Ok(name)
}

/// The file as written, before defaults and validation. Every struct denies
/// unknown fields so a typo is an error rather than a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "mount-dir")]
    mount_dir: Option<String>,
    #[serde(rename = "data-dir")]
    data_dir: Option<String>,
    fuse: Option<RawFuse>,
    data: Option<RawData>,
    http: Option<RawHttp>,
    lease: Option<RawLease>,
    consul: Option<RawSeedConsul>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFuse {
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    dir: Option<String>,
    retention: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    addr: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    #[serde(rename = "type")]
    kind: Option<String>,
    candidate: Option<bool>,
    hostname: Option<String>,
    #[serde(rename = "advertise-url")]
    advertise_url: Option<String>,
    consul: Option<RawLeaseConsul>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeaseConsul {
    url: Option<String>,
    key: Option<String>,
    ttl: Option<Value>,
    #[serde(rename = "lock-delay")]
    lock_delay: Option<Value>,
}

/// The seed's top-level `consul:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeedConsul {
    url: Option<String>,
    #[serde(rename = "advertise-url")]
    advertise_url: Option<String>,
    key: Option<String>,
    ttl: Option<Value>,
    #[serde(rename = "lock-delay")]
    lock_delay: Option<Value>,
}

/// Turns a serde_yaml error into an [`Error`], recognising unknown keys so
/// the message names the full dotted key.
fn yaml_error(path: &Path, err: serde_yaml::Error) -> Error {
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

/// Applies defaults and checks every value.
fn resolve(raw: RawFile, source: &Path) -> Result<Config, Error> {
    let fuse = raw.fuse.unwrap_or_default();
    let data = raw.data.unwrap_or_default();
    let mount = pick(source, raw.mount_dir, "mount-dir", fuse.dir, "fuse.dir")?;
    let data_dir = pick(source, raw.data_dir, "data-dir", data.dir, "data.dir")?;
    let (mount_dir, data_dir) = directories(source, mount, data_dir)?;
    let retention = match data.retention {
        Some(value) => duration_value(source, "data.retention", &value)?,
        None => DEFAULT_RETENTION,
    };

    let raw_http = raw.http.unwrap_or_default();
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

    let lease = lease_config(source, raw.lease.unwrap_or_default(), raw.consul, port)?;
    Ok(Config {
        mount_dir,
        data_dir,
        http_addr,
        http_token,
        lease,
        retention,
    })
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

/// Resolves the lease settings from the Go-style `lease:` block and the
/// seed's `consul:` block; `port` is the HTTP port for the default
/// advertise URL.
fn lease_config(
    source: &Path,
    lease: RawLease,
    seed_consul: Option<RawSeedConsul>,
    port: u16,
) -> Result<LeaseConfig, Error> {
    let seed_block = seed_consul.is_some();
    let consul_given = seed_block || lease.consul.is_some();
    let kind = match lease.kind.as_deref() {
        Some("consul") => LeaseKind::Consul,
        Some("static") => LeaseKind::Static,
        Some(other) => {
            return Err(invalid(
                source,
                "lease.type",
                format!("`{other}` is not a lease type; allowed: `consul`, `static`"),
            ))
        }
        None if consul_given => LeaseKind::Consul,
        None => LeaseKind::Static,
    };
    if kind == LeaseKind::Static && consul_given {
        let key = if seed_block { "consul" } else { "lease.consul" };
        return Err(invalid(
            source,
            key,
            "is given but lease.type is `static`; remove one of them",
        ));
    }
    let candidate = lease.candidate.unwrap_or(true);
    let mut seed_consul = seed_consul.unwrap_or_default();

    let advertise = match pick(
        source,
        seed_consul.advertise_url.take(),
        "consul.advertise-url",
        lease.advertise_url,
        "lease.advertise-url",
    )? {
        Some((url, key)) => {
            check_http_url(&url).map_err(|m| invalid(source, key, m))?;
            Some(url.trim_end_matches('/').to_string())
        }
        None => None,
    };

    // A static replica names its primary; every other node names itself.
    let static_replica = kind == LeaseKind::Static && !candidate;
    let (hostname, advertise_url) = if static_replica {
        let Some(url) = advertise else {
            return Err(invalid(
                source,
                "lease.advertise-url",
                "is required when lease.type is `static` and lease.candidate is false: the \
                 URL of the primary to replicate from, http://host[:port]",
            ));
        };
        let hostname = match lease.hostname {
            Some(name) => name,
            None => url_host(&url).to_string(),
        };
        (hostname, url)
    } else {
        let hostname = match lease.hostname {
            Some(name) => name,
            None => local_hostname().map_err(|e| Error::Hostname {
                path: source.to_path_buf(),
                source: e,
            })?,
        };
        let url = advertise.unwrap_or_else(|| format!("http://{hostname}:{port}"));
        (hostname, url)
    };
    if hostname.trim().is_empty() {
        return Err(invalid(
            source,
            "lease.hostname",
            "is empty (an unset environment variable?); remove it for the default",
        ));
    }

    let consul = match kind {
        LeaseKind::Static => None,
        LeaseKind::Consul => Some(consul_config(
            source,
            seed_consul,
            lease.consul.unwrap_or_default(),
            seed_block,
        )?),
    };
    Ok(LeaseConfig {
        kind,
        candidate,
        hostname,
        advertise_url,
        consul,
    })
}

/// Resolves the Consul settings from either spelling; `seed_block` says
/// whether the seed's `consul:` block was written (it decides which key a
/// "missing URL" error names).
fn consul_config(
    source: &Path,
    seed: RawSeedConsul,
    lease: RawLeaseConsul,
    seed_block: bool,
) -> Result<ConsulConfig, Error> {
    let url_key = if seed_block {
        "consul.url"
    } else {
        "lease.consul.url"
    };
    let Some((url, url_key)) = pick(
        source,
        seed.url,
        "consul.url",
        lease.url,
        "lease.consul.url",
    )?
    else {
        return Err(invalid(
            source,
            url_key,
            "is required for a Consul lease: Consul's HTTP API, e.g. http://localhost:8500",
        ));
    };
    check_http_url(&url).map_err(|m| invalid(source, url_key, m))?;

    let key = match pick(
        source,
        seed.key,
        "consul.key",
        lease.key,
        "lease.consul.key",
    )? {
        Some((key, name)) if key.trim().is_empty() || key.starts_with('/') => {
            return Err(invalid(
                source,
                name,
                format!(
                    "`{key}` is not a usable Consul key; give a non-empty key without a \
                     leading `/`, e.g. `{DEFAULT_CONSUL_KEY}`"
                ),
            ))
        }
        Some((key, _)) => key,
        None => DEFAULT_CONSUL_KEY.to_string(),
    };

    let ttl = match pick(
        source,
        seed.ttl,
        "consul.ttl",
        lease.ttl,
        "lease.consul.ttl",
    )? {
        Some((value, name)) => {
            let ttl = duration_value(source, name, &value)?;
            if !(MIN_CONSUL_TTL..=MAX_CONSUL_TTL).contains(&ttl) {
                return Err(invalid(
                    source,
                    name,
                    format!(
                        "{} is outside what Consul allows for a session TTL: 10s to 24h",
                        format_duration(ttl)
                    ),
                ));
            }
            ttl
        }
        None => DEFAULT_CONSUL_TTL,
    };

    let lock_delay = match pick(
        source,
        seed.lock_delay,
        "consul.lock-delay",
        lease.lock_delay,
        "lease.consul.lock-delay",
    )? {
        Some((value, name)) => {
            let delay = duration_value(source, name, &value)?;
            if delay > MAX_LOCK_DELAY {
                return Err(invalid(
                    source,
                    name,
                    format!(
                        "{} is more than Consul allows for a lock delay: 0s to 60s",
                        format_duration(delay)
                    ),
                ));
            }
            delay
        }
        None => DEFAULT_LOCK_DELAY,
    };

    Ok(ConsulConfig {
        url: url.trim_end_matches('/').to_string(),
        key,
        ttl,
        lock_delay,
    })
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

/// Formats a duration the way the config spells them (`90s`, `1500ms`).
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The host part of an already validated http URL.
fn url_host(url: &str) -> &str {
    let rest = &url["http://".len()..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if let Some(inner) = authority.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The directory relative config paths are resolved against: the config
/// file's directory, made absolute.
fn base_dir(source: &Path) -> PathBuf {
    let parent = source.parent().unwrap_or(Path::new(""));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(parent))
            .unwrap_or_else(|_| parent.to_path_buf())
    }
}

/// Joins `path` to `base` unless it is absolute, then removes `.` and
/// resolves `..` lexically (as Go's filepath.Abs does).
fn absolute(base: &Path, path: &str) -> PathBuf {
    let joined = base.join(path);
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("2us", Duration::from_micros(2)),
            ("3ns", Duration::from_nanos(3)),
            ("1h2m3s4ms", Duration::new(3723, 4_000_000)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "10", "s", "10x", "-1s", "1.s.", "1m30", "ten seconds"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port(":20202"), Some(("", 20202)));
        assert_eq!(split_host_port("127.0.0.1:80"), Some(("127.0.0.1", 80)));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", 80)));
        assert_eq!(split_host_port("20202"), None);
        assert_eq!(split_host_port(":99999"), None);
        assert_eq!(split_host_port("a:b:1"), None);
    }

    #[test]
    fn urls() {
        for ok in [
            "http://localhost:8500",
            "http://10.0.0.1",
            "http://node-1.internal:20202/",
            "http://[::1]:8500/v1",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "localhost:8500",
            "https://x",
            "http://",
            "http://:80",
            "http://host:",
            "http://host:0",
            "http://host:70000",
            "http://user@host",
            "http://ho st",
            "ftp://x",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(url_host("http://[::1]:8500/v1"), "::1");
        assert_eq!(url_host("http://primary:20202"), "primary");
    }

    #[test]
    fn absolute_paths() {
        let base = Path::new("/etc/litefs");
        assert_eq!(absolute(base, "./mnt"), PathBuf::from("/etc/litefs/mnt"));
        assert_eq!(absolute(base, "../x/./y"), PathBuf::from("/etc/x/y"));
        assert_eq!(absolute(base, "/abs"), PathBuf::from("/abs"));
    }
}
