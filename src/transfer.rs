//! `litefs import` and `litefs export`: the client side of copying a whole
//! database into a running primary or out of any node, over the node's
//! HTTP API (`POST /import`, `GET /export`; see `http/server/transfer.rs`).
//!
//! An import checks the file locally first (an SQLite header, a whole
//! number of pages, not in WAL mode), so a wrong file is refused before a
//! byte is sent. An export arrives as an LTX snapshot; its pages are
//! written to a temporary file beside the destination, every checksum is
//! verified, and only then is the file fsynced and renamed into place, so
//! the destination is either the whole, verified database or untouched.

use crate::progress::{Counted, Progress};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::tls::ClientTls;
use crate::{http, ltx, sqlite};

/// The node address used when there is no config and no `-url`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:20202";
/// Time allowed to connect to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error message read from a refusing node.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Which node to talk to, the cluster's token if it has one, and the CAs
/// an `https://` node is verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The config's `http.tls-ca`; an https URL is refused without it.
    pub tls: Option<ClientTls>,
}

impl Target {
    /// The node of `config` (its HTTP port on loopback, its token, its
    /// CAs), with `url` taking precedence when given; [`DEFAULT_URL`]
    /// without either. A node that serves TLS is asked at
    /// `https://localhost:<port>`: its certificate must name `localhost`
    /// for that, or pass `-url`.
    pub fn new(config: Option<&Config>, url: Option<&str>) -> Target {
        let url = match (url, config) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(config)) if config.http_tls.is_some() => {
                format!("https://localhost:{}", config.http_port())
            }
            (None, Some(config)) => format!("http://127.0.0.1:{}", config.http_port()),
            (None, None) => DEFAULT_URL.to_string(),
        };
        Target {
            url,
            token: config.and_then(|c| c.http_token.clone()),
            tls: config.and_then(|c| c.http_tls_ca.clone()),
        }
    }
}

/// What went wrong with an import or an export; each says what to do.
#[derive(Debug)]
pub enum Error {
    /// The local file cannot be used.
    File { path: PathBuf, reason: String },
    /// The node could not be reached or the transfer broke off.
    Request { url: String, reason: String },
    /// The node answered with an error.
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// What the node sent is not a valid database snapshot.
    Damaged { url: String, reason: String },
    /// An https URL that cannot be verified (no CA given, or a build
    /// without TLS), or a node whose certificate does not verify.
    Tls { url: String, reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Request { url, reason } => write!(
                f,
                "{url}: {reason} (is litefs running there? pass -url to name another node)"
            ),
            Error::Refused {
                url,
                status,
                message,
            } => write!(
                f,
                "{url} refused ({status}): {}",
                crate::logging::escape_controls(message)
            ),
            Error::Damaged { url, reason } => {
                write!(f, "{url}: the snapshot received is damaged: {reason}")
            }
            Error::Tls { url, reason } => write!(f, "{url}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// Loads the SQLite database `file` into database `name` on the primary
/// at `target`, as one transaction. Returns the node's answer.
pub fn import(target: &Target, name: &str, file: &Path) -> Result<String, Error> {
    let file_error = |reason: String| Error::File {
        path: file.to_path_buf(),
        reason,
    };
    sqlite::check_database_file(file).map_err(|err| file_error(strip_path(err, file)))?;
    let body = File::open(file).map_err(|err| file_error(err.to_string()))?;
    let len = body
        .metadata()
        .map_err(|err| file_error(err.to_string()))?
        .len();
    let url = format!("{}/import?name={}", target.url, http::percent_encode(name));
    let mut request = agent(target, &url)?
        .post(&url)
        .header("Content-Type", "application/vnd.sqlite3")
        .header("Content-Length", len.to_string());
    if let Some(token) = &target.token {
        request = request.header("Authorization", http::auth_header(token));
    }
    let progress = Progress::start(format!("importing {}", file.display()), Some(len)).with_bar();
    let mut body = Counted::new(BufReader::new(body), progress);
    let response = request.send(ureq::SendBody::from_reader(&mut body));
    body.into_progress().finish(response.is_ok());
    let response = response.map_err(|err| request_error(target, &url, err))?;
    let (status, mut body) = (response.status().as_u16(), response.into_body());
    let message = read_message(&mut body);
    if status != 200 {
        return Err(Error::Refused {
            url,
            status,
            message,
        });
    }
    Ok(message)
}

/// Writes a consistent copy of database `name` on the node at `target` to
/// `file` (replaced only once the copy is whole and verified). Returns the
/// TXID of the copy.
pub fn export(target: &Target, name: &str, file: &Path) -> Result<u64, Error> {
    let url = format!("{}/export?name={}", target.url, http::percent_encode(name));
    let body = get(target, &url)?;
    let len = body.content_length();
    let tmp = temp_path(file);
    let progress = Progress::start(format!("exporting {name}"), len).with_bar();
    let mut reader = Counted::new(body.into_reader(), progress);
    let result = write_snapshot_as_database(&mut reader, &tmp, &url);
    reader.into_progress().finish(result.is_ok());
    match result {
        Ok(txid) => {
            let done = || -> io::Result<()> {
                fs::rename(&tmp, file)?;
                let dir = match file.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                File::open(dir)?.sync_all()
            };
            done().map_err(|err| Error::File {
                path: file.to_path_buf(),
                reason: format!("cannot put the copy in place: {err}"),
            })?;
            Ok(txid)
        }
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// Decodes an LTX snapshot from `reader` into a database file at `path`,
/// verifying every checksum, and fsyncs it. Returns its max TXID.
fn write_snapshot_as_database(reader: impl io::Read, path: &Path, url: &str) -> Result<u64, Error> {
    let damaged = |err: ltx::Error| Error::Damaged {
        url: url.to_string(),
        reason: err.to_string(),
    };
    let file_error = |err: io::Error| Error::File {
        path: path.to_path_buf(),
        reason: err.to_string(),
    };
    let mut decoder = ltx::LtxDecoder::new(BufReader::new(reader)).map_err(damaged)?;
    let header = *decoder.header();
    if !header.is_snapshot() {
        return Err(Error::Damaged {
            url: url.to_string(),
            reason: format!(
                "expected a snapshot (min TXID 1), got TXIDs {}-{}",
                header.min_txid, header.max_txid
            ),
        });
    }
    // A new file of its own: whatever is at the temporary name (a copy left
    // by a killed export, or a symlink planted to redirect the write) is
    // removed, not followed, and a name that reappears meanwhile fails the
    // export (O_EXCL, O_NOFOLLOW).
    let _ = fs::remove_file(path);
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(file_error)?;
    let page_size = header.page_size;
    let mut page = vec![0u8; page_size as usize];
    while let Some(pgno) = decoder.next_page(&mut page).map_err(damaged)? {
        out.write_all_at(&page, u64::from(pgno - 1) * u64::from(page_size))
            .map_err(file_error)?;
    }
    // For a snapshot this also checks the pages against its post-apply
    // checksum.
    decoder.finish().map_err(damaged)?;
    out.set_len(u64::from(header.commit) * u64::from(page_size))
        .and_then(|()| out.sync_all())
        .map_err(file_error)?;
    Ok(header.max_txid)
}

/// `GET url` of the node at `target`, with its token: the body of a 200
/// answer, else the node's refusal.
pub(crate) fn get(target: &Target, url: &str) -> Result<ureq::Body, Error> {
    let mut request = agent(target, url)?.get(url);
    if let Some(token) = &target.token {
        request = request.header("Authorization", http::auth_header(token));
    }
    let response = request
        .call()
        .map_err(|err| request_error(target, url, err))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        return Err(Error::Refused {
            url: url.to_string(),
            status,
            message: read_message(&mut body),
        });
    }
    Ok(body)
}

/// An agent for `url` on `target`: with `target`'s CAs for https (refused
/// without them).
fn agent(target: &Target, url: &str) -> Result<ureq::Agent, Error> {
    let builder = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None);
    if !url.starts_with("https://") {
        return Ok(ureq::Agent::new_with_config(builder.build()));
    }
    let refused = |reason: &str| Error::Tls {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    match &target.tls {
        #[cfg(feature = "tls")]
        Some(tls) => Ok(ureq::Agent::new_with_config(
            builder.tls_config(tls.ureq_config()).build(),
        )),
        #[cfg(not(feature = "tls"))]
        Some(tls) => match *tls {},
        None if crate::tls::BUILT => Err(refused(
            "an https URL needs the CA to verify the node against: pass -config with a \
             config that sets http.tls-ca",
        )),
        None => Err(refused(crate::tls::NOT_BUILT)),
    }
}

fn request_error(target: &Target, url: &str, err: ureq::Error) -> Error {
    if let Some(reason) = crate::tls::certificate_problem(&err, target.tls.as_ref()) {
        return Error::Tls {
            url: url.to_string(),
            reason,
        };
    }
    Error::Request {
        url: url.to_string(),
        reason: err.to_string(),
    }
}

fn read_message(body: &mut ureq::Body) -> String {
    body.with_config()
        .limit(MAX_ERROR_BODY)
        .lossy_utf8(true)
        .read_to_string()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The error without the path it names (the caller names it already).
fn strip_path(err: sqlite::Error, path: &Path) -> String {
    match err {
        sqlite::Error::File { source, .. } => source.to_string(),
        other => other
            .to_string()
            .replace(&path.display().to_string(), "the file"),
    }
}

/// `<file>.litefs-export.tmp` beside `file`.
fn temp_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".litefs-export.tmp");
    file.with_file_name(name)
}
