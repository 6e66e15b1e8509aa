//! Copying whole databases in and out of a running node: `POST
//! /import?name=NAME` (the body is an SQLite database file; primary only)
//! and `GET /export?name=NAME` (a snapshot as an LTX file, from any node),
//! used by `litefs import` and `litefs export` (`crate::transfer`).
//!
//! An import is received into the store's incoming directory, checked,
//! then applied as one transaction under SQLite's locks (`Applier::import`)
//! and replicated like any commit. An export is a snapshot written to a
//! temporary file first (retried while a write transaction is under way),
//! so what is sent is one consistent, checksummed state.

use crate::progress::{Counted, Progress};
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::stream::{open_snapshot, TempFile, SNAPSHOT_COUNTER};
use super::{respond_text, Request, Shared, COPY_BUFFER, SNAPSHOT_RETRY};
use crate::store;

/// The `Content-Type` of an exported snapshot.
pub const LTX_CONTENT_TYPE: &str = "application/x-litefs-ltx";
/// How long an export keeps trying while write transactions get in its way.
const EXPORT_PATIENCE: Duration = Duration::from_secs(30);

/// `POST /import?name=NAME`: the body (its `Content-Length` required) is
/// streamed to a file, whatever its size.
pub(super) fn import(shared: &Shared, mut request: Request, query: &str) -> u16 {
    let peer = request.peer();
    // Every refusal first reads the body away: the client sends all of it
    // before it reads the answer. The client has the cluster's token.
    let refuse = |mut request: Request, status: u16, message: &str| {
        request.discard_body();
        respond_text(request, status, message, &[])
    };
    let Some(len) = request.content_length() else {
        return respond_text(
            request,
            411,
            "an import needs a Content-Length (the size of the database file)",
            &[],
        );
    };
    let name = match database_name(query) {
        Ok(name) => name,
        Err(message) => return refuse(request, 400, &message),
    };
    let Some((import, role)) = shared.importer.get() else {
        return refuse(
            request,
            503,
            "this node cannot import yet (its mount is not up)",
        );
    };
    if !shared.serving.load(Ordering::SeqCst) || !role.is_primary() {
        let primary = role
            .hostname()
            .unwrap_or_else(|| "not known yet".to_string());
        return refuse(
            request,
            409,
            &format!("this node is a replica: import on the primary ({primary})"),
        );
    }
    let store = &shared.store;
    let tmp = match store.incoming_dir() {
        Ok(dir) => TempFile(dir.join(format!(
            "import-{}.tmp",
            SNAPSHOT_COUNTER.fetch_add(1, Ordering::SeqCst)
        ))),
        Err(err) => return refuse(request, 500, &err.to_string()),
    };
    let progress = Progress::start(format!("import of {name} from {peer}"), Some(len));
    let mut body = Counted::new(request.body(), progress);
    let received = File::create(&tmp.0).and_then(|file| {
        let mut file = io::BufWriter::with_capacity(COPY_BUFFER, file);
        io::copy(&mut body, &mut file)?;
        file.flush()
    });
    body.into_progress().finish(received.is_ok());
    if let Err(err) = received {
        log::warn!("import of {name} ({len} bytes) from {peer}: receiving the file failed: {err}");
        return respond_text(
            request,
            400,
            &format!("cannot receive the file: {err}"),
            &[],
        );
    }
    if let Err(err) = crate::sqlite::check_database_file(&tmp.0) {
        let message = err
            .to_string()
            .replace(&tmp.0.display().to_string(), "the file");
        return respond_text(request, 400, &format!("not importable: {message}"), &[]);
    }
    let db = match store.create_db(&name) {
        Ok(db) => db,
        Err(err) => return respond_text(request, 400, &err.to_string(), &[]),
    };
    match import(&db, &tmp.0, role) {
        Ok(pos) => {
            store.notify_change();
            log::info!("database {name}: imported a file from {peer}, now at {pos}");
            respond_text(
                request,
                200,
                &format!("imported {name} at position {pos}"),
                &[],
            )
        }
        Err(err) => {
            log::error!("database {name}: import from {peer} failed: {err}");
            respond_text(request, 500, &format!("import failed: {err}"), &[])
        }
    }
}

/// `GET /export?name=NAME`.
pub(super) fn export(shared: &Shared, request: Request, query: &str) -> u16 {
    let peer = request.peer();
    let name = match database_name(query) {
        Ok(name) => name,
        Err(message) => return respond_text(request, 400, &message, &[]),
    };
    let Some(db) = shared.store.db(&name) else {
        return respond_text(
            request,
            404,
            &format!("no database {name} on this node"),
            &[],
        );
    };
    let deadline = Instant::now() + EXPORT_PATIENCE;
    let tmp = TempFile(db.ltx_dir().join(format!(
        "export-{}.tmp",
        SNAPSHOT_COUNTER.fetch_add(1, Ordering::SeqCst)
    )));
    loop {
        let written = File::create(&tmp.0)
            .map_err(|err| store::Error::Io {
                what: format!("creating a snapshot of database {name}"),
                path: tmp.0.clone(),
                source: err,
            })
            .and_then(|file| db.write_snapshot(io::BufWriter::with_capacity(COPY_BUFFER, file)));
        match written {
            Ok(_) => break,
            Err(store::Error::Changed { .. }) if Instant::now() < deadline => {
                std::thread::sleep(SNAPSHOT_RETRY);
            }
            Err(store::Error::NoTransactions { .. }) => {
                return respond_text(
                    request,
                    404,
                    &format!("database {name} has no transactions yet"),
                    &[],
                )
            }
            Err(err) => {
                log::warn!("database {name}: export to {peer} failed: {err}");
                return respond_text(request, 500, &format!("export failed: {err}"), &[]);
            }
        }
    }
    let (file, len, _) = match open_snapshot(&tmp.0) {
        Ok(opened) => opened,
        Err(err) => return respond_text(request, 500, &format!("export failed: {err}"), &[]),
    };
    let mut file = Counted::new(
        file,
        Progress::start(format!("database {name}: export to {peer}"), Some(len)),
    );
    let sent = request.respond_file(LTX_CONTENT_TYPE, &mut file, len);
    file.into_progress().finish(sent.is_ok());
    match sent {
        Ok(()) => log::info!("database {name}: exported {len} bytes to {peer}"),
        Err(err) => log::debug!("database {name}: sending an export to {peer} failed: {err}"),
    }
    200
}

/// The `name` parameter of a query string, percent-decoded and checked as
/// a database name.
fn database_name(query: &str) -> Result<String, String> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .ok_or("the request needs ?name=<database>")?;
    let name = percent_decode(value).ok_or("the name is not valid percent-encoded UTF-8")?;
    store::validate_name(&name).map_err(|err| err.to_string())?;
    Ok(name)
}

/// Decodes `%XX` escapes (and `+` as a space); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes every byte outside `A-Z a-z 0-9 - . _ ~` as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_percent_encoding() {
        for name in ["a.db", "with space.db", "ünïcode.db", "a&b=c%d.db"] {
            assert_eq!(percent_decode(&percent_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(database_name("x=1&name=a%2Eb").as_deref(), Ok("a.b"));
        assert!(database_name("x=1").is_err());
        assert!(database_name("name=a%2Fb").is_err());
    }
}
