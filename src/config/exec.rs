//! The `exec` key (Go LiteFS's spelling): the application litefs starts
//! once the node is ready, as one shell command or a list of entries
//! `{cmd: "...", if-candidate: bool}`; and `exec-wait`, when to start it.

use std::path::Path;

use serde_yaml::Value;

use super::{invalid, Error};

/// One command to run. Entries run in order; all but the last must exit 0
/// (migrations and the like), the last is the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    pub program: Program,
    /// Run only on a node that may become primary (`lease.candidate`).
    pub if_candidate: bool,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A command line for `sh -c` (the config's `exec`).
    Shell(String),
    /// A program and its arguments, run as given (`litefs mount -- CMD
    /// ARGS...`).
    Argv(Vec<String>),
}

impl Program {
    /// The command as the log shows it.
    pub fn display(&self) -> String {
        match self {
            Program::Shell(line) => format!("sh -c {line:?}"),
            Program::Argv(args) => args
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// When the application starts (`exec-wait`, a litefs key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecWait {
    /// When systemd would be told READY=1: a primary at once; a replica
    /// once caught up with its primary, or after 30 s even if not; a node
    /// with no primary known after 30 s.
    #[default]
    Ready,
    /// A primary at once; a replica once caught up, however long that
    /// takes; a node with no primary known waits until it knows one.
    CaughtUp,
}

impl ExecWait {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecWait::Ready => "ready",
            ExecWait::CaughtUp => "caught-up",
        }
    }
}

/// Reads `exec`: a string, or a list of `{cmd, if-candidate}` entries (a
/// plain string in the list is a `cmd`). Null or an empty string is no
/// command.
pub(super) fn exec_commands(
    source: &Path,
    value: Option<Value>,
) -> Result<Vec<ExecCommand>, Error> {
    let shell = |line: String| ExecCommand {
        program: Program::Shell(line),
        if_candidate: false,
    };
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(line)) if line.trim().is_empty() => return Ok(Vec::new()),
        Some(Value::String(line)) => return Ok(vec![shell(line)]),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            return Err(invalid(
                source,
                "exec",
                "expected a command (a string) or a list of entries with `cmd` and \
                 `if-candidate`",
            ))
        }
    };
    let mut commands = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let key = |name: &str| format!("exec[{i}].{name}");
        let map = match item {
            Value::String(line) if !line.trim().is_empty() => {
                commands.push(shell(line));
                continue;
            }
            Value::Mapping(map) => map,
            _ => {
                return Err(invalid(
                    source,
                    &format!("exec[{i}]"),
                    "expected an entry with `cmd` (and `if-candidate`), or a command",
                ))
            }
        };
        let mut cmd = None;
        let mut if_candidate = false;
        for (name, value) in map {
            let name = name.as_str().unwrap_or("?").to_string();
            match (name.as_str(), value) {
                ("cmd", Value::String(line)) if !line.trim().is_empty() => cmd = Some(line),
                ("cmd", _) => {
                    return Err(invalid(source, &key("cmd"), "expected a non-empty command"))
                }
                ("if-candidate", Value::Bool(b)) => if_candidate = b,
                ("if-candidate", _) => {
                    return Err(invalid(
                        source,
                        &key("if-candidate"),
                        "expected true or false",
                    ))
                }
                _ => {
                    return Err(Error::UnknownKey {
                        path: source.to_path_buf(),
                        key: key(&name),
                        location: String::new(),
                        allowed: "`cmd`, `if-candidate`".to_string(),
                    })
                }
            }
        }
        let Some(line) = cmd else {
            return Err(invalid(
                source,
                &key("cmd"),
                "is required: the command to run",
            ));
        };
        commands.push(ExecCommand {
            program: Program::Shell(line),
            if_candidate,
        });
    }
    Ok(commands)
}

/// Reads `exec-wait`: `ready` (the default) or `caught-up`.
pub(super) fn exec_wait(source: &Path, value: Option<String>) -> Result<ExecWait, Error> {
    match value.as_deref() {
        None | Some("ready") => Ok(ExecWait::Ready),
        Some("caught-up") => Ok(ExecWait::CaughtUp),
        Some(other) => Err(invalid(
            source,
            "exec-wait",
            format!("`{other}` is not allowed; allowed: `ready`, `caught-up`"),
        )),
    }
}
