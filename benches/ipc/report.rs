//! Medians, ratios and bench/RESULTS.md.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runner::{RunOutcome, SideStats, SyscallCounter, Tracing};
use crate::transports::Transport;
use crate::workloads::{Measure, Workload};

/// A chart written next to RESULTS.md (drawn by the plot module, which
/// hands these to [`write`]).
pub struct Chart {
    /// The throughput workload it shows; None for the latency CDF.
    pub workload: Option<usize>,
    pub title: String,
    /// Relative to RESULTS.md.
    pub file: String,
}

/// Every run's outcome, by workload and transport, in round order.
pub struct Results {
    pub workloads: Vec<Workload>,
    /// The transports of each round, in the order they ran.
    pub round: Vec<Transport>,
    /// The directory of the plugin the baseline transport ran, if any.
    pub baseline: Option<PathBuf>,
    pub runs: usize,
    pub counter: SyscallCounter,
    pub gstreamer: String,
    /// /proc/loadavg before and after: other work on the machine skews
    /// every number here.
    pub load: (String, String),
    /// What the plugin was built from, read right after building it.
    pub plugin_source: String,
    timed: HashMap<(usize, Transport), Vec<RunOutcome>>,
    /// The strace runs that count syscalls when perf cannot.
    traced: HashMap<(usize, Transport), RunOutcome>,
}

/// One-way latency percentiles in µs.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(latencies_ns: &[u64]) -> Option<Self> {
        let mut sorted = latencies_ns.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        (!sorted.is_empty()).then(|| Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        })
    }
}

/// The medians of one transport on one workload, over its completed runs.
pub struct Summary {
    pub completed: usize,
    pub total: usize,
    pub rate: Option<f64>,
    pub writer: SideMedians,
    pub reader: SideMedians,
    pub latency: Option<Percentiles>,
    /// The first buffer's latency in µs, connection included.
    pub first_latency: Option<f64>,
}

#[derive(Default)]
pub struct SideMedians {
    pub cpu_us: Option<f64>,
    pub switches: Option<f64>,
    pub syscalls: Option<f64>,
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

impl Results {
    pub fn new(
        workloads: Vec<Workload>,
        round: Vec<Transport>,
        runs: usize,
        counter: SyscallCounter,
        gstreamer: String,
    ) -> Self {
        Results {
            workloads,
            round,
            baseline: None,
            runs,
            counter,
            gstreamer,
            load: (load_average(), String::new()),
            plugin_source: String::new(),
            timed: HashMap::new(),
            traced: HashMap::new(),
        }
    }

    pub fn add(&mut self, workload: usize, transport: Transport, tracing: Tracing, outcome: RunOutcome) {
        if tracing == Tracing::Strace {
            self.traced.insert((workload, transport), outcome);
        } else {
            self.timed.entry((workload, transport)).or_default().push(outcome);
        }
    }

    pub fn runs(&self, workload: usize, transport: Transport) -> &[RunOutcome] {
        self.timed.get(&(workload, transport)).map_or(&[], Vec::as_slice)
    }

    pub fn summary(&self, workload: usize, transport: Transport) -> Summary {
        let runs = self.runs(workload, transport);
        let ok: Vec<&RunOutcome> = runs.iter().filter(|run| run.ok()).collect();
        let side = |pick: fn(&RunOutcome) -> Option<SideStats>| {
            let values = |field: fn(SideStats) -> Option<f64>| {
                median(ok.iter().filter_map(|run| pick(run).and_then(field)).collect())
            };
            let traced = self
                .traced
                .get(&(workload, transport))
                .and_then(pick)
                .and_then(|s| s.syscalls);
            SideMedians {
                cpu_us: values(|stats| Some(stats.cpu_us)),
                switches: values(|stats| Some(stats.switches)),
                syscalls: traced.or_else(|| values(|stats| stats.syscalls)),
            }
        };
        let percentiles: Vec<Percentiles> = ok
            .iter()
            .filter_map(|run| Percentiles::of(run.steady_latencies()))
            .collect();
        let latency_median = |field: fn(&Percentiles) -> f64| median(percentiles.iter().map(field).collect());
        Summary {
            completed: ok.len(),
            total: runs.len(),
            rate: median(ok.iter().filter_map(|run| run.rate).collect()),
            first_latency: median(
                ok.iter()
                    .filter_map(|run| Some(*run.latencies_ns.first()? as f64 / 1e3))
                    .collect(),
            ),
            writer: side(|run| run.writer),
            reader: side(|run| run.reader),
            latency: (!percentiles.is_empty()).then(|| Percentiles {
                p50: latency_median(|p| p.p50).unwrap_or_default(),
                p99: latency_median(|p| p.p99).unwrap_or_default(),
                p999: latency_median(|p| p.p999).unwrap_or_default(),
                max: latency_median(|p| p.max).unwrap_or_default(),
            }),
        }
    }

    /// The median over rounds of shmring's metric divided by `other`'s in
    /// the same round; rounds where either failed are left out.
    pub fn paired_ratio(
        &self,
        workload: usize,
        other: Transport,
        metric: fn(&RunOutcome) -> Option<f64>,
    ) -> Option<f64> {
        self.paired((workload, Transport::Shmring), (workload, other), metric)
    }

    /// The median over rounds of `ours`' metric divided by `theirs'` in the
    /// same round, each a (workload, transport); rounds where either failed
    /// are left out. Two workloads pair only if one runs in the other's
    /// rounds (`paired_with`).
    pub fn paired(
        &self,
        ours: (usize, Transport),
        theirs: (usize, Transport),
        metric: fn(&RunOutcome) -> Option<f64>,
    ) -> Option<f64> {
        let ours = self.runs(ours.0, ours.1);
        let theirs = self.runs(theirs.0, theirs.1);
        median(
            ours.iter()
                .zip(theirs)
                .filter(|(a, b)| a.ok() && b.ok())
                .filter_map(|(a, b)| Some(metric(a)? / metric(b)?))
                .collect(),
        )
    }

    /// "W1 shmring: 2/5 failed" for each of `transports` that failed a run.
    pub fn failed_runs(&self, transports: &[Transport]) -> Vec<String> {
        let mut failed = Vec::new();
        for (index, workload) in self.workloads.iter().enumerate() {
            for &transport in transports {
                let runs = self.runs(index, transport);
                let count = runs.iter().filter(|run| !run.ok()).count();
                if count > 0 {
                    failed.push(format!(
                        "{} {}: {count}/{} failed",
                        workload.id,
                        transport.label(),
                        runs.len()
                    ));
                }
            }
        }
        failed
    }

    /// Why runs failed, and the other observations, each with how often.
    fn observations(&self, workload: usize, transport: Transport) -> Vec<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let runs = self.runs(workload, transport);
        for run in runs {
            for line in run
                .failure
                .iter()
                .map(|f| format!("FAILED: {f}"))
                .chain(run.notes.iter().cloned())
            {
                *counts.entry(line).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .map(|(line, count)| format!("{line} ({count}/{})", runs.len()))
            .collect()
    }

    /// The workload `workload` runs in the rounds of, if that one ran.
    fn lead(&self, workload: usize) -> Option<usize> {
        let id = self.workloads[workload].paired_with?;
        self.workloads.iter().position(|lead| lead.id == id)
    }

    /// The workload whose limit runs `workload`'s are divided by: its own,
    /// or for one the limit does not run (W1-64f), that of the workload in
    /// whose rounds it runs: the same pipeline, in the same round.
    fn limit_of(&self, workload: usize) -> Option<usize> {
        let ran = |index: usize| !self.runs(index, Transport::Limit).is_empty();
        if ran(workload) {
            Some(workload)
        } else {
            self.lead(workload).filter(|&lead| ran(lead))
        }
    }

    fn transports(&self, workload: usize) -> Vec<Transport> {
        self.round
            .iter()
            .copied()
            .chain([Transport::ShmDefault])
            .filter(|&transport| !self.runs(workload, transport).is_empty())
            .collect()
    }
}

/// CPU per buffer of the writer and reader together (the one process of
/// the in-process pipelines).
fn run_total_cpu(run: &RunOutcome) -> Option<f64> {
    Some(run.writer?.cpu_us + run.reader.map_or(0.0, |reader| reader.cpu_us))
}

fn p99(run: &RunOutcome) -> Option<f64> {
    Percentiles::of(run.steady_latencies()).map(|p| p.p99)
}

/// The line printed after each run.
pub fn one_line(workload: &Workload, outcome: &RunOutcome) -> String {
    let wall = format!("{:.1} s", outcome.wall.as_secs_f64());
    if let Some(failure) = &outcome.failure {
        return format!("FAILED ({wall}): {failure}");
    }
    let mut line = match (workload.measure, Percentiles::of(outcome.steady_latencies())) {
        (Measure::Latency, Some(p)) => format!(
            "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            decimal(p.p50),
            decimal(p.p99),
            decimal(p.p999),
            decimal(p.max)
        ),
        _ => outcome.rate.map_or_else(String::new, |rate| {
            format!("{} buffers/s, {:.2} GB/s", thousands(rate), gigabytes(workload, rate))
        }),
    };
    let syscalls = |side: Option<SideStats>| side.and_then(|s| s.syscalls).map_or("-".to_owned(), decimal);
    let _ = write!(
        line,
        "; syscalls/buffer {} / {}; {wall}",
        syscalls(outcome.writer),
        syscalls(outcome.reader)
    );
    line
}

fn gigabytes(workload: &Workload, rate: f64) -> f64 {
    rate * workload.media.buffer_size() as f64 / 1e9
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Three significant digits, at most two decimals.
fn decimal(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 0.01 || v == 0.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

fn or_dash(value: Option<f64>, format: fn(f64) -> String) -> String {
    value.map_or_else(|| "–".to_owned(), format)
}

fn ratio(value: Option<f64>) -> String {
    or_dash(value, |r| format!("{r:.2}×"))
}

/// "writer / reader", or the single process's value in process.
fn pair(writer: Option<f64>, reader: Option<f64>, transport: Transport) -> String {
    if transport.in_process() {
        format!("{} (one process)", or_dash(writer, decimal))
    } else {
        format!("{} / {}", or_dash(writer, decimal), or_dash(reader, decimal))
    }
}

fn total_cpu(summary: &Summary) -> Option<f64> {
    match (summary.writer.cpu_us, summary.reader.cpu_us) {
        (Some(writer), Some(reader)) => Some(writer + reader),
        (writer, None) => writer,
        (None, reader) => reader,
    }
}

struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    memory: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                let kib: u64 = info.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu,
            cores,
            kernel,
            memory,
        }
    }
}

/// The commit of the git tree holding `dir`, and the files of src/ changed
/// on top: what a plugin built in that tree was built from.
pub fn source_version(dir: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        // `:/src`: src/ at the tree's top, wherever in it `dir` is.
        git(&["status", "--porcelain", "--", ":/src"]),
    ) {
        (Some(commit), Some(changes)) if !changes.is_empty() => {
            let files: Vec<&str> = changes
                .lines()
                .filter_map(|line| line.split_whitespace().last())
                .collect();
            format!("commit {commit} with uncommitted changes in {}", files.join(", "))
        }
        (Some(commit), _) => format!("commit {commit}"),
        _ => "unknown".to_owned(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn counter_text(counter: SyscallCounter) -> &'static str {
    match counter {
        SyscallCounter::Perf => {
            "`perf stat -e raw_syscalls:sys_enter` around every timed run, switched on and off at the window's edges through perf's control fifo"
        }
        SyscallCounter::Strace => {
            "`strace -f -c` in one extra, untimed run per configuration (perf was unusable); counts whole processes, start-up included"
        }
        SyscallCounter::None => "not counted (neither perf nor strace worked)",
    }
}

pub fn write(path: &Path, results: &Results, charts: &[Chart], command: &str, runtime: Duration) -> Result<(), String> {
    let text = render(results, charts, command, runtime);
    std::fs::write(path, text).map_err(|err| format!("cannot write {}: {err}", path.display()))
}

fn render(results: &Results, charts: &[Chart], command: &str, runtime: Duration) -> String {
    let mut out = String::new();
    let machine = Machine::read();
    let minutes = runtime.as_secs() / 60;
    let seconds = runtime.as_secs() % 60;
    let _ = writeln!(
        out,
        "# shmring against shmsink/shmsrc, a pipe and the in-process limit\n"
    );
    let _ = writeln!(
        out,
        "Made by `{command}` in {minutes} min {seconds} s; the numbers below are from that one run.\n"
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(out, "| CPU | {} |", machine.cpu);
    let _ = writeln!(out, "| cores | {} |", machine.cores);
    let _ = writeln!(out, "| memory | {} |", machine.memory);
    let _ = writeln!(out, "| kernel | {} |", machine.kernel);
    let _ = writeln!(out, "| GStreamer | {} |", results.gstreamer);
    let _ = writeln!(
        out,
        "| plugin source (when built; the runs load a copy made then) | {} |",
        results.plugin_source
    );
    if let Some(dir) = &results.baseline {
        let _ = writeln!(
            out,
            "| {} | {}, {} |",
            Transport::ShmringBaseline.label(),
            dir.display(),
            source_version(dir)
        );
    }
    let _ = writeln!(
        out,
        "| load average (1, 5, 15 min) at start / end | {} / {} |",
        results.load.0, results.load.1
    );
    let _ = writeln!(out, "| syscalls counted with | {} |\n", counter_text(results.counter));

    write_method(&mut out, results);
    write_reading_notes(&mut out);
    write_targets(&mut out, results);
    write_cpu_against_limit(&mut out, results);
    write_variants(&mut out, results);
    write_baseline(&mut out, results);
    for (index, workload) in results.workloads.iter().enumerate() {
        match workload.measure {
            Measure::Throughput => write_throughput(&mut out, results, index, charts),
            Measure::Latency => write_latency(&mut out, results, index),
        }
    }
    if let Some(chart) = charts.iter().find(|chart| chart.workload.is_none()) {
        let _ = writeln!(out, "![{}]({})\n", chart.title, chart.file);
    }
    write_syscalls(&mut out, results);
    write_peer_default(&mut out, results);
    write_observations(&mut out, results);
    write_pipelines(&mut out, results);
    out
}

fn write_method(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Method\n");
    let order: Vec<&str> = results.round.iter().map(|transport| transport.label()).collect();
    let lines = [
        format!(
            "Each configuration ran {} times, interleaved: {}, {}, ... Tables give medians over the runs that completed; a ratio is the median over rounds of shmring's value divided by the other transport's in the same round.",
            results.runs,
            order.join(", "),
            order[0]
        ),
        "Writer and reader are separate processes (the bench binary re-executed, running the pipeline below with gst::parse::launch). The limit is one process, the producer linked straight to the fakesink with no queue, so one thread does all the work: the pipeline a transport is measured against. The queued one-process pipeline (a `queue` in place of the transport, so a second thread) is shown for reference only. The writer starts first, the reader once the writer's socket exists, and the writer's first buffer is held until the reader's pipeline is PLAYING.".to_owned(),
        "Each process measures a window: from the first buffer it sees (writer: `tx.sink`, reader: the source's `rx.src`; the limit: the fakesink's sink pad) to the end (writer: the EOS event; reader: the last expected buffer). Start-up, registry loading and teardown are outside it.".to_owned(),
        "Rate: buffers reaching the reader's source pad per second, first to last. A pipe has no framing, so its rate counts bytes ÷ buffer size.".to_owned(),
        "CPU per buffer: `getrusage` user+sys over the window ÷ buffers, per process (all threads). Context switches likewise (voluntary + involuntary).".to_owned(),
        "Latency (W4): the writer stamps a sequence number and CLOCK_MONOTONIC into the first 16 bytes of each buffer in a probe on the transport sink's sink pad; the reader subtracts on its source's src pad. Percentiles are per run, then the median over runs. They leave out the first 1% of the buffers: the first buffer also pays for connecting, and buffers made meanwhile queue behind it; the first buffer's own latency has its column.".to_owned(),
        "A process whose buffers stop for 3 s ends itself (its watchdog) and the run counts as hung; anything left at the workload's timeout is killed. shmsink areas left in /dev/shm by a killed writer are removed.".to_owned(),
        "shmsink/shmsrc runs with a capsfilter on the reader and shm-size of about 8 frames for video and 64 KiB for audio, plus room for the frames W5's reader keeps; its default configuration (64 MiB area) ran once per throughput workload. The pipe uses fdsrc's default 4 KiB reads and the kernel's default 64 KiB pipe.".to_owned(),
        "W1-64f is W1 with shmringsink's `ring-size` at 64 frames (rounded up to 4096 bytes), on the shmring transports only; W5 is W1 with a reader that keeps its last 8 buffers (a pad probe on the fakesink's sink pad holds a reference to each until 8 newer ones have arrived), on every transport. Both run inside W1's rounds, right after W1, so a ratio to W1 is taken within a round too.".to_owned(),
    ];
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
}

/// What holds whatever the numbers: how to read the tables.
fn write_reading_notes(out: &mut String) {
    let _ = writeln!(
        out,
        "## Reading the numbers
"
    );
    let lines = [
        "A process's syscalls, CPU time and context switches include its producer's or consumer's own: a live audiotestsrc waits on the clock for every buffer, and a `queue` hands each buffer to another thread. The limit's row, which has no transport at all, shows that share.",
        "A ring costs syscalls only when a side sleeps. A reader that keeps up finds the ring empty at every buffer, so each buffer costs a wake-up (an eventfd write on the writer's side, a poll and a read on the reader's); a reader that falls behind drains many buffers per wake-up.",
        "At full speed (W4-full) a writer faster than its reader fills whatever lies between them, so latency measures that buffering: roughly its size ÷ the reader's rate: shmring's default ring for audio, shmsink's 64 KiB area, the kernel's 64 KiB pipe, the queue's 200 buffers.",
        "The limit's latency is that of two probes on one pad, no handoff at all: the floor, not a peer.",
    ];
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
}

/// The targets from the issue, and whether this run met them.
fn write_targets(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Against the targets\n");
    let _ = writeln!(out, "| target | measured | met |\n| --- | --- | --- |");
    let mut row = |target: String, measured: Option<(String, bool)>| {
        let (text, verdict) = match measured {
            Some((text, met)) => (text, if met { "yes" } else { "no" }),
            None => ("–".to_owned(), "not measured"),
        };
        let _ = writeln!(out, "| {target} | {text} | {verdict} |");
    };
    let rate = |run: &RunOutcome| run.rate;
    for (index, workload) in results.workloads.iter().enumerate() {
        let floor = match workload.id {
            "W1" | "W2" => Some(0.9),
            "W3" => Some(0.7),
            _ => None,
        };
        if let Some(floor) = floor {
            let ratio = results.paired_ratio(index, Transport::Limit, rate);
            row(
                format!("{}: shmring ≥ {floor}× the in-process limit", workload.id),
                ratio.map(|r| (format!("{r:.2}×"), r >= floor)),
            );
        }
    }
    // The variants that run in another workload's rounds have no targets.
    let targeted = |workload: &Workload| workload.paired_with.is_none();
    for (index, workload) in results.workloads.iter().enumerate().filter(|(_, w)| targeted(w)) {
        let summary = results.summary(index, Transport::Shmring);
        row(
            format!("{}: shmring syscalls/buffer ≤ 0.1 in writer and reader", workload.id),
            summary
                .writer
                .syscalls
                .zip(summary.reader.syscalls)
                .map(|(writer, reader)| {
                    (
                        format!("{} / {}", decimal(writer), decimal(reader)),
                        writer.max(reader) <= 0.1,
                    )
                }),
        );
    }
    for (index, workload) in results.workloads.iter().enumerate().filter(|(_, w)| targeted(w)) {
        if workload.measure == Measure::Latency {
            let p99 = results.summary(index, Transport::Shmring).latency.map(|p| p.p99);
            row(
                format!("{}: shmring p99 ≤ 50 µs", workload.id),
                p99.map(|us| (format!("{} µs", decimal(us)), us <= 50.0)),
            );
        }
    }
    let _ = writeln!(out);
}

/// Every transport's CPU per buffer, both processes together, against the
/// limit's one process, round by round: what crossing a process boundary
/// costs in CPU on top of the work itself.
fn write_cpu_against_limit(out: &mut String, results: &Results) {
    let throughput: Vec<(usize, usize)> = (0..results.workloads.len())
        .filter(|&index| results.workloads[index].measure == Measure::Throughput)
        .filter_map(|index| Some((index, results.limit_of(index)?)))
        .collect();
    if throughput.is_empty() {
        return;
    }
    let others: Vec<Transport> = results
        .round
        .iter()
        .copied()
        .filter(|&transport| transport != Transport::Limit)
        .collect();
    let _ = writeln!(out, "## CPU per buffer against the limit\n");
    let _ = writeln!(
        out,
        "CPU µs per buffer of writer and reader together ÷ the limit's one process, the median over rounds of the ratio within each round; below 1× would use less CPU than the one-process pipeline. A workload the limit does not run is divided by the limit of the workload in whose rounds it runs.\n"
    );
    let header: Vec<&str> = others.iter().map(|transport| transport.label()).collect();
    let _ = writeln!(out, "| workload | {} |", header.join(" | "));
    let _ = writeln!(out, "| --- |{}", " --- |".repeat(others.len()));
    for (index, limit) in throughput {
        let workload = &results.workloads[index];
        let cells: Vec<String> = others
            .iter()
            .map(|&transport| {
                if transport.runs(workload) {
                    ratio(results.paired((index, transport), (limit, Transport::Limit), run_total_cpu))
                } else {
                    "n/a".to_owned()
                }
            })
            .collect();
        let id = if limit == index {
            workload.id.to_owned()
        } else {
            format!("{} (÷ {}'s limit)", workload.id, results.workloads[limit].id)
        };
        let _ = writeln!(out, "| {id} | {} |", cells.join(" | "));
    }
    let _ = writeln!(out);
}

/// The workloads that run inside another's rounds (W1-64f and W5 in W1's),
/// against it, transport by transport and round by round.
fn write_variants(out: &mut String, results: &Results) {
    let mut leads: Vec<usize> = (0..results.workloads.len())
        .filter_map(|index| results.lead(index))
        .collect();
    leads.sort_unstable();
    leads.dedup();
    for lead in leads {
        let variants: Vec<usize> = (0..results.workloads.len())
            .filter(|&index| results.lead(index) == Some(lead))
            .collect();
        let lead_id = results.workloads[lead].id;
        let ids: Vec<&str> = variants.iter().map(|&index| results.workloads[index].id).collect();
        let _ = writeln!(out, "## {} against {lead_id}\n", ids.join(" and "));
        for &index in &variants {
            let workload = &results.workloads[index];
            let _ = writeln!(out, "- {}: {}.", workload.id, workload.title);
        }
        let _ = writeln!(
            out,
            "\nBuffers/s; in brackets the variant ÷ {lead_id}, the median over rounds of the ratio within each round (each variant runs right after {lead_id} in every round). Then, for each, the transport ÷ the limit (no queue) on the same workload, or on {lead_id} in the same round where the limit does not run the variant.\n"
        );
        let mut header = vec!["transport".to_owned(), format!("{lead_id} buffers/s")];
        for id in &ids {
            header.push(format!("{id} buffers/s (÷ {lead_id})"));
        }
        header.push(format!("÷ limit, {lead_id}"));
        for id in &ids {
            header.push(format!("÷ limit, {id}"));
        }
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
        let rate = |run: &RunOutcome| run.rate;
        for &transport in &results.round {
            if results.runs(lead, transport).is_empty() {
                continue;
            }
            let versus_limit = |workload: usize| match results.limit_of(workload) {
                _ if transport == Transport::Limit => String::new(),
                _ if results.runs(workload, transport).is_empty() => "n/a".to_owned(),
                Some(limit) => ratio(results.paired((workload, transport), (limit, Transport::Limit), rate)),
                None => "–".to_owned(),
            };
            let mut cells = vec![
                transport.label().to_owned(),
                or_dash(results.summary(lead, transport).rate, thousands),
            ];
            for &index in &variants {
                cells.push(if results.runs(index, transport).is_empty() {
                    "n/a".to_owned()
                } else {
                    format!(
                        "{} ({})",
                        or_dash(results.summary(index, transport).rate, thousands),
                        ratio(results.paired((index, transport), (lead, transport), rate))
                    )
                });
            }
            cells.push(versus_limit(lead));
            for &index in &variants {
                cells.push(versus_limit(index));
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        let _ = writeln!(out);
    }
}

/// shmring against the baseline build, round by round, in the measures
/// that a new build should move: rate and CPU per buffer on each side.
fn write_baseline(out: &mut String, results: &Results) {
    if !results.round.contains(&Transport::ShmringBaseline) {
        return;
    }
    let _ = writeln!(out, "## Current shmring ÷ {}\n", Transport::ShmringBaseline.label());
    let _ = writeln!(
        out,
        "The median over rounds of the ratio within each round. Above 1× for buffers/s, below 1× for CPU, is better. The latency tables compare p99.\n"
    );
    let _ = writeln!(
        out,
        "| workload | buffers/s | CPU µs/buffer writer | CPU µs/buffer reader | p99 latency |\n| --- | --- | --- | --- | --- |"
    );
    for (index, workload) in results.workloads.iter().enumerate() {
        let versus = |metric: fn(&RunOutcome) -> Option<f64>| {
            ratio(results.paired_ratio(index, Transport::ShmringBaseline, metric))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            workload.id,
            versus(|run| run.rate),
            versus(|run| Some(run.writer?.cpu_us)),
            versus(|run| Some(run.reader?.cpu_us)),
            versus(p99),
        );
    }
    let _ = writeln!(out);
}

fn heading(out: &mut String, workload: &Workload) {
    let pace = if workload.live {
        "paced by the clock"
    } else {
        "as fast as it goes"
    };
    let mut extra = String::new();
    if let Some(bytes) = workload.ring_size {
        let _ = write!(
            extra,
            " shmringsink has `ring-size={bytes}` ({:.1} frames).",
            bytes as f64 / workload.media.buffer_size() as f64
        );
    }
    if workload.keep > 0 {
        let _ = write!(
            extra,
            " The reader's sink keeps the last {} buffers, each until {} newer ones have arrived.",
            workload.keep, workload.keep
        );
    }
    if workload.shmring_only {
        extra.push_str(" Only shmring runs it.");
    }
    let _ = writeln!(
        out,
        "## {}: {}\n\n{} buffers of {} bytes, {pace}.{extra}\n",
        workload.id,
        workload.title,
        thousands(workload.buffers as f64),
        thousands(workload.media.buffer_size() as f64)
    );
}

fn write_throughput(out: &mut String, results: &Results, index: usize, charts: &[Chart]) {
    let workload = &results.workloads[index];
    heading(out, workload);
    let _ = writeln!(
        out,
        "| transport | completed | buffers/s | GB/s | shmring ÷ this | CPU µs/buffer writer / reader | CPU µs/buffer total | context switches/buffer writer / reader | syscalls/buffer writer / reader |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for transport in results.transports(index) {
        let summary = results.summary(index, transport);
        let versus = match transport {
            Transport::Shmring | Transport::ShmDefault => "".to_owned(),
            other => ratio(results.paired_ratio(index, other, |run| run.rate)),
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {versus} | {} | {} | {} | {} |",
            transport.label(),
            summary.completed,
            summary.total,
            or_dash(summary.rate, thousands),
            or_dash(summary.rate.map(|rate| gigabytes(workload, rate)), |g| format!(
                "{g:.2}"
            )),
            pair(summary.writer.cpu_us, summary.reader.cpu_us, transport),
            or_dash(total_cpu(&summary), decimal),
            pair(summary.writer.switches, summary.reader.switches, transport),
            pair(summary.writer.syscalls, summary.reader.syscalls, transport),
        );
    }
    let _ = writeln!(out);
    if let Some(chart) = charts.iter().find(|chart| chart.workload == Some(index)) {
        let _ = writeln!(out, "![{}]({})\n", chart.title, chart.file);
    }
}

fn write_latency(out: &mut String, results: &Results, index: usize) {
    heading(out, &results.workloads[index]);
    let _ = writeln!(
        out,
        "| transport | completed | p50 µs | p99 µs | p99.9 µs | max µs | shmring p99 ÷ this | first buffer µs | CPU µs/buffer writer / reader | syscalls/buffer writer / reader |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for transport in results.transports(index) {
        let summary = results.summary(index, transport);
        let latency = |field: fn(&Percentiles) -> f64| summary.latency.as_ref().map(field);
        let versus = match transport {
            Transport::Shmring => "".to_owned(),
            other => ratio(results.paired_ratio(index, other, p99)),
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {} | {} | {versus} | {} | {} | {} |",
            transport.label(),
            summary.completed,
            summary.total,
            or_dash(latency(|p| p.p50), decimal),
            or_dash(latency(|p| p.p99), decimal),
            or_dash(latency(|p| p.p999), decimal),
            or_dash(latency(|p| p.max), decimal),
            or_dash(summary.first_latency, decimal),
            pair(summary.writer.cpu_us, summary.reader.cpu_us, transport),
            pair(summary.writer.syscalls, summary.reader.syscalls, transport),
        );
    }
    let _ = writeln!(out);
}

fn write_syscalls(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Syscalls per buffer (writer / reader)\n");
    let header: Vec<&str> = results.round.iter().map(|transport| transport.label()).collect();
    let _ = writeln!(out, "| workload | {} |", header.join(" | "));
    let _ = writeln!(out, "| --- |{}", " --- |".repeat(results.round.len()));
    for (index, workload) in results.workloads.iter().enumerate() {
        let cells: Vec<String> = results
            .round
            .iter()
            .map(|&transport| {
                if !transport.runs(workload) {
                    return "n/a".to_owned();
                }
                let summary = results.summary(index, transport);
                pair(summary.writer.syscalls, summary.reader.syscalls, transport)
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", workload.id, cells.join(" | "));
    }
    let _ = writeln!(out);
}

fn write_peer_default(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## shmsink/shmsrc in its default configuration\n");
    let _ = writeln!(
        out,
        "The same pipelines without `shm-size`, so shmsink uses its default 64 MiB area; one run each.\n"
    );
    for (index, workload) in results.workloads.iter().enumerate() {
        let Some(run) = results.runs(index, Transport::ShmDefault).first() else {
            continue;
        };
        let mut text = one_line(workload, run);
        if !run.notes.is_empty() {
            let _ = write!(text, "; {}", run.notes.join("; "));
        }
        let _ = writeln!(out, "- {}: {text}", workload.id);
    }
    let _ = writeln!(out);
}

fn write_observations(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Failures and other observations\n");
    let mut any = false;
    for (index, workload) in results.workloads.iter().enumerate() {
        for transport in results.transports(index) {
            let observations = results.observations(index, transport);
            if !observations.is_empty() {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} {}: {}",
                    workload.id,
                    transport.label(),
                    observations.join("; ")
                );
            }
        }
    }
    if !any {
        let _ = writeln!(out, "None.");
    }
    let _ = writeln!(out);
}

fn write_pipelines(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Pipelines\n");
    let _ = writeln!(
        out,
        "As the children run them (with `GST_PLUGIN_PATH` at a copy of target/release/libgstshmring.so made right after the build; `GST_PLUGIN_PATH=target/release` by hand); the socket path differs per run.\n"
    );
    if let Some(dir) = &results.baseline {
        let _ = writeln!(
            out,
            "{} runs the shmring pipelines with `GST_PLUGIN_PATH={}`.\n",
            Transport::ShmringBaseline.label(),
            dir.display()
        );
    }
    for workload in &results.workloads {
        let _ = writeln!(out, "### {}\n\n```sh", workload.id);
        if workload.keep > 0 {
            let _ = writeln!(
                out,
                "# The reader also keeps its last {} buffers (a pad probe on out.sink holds them; gst-launch has no such option).\n",
                workload.keep
            );
        }
        let transports = results
            .round
            .iter()
            .copied()
            .filter(|&transport| transport != Transport::ShmringBaseline && transport.runs(workload))
            .chain(workload.peer_default.then_some(Transport::ShmDefault));
        for transport in transports {
            let _ = writeln!(out, "# {}\n{}\n", transport.label(), transport.shell_command(workload));
        }
        let _ = writeln!(out, "```\n");
    }
}
