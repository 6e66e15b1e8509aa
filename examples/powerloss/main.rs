//! The power-loss harness: runs each workload on litefs whose data
//! directory is on ext4 over a recording block device (`recorder.rs`),
//! then rebuilds the disk as a power cut could have left it at many
//! points (`states.rs`) and checks that litefs starts on each and loses
//! nothing it acknowledged (`check.rs`).
//!
//! Run it through `scripts/powerloss.sh`, which builds litefs and this
//! harness in release mode:
//!
//! ```text
//! powerloss --litefs PATH [--states N] [--workload NAME] [--seed S] [--work DIR] [--keep-failed]
//! ```
//!
//! `--states` (default 300) is the total, shared evenly by the workloads
//! run (`--workload` picks those whose name contains NAME). Prints one
//! line per failed state (with what failed and the litefs log's end), a
//! table of workloads, and as its last line `N crash states, M failed`;
//! `--keep-failed` keeps each failed state's image in
//! `.local/powerloss-failed/` (under the current directory);
//! exits 1 when M > 0. Needs root (FUSE, loop devices, mount).

use std::path::{Path, PathBuf};
use std::time::Instant;

mod check;
mod consul;
mod disk;
mod node;
#[allow(dead_code)]
#[path = "../common/node_info.rs"]
mod node_info;
mod recorder;
mod states;
mod step_down;
mod workloads;

use check::{check_state, Expect};
use disk::RecordedDisk;
use recorder::{Event, Recording};
use states::{choose, Images, Rng};
use workloads::Workload;

struct Args {
    litefs: PathBuf,
    states: usize,
    workload: Option<String>,
    seed: u64,
    work: Option<PathBuf>,
    keep_failed: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        litefs: PathBuf::new(),
        states: 300,
        workload: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        work: None,
        keep_failed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep-failed" {
            args.keep_failed = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value:?}: {e}"))
        };
        match flag.as_str() {
            "--litefs" => args.litefs = PathBuf::from(&value),
            "--states" => args.states = number()? as usize,
            "--workload" => args.workload = Some(value),
            "--seed" => args.seed = number()?,
            "--work" => args.work = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.litefs.as_os_str().is_empty() {
        return Err("--litefs PATH is required".into());
    }
    Ok(args)
}

/// What one workload's run gave.
struct Outcome {
    name: String,
    flushes: usize,
    writes: usize,
    states: usize,
    failed: usize,
}

/// Records `workload` on a fresh disk under `work`.
fn record(bin: &Path, work: &Path, workload: Workload) -> Result<Recording, String> {
    let disk = RecordedDisk::new(work, &work.join("disk"))?;
    let data = disk.dir().join("data");
    let mut nodes = workload.start(bin, work, &data)?;
    workload.setup(&nodes)?;
    disk.sync()?;
    disk.recorder.start()?;
    let ran = workload.run(&mut nodes, &disk.recorder);
    let recording = disk.recorder.stop()?;
    ran.map_err(|e| format!("{e}\n--- litefs log ---\n{}", nodes.recorded.log_tail(15)))?;
    // The power cut: whatever litefs does next is not on the record.
    let _ = nodes.recorded.signal_and_wait(libc::SIGKILL);
    drop(nodes);
    drop(disk);
    Ok(recording)
}

fn run_workload(
    args: &Args,
    work: &Path,
    workload: Workload,
    count: usize,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let recording = record(&args.litefs, work, workload)?;
    let events = &recording.events;
    let flushes = events.iter().filter(|e| matches!(e, Event::Flush)).count();
    let writes = events
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count();
    let states = choose(events, count, rng);
    let mut images = Images::new(&recording);
    let mut failed = 0;
    for (i, state) in states.iter().enumerate() {
        let image = images.image(state);
        let expects: Vec<Expect> = workload
            .dbs()
            .into_iter()
            .map(|spec| Expect {
                required: state.required(events, &spec.key),
                steps: states::steps(events, &spec.key),
                deleting: state.deletion(events, &spec.key, false),
                deleted: state.deletion(events, &spec.key, true),
                refused: state.refused(events, &spec.key),
                spec,
            })
            .collect();
        if let Err(e) = check_state(&args.litefs, work, &image, &workload.check_yaml(), &expects) {
            failed += 1;
            println!(
                "FAILED {} state {i}: {}:\n  {}",
                workload.name(),
                state.describe(events),
                e.replace('\n', "\n  ")
            );
            if args.keep_failed {
                // Outside the work directory, which goes at the end.
                let dir = Path::new(".local/powerloss-failed");
                let keep = dir.join(format!("{}-{i}.img", workload.name().replace(' ', "-")));
                match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&keep, &image)) {
                    Ok(()) => println!("  image kept in {}", keep.display()),
                    Err(e) => println!("  cannot keep the image in {}: {e}", keep.display()),
                }
            }
        }
    }
    Ok(Outcome {
        name: workload.name(),
        flushes,
        writes,
        states: states.len(),
        failed,
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__recorder") {
        if let Err(e) = recorder::serve(&argv[2..]) {
            eprintln!("powerloss recorder: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("powerloss: {e}");
            std::process::exit(2);
        }
    };
    let work = args.work.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("litefs-powerloss-{}", std::process::id()))
    });
    let chosen: Vec<Workload> = workloads::ALL
        .iter()
        .copied()
        .filter(|w| {
            args.workload
                .as_ref()
                .map_or(true, |n| w.name().contains(n.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        eprintln!("powerloss: no workload matches {:?}", args.workload);
        std::process::exit(2);
    }
    println!(
        "seed {} (pass --seed {} to repeat these states)",
        args.seed, args.seed
    );
    let mut rng = Rng(args.seed);
    let mut outcomes = Vec::new();
    let mut errors = 0;
    for (i, workload) in chosen.iter().enumerate() {
        let count = args.states / chosen.len() + usize::from(i < args.states % chosen.len());
        let dir = work.join(format!("w{i}"));
        let started = Instant::now();
        match run_workload(&args, &dir, *workload, count, &mut rng) {
            Ok(o) => {
                println!(
                    "{}: {} crash states, {} failed ({} flushes, {} writes recorded; {:.0} s)",
                    o.name,
                    o.states,
                    o.failed,
                    o.flushes,
                    o.writes,
                    started.elapsed().as_secs_f64()
                );
                outcomes.push(o);
            }
            Err(e) => {
                errors += 1;
                println!("ERROR {}: {}", workload.name(), e.replace('\n', "\n  "));
            }
        }
        // A step-down leaves a WAL immutable (chattr +i).
        let _ = std::process::Command::new("chattr")
            .args(["-R", "-i"])
            .arg(&dir)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir(&work);
    println!();
    println!("| workload | flushes | writes | crash states | failed |");
    println!("|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} | {} |",
            o.name, o.flushes, o.writes, o.states, o.failed
        );
    }
    let states: usize = outcomes.iter().map(|o| o.states).sum();
    let failed: usize = outcomes.iter().map(|o| o.failed).sum::<usize>() + errors;
    println!("{states} crash states, {failed} failed");
    std::process::exit(if failed > 0 { 1 } else { 0 });
}
