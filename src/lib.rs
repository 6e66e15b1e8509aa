//! litefs: a FUSE file system that replicates SQLite databases.
//!
//! Formats at the bottom (`ltx`, `sqlite`), database state in `store`, the
//! mount in `fuse`, replication in `http`, and `node` tying the threads
//! together. Dependencies point downward only. ARCHITECTURE.md has the
//! threads, the code map, the invariants and the lock order.

pub mod config;
pub mod cpu_wake;
pub mod exec;
pub mod fatal;
pub mod fuse;
pub mod http;
pub mod json;
pub mod lease;
pub mod logging;
pub mod ltx;
pub mod metrics;
pub mod node;
pub mod priority;
pub mod sdnotify;
pub mod sqlite;
pub mod store;
pub mod tls;
pub mod transfer;
