//! End-to-end latency of live audio fanned out by one `shmringsink` to 1, 2
//! and 4 `shmringsrc` readers, each in its own process, against the
//! one-process `queue` handoff (issue 9).
//!
//! The stream is `audiotestsrc is-live=true samplesperbuffer=64`, S16LE
//! stereo at 48 kHz: a 256-byte buffer every 1.33 ms. The writer stamps a
//! sequence number and its CLOCK_MONOTONIC, in ns, into the first 16 bytes
//! of every buffer in a probe on the sink's sink pad (as it is about to be
//! rendered); each reader takes `now - stamp` in a probe on its source's src
//! pad (as the buffer is pushed downstream). The `queue` configuration is one
//! process, `audiotestsrc ! capsfilter ! queue ! fakesink`, stamped on the
//! queue's sink pad and measured on its src pad.
//!
//! Invariants of a run:
//! - Every reader is linked and streaming before the window opens: the
//!   parent waits until each has received [`READY_BUFFERS`] buffers, then
//!   opens the window a warm-up later. So the burst a live writer makes
//!   while it waits for its first reader, and the joining of later readers,
//!   fall outside it.
//! - The window is a span of the writer's stamps, the same for every
//!   reader: a reader measures exactly the buffers stamped inside it, and
//!   is done at the first buffer stamped after it (buffers arrive in order).
//! - Lost buffers (`when-full=auto` drops for a live writer) are counted
//!   from gaps in the sequence numbers, not hidden.
//!
//! `cargo bench --bench fanout` makes the full run: 5 rounds of each
//! configuration, interleaved, 5 s of audio each. Run without cargo's
//! `--bench` flag (as `cargo test --benches` does), or with `--smoke`, it
//! makes one round of 1 s each, so that CI stays quick. `--rounds N` and
//! `--seconds S` change either; `--realtime-priority P` sets both elements'
//! `realtime-priority`; `--keep-files` keeps each run's latencies
//! (in ns, one a line, in stamp order) under the temporary directory. The
//! binary is also each child process: see [`child`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The first argument that makes the bench binary a child.
const CHILD_FLAG: &str = "--fanout-child";
/// `max-readers` of the writer: the most readers any configuration has.
const MAX_READERS: usize = 4;
/// The audio caps of every configuration.
const CAPS: &str = "audio/x-raw,format=S16LE,rate=48000,channels=2";
const SAMPLES_PER_BUFFER: u32 = 64;
const RATE: u32 = 48_000;
/// Bytes at the start of each buffer: sequence number, then the writer's
/// CLOCK_MONOTONIC in ns, both little-endian.
const STAMP_LEN: usize = 16;
/// Buffers a measuring child receives before it says it is ready.
const READY_BUFFERS: u64 = 100;
/// How long the parent waits for every child to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to finish after the window closed.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the parent looks for ready files.
const POLL: Duration = Duration::from_millis(20);

/// One configuration measured in every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// One writer process and this many reader processes.
    Shmring { readers: usize },
    /// One process: the producer, a `queue`, a fakesink.
    Queue,
}

const SETUPS: [Setup; 4] = [
    Setup::Shmring { readers: 1 },
    Setup::Shmring { readers: 2 },
    Setup::Shmring { readers: MAX_READERS },
    Setup::Queue,
];

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Shmring { readers: 1 } => "shmring, 1 reader".to_owned(),
            Setup::Shmring { readers } => format!("shmring, {readers} readers"),
            Setup::Queue => "one process, queue".to_owned(),
        }
    }

    fn key(self) -> String {
        match self {
            Setup::Shmring { readers } => format!("shmring-{readers}"),
            Setup::Queue => "queue".to_owned(),
        }
    }
}

/// The live producer and its caps, ready for a sink to follow.
fn producer() -> String {
    format!("audiotestsrc is-live=true samplesperbuffer={SAMPLES_PER_BUFFER} ! {CAPS}")
}

fn writer_pipeline(socket: &Path, realtime: u32) -> String {
    format!(
        "{} ! shmringsink name=tx socket-path={} max-readers={MAX_READERS} realtime-priority={realtime}",
        producer(),
        socket.display()
    )
}

fn reader_pipeline(socket: &Path, realtime: u32) -> String {
    format!(
        "shmringsrc name=rx socket-path={} is-live=true realtime-priority={realtime} ! fakesink sync=false",
        socket.display()
    )
}

fn queue_pipeline() -> String {
    format!("{} ! queue name=q ! fakesink sync=false", producer())
}

/// CLOCK_MONOTONIC in ns, the clock every process of a run reads.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        child::main(&args[1..])
    } else {
        Options::parse(&args).and_then(|options| orchestrate(&options))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fanout bench: {err}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    smoke: bool,
    /// Keep every run's files (latencies in ns, one a line, in stamp order).
    keep_files: bool,
    rounds: usize,
    /// Length of the measured window of each run.
    window: Duration,
    /// Time between every child being ready and the window opening.
    warm_up: Duration,
    /// Both elements' `realtime-priority` (0: normal scheduling).
    realtime: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        // cargo bench passes --bench; cargo test --benches passes nothing.
        let mut smoke = !args.iter().any(|arg| arg == "--bench");
        let mut keep_files = false;
        let mut rounds = None;
        let mut seconds = None;
        let mut realtime = 0;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--smoke" => smoke = true,
                "--keep-files" => keep_files = true,
                "--rounds" => rounds = Some(value()?.parse::<usize>().map_err(|err| format!("--rounds: {err}"))?),
                "--seconds" => seconds = Some(value()?.parse::<f64>().map_err(|err| format!("--seconds: {err}"))?),
                "--realtime-priority" => {
                    realtime = value()?
                        .parse::<u32>()
                        .map_err(|err| format!("--realtime-priority: {err}"))?;
                }
                other => {
                    return Err(format!(
                        "unknown option {other} (expected --smoke, --rounds N, --seconds S, --keep-files, --realtime-priority P)"
                    ));
                }
            }
        }
        let seconds = seconds.unwrap_or(if smoke { 1.0 } else { 5.0 });
        if !(seconds > 0.0 && seconds <= 600.0) {
            return Err(format!("--seconds {seconds}: expected more than 0 and at most 600"));
        }
        Ok(Options {
            smoke,
            keep_files,
            rounds: rounds.unwrap_or(if smoke { 1 } else { 5 }).max(1),
            window: Duration::from_secs_f64(seconds),
            warm_up: Duration::from_millis(if smoke { 200 } else { 1000 }),
            realtime,
        })
    }
}

/// What one measuring child saw inside the window.
#[derive(Debug, Default)]
struct Measured {
    latencies_ns: Vec<u64>,
    /// Buffers missing from the window's sequence numbers.
    lost: u64,
    /// The reader's `stats`: buffers and wakeups-received over its whole run.
    stats: Option<WakeUps>,
}

/// Buffers and wake-ups from an element's `stats`, over its whole run.
#[derive(Debug, Clone, Copy, Default)]
struct WakeUps {
    buffers: u64,
    wakeups: u64,
}

impl WakeUps {
    fn per_buffer(self) -> f64 {
        self.wakeups as f64 / self.buffers.max(1) as f64
    }
}

/// What all processes of a run cost during its window, µs per buffer.
#[derive(Debug, Clone, Copy)]
struct Sched {
    cpu_us: f64,
    /// The writer's share of `cpu_us`; 0 in the one-process configuration.
    writer_cpu_us: f64,
    /// Time runnable but waiting for a CPU.
    runqueue_us: f64,
}

/// What one run of one configuration measured.
struct Run {
    sched: Sched,
    measured: Vec<Measured>,
    /// The writer's `stats`: buffers and wakeups-sent (summed over readers).
    writer: Option<WakeUps>,
}

/// What every run of one configuration measured.
#[derive(Default)]
struct Pooled {
    runs: usize,
    failed: usize,
    latencies_ns: Vec<u64>,
    lost: u64,
    /// The highest p99 of any one reader in any one run.
    worst_reader_p99_ns: u64,
    /// Each round's p99, all readers pooled; None for a failed run.
    round_p99_ns: Vec<Option<u64>>,
    /// Wake-ups per buffer: the writer's (per reader), the readers' mean.
    writer_wakeups: Vec<f64>,
    reader_wakeups: Vec<f64>,
    /// All processes of a run together in its window, µs per buffer: CPU
    /// time, and time runnable but waiting for a CPU.
    cpu_us: Vec<f64>,
    runqueue_us: Vec<f64>,
    /// CPU µs per buffer of the writer, and of each measuring process.
    writer_cpu_us: Vec<f64>,
    reader_cpu_us: Vec<f64>,
}

fn orchestrate(options: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find the bench binary: {err}"))?;
    let scratch = std::env::temp_dir().join(format!("fanout-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|err| format!("cannot make {}: {err}", scratch.display()))?;
    let load_at_start = load_average();
    eprintln!(
        "fanout bench ({}): {} round(s) of {:?} per configuration, load average {load_at_start}",
        if options.smoke { "smoke" } else { "full" },
        options.rounds,
        options.window,
    );
    let started = Instant::now();
    let mut pooled: Vec<Pooled> = SETUPS.iter().map(|_| Pooled::default()).collect();
    for round in 0..options.rounds {
        for (index, &setup) in SETUPS.iter().enumerate() {
            let dir = scratch.join(format!("{}-round{}", setup.key(), round + 1));
            let outcome = run_once(&exe, &dir, setup, options);
            let pool = &mut pooled[index];
            pool.runs += 1;
            match outcome {
                Ok(Run {
                    measured: children,
                    writer,
                    sched,
                }) => {
                    let mut p99s = Vec::new();
                    let mut summaries = Vec::new();
                    for child in &children {
                        let latencies = sorted(&child.latencies_ns);
                        let p99 = percentile(&latencies, 0.99);
                        p99s.push(p99);
                        summaries.push(format!(
                            "{}/{}/{}",
                            micros(percentile(&latencies, 0.5)),
                            micros(p99),
                            micros(latencies.last().copied().unwrap_or(0))
                        ));
                    }
                    let readers = children.len() as f64;
                    let wakeups = match (setup, writer) {
                        (Setup::Shmring { .. }, Some(writer)) => {
                            let reader = children
                                .iter()
                                .filter_map(|child| child.stats.map(WakeUps::per_buffer))
                                .sum::<f64>()
                                / readers;
                            pool.writer_wakeups.push(writer.per_buffer() / readers);
                            pool.reader_wakeups.push(reader);
                            format!(
                                ", wake-ups per buffer: writer {:.2} per reader, reader {reader:.2}",
                                writer.per_buffer() / readers
                            )
                        }
                        _ => String::new(),
                    };
                    pool.cpu_us.push(sched.cpu_us);
                    pool.writer_cpu_us.push(sched.writer_cpu_us);
                    let reader_cpu_us = (sched.cpu_us - sched.writer_cpu_us) / children.len().max(1) as f64;
                    pool.reader_cpu_us.push(reader_cpu_us);
                    pool.runqueue_us.push(sched.runqueue_us);
                    let mut all: Vec<u64> = children
                        .iter()
                        .flat_map(|child| child.latencies_ns.iter().copied())
                        .collect();
                    all.sort_unstable();
                    pool.round_p99_ns.push(Some(percentile(&all, 0.99)));
                    eprintln!(
                        "round {}: {:<22} buffers {:>6}, lost {}, p50/p99/max µs of each reader: {}{wakeups}, CPU µs per buffer: writer {:.1}, each reader {reader_cpu_us:.1}, all {:.1}, run-queue wait of all {:.1}",
                        round + 1,
                        setup.label(),
                        all.len(),
                        children.iter().map(|child| child.lost).sum::<u64>(),
                        summaries.join(", "),
                        sched.writer_cpu_us,
                        sched.cpu_us,
                        sched.runqueue_us,
                    );
                    pool.worst_reader_p99_ns = p99s.iter().copied().fold(pool.worst_reader_p99_ns, u64::max);
                    for child in children {
                        pool.latencies_ns.extend(child.latencies_ns);
                        pool.lost += child.lost;
                    }
                }
                Err(err) => {
                    eprintln!("round {}: {} failed: {err}", round + 1, setup.label());
                    pool.failed += 1;
                    pool.round_p99_ns.push(None);
                }
            }
        }
    }
    if options.keep_files {
        eprintln!("every run's files are in {}", scratch.display());
    } else {
        let _ = fs::remove_dir_all(&scratch);
    }
    println!("{}", table(&pooled));
    println!(
        "load average (1, 5, 15 min) at start / end: {load_at_start} / {}; took {:.0} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    let empty: Vec<String> = SETUPS
        .iter()
        .zip(&pooled)
        .filter(|(_, pool)| pool.failed > 0 || pool.latencies_ns.is_empty())
        .map(|(setup, pool)| format!("{} ({} of {} runs failed)", setup.label(), pool.failed, pool.runs))
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "configurations with failed or empty runs: {}",
            empty.join(", ")
        ))
    }
}

/// The markdown table of the run.
fn table(pooled: &[Pooled]) -> String {
    let queue_p99 = SETUPS
        .iter()
        .position(|&setup| setup == Setup::Queue)
        .map(|index| percentile(&sorted(&pooled[index].latencies_ns), 0.99));
    let mut out = String::new();
    out.push_str(
        "| configuration | runs ok | buffers measured | lost | p50 µs | p99 µs | max µs | worst reader's p99 µs | p99 ÷ queue p99 | same, median over rounds | wake-ups per buffer: writer (per reader) / reader | CPU µs per buffer: writer / each reader / all | run-queue wait µs per buffer, all |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let queue_rounds = SETUPS
        .iter()
        .position(|&setup| setup == Setup::Queue)
        .map(|index| &pooled[index].round_p99_ns);
    for (setup, pool) in SETUPS.iter().zip(pooled) {
        let latencies = sorted(&pool.latencies_ns);
        let p99 = percentile(&latencies, 0.99);
        let ratio = match queue_p99 {
            Some(queue) if queue > 0 && !latencies.is_empty() => format!("{:.2}×", p99 as f64 / queue as f64),
            _ => "–".to_owned(),
        };
        let (worst, wakeups) = match setup {
            Setup::Shmring { .. } => (
                micros(pool.worst_reader_p99_ns),
                format!(
                    "{:.2} / {:.2}",
                    median(&pool.writer_wakeups),
                    median(&pool.reader_wakeups)
                ),
            ),
            Setup::Queue => ("–".to_owned(), "–".to_owned()),
        };
        let writer_cpu = match setup {
            Setup::Shmring { .. } => format!("{:.1}", median(&pool.writer_cpu_us)),
            Setup::Queue => "–".to_owned(),
        };
        let round_ratios: Vec<f64> = queue_rounds
            .into_iter()
            .flat_map(|queue| queue.iter().zip(&pool.round_p99_ns))
            .filter_map(|(queue, this)| match (queue, this) {
                (Some(queue), Some(this)) if *queue > 0 => Some(*this as f64 / *queue as f64),
                _ => None,
            })
            .collect();
        let round_ratio = if round_ratios.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.2}×", median(&round_ratios))
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {} | {} | {} | {worst} | {ratio} | {round_ratio} | {wakeups} | {writer_cpu} / {:.1} / {:.1} | {:.1} |",
            setup.label(),
            pool.runs - pool.failed,
            pool.runs,
            latencies.len(),
            pool.lost,
            micros(percentile(&latencies, 0.5)),
            micros(p99),
            micros(latencies.last().copied().unwrap_or(0)),
            median(&pool.reader_cpu_us),
            median(&pool.cpu_us),
            median(&pool.runqueue_us),
        );
    }
    out
}

/// The median of some values; 0 when there are none.
fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        len if len % 2 == 1 => values[len / 2],
        len => (values[len / 2 - 1] + values[len / 2]) / 2.0,
    }
}

fn sorted(values: &[u64]) -> Vec<u64> {
    let mut values = values.to_vec();
    values.sort_unstable();
    values
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A child process of one run; killed if dropped while still running.
struct Running {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Running {
    fn spawn(exe: &Path, name: &str, args: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(exe)
            .arg(CHILD_FLAG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start the {name}: {err}"))?;
        let stdin = child.stdin.take();
        Ok(Running {
            name: name.to_owned(),
            child,
            stdin,
        })
    }

    /// Fails if the child has already exited.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the {} exited early ({status})", self.name)),
            Err(err) => Err(format!("cannot watch the {}: {err}", self.name)),
        }
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|err| format!("cannot talk to the {}: {err}", self.name))
    }

    /// Closes stdin (the child's cue to stop) and waits for the child to exit.
    fn finish(&mut self, deadline: Instant) -> Result<(), String> {
        self.stdin = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("the {} failed ({status})", self.name)),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!("the {} did not finish in time", self.name));
                }
                Ok(None) => thread::sleep(POLL),
                Err(err) => return Err(format!("cannot wait for the {}: {err}", self.name)),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One run of one configuration: what each measuring child saw.
fn run_once(exe: &Path, dir: &Path, setup: Setup, options: &Options) -> Result<Run, String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|err| format!("cannot make {}: {err}", dir.display()))?;
    let socket = dir.join("sock");
    let path = |name: String| dir.join(name).display().to_string();
    let mut writer = None;
    let mut measuring = Vec::new();
    match setup {
        Setup::Shmring { readers } => {
            writer = Some(Running::spawn(
                exe,
                "writer",
                &[
                    "writer",
                    "--pipeline",
                    &writer_pipeline(&socket, options.realtime),
                    "--stats",
                    "tx.wakeups-sent",
                    "--out",
                    &path("writer".to_owned()),
                ],
            )?);
            for reader in 0..readers {
                let ready = path(format!("ready-{reader}"));
                let out = path(format!("latencies-{reader}"));
                measuring.push(Running::spawn(
                    exe,
                    &format!("reader {}", reader + 1),
                    &[
                        "measure",
                        "--pipeline",
                        &reader_pipeline(&socket, options.realtime),
                        "--measure",
                        "rx.src",
                        "--stats",
                        "rx.wakeups-received",
                        "--ready",
                        &ready,
                        "--out",
                        &out,
                    ],
                )?);
            }
        }
        Setup::Queue => {
            measuring.push(Running::spawn(
                exe,
                "queue process",
                &[
                    "measure",
                    "--pipeline",
                    &queue_pipeline(),
                    "--stamp",
                    "q.sink",
                    "--measure",
                    "q.src",
                    "--ready",
                    &path("ready-0".to_owned()),
                    "--out",
                    &path("latencies-0".to_owned()),
                ],
            )?);
        }
    }

    // Every measuring child streams before the window opens.
    let waiting_since = Instant::now();
    while !(0..measuring.len()).all(|index| dir.join(format!("ready-{index}")).exists()) {
        for child in measuring.iter_mut().chain(writer.as_mut()) {
            child.check_alive()?;
        }
        if waiting_since.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "not every reader received {READY_BUFFERS} buffers in {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(POLL);
    }
    let start = monotonic_ns() + options.warm_up.as_nanos() as u64;
    let end = start + options.window.as_nanos() as u64;
    for child in &mut measuring {
        child.send(&format!("{start} {end}"))?;
    }
    // A measuring child ends by itself at the first buffer stamped after
    // the window; closing its stdin is only the backstop.
    thread::sleep(options.warm_up);
    let before = thread_times(measuring.iter().chain(writer.as_ref()));
    thread::sleep(options.window);
    let after = thread_times(measuring.iter().chain(writer.as_ref()));
    let writer_tasks = writer
        .as_ref()
        .map(|writer| PathBuf::from(format!("/proc/{}/task", writer.child.id())));
    let writer_after: HashMap<PathBuf, (u64, u64)> = after
        .iter()
        .filter(|(task, _)| writer_tasks.as_ref().is_some_and(|tasks| task.starts_with(tasks)))
        .map(|(task, times)| (task.clone(), *times))
        .collect();
    let (cpu, waited) = times_between(&before, &after);
    let (writer_cpu, _) = times_between(&before, &writer_after);
    let buffers = options.window.as_secs_f64() * f64::from(RATE) / f64::from(SAMPLES_PER_BUFFER);
    let per_buffer = |ns: u64| ns as f64 / 1000.0 / buffers;
    let sched = Sched {
        cpu_us: per_buffer(cpu),
        writer_cpu_us: per_buffer(writer_cpu),
        runqueue_us: per_buffer(waited),
    };
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut results = Vec::new();
    for (index, child) in measuring.iter_mut().enumerate() {
        child.finish(deadline)?;
        results.push(read_measured(&dir.join(format!("latencies-{index}")))?);
    }
    let mut writer_stats = None;
    if let Some(writer) = writer.as_mut() {
        writer.finish(Instant::now() + FINISH_TIMEOUT)?;
        writer_stats = read_measured(&dir.join("writer"))?.stats;
    }
    if !options.keep_files {
        let _ = fs::remove_dir_all(dir);
    }
    Ok(Run {
        measured: results,
        writer: writer_stats,
        sched,
    })
}

/// CPU time and time spent runnable but waiting for a CPU, in ns so far,
/// of every thread of these processes alive now (from /proc schedstat),
/// by thread.
fn thread_times<'a>(children: impl Iterator<Item = &'a Running>) -> HashMap<PathBuf, (u64, u64)> {
    let mut times = HashMap::new();
    for child in children {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", child.child.id())) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(schedstat) = fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = schedstat
                .split_whitespace()
                .map(|field| field.parse::<u64>().unwrap_or(0));
            let cpu = fields.next().unwrap_or(0);
            let waited = fields.next().unwrap_or(0);
            times.insert(task.path(), (cpu, waited));
        }
    }
    times
}

/// What the threads alive at `after` spent since `before` (a thread that
/// started in between, all of its time): CPU, then run-queue wait, in ns.
/// A thread that ended in between is left out.
fn times_between(before: &HashMap<PathBuf, (u64, u64)>, after: &HashMap<PathBuf, (u64, u64)>) -> (u64, u64) {
    after.iter().fold((0, 0), |(cpu, waited), (task, now)| {
        let then = before.get(task).copied().unwrap_or((0, 0));
        (
            cpu + now.0.saturating_sub(then.0),
            waited + now.1.saturating_sub(then.1),
        )
    })
}

/// Reads a child's result file: lines `key N` (`lost`, `buffers`,
/// `wakeups`), and one latency in ns a line.
fn read_measured(path: &Path) -> Result<Measured, String> {
    let text = fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mut measured = Measured::default();
    let (mut buffers, mut wakeups) = (None, None);
    for line in text.lines() {
        let bad = || format!("{}: unexpected line {line:?}", path.display());
        if let Ok(latency) = line.parse::<u64>() {
            measured.latencies_ns.push(latency);
            continue;
        }
        let (key, value) = line.split_once(' ').ok_or_else(bad)?;
        let value = value.parse::<u64>().map_err(|_| bad())?;
        match key {
            "lost" => measured.lost = value,
            "buffers" => buffers = Some(value),
            "wakeups" => wakeups = Some(value),
            _ => return Err(bad()),
        }
    }
    measured.stats = buffers
        .zip(wakeups)
        .map(|(buffers, wakeups)| WakeUps { buffers, wakeups });
    Ok(measured)
}

/// The child side: one pipeline, run until the parent says stop.
mod child {
    use std::io::BufRead;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::Duration;

    use gst::prelude::*;

    use super::{READY_BUFFERS, STAMP_LEN, monotonic_ns};

    /// The application message a probe or the stdin thread posts to stop.
    const STOP: &str = "fanout-bench-stop";
    /// A child still running this long after it started ends itself.
    const LIFETIME: Duration = Duration::from_secs(900);
    const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);

    struct Config {
        pipeline: String,
        /// `element.pad` whose buffers get stamps.
        stamp: Option<String>,
        /// `element.pad` where latencies are measured.
        measure: Option<String>,
        ready: Option<PathBuf>,
        out: Option<PathBuf>,
        /// `element.field`: the wake-up counter of the element's `stats`
        /// to report with its `buffers`.
        stats: Option<String>,
    }

    pub fn main(args: &[String]) -> Result<(), String> {
        let (role, args) = args.split_first().ok_or("a child needs a role")?;
        let mut config = Config {
            pipeline: String::new(),
            stamp: None,
            measure: None,
            ready: None,
            out: None,
            stats: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?.clone();
            match flag.as_str() {
                "--pipeline" => config.pipeline = value,
                "--stamp" => config.stamp = Some(value),
                "--measure" => config.measure = Some(value),
                "--ready" => config.ready = Some(value.into()),
                "--out" => config.out = Some(value.into()),
                "--stats" => config.stats = Some(value),
                other => return Err(format!("unknown child flag {other}")),
            }
        }
        match role.as_str() {
            "writer" => {
                config.stamp = Some("tx.sink".to_owned());
                run(config, false)
            }
            "measure" => run(config, true),
            other => Err(format!("unknown child role {other}")),
        }
    }

    /// The measuring side's state, shared by its probe and the stdin thread.
    struct Measure {
        /// The window, in writer stamps; `end` is 0 until the parent sent it.
        start_ns: AtomicU64,
        end_ns: AtomicU64,
        ready: Option<PathBuf>,
        bus: gst::Bus,
        state: Mutex<MeasureState>,
    }

    #[derive(Default)]
    struct MeasureState {
        received: u64,
        last_seq: Option<u64>,
        lost: u64,
        latencies_ns: Vec<u64>,
        done: bool,
    }

    impl Measure {
        fn on_buffer(&self, buffer: &gst::BufferRef) {
            let now = monotonic_ns();
            let Ok(map) = buffer.map_readable() else {
                return;
            };
            if map.len() < STAMP_LEN {
                return;
            }
            let field = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
            let (seq, stamp_ns) = (field(0), field(8));
            drop(map);
            let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            state.received += 1;
            if state.received == READY_BUFFERS
                && let Some(ready) = &self.ready
                && let Err(err) = std::fs::write(ready, "")
            {
                eprintln!("fanout bench child: cannot write {}: {err}", ready.display());
            }
            let end = self.end_ns.load(Ordering::Acquire);
            if end == 0 || state.done {
                return;
            }
            if stamp_ns >= end {
                state.done = true;
                let _ = self
                    .bus
                    .post(gst::message::Application::new(gst::Structure::new_empty(STOP)));
            } else if stamp_ns >= self.start_ns.load(Ordering::Relaxed) {
                if let Some(last) = state.last_seq
                    && seq > last + 1
                {
                    state.lost += seq - last - 1;
                }
                state.last_seq = Some(seq);
                state.latencies_ns.push(now.saturating_sub(stamp_ns));
            }
        }

        fn write(&self, text: &mut String) {
            let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            text.push_str(&format!("lost {}\n", state.lost));
            for latency in &state.latencies_ns {
                text.push_str(&latency.to_string());
                text.push('\n');
            }
        }
    }

    fn pad(pipeline: &gst::Bin, name: &str) -> Result<gst::Pad, String> {
        let (element, pad) = name
            .split_once('.')
            .ok_or_else(|| format!("{name}: expected element.pad"))?;
        pipeline
            .by_name(element)
            .and_then(|element| element.static_pad(pad))
            .ok_or_else(|| format!("the pipeline has no pad {name}"))
    }

    fn run(config: Config, measures: bool) -> Result<(), String> {
        gst::init().map_err(|err| err.to_string())?;
        gstshmring::plugin_register_static().map_err(|err| format!("cannot register shmring: {err}"))?;
        let pipeline = gst::parse::launch(&config.pipeline)
            .map_err(|err| format!("cannot build `{}`: {err}", config.pipeline))?
            .downcast::<gst::Bin>()
            .map_err(|_| "the pipeline is not a bin".to_owned())?;
        let bus = pipeline.bus().ok_or("the pipeline has no bus")?;

        if let Some(stamp) = &config.stamp {
            let sequence = AtomicU64::new(0);
            pad(&pipeline, stamp)?.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer_mut() {
                    let seq = sequence.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut map) = buffer.make_mut().map_writable()
                        && map.len() >= STAMP_LEN
                    {
                        map[..8].copy_from_slice(&seq.to_le_bytes());
                        map[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        let measure = measures.then(|| {
            Arc::new(Measure {
                start_ns: AtomicU64::new(0),
                end_ns: AtomicU64::new(0),
                ready: config.ready.clone(),
                bus: bus.clone(),
                state: Mutex::new(MeasureState {
                    latencies_ns: Vec::with_capacity(1 << 16),
                    ..MeasureState::default()
                }),
            })
        });
        if let Some(measure) = &measure {
            let name = config.measure.as_deref().ok_or("a measuring child needs --measure")?;
            let measure = Arc::clone(measure);
            // shmringsrc pushes the buffers it finds waiting together as
            // a list.
            let types = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
            pad(&pipeline, name)?.add_probe(types, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    measure.on_buffer(buffer);
                } else if let Some(list) = info.buffer_list() {
                    list.iter().for_each(|buffer| measure.on_buffer(buffer));
                }
                gst::PadProbeReturn::Ok
            });
        }
        // stdin: a measuring child gets the window as one line; for every
        // child, stdin closing means stop.
        {
            let measure = measure.clone();
            let bus = bus.clone();
            thread::spawn(move || {
                let mut lines = std::io::stdin().lock().lines();
                if let Some(measure) = measure
                    && let Some(Ok(line)) = lines.next()
                {
                    let mut numbers = line.split_whitespace().map(str::parse::<u64>);
                    if let (Some(Ok(start)), Some(Ok(end))) = (numbers.next(), numbers.next()) {
                        measure.start_ns.store(start, Ordering::Relaxed);
                        measure.end_ns.store(end.max(1), Ordering::Release);
                    }
                }
                for _ in lines.by_ref() {}
                let _ = bus.post(gst::message::Application::new(gst::Structure::new_empty(STOP)));
            });
        }

        pipeline
            .set_state(gst::State::Playing)
            .map_err(|err| format!("cannot start `{}`: {err}", config.pipeline))?;
        let types = [
            gst::MessageType::Eos,
            gst::MessageType::Error,
            gst::MessageType::Application,
        ];
        let lifetime = gst::ClockTime::from_nseconds(LIFETIME.as_nanos() as u64);
        let mut failure = None;
        match bus.timed_pop_filtered(lifetime, &types) {
            Some(message) => {
                if let gst::MessageView::Error(err) = message.view() {
                    failure = Some(format!(
                        "error from {}: {} ({:?})",
                        err.src().map(|src| src.path_string().to_string()).unwrap_or_default(),
                        err.error(),
                        err.debug()
                    ));
                }
            }
            None => failure = Some(format!("still running after {LIFETIME:?}")),
        }
        if let Some(out) = &config.out {
            let mut text = String::new();
            if let Some(name) = &config.stats {
                let (element, field) = name
                    .split_once('.')
                    .ok_or_else(|| format!("--stats {name}: expected element.field"))?;
                let stats = pipeline
                    .by_name(element)
                    .ok_or_else(|| format!("--stats {name}: no element {element}"))?
                    .property::<gst::Structure>("stats");
                let count = |field: &str| {
                    stats
                        .get::<u64>(field)
                        .map_err(|err| format!("{element} stats {field}: {err}"))
                };
                text.push_str(&format!("buffers {}\nwakeups {}\n", count("buffers")?, count(field)?));
            }
            if let Some(measure) = &measure {
                measure.write(&mut text);
            }
            std::fs::write(out, text).map_err(|err| format!("cannot write {}: {err}", out.display()))?;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let teardown = pipeline.clone();
        thread::spawn(move || {
            let _ = teardown.set_state(gst::State::Null);
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(TEARDOWN_TIMEOUT).is_err() {
            failure.get_or_insert_with(|| "the pipeline did not stop in time".to_owned());
        }
        failure.map_or(Ok(()), Err)
    }
}
