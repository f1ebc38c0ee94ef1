//! shmring side by side with shmsink/shmsrc, a pipe and the in-process
//! limit, each writer and reader in its own process.
//!
//! `cargo bench --bench ipc` builds the plugin, runs every workload on every
//! transport it applies to (runs interleaved: shmring, shmsink, pipe, limit,
//! queued in-process, shmring, ...), and writes bench/RESULTS.md and the
//! bench/*.png charts. The limit is the one-process pipeline with no queue.
//!
//! Options after `--`:
//! - `--smoke` (or IPC_BENCH_SMOKE=1): a few buffers per workload, one run,
//!   report under target/ipc-bench/smoke. Also what a run without cargo's
//!   `--bench` flag does, so `cargo test --benches` stays quick.
//! - `--runs N`: rounds per workload (default 5).
//! - `--only W1,W4-1kHz`: a subset; the report then goes under target/.
//!   W1-64f and W5 run inside W1's rounds when W1 is in the set.
//! - `--syscalls perf|strace|none`: how syscalls are counted (default: perf
//!   if it works, else strace in extra untimed runs).
//! - `--baseline-plugin DIR`: one more transport, "shmring (baseline
//!   build)": the shmring pipelines with the libgstshmring.so in DIR, e.g.
//!   the target/release of a worktree at an older commit. Each round runs it
//!   right after shmring, and the report, under target/, gives current ÷
//!   baseline.
//!
//! The report is written even when runs fail; the exit code is non-zero if
//! a shmring, pipe or in-process run failed (shmsink/shmsrc and the baseline
//! build may fail: that is reported, not fatal). The binary also runs as each child process: see
//! [`child`].

mod child;
mod plot;
mod report;
mod runner;
mod sys;
mod transports;
mod workloads;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use report::Results;
use runner::{Bench, Plugin, SyscallCounter, Tracing};
use transports::Transport;
use workloads::Workload;

/// The elements a baseline build must have.
const BASELINE_FACTORIES: &[&str] = &["shmringsink", "shmringsrc"];
/// Every element a run may use.
const FACTORIES: &[&str] = &[
    "shmringsink",
    "shmringsrc",
    "shmsink",
    "shmsrc",
    "fdsink",
    "fdsrc",
    "rawvideoparse",
    "rawaudioparse",
    "videotestsrc",
    "audiotestsrc",
    "queue",
    "fakesink",
    "capsfilter",
];

struct Options {
    /// How this run was asked for, for the report.
    command: String,
    smoke: bool,
    runs: usize,
    only: Option<Vec<String>>,
    syscalls: Option<SyscallCounter>,
    baseline: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let from_cargo_bench = args.iter().any(|arg| arg == "--bench");
        let smoke_env = std::env::var("IPC_BENCH_SMOKE").is_ok_and(|value| !value.is_empty() && value != "0");
        let ours: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|&arg| arg != "--bench")
            .collect();
        let command = if ours.is_empty() {
            "cargo bench --bench ipc".to_owned()
        } else {
            format!("cargo bench --bench ipc -- {}", ours.join(" "))
        };
        let mut options = Options {
            command,
            smoke: smoke_env || !from_cargo_bench,
            runs: 0,
            only: None,
            syscalls: None,
            baseline: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--smoke" => options.smoke = true,
                "--runs" => options.runs = value()?.parse().map_err(|err| format!("--runs: {err}"))?,
                "--only" => options.only = Some(value()?.split(',').map(str::to_owned).collect()),
                "--syscalls" => {
                    options.syscalls = Some(match value()?.as_str() {
                        "perf" => SyscallCounter::Perf,
                        "strace" => SyscallCounter::Strace,
                        "none" => SyscallCounter::None,
                        other => return Err(format!("--syscalls {other}: expected perf, strace or none")),
                    })
                }
                "--baseline-plugin" => options.baseline = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if options.runs == 0 {
            options.runs = if options.smoke { 1 } else { 5 };
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(child::FLAG) {
        return child::main(&args[1..]);
    }
    match Options::parse(&args).and_then(|options| orchestrate(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ipc bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One run to do.
struct Job {
    workload: usize,
    transport: Transport,
    round: usize,
    tracing: Tracing,
}

fn orchestrate(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().map_err(|err| format!("cannot find the bench binary: {err}"))?;
    let profile_dir = build_plugin(manifest_dir, &exe)?;
    let plugin_source = report::source_version(manifest_dir);
    let mode = if options.smoke { "smoke" } else { "full" };
    let scratch = profile_dir
        .parent()
        .unwrap_or(&profile_dir)
        .join("ipc-bench")
        .join(mode);
    let _ = std::fs::remove_dir_all(scratch.join("runs"));
    std::fs::create_dir_all(&scratch).map_err(|err| format!("cannot make {}: {err}", scratch.display()))?;
    let plugin_dir = snapshot_plugin(&profile_dir, &scratch.join("plugin"))?;
    let sockets = std::env::temp_dir().join(format!("ipc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&sockets).map_err(|err| format!("cannot make {}: {err}", sockets.display()))?;
    let baseline = options.baseline.as_ref().map(|dir| Plugin {
        dir: dir.clone(),
        registry: scratch.join("registry-baseline.bin"),
    });
    let bench = Bench {
        exe,
        plugin: Plugin {
            dir: plugin_dir,
            registry: scratch.join("registry.bin"),
        },
        baseline,
        scratch,
        sockets,
    };
    eprintln!("checking the GStreamer elements (and building the plugin registry)");
    let gstreamer = bench.preflight(&bench.plugin, FACTORIES)?;
    if let Some(baseline) = &bench.baseline {
        bench
            .preflight(baseline, BASELINE_FACTORIES)
            .map_err(|err| format!("--baseline-plugin {}: {err}", baseline.dir.display()))?;
    }

    let load = report::load_average();
    let busy = load.split_whitespace().next().and_then(|one| one.parse::<f64>().ok());
    if busy.is_some_and(|one| one > 0.5) {
        eprintln!("warning: load average {load}: other work on this machine will skew the numbers");
    }
    let counter = options.syscalls.unwrap_or_else(detect_counter);
    eprintln!("syscalls counted with: {counter:?}");
    let workloads: Vec<Workload> = workloads::all(options.smoke)
        .into_iter()
        .filter(|workload| {
            options
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|id| id == workload.id))
        })
        .collect();
    if workloads.is_empty() {
        let ids: Vec<&str> = workloads::all(true).iter().map(|workload| workload.id).collect();
        return Err(format!("--only matched no workload ({})", ids.join(", ")));
    }
    let round = transports::round(bench.baseline.is_some());
    let jobs = plan(&workloads, &round, options.runs, counter);
    let mut results = Results::new(workloads.clone(), round, options.runs, counter, gstreamer);
    results.baseline = options.baseline.clone();
    results.plugin_source = plugin_source;
    let mut estimates = Estimates::default();
    for (index, job) in jobs.iter().enumerate() {
        let workload = &workloads[job.workload];
        eprintln!(
            "[{:>3}/{}] {} {} | {} | {} | elapsed {} | ETA {}",
            index + 1,
            jobs.len(),
            workload.id,
            workload.title,
            job.transport.label(),
            match job.tracing {
                Tracing::Strace => "strace run for syscall counts".to_owned(),
                _ if job.transport == Transport::ShmDefault => "run 1/1".to_owned(),
                _ => format!("run {}/{}", job.round + 1, options.runs),
            },
            clock(started.elapsed()),
            clock(estimates.remaining(&workloads, &jobs[index..])),
        );
        let tag = format!(
            "{}-{}-{}{}",
            workload.id,
            job.transport.key(),
            job.round + 1,
            tracing_suffix(job.tracing)
        );
        let outcome = bench.run(workload, job.transport, &tag, job.tracing);
        eprintln!("          {}", report::one_line(workload, &outcome));
        estimates.record(job, outcome.wall);
        results.add(job.workload, job.transport, job.tracing, outcome);
    }
    let _ = std::fs::remove_dir_all(&bench.sockets);
    results.load.1 = report::load_average();

    // bench/RESULTS.md is the plain comparison; a baseline from some other
    // directory does not belong in it.
    let canonical = !options.smoke && options.only.is_none() && options.baseline.is_none();
    let out_dir = if canonical {
        manifest_dir.join("bench")
    } else {
        bench.scratch.join("report")
    };
    std::fs::create_dir_all(&out_dir).map_err(|err| format!("cannot make {}: {err}", out_dir.display()))?;
    let charts = plot::draw_all(&out_dir, &results)?;
    report::write(
        &out_dir.join("RESULTS.md"),
        &results,
        &charts,
        &options.command,
        started.elapsed(),
    )?;
    eprintln!(
        "done in {}: {}",
        clock(started.elapsed()),
        out_dir.join("RESULTS.md").display()
    );
    // shmsink/shmsrc is expected to fail at times, and so may an old
    // baseline build; the others must not.
    let broken = results.failed_runs(&[
        Transport::Shmring,
        Transport::Pipe,
        Transport::Limit,
        Transport::LimitQueue,
    ]);
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("runs that must not fail did: {}", broken.join("; ")))
    }
}

/// Builds the cdylib for the profile the bench binary was built with, and
/// returns the directory holding it.
fn build_plugin(manifest_dir: &Path, exe: &Path) -> Result<PathBuf, String> {
    // The bench binary sits in target/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected bench binary path {}", exe.display()))?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--lib"]).current_dir(manifest_dir);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
        None => return Err(format!("unexpected profile directory {}", profile_dir.display())),
    }
    eprintln!("building the plugin: {command:?}");
    let status = command.status().map_err(|err| format!("cannot run cargo: {err}"))?;
    let library = profile_dir.join("libgstshmring.so");
    if !status.success() || !library.exists() {
        return Err(format!("building the plugin failed; expected {}", library.display()));
    }
    Ok(profile_dir)
}

/// Copies the plugin just built into `dir`, for the children to load: a
/// build in the same target directory during the run (someone else's cargo)
/// would otherwise change the plugin between runs.
fn snapshot_plugin(profile_dir: &Path, dir: &Path) -> Result<PathBuf, String> {
    let name = "libgstshmring.so";
    std::fs::create_dir_all(dir).map_err(|err| format!("cannot make {}: {err}", dir.display()))?;
    // A new file, not one rewritten in place: GStreamer may still map an
    // old copy from an earlier run.
    let partial = dir.join(format!("{name}.partial"));
    std::fs::copy(profile_dir.join(name), &partial)
        .and_then(|_| std::fs::rename(&partial, dir.join(name)))
        .map_err(|err| format!("cannot copy the plugin into {}: {err}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// perf if it can count syscall tracepoints here (lowering
/// perf_event_paranoid first if we may), else strace.
fn detect_counter() -> SyscallCounter {
    let perf_works = || {
        Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"])
            .output()
            .is_ok_and(|output| {
                let stats = String::from_utf8_lossy(&output.stderr);
                output.status.success()
                    && stats.lines().any(|line| {
                        line.contains("raw_syscalls")
                            && line.split(',').next().is_some_and(|count| count.parse::<u64>().is_ok())
                    })
            })
    };
    if perf_works() {
        return SyscallCounter::Perf;
    }
    // Only root can do this; for anyone else the write fails and nothing changes.
    if std::fs::write("/proc/sys/kernel/perf_event_paranoid", "-1").is_ok() && perf_works() {
        return SyscallCounter::Perf;
    }
    let strace_works = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success());
    if strace_works {
        SyscallCounter::Strace
    } else {
        eprintln!("ipc bench: neither perf nor strace works here; syscalls will not be counted");
        SyscallCounter::None
    }
}

/// The runs in order: rounds of every transport, interleaved, then
/// shmsink's default configuration once, then (without perf) one traced run
/// of each transport for the syscall counts. A workload paired with another
/// one in the set runs inside that one's rounds, right after it.
fn plan(workloads: &[Workload], transports: &[Transport], runs: usize, counter: SyscallCounter) -> Vec<Job> {
    let tracing = if counter == SyscallCounter::Perf {
        Tracing::Perf
    } else {
        Tracing::Off
    };
    let lead = |index: usize| {
        workloads[index]
            .paired_with
            .and_then(|id| workloads.iter().position(|workload| workload.id == id))
            .unwrap_or(index)
    };
    let mut jobs = Vec::new();
    for first in (0..workloads.len()).filter(|&index| lead(index) == index) {
        let group: Vec<usize> = (0..workloads.len()).filter(|&index| lead(index) == first).collect();
        let runs_of = |index: usize, round: usize, tracing: Tracing| {
            transports
                .iter()
                .filter(move |transport| transport.runs(&workloads[index]))
                .map(move |&transport| Job {
                    workload: index,
                    transport,
                    round,
                    tracing,
                })
        };
        for round in 0..runs {
            for &index in &group {
                jobs.extend(runs_of(index, round, tracing));
            }
        }
        for &index in &group {
            if workloads[index].peer_default {
                jobs.push(Job {
                    workload: index,
                    transport: Transport::ShmDefault,
                    round: 0,
                    tracing,
                });
            }
            if counter == SyscallCounter::Strace {
                jobs.extend(runs_of(index, 0, Tracing::Strace));
            }
        }
    }
    jobs
}

fn tracing_suffix(tracing: Tracing) -> &'static str {
    match tracing {
        Tracing::Strace => "-strace",
        _ => "",
    }
}

/// Run lengths seen so far, for the ETA.
#[derive(Default)]
struct Estimates(HashMap<(usize, Transport, bool), (Duration, u32)>);

impl Estimates {
    fn record(&mut self, job: &Job, wall: Duration) {
        let entry = self.0.entry(Self::key(job)).or_default();
        entry.0 += wall;
        entry.1 += 1;
    }

    fn key(job: &Job) -> (usize, Transport, bool) {
        (job.workload, job.transport, job.tracing == Tracing::Strace)
    }

    /// What the jobs left should take: each at the mean of its kind so far,
    /// or at the workload's typical length before the first one.
    fn remaining(&self, workloads: &[Workload], jobs: &[Job]) -> Duration {
        jobs.iter()
            .map(|job| match self.0.get(&Self::key(job)) {
                Some(&(total, count)) => total / count,
                None => workloads[job.workload].typical,
            })
            .sum()
    }
}

/// m:ss
fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}
