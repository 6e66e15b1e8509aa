//! The values inside a config file, apart from its structure: environment
//! expansion, Go-style durations, http(s) URLs, `host:port` addresses, the
//! local hostname, and paths relative to the config file.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{Error, URL_HELP};

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
/// such as `10s`, `1m30s`, `1.5h`; a bare `0` is zero. Any other bare
/// number is refused (`ttl: 10` would be ambiguous), and so is a negative
/// duration. The error says what is wrong with the text.
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

/// Checks that `url` is `http://host[:port][/path]`, or `https://...` in a
/// build with TLS; the error says why not. A path is a prefix: litefs
/// appends its own paths to the URL (`/stream` to an advertise URL,
/// `/v1/...` to Consul's), so a node behind a
/// reverse proxy at `http://proxy/litefs/node1` works. A query or
/// fragment cannot take such a suffix and is refused.
pub fn check_http_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(format!("is empty; {URL_HELP}"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        if !crate::tls::BUILT {
            return Err(format!("`{url}` uses https: {}", crate::tls::NOT_BUILT));
        }
        &url["https://".len()..]
    } else if lower.starts_with("http://") {
        &url["http://".len()..]
    } else {
        return Err(format!("`{url}` is not an http URL; {URL_HELP}"));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() {
        return Err(format!("`{url}` has no host; {URL_HELP}"));
    }
    let path = &rest[authority_end..];
    if path.contains(['?', '#']) {
        return Err(format!(
            "`{url}` has a query or fragment (`?`, `#`), which litefs cannot use: it appends \
             its own paths (such as `/stream`) to the URL; {URL_HELP}"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{url}` has a space or control character in its path; {URL_HELP}"
        ));
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
pub(super) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
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
pub(super) fn local_hostname() -> io::Result<String> {
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

/// Formats a duration the way the config spells them (`90s`, `1500ms`).
pub(super) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Whether an already validated URL is https.
pub(super) fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The host part of an already validated http(s) URL.
pub(super) fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if let Some(inner) = authority.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The directory relative config paths are resolved against: the config
/// file's directory, made absolute.
pub(super) fn base_dir(source: &Path) -> PathBuf {
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
pub(super) fn absolute(base: &Path, path: &str) -> PathBuf {
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
        // https needs a build with TLS.
        assert_eq!(
            check_http_url("https://node1:20202").is_ok(),
            crate::tls::BUILT
        );
        for bad in [
            "localhost:8500",
            "https://",
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
        assert_eq!(url_host("https://primary:20202/x"), "primary");
        assert!(is_https("HTTPS://primary") && !is_https("http://primary"));
    }

    #[test]
    fn absolute_paths() {
        let base = Path::new("/etc/litefs");
        assert_eq!(absolute(base, "./mnt"), PathBuf::from("/etc/litefs/mnt"));
        assert_eq!(absolute(base, "../x/./y"), PathBuf::from("/etc/x/y"));
        assert_eq!(absolute(base, "/abs"), PathBuf::from("/abs"));
    }
}
