//! The `litefs` command: mounts the file system (`litefs -config PATH`,
//! `litefs mount`) and offers operator commands to inspect LTX files and
//! database checksums.
//!
//! Arguments are parsed by hand: the command set is small and the seed's
//! Go-style `-config PATH` must keep working alongside `--config PATH`.
//! Exit status: 0 on success, 1 on failure, 2 for bad usage (`EXIT_USAGE`);
//! a mount that ran an `exec` application exits with its status.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use litefs::config::{self, ExecCommand, LeaseKind, Program};
use litefs::ltx;

const USAGE: &str = "\
litefs: a FUSE file system that replicates SQLite databases across a cluster.

Usage:
  litefs [-config PATH]         mount and run (same as `litefs mount`)
  litefs mount [-config PATH] [-- CMD ARGS...]
                                mount the file system and replicate until
                                SIGINT or SIGTERM; with CMD (or the config's
                                `exec`), start CMD once the node is ready,
                                forward SIGINT/SIGTERM to it, and when it
                                exits, stop and exit with its status
  litefs ltx dump FILE          print an LTX file: header, every page number
                                with its page checksum, trailer
  litefs ltx verify FILE...     check LTX files; prints OK or the reason for
                                each, exit status 1 if any is corrupt
  litefs ltx checksum DBFILE    print the database checksum of a SQLite file
                                (16 hex digits)
  litefs import -name NAME [-url URL] [-config PATH] FILE
                                load the SQLite database FILE into database
                                NAME on the running primary, as one
                                transaction that replicates
  litefs export -name NAME [-url URL] [-config PATH] FILE
                                write a consistent copy of database NAME
                                from any running node to FILE
  litefs status [-url URL] [-config PATH] [-json]
                                what a running node is (primary, or the
                                replica of which node, how far behind)
                                and each database's position
  litefs version                print the version
  litefs help                   print this help

Without -config, the config is the first of ./litefs.yml, ~/litefs.yml,
/etc/litefs.yml. `--config` works too. Logging goes to stderr; set
RUST_LOG (e.g. RUST_LOG=debug) to change the level (default: info, or
what the config's `log:` block says). import, export and status talk to the
node's HTTP port: -url, else the config's port on 127.0.0.1 (with its
http.token), else http://127.0.0.1:20202.
";

/// `litefs import` or `litefs export` as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transfer {
    import: bool,
    name: String,
    url: Option<String>,
    config: Option<PathBuf>,
    file: PathBuf,
}

/// Exit status for a command line litefs does not understand.
const EXIT_USAGE: u8 = 2;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Mount {
        config: Option<PathBuf>,
        /// `-- CMD ARGS...`: run instead of the config's `exec`.
        exec: Option<Vec<String>>,
    },
    LtxDump(PathBuf),
    LtxVerify(Vec<PathBuf>),
    LtxChecksum(PathBuf),
    Transfer(Transfer),
    Status {
        url: Option<String>,
        config: Option<PathBuf>,
        json: bool,
    },
    Version,
    Help,
}

fn main() -> ExitCode {
    // The defaults until the config says otherwise (`log:`).
    litefs::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(litefs::fuse::mount_helper::HELPER_ARG) {
        return litefs::fuse::mount_helper::serve();
    }
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("litefs: {message}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("litefs {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Mount { config, exec } => mount(config, exec),
        Command::LtxDump(path) => ltx_dump(&path),
        Command::LtxVerify(paths) => ltx_verify(&paths),
        Command::LtxChecksum(path) => ltx_checksum(&path),
        Command::Transfer(transfer) => run_transfer(&transfer),
        Command::Status { url, config, json } => status(url, config, json),
    }
}

/// Parses the arguments after the program name.
fn parse_args(args: &[String]) -> Result<Command, String> {
    let Some(first) = args.first() else {
        return Ok(Command::Mount {
            config: None,
            exec: None,
        });
    };
    let rest = &args[1..];
    match first.as_str() {
        "help" | "-h" | "--help" | "-help" => Ok(Command::Help),
        "version" | "--version" | "-version" => {
            no_more_args(rest, "version")?;
            Ok(Command::Version)
        }
        "mount" => parse_mount_flags(rest),
        "ltx" => parse_ltx(rest),
        "import" | "export" => parse_transfer(first == "import", rest),
        "status" => parse_status(rest),
        flag if flag.starts_with('-') => parse_mount_flags(args),
        other => Err(format!("unknown command `{other}`")),
    }
}

/// Parses `-config PATH` / `--config PATH` / `-config=PATH` for mounting,
/// and `-- CMD ARGS...`.
fn parse_mount_flags(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut exec = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let path = match arg.as_str() {
            "-h" | "--help" | "-help" => return Ok(Command::Help),
            "--" => {
                let command: Vec<String> = iter.by_ref().cloned().collect();
                if command.is_empty() {
                    return Err("`--` needs a command after it: -- CMD ARGS...".to_string());
                }
                exec = Some(command);
                break;
            }
            "-config" | "--config" => match iter.next() {
                Some(path) => path.clone(),
                None => return Err(format!("`{arg}` needs a path: {arg} PATH")),
            },
            other => match other
                .strip_prefix("-config=")
                .or_else(|| other.strip_prefix("--config="))
            {
                Some(path) => path.to_string(),
                None if other.starts_with('-') => return Err(format!("unknown flag `{other}`")),
                None => return Err(format!("unexpected argument `{other}`")),
            },
        };
        if path.is_empty() {
            return Err("the config path is empty".to_string());
        }
        if config.replace(PathBuf::from(path)).is_some() {
            return Err("-config is given more than once".to_string());
        }
    }
    Ok(Command::Mount { config, exec })
}

/// Parses `import`/`export`: `-name NAME`, `-url URL`, `-config PATH`
/// (each also `--flag` and `-flag=value`), then one FILE.
fn parse_transfer(import: bool, args: &[String]) -> Result<Command, String> {
    let command = if import { "import" } else { "export" };
    let usage = format!("{command} -name NAME [-url URL] [-config PATH] FILE");
    let (mut name, mut url, mut config, mut files) = (None, None, None, Vec::new());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if matches!(arg.as_str(), "-h" | "--help" | "-help") {
            return Ok(Command::Help);
        }
        if !arg.starts_with('-') || arg == "-" {
            files.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match flag.trim_start_matches('-') {
            "name" => &mut name,
            "url" => &mut url,
            "config" => &mut config,
            _ => return Err(format!("unknown flag `{flag}` for `{command}`: {usage}")),
        };
        let value = match inline.or_else(|| iter.next().cloned()) {
            Some(value) if !value.is_empty() => value,
            _ => return Err(format!("`{flag}` needs a value: {usage}")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("`{flag}` is given more than once"));
        }
    }
    let Some(name) = name else {
        return Err(format!("`{command}` needs -name NAME: {usage}"));
    };
    Ok(Command::Transfer(Transfer {
        import,
        name,
        url,
        config: config.map(PathBuf::from),
        file: one_file(&files, &usage)?,
    }))
}

/// Parses `status`: `-url URL`, `-config PATH`, `-json`.
fn parse_status(args: &[String]) -> Result<Command, String> {
    let usage = "status [-url URL] [-config PATH] [-json]";
    let (mut url, mut config, mut json) = (None, None, false);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match flag.trim_start_matches('-') {
            "h" | "help" => return Ok(Command::Help),
            "json" if inline.is_none() => {
                json = true;
                continue;
            }
            "url" => &mut url,
            "config" => &mut config,
            _ => return Err(format!("unknown argument `{arg}` for `status`: {usage}")),
        };
        let value = match inline.or_else(|| iter.next().cloned()) {
            Some(value) if !value.is_empty() && !value.starts_with('-') => value,
            _ => return Err(format!("`{flag}` needs a value: {usage}")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("`{flag}` is given more than once"));
        }
    }
    Ok(Command::Status {
        url,
        config: config.map(PathBuf::from),
        json,
    })
}

/// The node `url` or `config` names (see `transfer::Target::new`). The
/// config only tells where the node listens and its token; without
/// either, one found on the search path is used if any.
fn target(
    url: Option<&str>,
    config: Option<&PathBuf>,
) -> Result<litefs::transfer::Target, config::Error> {
    let config_path = match (config, url) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => config::find_config().ok(),
        (None, Some(_)) => None,
    };
    let config = config_path.map(|path| config::load(&path)).transpose()?;
    Ok(litefs::transfer::Target::new(config.as_ref(), url))
}

/// Prints the status of the node `url` or `config` names.
fn status(url: Option<String>, config: Option<PathBuf>, json: bool) -> ExitCode {
    let target = match target(url.as_deref(), config.as_ref()) {
        Ok(target) => target,
        Err(e) => return fail(&e),
    };
    match litefs::status::fetch(&target) {
        Ok((text, _)) if json => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((_, info)) => {
            print!("{}", litefs::status::format(&target.url, &info));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `import` or `export` against the node the flags or config name.
fn run_transfer(transfer: &Transfer) -> ExitCode {
    let target = match target(transfer.url.as_deref(), transfer.config.as_ref()) {
        Ok(target) => target,
        Err(e) => return fail(&e),
    };
    let (name, file) = (&transfer.name, &transfer.file);
    if transfer.import {
        match litefs::transfer::import(&target, name, file) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    } else {
        match litefs::transfer::export(&target, name, file) {
            Ok(txid) => {
                println!("exported {name} at TXID {txid:016x} to {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    }
}

/// Parses the `ltx` subcommands.
fn parse_ltx(args: &[String]) -> Result<Command, String> {
    let Some(sub) = args.first() else {
        return Err("`ltx` needs a subcommand: dump, verify or checksum".to_string());
    };
    let files = &args[1..];
    if files
        .iter()
        .any(|f| matches!(f.as_str(), "-h" | "--help" | "-help"))
    {
        return Ok(Command::Help);
    }
    if let Some(flag) = files
        .iter()
        .find(|f| f.starts_with('-') && f.as_str() != "-")
    {
        return Err(format!("unknown flag `{flag}` for `ltx {sub}`"));
    }
    match sub.as_str() {
        "-h" | "--help" | "-help" | "help" => Ok(Command::Help),
        "dump" => Ok(Command::LtxDump(one_file(files, "ltx dump FILE")?)),
        "checksum" => Ok(Command::LtxChecksum(one_file(
            files,
            "ltx checksum DBFILE",
        )?)),
        "verify" if files.is_empty() => {
            Err("`ltx verify` needs at least one file: ltx verify FILE...".to_string())
        }
        "verify" => Ok(Command::LtxVerify(
            files.iter().map(PathBuf::from).collect(),
        )),
        other => Err(format!(
            "unknown ltx subcommand `{other}` (known: dump, verify, checksum)"
        )),
    }
}

fn one_file(files: &[String], usage: &str) -> Result<PathBuf, String> {
    match files {
        [file] => Ok(PathBuf::from(file)),
        [] => Err(format!("missing file: {usage}")),
        _ => Err(format!("too many arguments: {usage}")),
    }
}

fn no_more_args(rest: &[String], command: &str) -> Result<(), String> {
    match rest.first() {
        Some(extra) => Err(format!("`{command}` takes no arguments (got `{extra}`)")),
        None => Ok(()),
    }
}

/// Loads the config and runs the node until it is told to stop (or its
/// `exec` command exits). `exec` from the command line replaces the
/// config's.
fn mount(config_path: Option<PathBuf>, exec: Option<Vec<String>>) -> ExitCode {
    let path = match config_path {
        Some(path) => path,
        None => match config::find_config() {
            Ok(path) => path,
            Err(e) => return fail(&e),
        },
    };
    let mut config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if let Some(args) = exec {
        config.exec = vec![ExecCommand {
            program: Program::Argv(args),
            if_candidate: false,
        }];
    }
    litefs::logging::configure(&config.log, &config.fuse);
    log::info!(
        "litefs {}: config {}, mount {}, data {}, http {}",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        config.mount_dir.display(),
        config.data_dir.display(),
        config.http_bind_addr()
    );
    match (&config.lease.kind, &config.lease.consul) {
        (LeaseKind::Consul, Some(consul)) => log::info!(
            "lease: consul at {} key {} (ttl {:?}, lock delay {:?}), advertising {} as {}",
            consul.url,
            consul.key,
            consul.ttl,
            consul.lock_delay,
            config.lease.advertise_url,
            config.lease.hostname
        ),
        _ if config.lease.candidate => log::info!(
            "lease: static, this node ({}) is the primary at {}",
            config.lease.hostname,
            config.lease.advertise_url
        ),
        _ => log::info!(
            "lease: static, replicating from {} at {}",
            config.lease.hostname,
            config.lease.advertise_url
        ),
    }
    match config.exec.as_slice() {
        [] => {}
        [one] => log::info!(
            "exec: {} starts once the node is ready (exec-wait: {})",
            one.program.display(),
            config.exec_wait.as_str()
        ),
        many => log::info!(
            "exec: {} commands start in order once the node is ready (exec-wait: {})",
            many.len(),
            config.exec_wait.as_str()
        ),
    }
    if config.exit_on_error {
        log::info!(
            "exit-on-error: a lost lease, a refusal by Consul or the primary, or a local I/O \
             error while replicating stops litefs with status 1"
        );
    }
    match litefs::node::run(&config) {
        Ok(status) => ExitCode::from(status),
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("litefs: error: {error}");
    ExitCode::FAILURE
}

/// `ltx dump FILE`: prints the header, every page and the trailer, decoding
/// as it goes (the file is never held in memory). A corrupt file prints
/// what was read before the damage, then the reason, and exits 1.
fn ltx_dump(path: &Path) -> ExitCode {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = dump_to(path, &mut out);
    let flushed = out.flush();
    match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) => fail(&e),
        (Ok(()), Err(e)) => fail(&e),
    }
}

/// Why a dump stopped: the file was bad, or stdout went away.
#[derive(Debug)]
enum DumpError {
    Ltx(ltx::Error),
    Output(io::Error),
}

impl std::fmt::Display for DumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DumpError::Ltx(e) => write!(f, "{e}"),
            DumpError::Output(e) => write!(f, "writing the dump: {e}"),
        }
    }
}

fn dump_to(path: &Path, out: &mut impl Write) -> Result<(), DumpError> {
    let ltx_err = |e: ltx::Error| DumpError::Ltx(e.in_file(path));
    let file = File::open(path).map_err(|e| ltx_err(ltx::Error::Io(e)))?;
    let mut decoder =
        ltx::LtxDecoder::new(BufReader::with_capacity(64 * 1024, file)).map_err(ltx_err)?;
    let header = *decoder.header();
    out.write_all(format_header(path, &header).as_bytes())
        .map_err(DumpError::Output)?;
    writeln!(out, "pages: (page number, page checksum)").map_err(DumpError::Output)?;
    let mut page = vec![0u8; header.page_size as usize];
    let mut count = 0u64;
    loop {
        let pgno = match decoder.next_page(&mut page) {
            Ok(Some(pgno)) => pgno,
            Ok(None) => break,
            Err(e) => {
                // Show what was read before the damage, then the reason.
                out.flush().map_err(DumpError::Output)?;
                return Err(ltx_err(e));
            }
        };
        count += 1;
        writeln!(
            out,
            "  {pgno:>10}  {:016x}",
            ltx::page_checksum(pgno, &page)
        )
        .map_err(DumpError::Output)?;
    }
    writeln!(out, "  ({count} pages)").map_err(DumpError::Output)?;
    out.flush().map_err(DumpError::Output)?;
    let trailer = decoder.finish().map_err(ltx_err)?;
    writeln!(
        out,
        "trailer:\n  post-apply checksum: {:016x}\n  file checksum:       {:016x} (verified)",
        trailer.post_apply_checksum, trailer.file_checksum
    )
    .map_err(DumpError::Output)
}

fn format_header(path: &Path, h: &ltx::Header) -> String {
    let mut s = String::new();
    let kind = if h.is_snapshot() {
        "snapshot"
    } else {
        "incremental"
    };
    let _ = writeln!(s, "file: {} ({kind})", path.display());
    let _ = writeln!(s, "header:");
    let _ = writeln!(s, "  flags:               {}", h.flags);
    let _ = writeln!(s, "  page size:           {}", h.page_size);
    let _ = writeln!(s, "  commit:              {} pages", h.commit);
    let _ = writeln!(
        s,
        "  min txid:            {:016x} ({})",
        h.min_txid, h.min_txid
    );
    let _ = writeln!(
        s,
        "  max txid:            {:016x} ({})",
        h.max_txid, h.max_txid
    );
    let _ = writeln!(
        s,
        "  timestamp:           {} ({} ms)",
        format_timestamp_ms(h.timestamp),
        h.timestamp
    );
    let _ = writeln!(s, "  pre-apply checksum:  {:016x}", h.pre_apply_checksum);
    let _ = writeln!(s, "  wal offset:          {}", h.wal_offset);
    let _ = writeln!(s, "  wal size:            {}", h.wal_size);
    let _ = writeln!(
        s,
        "  wal salts:           {:08x} {:08x}",
        h.wal_salt1, h.wal_salt2
    );
    let _ = writeln!(s, "  node id:             {:016x}", h.node_id);
    s
}

/// Formats milliseconds since the Unix epoch as UTC, e.g.
/// `2024-05-01T12:00:00.123Z`.
fn format_timestamp_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// `ltx verify FILE...`: one line per file; exit 1 if any is bad.
fn ltx_verify(paths: &[PathBuf]) -> ExitCode {
    let mut failed = 0usize;
    for path in paths {
        match ltx::verify_file(path) {
            Ok((header, trailer)) => println!(
                "{}: OK (txid {:016x}-{:016x}, database of {} pages of {} bytes, post-apply checksum {:016x})",
                path.display(),
                header.min_txid,
                header.max_txid,
                header.commit,
                header.page_size,
                trailer.post_apply_checksum
            ),
            Err(e) => {
                failed += 1;
                // verify_file names the file already; print it once.
                let inner = match e {
                    ltx::Error::File { source, .. } => *source,
                    other => other,
                };
                match inner {
                    ltx::Error::Io(e) => {
                        println!("{}: FAILED: cannot read it: {e}", path.display())
                    }
                    reason => println!("{}: CORRUPT: {reason}", path.display()),
                }
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "litefs: {failed} of {} files failed verification",
            paths.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `ltx checksum DBFILE`: the database checksum as 16 hex digits.
fn ltx_checksum(path: &Path) -> ExitCode {
    match litefs::store::database_checksum(path) {
        Ok(sum) => {
            println!("{sum:016x}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mount_forms() {
        let want = Command::Mount {
            config: Some(PathBuf::from("x.yml")),
            exec: None,
        };
        for form in [
            &["-config", "x.yml"][..],
            &["--config", "x.yml"],
            &["-config=x.yml"],
            &["--config=x.yml"],
            &["mount", "-config", "x.yml"],
            &["mount", "--config=x.yml"],
        ] {
            assert_eq!(parse_args(&args(form)), Ok(want.clone()), "{form:?}");
        }
        let bare = Command::Mount {
            config: None,
            exec: None,
        };
        assert_eq!(parse_args(&[]), Ok(bare.clone()));
        assert_eq!(parse_args(&args(&["mount"])), Ok(bare));
    }

    #[test]
    fn a_command_after_double_dash_is_exec() {
        let want = Command::Mount {
            config: Some(PathBuf::from("x.yml")),
            exec: Some(args(&["sh", "-c", "exit 7", "--", "-config"])),
        };
        for form in [
            &[
                "mount", "-config", "x.yml", "--", "sh", "-c", "exit 7", "--", "-config",
            ][..],
            &["-config=x.yml", "--", "sh", "-c", "exit 7", "--", "-config"],
        ] {
            assert_eq!(parse_args(&args(form)), Ok(want.clone()), "{form:?}");
        }
        assert_eq!(
            parse_args(&args(&["mount", "--", "app"])),
            Ok(Command::Mount {
                config: None,
                exec: Some(args(&["app"])),
            })
        );
        assert!(parse_args(&args(&["mount", "-config", "x.yml", "--"])).is_err());
    }

    #[test]
    fn bad_command_lines() {
        for bad in [
            &["-config"][..],
            &["-config", "a", "-config", "b"],
            &["--verbose"],
            &["mount", "extra"],
            &["frobnicate"],
            &["ltx"],
            &["ltx", "dump"],
            &["ltx", "dump", "a", "b"],
            &["ltx", "verify"],
            &["ltx", "checksum"],
            &["ltx", "explode", "x"],
            &["ltx", "dump", "--raw", "x"],
            &["version", "now"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse_args(&args(&["help"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["-h"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["mount", "--help"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["ltx", "dump", "-h"])), Ok(Command::Help));
        assert_eq!(parse_args(&args(&["version"])), Ok(Command::Version));
        assert_eq!(parse_args(&args(&["--version"])), Ok(Command::Version));
        assert_eq!(
            parse_args(&args(&["ltx", "verify", "a", "b"])),
            Ok(Command::LtxVerify(vec![
                PathBuf::from("a"),
                PathBuf::from("b")
            ]))
        );
        assert_eq!(
            parse_args(&args(&["ltx", "checksum", "db"])),
            Ok(Command::LtxChecksum(PathBuf::from("db")))
        );
        assert_eq!(
            parse_args(&args(&["status", "-url=http://b:1", "--json"])),
            Ok(Command::Status {
                url: Some("http://b:1".into()),
                config: None,
                json: true
            })
        );
        assert!(parse_args(&args(&["status", "-json=yes"])).is_err());
        assert!(parse_args(&args(&["status", "extra"])).is_err());
        assert!(parse_args(&args(&["status", "-url"])).is_err());
        assert!(parse_args(&args(&["status", "-url", "-json"])).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp_ms(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_timestamp_ms(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
