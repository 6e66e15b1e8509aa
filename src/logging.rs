//! Logging to stderr through env_logger, set up twice: with the defaults
//! at start (so that what the config loader says is not lost), then as the
//! config's `log:` and `fuse.debug` keys ask.
//!
//! - Level: `RUST_LOG` when set; otherwise `info` (rustls `error`), with litefs's own debug
//!   lines for `log.debug: true` and every FUSE request (fuser's debug
//!   lines) for `fuse.debug: true`.
//! - Format: env_logger's text lines, or with `log.format: json` one JSON
//!   object per line: `{"time":...,"level":"INFO","target":"litefs::node",
//!   "msg":"..."}` (`time` only with timestamps), every string escaped.
//! - Timestamps: `log.timestamp` when given; otherwise on, except under
//!   systemd (`$JOURNAL_STREAM` set), whose journal stamps every line.

use std::io::Write;
use std::sync::RwLock;

use log::{Log, Metadata, Record};

use crate::config::{FuseConfig, LogConfig, LogFormat};

/// The installed logger: an env_logger that can be replaced once the
/// config is known.
struct Switch {
    inner: RwLock<Option<env_logger::Logger>>,
}

static LOGGER: Switch = Switch {
    inner: RwLock::new(None),
};

impl Log for Switch {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.as_ref().is_some_and(|l| l.enabled(metadata))
    }

    fn log(&self, record: &Record<'_>) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(logger) = inner.as_ref() {
            logger.log(record);
        }
    }

    fn flush(&self) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(logger) = inner.as_ref() {
            logger.flush();
        }
    }
}

/// Installs the logger with the defaults (text, `info` or `RUST_LOG`).
/// Calling it again does nothing.
pub fn init() {
    install(&LogConfig::default(), &FuseConfig::default());
    // Fails only when a logger is installed already; that one stays.
    let _ = log::set_logger(&LOGGER);
}

/// Reconfigures the installed logger as the config asks.
pub fn configure(log: &LogConfig, fuse: &FuseConfig) {
    install(log, fuse);
}

fn install(log: &LogConfig, fuse: &FuseConfig) {
    let logger = build(log, fuse);
    log::set_max_level(logger.filter());
    let mut inner = LOGGER.inner.write().unwrap_or_else(|e| e.into_inner());
    *inner = Some(logger);
}

/// The filter used when `RUST_LOG` is unset.
fn default_filter(log: &LogConfig, fuse: &FuseConfig) -> String {
    // rustls logs what a hostile client sends at WARN, a line per
    // connection; litefs logs the failures that matter itself.
    let mut filter = String::from("info,rustls=error");
    if log.debug {
        filter.push_str(",litefs=debug");
    }
    if fuse.debug {
        filter.push_str(",fuser=debug,litefs::fuse=debug");
    }
    filter
}

fn build(log: &LogConfig, fuse: &FuseConfig) -> env_logger::Logger {
    let env = env_logger::Env::default().default_filter_or(default_filter(log, fuse));
    let mut builder = env_logger::Builder::from_env(env);
    let timestamps = log
        .timestamp
        .unwrap_or_else(|| std::env::var_os("JOURNAL_STREAM").is_none());
    match log.format {
        LogFormat::Text => {
            if !timestamps {
                builder.format_timestamp(None);
            }
        }
        LogFormat::Json => {
            builder.format(move |buf, record| {
                let mut line = String::with_capacity(128);
                line.push('{');
                if timestamps {
                    line.push_str("\"time\":");
                    line.push_str(&crate::json::string(&buf.timestamp_millis().to_string()));
                    line.push(',');
                }
                line.push_str("\"level\":");
                line.push_str(&crate::json::string(record.level().as_str()));
                line.push_str(",\"target\":");
                line.push_str(&crate::json::string(record.target()));
                line.push_str(",\"msg\":");
                line.push_str(&crate::json::string(&record.args().to_string()));
                line.push_str("}\n");
                buf.write_all(line.as_bytes())
            });
        }
    }
    builder.build()
}

/// `text` from outside litefs (a peer's error message, a response body)
/// made safe for one log line: its control characters (newlines among
/// them) escaped as Rust escapes them, so that it cannot forge or break
/// lines; anything else as it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filters() {
        let mut log = LogConfig::default();
        let mut fuse = FuseConfig::default();
        assert_eq!(default_filter(&log, &fuse), "info,rustls=error");
        log.debug = true;
        assert_eq!(
            default_filter(&log, &fuse),
            "info,rustls=error,litefs=debug"
        );
        fuse.debug = true;
        assert_eq!(
            default_filter(&log, &fuse),
            "info,rustls=error,litefs=debug,fuser=debug,litefs::fuse=debug"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("not the primary"), "not the primary");
        assert_eq!(
            escape_controls("bad\n[2026-12-07T00:00:00Z ERROR x] forged\r\u{1b}[31m é"),
            "bad\\n[2026-12-07T00:00:00Z ERROR x] forged\\r\\u{1b}[31m é"
        );
    }
}
