//! Entry points for the fuzz targets (`fuzz/`, `scripts/fuzz.sh`): each
//! feeds arbitrary bytes to one reader of untrusted input the way litefs
//! does, and must return (an error is fine) without panicking, hanging or
//! using unbounded memory. Not part of the API.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::store::Store;

/// The LTX decoder: header, every page, trailer.
pub fn ltx(data: &[u8]) {
    let Ok(mut decoder) = crate::ltx::LtxDecoder::new(data) else {
        return;
    };
    let page_size = decoder.header().page_size as usize;
    let mut page = vec![0u8; page_size];
    loop {
        match decoder.next_page(&mut page) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let _ = decoder.finish();
}

/// A replica reading a replication stream into a fresh store in `dir`,
/// as litefs does: each LTX file queued (`Db::enqueue_ltx`), deletions
/// done, then every queue applied in order, as the apply thread would
/// (without the mount's locks).
pub fn stream(data: &[u8], dir: &Path) {
    let Ok(store) = Store::open(dir) else {
        return;
    };
    let mut receive = |db: &std::sync::Arc<crate::store::Db>, path: &Path| db.enqueue_ltx(path);
    let mut delete = |name: &str| store.delete_db(name).map(|_| ());
    let mut receivers = crate::http::Receivers {
        receive: &mut receive,
        delete: &mut delete,
    };
    let stop = AtomicBool::new(false);
    let _ = crate::http::read_frames(data, "http://fuzz", &store, &mut receivers, &stop);
    for db in store.dbs() {
        while let Some(path) = db.front_queued() {
            let applied = db.apply_ltx(&path).is_ok();
            db.finish_queued(&path, applied);
        }
    }
}

/// A rollback journal as recovery reads it (written to `dir/journal`).
pub fn journal(data: &[u8], dir: &Path) {
    let path = dir.join("journal");
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::sqlite::read_journal_pages(&path);
        let _ = crate::sqlite::read_journal_head(&path);
    }
}

/// A WAL as the WAL follower and recovery read it (written to `dir/wal`).
pub fn wal(data: &[u8], dir: &Path) {
    let path = dir.join("wal");
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::sqlite::wal::read_commits(&path);
    }
}

/// An HTTP request head as the server parses it.
pub fn http_head(data: &[u8]) {
    let _ = crate::http::parse_request_head(data);
}

/// A config file as `litefs -config` loads it.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse(text, Path::new("/fuzz/litefs.yml"));
    }
}

/// A file offered for import, checked and turned into an LTX file as
/// `POST /import` and `litefs import` do (in a store in `dir`).
pub fn import(data: &[u8], dir: &Path) {
    let Ok(store) = Store::open(&dir.join("store")) else {
        return;
    };
    let Ok(db) = store.create_db("fuzz.db") else {
        return;
    };
    let src = dir.join("import.db");
    if std::fs::write(&src, data).is_ok() {
        let _ = db.write_import_ltx(&src, &dir.join("import.ltx"));
    }
}
