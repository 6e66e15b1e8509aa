//! `exit-on-error`: where the lease and replication threads report an error
//! that the config makes fatal. With `exit-on-error: false` (the default)
//! nothing is fatal and those threads retry as always.
//!
//! Fatal, with `exit-on-error: true`, are the errors retrying cannot fix
//! without an operator, and a lost lease:
//!
//! - this node loses the lease while it is primary (Consul says its session
//!   or key is gone, or it could not renew within half the TTL);
//! - Consul refuses the lease requests with HTTP 401 or 403 (ACLs: litefs
//!   sends no Consul token);
//! - the primary refuses this replica with HTTP 401 or 403 (`http.token`
//!   differs);
//! - a local I/O error (disk full, EIO, permissions) while storing or
//!   applying what the primary sent.
//!
//! Everything else (Consul or the primary unreachable, timeouts, a damaged
//! or diverged stream, which a snapshot heals, no primary known) is retried
//! either way. The node then stops as on SIGTERM (writes refused, lease
//! released, mount removed) and exits with status 1.

use crossbeam_channel::{Receiver, Sender};

/// A handle to report fatal errors; does nothing without `exit-on-error`.
#[derive(Clone, Debug, Default)]
pub struct Fatal {
    tx: Option<Sender<String>>,
}

impl Fatal {
    /// A handle that reports nothing: errors are retried.
    pub fn disabled() -> Fatal {
        Fatal { tx: None }
    }

    /// A handle whose reports arrive on the returned receiver.
    pub fn channel() -> (Fatal, Receiver<String>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Fatal { tx: Some(tx) }, rx)
    }

    /// Reports `message` as fatal; returns false (and does nothing) when
    /// errors are not fatal.
    pub fn report(&self, message: impl Into<String>) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let message = message.into();
        log::error!("exit-on-error: {message}; stopping");
        // The node may be stopping already; then the report is moot.
        let _ = tx.send(message);
        true
    }
}
