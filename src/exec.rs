//! `exec`: the application litefs runs once the node is ready.
//!
//! The commands of the config's `exec` (or `litefs mount -- CMD ARGS...`)
//! run one after the other: every one but the last must exit 0 (database
//! migrations and the like), the last is the application. An entry with
//! `if-candidate: true` is skipped on a node that may not become primary;
//! when the last entry is skipped there is no application and litefs runs
//! on until it is stopped (as Go LiteFS does).
//!
//! Each command runs in a process group of its own, with litefs's
//! environment and standard streams. SIGINT and SIGTERM sent to litefs are
//! forwarded to that whole group (a shell and what it started), and litefs
//! waits for the command to exit. When the application exits, or a command
//! fails, or a command exits after a forwarded signal, litefs shuts down
//! (writes refused, lease released, mount removed) and exits with that
//! command's status: its exit code, or 128 + the signal that killed it.
//! A command that cannot be started exits "127" (not found), "126" (not
//! executable) or 1, as a shell would say.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};

use crate::config::{ExecCommand, Program};

/// How long a command is given to exit after SIGTERM when litefs stops
/// for another reason (a fatal error), before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// The exit of a command: which one, and how it ended.
#[derive(Debug)]
pub struct Exited {
    pid: u32,
    status: std::io::Result<ExitStatus>,
}

/// What the node does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep running (the next command was started, or there is none).
    Continue,
    /// Shut down and exit with this status.
    Exit(u8),
}

/// The commands to run and the one running.
pub struct Exec {
    /// The commands that apply to this node, each with whether it is the
    /// application (the last of the configured list).
    commands: Vec<(ExecCommand, bool)>,
    next: usize,
    running: Option<Running>,
    exits_tx: Sender<Exited>,
    exits: Receiver<Exited>,
    /// A signal was forwarded or litefs is stopping: start nothing more.
    stopping: bool,
}

struct Running {
    pid: u32,
    display: String,
    application: bool,
}

impl Exec {
    /// The commands of `commands` that apply to a node that is (or is not)
    /// a `candidate`.
    pub fn new(commands: &[ExecCommand], candidate: bool) -> Exec {
        let last = commands.len().saturating_sub(1);
        let mut kept = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            if command.if_candidate && !candidate {
                info!(
                    "exec: skipping {} (if-candidate, and this node may not become primary)",
                    command.program.display()
                );
                continue;
            }
            kept.push((command.clone(), i == last));
        }
        let (exits_tx, exits) = crossbeam_channel::unbounded();
        Exec {
            commands: kept,
            next: 0,
            running: None,
            exits_tx,
            exits,
            stopping: false,
        }
    }

    /// Where command exits arrive; hand each to [`Exec::exited`].
    pub fn exits(&self) -> &Receiver<Exited> {
        &self.exits
    }

    /// Whether the first command is waiting for the node to be ready.
    pub fn waiting(&self) -> bool {
        !self.stopping && self.next == 0 && !self.commands.is_empty()
    }

    /// Starts the next command; [`Next::Exit`] when it cannot be started.
    pub fn start_next(&mut self) -> Next {
        let Some((command, application)) = self.commands.get(self.next).cloned() else {
            return Next::Continue;
        };
        self.next += 1;
        let display = command.program.display();
        let mut cmd = match &command.program {
            Program::Shell(line) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(line);
                cmd
            }
            Program::Argv(args) => {
                let Some((program, args)) = args.split_first() else {
                    error!("exec: an empty command; shutting down with status 1");
                    self.stopping = true;
                    return Next::Exit(1);
                };
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
        };
        // Its own process group, so a forwarded signal reaches everything
        // it started.
        cmd.process_group(0);
        // litefs blocks SIGINT and SIGTERM in every thread (a child
        // inherits the mask), and takes them even when started with them
        // ignored (a shell's background job ignores SIGINT); it forwards
        // them on purpose, so the command gets them unblocked, with default
        // handling.
        // SAFETY: sigemptyset, sigprocmask and signal are async-signal-safe,
        // and nothing else runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let status = match e.kind() {
                    std::io::ErrorKind::NotFound => 127,
                    std::io::ErrorKind::PermissionDenied => 126,
                    _ => 1,
                };
                error!("exec: cannot start {display}: {e}; shutting down with status {status}");
                self.stopping = true;
                return Next::Exit(status);
            }
        };
        let pid = child.id();
        info!(
            "exec: started {display} (pid {pid}{})",
            if application {
                ", the application"
            } else {
                "; the next command starts when it exits 0"
            }
        );
        let tx = self.exits_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("exec-wait".into())
            .spawn(move || {
                let status = child.wait();
                let _ = tx.send(Exited { pid, status });
            });
        if let Err(e) = spawned {
            error!("exec: cannot start a thread to wait for pid {pid}: {e}; shutting down");
            self.running = Some(Running {
                pid,
                display,
                application,
            });
            self.stopping = true;
            self.terminate();
            return Next::Exit(1);
        }
        self.running = Some(Running {
            pid,
            display,
            application,
        });
        Next::Continue
    }

    /// Handles a command's exit: starts the next command after a success,
    /// or says to exit with the command's status.
    pub fn exited(&mut self, exited: Exited) -> Next {
        let Some(running) = self.running.take_if(|r| r.pid == exited.pid) else {
            return Next::Continue;
        };
        let (status, how) = match &exited.status {
            Ok(status) => (status_code(status), describe(status)),
            Err(e) => (1, format!("could not be waited for ({e})")),
        };
        if status == 0 && !running.application && !self.stopping {
            info!("exec: {} exited 0", running.display);
            return match self.start_next() {
                Next::Continue if self.running.is_none() => {
                    info!("exec: no application to run (the last entry was skipped)");
                    Next::Continue
                }
                next => next,
            };
        }
        if running.application || self.stopping {
            info!(
                "exec: {} {how}; shutting down with status {status}",
                running.display
            );
        } else {
            warn!(
                "exec: {} {how}; not starting the commands after it; shutting down with \
                 status {status}",
                running.display
            );
        }
        self.stopping = true;
        Next::Exit(status)
    }

    /// Forwards `signal` to the running command's process group. False
    /// when none runs.
    pub fn forward(&mut self, signal: i32, name: &str) -> bool {
        self.stopping = true;
        let Some(running) = &self.running else {
            return false;
        };
        info!(
            "exec: forwarding {name} to {} (process group {}); waiting for it to exit",
            running.display, running.pid
        );
        kill_group(running.pid, signal);
        true
    }

    /// Stops the running command (litefs stops for another reason): SIGTERM
    /// to its group, SIGKILL after [`TERMINATE_GRACE`].
    pub fn terminate(&mut self) {
        self.stopping = true;
        let Some(running) = self.running.take() else {
            return;
        };
        info!("exec: stopping {} (SIGTERM)", running.display);
        kill_group(running.pid, libc::SIGTERM);
        let deadline = Instant::now() + TERMINATE_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exits.recv_timeout(left) {
                Ok(exited) if exited.pid == running.pid => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        warn!(
            "exec: {} did not exit within {}s of SIGTERM; killing it",
            running.display,
            TERMINATE_GRACE.as_secs()
        );
        kill_group(running.pid, libc::SIGKILL);
        let _ = self.exits.recv_timeout(Duration::from_secs(2));
    }
}

/// Sends `signal` to the process group `pgid` (the command's pid).
fn kill_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; the
    // group is the child's own (process_group(0)) and lives at least as
    // long as the child, which has not been waited for yet, or its
    // processes that remain.
    if unsafe { libc::kill(-pgid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            warn!("exec: cannot signal process group {pgid}: {e}");
        }
    }
}

/// The status litefs exits with for a command's `status`: its exit code,
/// or 128 + the signal that killed it.
pub fn status_code(status: &ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_a_shell_would() {
        assert_eq!(status_code(&ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(status_code(&ExitStatus::from_raw(0)), 0);
        assert_eq!(status_code(&ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(status_code(&ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
