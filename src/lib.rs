//! litefs: a FUSE file system that replicates SQLite databases.
//!
//! Formats at the bottom (`ltx`, `sqlite`), the node's `role` and database
//! state in `store` above them, then the mount in `fuse` and replication in
//! `http` (neither uses the other), and `node` tying the threads together.
//! Dependencies point downward only. ARCHITECTURE.md has the
//! threads, the code map, the invariants and the lock order.

pub mod config;
pub mod cpu_wake;
pub mod exec;
pub mod fatal;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod json;
pub mod lease;
pub mod logging;
pub mod ltx;
pub mod metrics;
pub mod node;
pub mod priority;
pub mod progress;
pub mod role;
pub mod sdnotify;
pub mod sqlite;
pub mod status;
pub mod store;
pub mod tls;
pub mod transfer;
