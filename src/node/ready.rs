//! Readiness: what systemd is told (`READY=1` once the mount is up and the
//! node knows its role; a replica once caught up with its primary, or after
//! `READY_WAIT`; then `STATUS=` on every role change), and when `exec` may
//! start the application (`exec-wait`).

use std::time::{Duration, Instant};

use log::info;

use crate::config::ExecWait;
use crate::role::Role;
use crate::sdnotify::SdNotify;
use crate::store::Store;

/// How long a node waits to be caught up (or to learn its role) before it
/// tells systemd it is ready anyway.
pub(super) const READY_WAIT: Duration = Duration::from_secs(30);

/// What systemd has been told: `READY=1` once the mount is up and the node
/// knows its role (a replica: once caught up with its primary, or after
/// `READY_WAIT`), then `STATUS=` on every role change.
pub(super) struct Readiness {
    pub(super) notify: SdNotify,
    pub(super) ready: bool,
    /// The role as `systemctl status` shows it.
    status: String,
    /// Since when the node has had this role.
    since: Instant,
}

impl Readiness {
    pub(super) fn new(notify: SdNotify, primary: bool) -> Readiness {
        Readiness {
            notify,
            ready: false,
            status: if primary {
                "primary"
            } else {
                "starting: no primary known yet"
            }
            .to_string(),
            since: Instant::now(),
        }
    }

    pub(super) fn set_status(&mut self, status: String) {
        if status != self.status {
            self.status = status;
            self.since = Instant::now();
            if self.ready {
                self.notify.status(&self.status);
            }
        }
    }

    /// Sends `READY=1` when the node is ready (see the type's comment).
    pub(super) fn check(&mut self, role: &Role, store: &Store) {
        if self.ready {
            return;
        }
        let waited = self.since.elapsed() >= READY_WAIT;
        let status = if role.is_primary() {
            Some(self.status.clone())
        } else if role.hostname().is_some() {
            match store.idle_caught_up_at() {
                Some(at) if at >= self.since => Some(self.status.clone()),
                _ if waited => {
                    info!(
                        "{}: not caught up after {}s; telling systemd the node is ready anyway",
                        self.status,
                        READY_WAIT.as_secs()
                    );
                    Some(format!("{}, still catching up", self.status))
                }
                _ => None,
            }
        } else if waited {
            Some("read-only: no primary is known yet".to_string())
        } else {
            None
        };
        if let Some(status) = status {
            self.notify.ready(&status);
            self.ready = true;
        }
    }

    /// Whether `exec` may start the application: when systemd has been
    /// told the node is ready, or (`caught-up`) when it is the primary or
    /// a replica caught up with its primary.
    pub(super) fn exec_may_start(&self, wait: ExecWait, role: &Role, store: &Store) -> bool {
        match wait {
            ExecWait::Ready => self.ready,
            ExecWait::CaughtUp => {
                role.is_primary()
                    || (role.hostname().is_some()
                        && store.idle_caught_up_at().is_some_and(|at| at >= self.since))
            }
        }
    }
}
