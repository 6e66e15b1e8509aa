//! The lease settings: the Go-style `lease:` block and the seed's
//! `consul:` block resolved into a [`LeaseConfig`] (kind, candidate,
//! hostname, advertise URL, Consul session and key).
//!
//! Without `lease.type` the lease is Consul's when a `consul:` or
//! `lease.consul:` block is present, static otherwise; `static` with such a
//! block is an error. What Consul would refuse (a TTL outside 10s to 24h,
//! a lock delay over 60s, an empty key or one starting with `/`) is refused
//! at load, naming the key, rather than when Consul answers.

use std::path::Path;
use std::time::Duration;

use super::raw::{RawLease, RawLeaseConsul, RawSeedConsul};
use super::values::{check_http_url, format_duration, is_https, local_hostname, url_host};
use super::{
    duration_in, duration_value, invalid, pick, ConsulConfig, Error, LeaseConfig, LeaseKind,
    DEFAULT_CONSUL_KEY, DEFAULT_CONSUL_TTL, DEFAULT_LOCK_DELAY, MAX_CONSUL_TTL, MAX_DEMOTE_DELAY,
    MAX_LOCK_DELAY, MIN_CONSUL_TTL, RECONNECT_DELAY_RANGE,
};

/// What the `http:` block says about TLS, for the advertise URL.
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpTls {
    /// This node serves TLS only (`http.tls-cert`).
    pub(super) serves: bool,
    /// This node can verify an https primary (`http.tls-ca`).
    pub(super) verifies: bool,
}

/// Resolves the lease settings from the Go-style `lease:` block and the
/// seed's `consul:` block; `port` is the HTTP port for the default
/// advertise URL, `https://` when this node serves TLS.
pub(super) fn lease_config(
    source: &Path,
    lease: RawLease,
    seed_consul: Option<RawSeedConsul>,
    port: u16,
    tls: HttpTls,
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
            Some((url.trim_end_matches('/').to_string(), key))
        }
        None => None,
    };
    let advertise_key = advertise
        .as_ref()
        .map_or("lease.advertise-url", |(_, k)| *k);
    let advertise = advertise.map(|(url, _)| url);

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
        let scheme = if tls.serves { "https" } else { "http" };
        let url = advertise.unwrap_or_else(|| format!("{scheme}://{hostname}:{port}"));
        (hostname, url)
    };
    check_advertise_tls(
        source,
        advertise_key,
        &advertise_url,
        static_replica,
        kind,
        tls,
    )?;
    if hostname.trim().is_empty() {
        return Err(invalid(
            source,
            "lease.hostname",
            "is empty (an unset environment variable?); remove it for the default",
        ));
    }

    let reconnect_delay = match &lease.reconnect_delay {
        Some(value) => Some(duration_in(
            source,
            "lease.reconnect-delay",
            value,
            RECONNECT_DELAY_RANGE.0,
            RECONNECT_DELAY_RANGE.1,
        )?),
        None => None,
    };
    let demote_delay = match &lease.demote_delay {
        Some(value) => duration_in(
            source,
            "lease.demote-delay",
            value,
            Duration::ZERO,
            MAX_DEMOTE_DELAY,
        )?,
        None => Duration::ZERO,
    };
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
        reconnect_delay,
        demote_delay,
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
    if is_https(&url) {
        return Err(invalid(
            source,
            url_key,
            format!(
                "`{url}`: Consul over https is not supported; talk to a local Consul agent \
                 over http (e.g. http://127.0.0.1:8500)"
            ),
        ));
    }

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

/// Checks the advertise URL against the node's TLS settings: a node that
/// serves TLS only must advertise https and one that serves plain HTTP
/// must not (replicas would fail to talk to it); a node that connects to
/// an https primary (a static replica, or any node of a Consul cluster
/// whose URLs are https) needs the CA to verify it.
fn check_advertise_tls(
    source: &Path,
    key: &str,
    url: &str,
    static_replica: bool,
    kind: LeaseKind,
    tls: HttpTls,
) -> Result<(), Error> {
    let https = is_https(url);
    if !static_replica && tls.serves && !https {
        return Err(invalid(
            source,
            key,
            format!(
                "`{url}` is http, but this node serves only TLS (http.tls-cert is set): \
                 advertise https://..."
            ),
        ));
    }
    if !static_replica && !tls.serves && https {
        return Err(invalid(
            source,
            key,
            format!(
                "`{url}` is https, but this node serves plain HTTP: set http.tls-cert and \
                 http.tls-key, or advertise http://..."
            ),
        ));
    }
    if https && !tls.verifies && (static_replica || kind == LeaseKind::Consul) {
        let whose = if static_replica {
            "the primary"
        } else {
            "the other nodes"
        };
        return Err(invalid(
            source,
            "http.tls-ca",
            format!(
                "is required: {key} `{url}` is https, and this node must verify {whose} \
                 against the cluster's CA; set http.tls-ca to its certificate file (PEM)"
            ),
        ));
    }
    Ok(())
}
