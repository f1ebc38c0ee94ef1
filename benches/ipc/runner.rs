//! Runs one configuration once: starts the writer and reader processes,
//! supervises them so that nothing hangs, and turns what they report into a
//! [`RunOutcome`].

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{self, STALLED_EXIT};
use crate::sys;
use crate::transports::{self, Transport};
use crate::workloads::{Measure, Workload};

/// How long a writer may outlive its reader before it is killed.
const WRITER_GRACE: Duration = Duration::from_secs(10);
/// The longest a child may take to start its pipeline, registry scan included.
const STARTUP: Duration = Duration::from_secs(15);
/// A child whose buffers stop moving for this long ends itself.
const STALL: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);
/// Where shmsink leaves its areas, which a killed writer never removes.
const SHM_DIR: &str = "/dev/shm";
const SHM_PREFIX: &str = "shmpipe.";

/// How syscalls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallCounter {
    /// `perf stat -e raw_syscalls:sys_enter` around every timed run, counting
    /// only inside the measured window.
    Perf,
    /// perf is unusable: one extra `strace -f -c` run per configuration,
    /// counting whole processes.
    Strace,
    None,
}

/// What wraps the children of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracing {
    Perf,
    Strace,
    Off,
}

/// A directory holding a libgstshmring.so, and the registry cache the
/// children use with it. Each build needs its own cache: both hold a plugin
/// named shmring, and a shared cache would be rescanned and rewritten
/// whenever the other build ran last, by writer and reader at once.
pub struct Plugin {
    pub dir: PathBuf,
    pub registry: PathBuf,
}

/// Everything the runs share.
pub struct Bench {
    /// The bench binary, re-executed as each child.
    pub exe: PathBuf,
    /// The plugin built from this tree.
    pub plugin: Plugin,
    /// The older build that `Transport::ShmringBaseline` runs.
    pub baseline: Option<Plugin>,
    /// Logs and per-run files.
    pub scratch: PathBuf,
    /// Sockets live under /tmp: a unix socket path must stay short.
    pub sockets: PathBuf,
}

/// Per-buffer costs of one process over its measured window.
#[derive(Debug, Clone, Copy)]
pub struct SideStats {
    pub cpu_us: f64,
    pub switches: f64,
    pub syscalls: Option<f64>,
}

/// One run of one transport on one workload.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Why the run did not complete, or None if it did.
    pub failure: Option<String>,
    pub wall: Duration,
    /// Buffers per second reaching the reader.
    pub rate: Option<f64>,
    pub writer: Option<SideStats>,
    pub reader: Option<SideStats>,
    /// Every buffer's one-way latency in ns, in stream order.
    pub latencies_ns: Vec<u64>,
    /// Things worth telling that do not make the run fail.
    pub notes: Vec<String>,
}

impl RunOutcome {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The latencies after a warm-up of 1% of the buffers. The first buffer
    /// also pays for connecting, and with a live producer the buffers made
    /// meanwhile queue behind it; that is start-up, not steady state.
    pub fn steady_latencies(&self) -> &[u64] {
        let warmup = (self.latencies_ns.len() / 100).max(1).min(self.latencies_ns.len());
        &self.latencies_ns[warmup..]
    }

    fn failed(reason: String) -> Self {
        RunOutcome {
            failure: Some(reason),
            wall: Duration::ZERO,
            rate: None,
            writer: None,
            reader: None,
            latencies_ns: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// A child's `key=value` result file.
#[derive(Debug, Default)]
struct ChildReport(BTreeMap<String, String>);

impl ChildReport {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let fields = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Some(ChildReport(fields))
    }

    fn text(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.0.get(key)?.parse().ok()
    }

    /// CPU time, context switches and syscalls per buffer.
    fn side_stats(&self, buffers: u64, syscalls: Option<u64>) -> Option<SideStats> {
        if buffers == 0 {
            return None;
        }
        let per_buffer = |value: u64| value as f64 / buffers as f64;
        Some(SideStats {
            cpu_us: per_buffer(self.number("user_us")? + self.number("sys_us")?),
            switches: per_buffer(self.number("voluntary")? + self.number("involuntary")?),
            syscalls: syscalls.map(per_buffer),
        })
    }
}

/// A started child and the files it reports in.
struct Process {
    role: &'static str,
    child: Child,
    result: PathBuf,
    stderr: PathBuf,
    syscalls: Option<PathBuf>,
    tracing: Tracing,
    /// Set once it has exited (or been killed).
    exit: Option<String>,
    killed: bool,
}

impl Process {
    fn poll(&mut self) -> bool {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                _ => "unknown exit".to_owned(),
            });
        }
        self.exit.is_some()
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            sys::kill_group(self.child.id());
            let _ = self.child.wait();
            self.exit = Some("killed".to_owned());
            self.killed = true;
        }
    }

    fn report(&self) -> Option<ChildReport> {
        ChildReport::read(&self.result)
    }

    fn syscall_count(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.syscalls.as_ref()?).ok()?;
        match self.tracing {
            Tracing::Perf => text
                .lines()
                .find(|line| line.contains("raw_syscalls:sys_enter"))
                .and_then(|line| line.split(',').next()?.parse().ok()),
            Tracing::Strace => text.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.last() == Some(&"total")).then(|| fields.get(3)?.parse().ok())?
            }),
            Tracing::Off => None,
        }
    }

    /// The last thing the child said on stderr, to explain a failure.
    fn last_words(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        text.lines()
            .rev()
            .find(|line| !line.trim().is_empty() && !line.starts_with("Events "))
            .unwrap_or("")
            .trim()
            .chars()
            .take(160)
            .collect()
    }
}

impl Bench {
    /// The plugin that `transport`'s children load.
    fn plugin(&self, transport: Transport) -> &Plugin {
        match transport {
            Transport::ShmringBaseline => self.baseline.as_ref().expect("baseline runs are planned only with one"),
            _ => &self.plugin,
        }
    }

    /// The bench binary as a child with `plugin`, wrapped as `tracing` asks.
    fn command(
        &self,
        plugin: &Plugin,
        tracing: Tracing,
        dir: &Path,
        role: &str,
    ) -> (Command, Option<PathBuf>, Vec<String>) {
        let count_file = dir.join(format!("{role}.syscalls"));
        let mut extra = Vec::new();
        let mut command = match tracing {
            Tracing::Perf => {
                let (ctl, ack) = (
                    dir.join(format!("{role}.perf-ctl")),
                    dir.join(format!("{role}.perf-ack")),
                );
                for fifo in [&ctl, &ack] {
                    if let Err(err) = sys::mkfifo(fifo) {
                        eprintln!("ipc bench: cannot make fifo {}: {err}", fifo.display());
                    }
                }
                let mut command = Command::new("perf");
                command
                    .args(["stat", "-x,", "-D", "-1", "-e", "raw_syscalls:sys_enter", "-o"])
                    .arg(&count_file)
                    .arg("--control")
                    .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
                    .arg("--")
                    .arg(&self.exe);
                extra = vec![
                    "--perf-ctl".into(),
                    ctl.display().to_string(),
                    "--perf-ack".into(),
                    ack.display().to_string(),
                ];
                command
            }
            Tracing::Strace => {
                let mut command = Command::new("strace");
                command
                    .args(["-f", "-c", "-o"])
                    .arg(&count_file)
                    .arg("--")
                    .arg(&self.exe);
                command
            }
            Tracing::Off => Command::new(&self.exe),
        };
        command
            .env("GST_PLUGIN_PATH", &plugin.dir)
            .env("GST_REGISTRY", &plugin.registry)
            .process_group(0);
        let count_file = (tracing != Tracing::Off).then_some(count_file);
        (command, count_file, extra)
    }

    /// Checks that every element can be made with `plugin`, and builds its
    /// registry once so that the first timed run does not pay for it.
    /// Returns the GStreamer version.
    pub fn preflight(&self, plugin: &Plugin, factories: &[&str]) -> Result<String, String> {
        let (mut command, _, _) = self.command(plugin, Tracing::Off, &self.scratch, "check");
        let output = command
            .arg(child::FLAG)
            .arg("check")
            .args(factories)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", self.exe.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        plugin: &Plugin,
        tracing: Tracing,
        dir: &Path,
        role: &'static str,
        pipeline: &str,
        probe_args: &[String],
        stdin: Stdio,
        stdout: Option<Stdio>,
    ) -> Result<Process, String> {
        let (mut command, syscalls, perf_args) = self.command(plugin, tracing, dir, role);
        let result = dir.join(format!("{role}.result"));
        let stderr = dir.join(format!("{role}.log"));
        let stdout = match stdout {
            Some(stdout) => stdout,
            None => File::create(dir.join(format!("{role}.out")))
                .map_err(|err| err.to_string())?
                .into(),
        };
        command
            .args([child::FLAG, "run", "--pipeline", pipeline, "--result"])
            .arg(&result)
            .args(probe_args)
            .args(perf_args)
            .args(["--stall-ms", &STALL.as_millis().to_string()])
            .args(["--startup-ms", &STARTUP.as_millis().to_string()])
            .stdin(stdin)
            .stdout(stdout)
            .stderr(File::create(&stderr).map_err(|err| err.to_string())?);
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start the {role}: {err}"))?;
        Ok(Process {
            role,
            child,
            result,
            stderr,
            syscalls,
            tracing,
            exit: None,
            killed: false,
        })
    }

    /// Runs `transport` on `workload` once. `tag` names the run's files.
    pub fn run(&self, workload: &Workload, transport: Transport, tag: &str, tracing: Tracing) -> RunOutcome {
        let started = Instant::now();
        let dir = self.scratch.join("runs").join(tag);
        let socket = self.sockets.join(format!("{tag}.sock"));
        let shm_before = shm_areas();
        let outcome = std::fs::create_dir_all(&dir)
            .map_err(|err| format!("cannot make {}: {err}", dir.display()))
            .and_then(|()| self.start_and_supervise(workload, transport, &dir, &socket, tracing, started));
        let _ = std::fs::remove_file(&socket);
        for area in shm_areas().difference(&shm_before) {
            let _ = std::fs::remove_file(Path::new(SHM_DIR).join(area));
        }
        let mut outcome = outcome.unwrap_or_else(RunOutcome::failed);
        outcome.wall = started.elapsed();
        outcome
    }

    fn start_and_supervise(
        &self,
        workload: &Workload,
        transport: Transport,
        dir: &Path,
        socket: &Path,
        tracing: Tracing,
        started: Instant,
    ) -> Result<RunOutcome, String> {
        let latency_file = dir.join("latencies.txt");
        let mut processes = self.start(workload, transport, dir, socket, tracing, &latency_file)?;
        let notes = supervise(&mut processes, started + workload.timeout);
        Ok(judge(workload, &processes, &latency_file, notes))
    }

    /// Starts the run's processes: the writer first, the reader once the
    /// writer listens (a shmsrc started first would fail), and the writer's
    /// stream once the reader runs. The limit is one process.
    fn start(
        &self,
        workload: &Workload,
        transport: Transport,
        dir: &Path,
        socket: &Path,
        tracing: Tracing,
        latency_file: &Path,
    ) -> Result<Vec<Process>, String> {
        let plugin = self.plugin(transport);
        let pipelines = transport.pipelines(workload, socket);
        let pads = transport.probe_pads();
        let mut stamp_args = vec!["--stamp".to_owned(), pads.stamp.to_owned()];
        let mut measure_args = vec![
            "--measure".to_owned(),
            pads.measure.to_owned(),
            "--record-size".to_owned(),
            workload.media.buffer_size().to_string(),
            "--expect".to_owned(),
            workload.buffers.to_string(),
        ];
        if workload.keep > 0 {
            measure_args.extend([
                "--keep-pad".to_owned(),
                transports::KEEP_PAD.to_owned(),
                "--keep".to_owned(),
                workload.keep.to_string(),
            ]);
        }
        if workload.measure == Measure::Latency {
            stamp_args.push("--write-stamps".into());
            measure_args.extend(["--latency-out".to_owned(), latency_file.display().to_string()]);
        }
        let Some(reader_pipeline) = &pipelines.reader else {
            let args = [stamp_args, measure_args].concat();
            let process = self.spawn(
                plugin,
                tracing,
                dir,
                "process",
                &pipelines.writer,
                &args,
                Stdio::null(),
                None,
            )?;
            return Ok(vec![process]);
        };

        let _ = std::fs::remove_file(socket);
        let (pipe_read, pipe_write) = if transport.uses_pipe() {
            let (read, write) = sys::pipe().map_err(|err| format!("cannot make a pipe: {err}"))?;
            (Some(read), Some(write))
        } else {
            (None, None)
        };
        stamp_args.push("--wait-go".into());
        let ready = dir.join("reader.ready");
        measure_args.extend(["--ready".to_owned(), ready.display().to_string()]);
        let stdout = pipe_write.map(Stdio::from);
        let writer_pipeline = &pipelines.writer;
        let mut writer = self.spawn(
            plugin,
            tracing,
            dir,
            "writer",
            writer_pipeline,
            &stamp_args,
            Stdio::piped(),
            stdout,
        )?;
        if transport.uses_socket() {
            wait_for(&mut writer, || socket.exists());
        }
        let stdin = pipe_read.map_or_else(Stdio::null, Stdio::from);
        let mut reader = match self.spawn(
            plugin,
            tracing,
            dir,
            "reader",
            reader_pipeline,
            &measure_args,
            stdin,
            None,
        ) {
            Ok(reader) => reader,
            Err(err) => {
                writer.kill();
                return Err(err);
            }
        };
        wait_for(&mut reader, || ready.exists());
        if let Some(mut go) = writer.child.stdin.take() {
            // A writer that is already gone cannot read it; supervise() says why.
            let _ = go.write_all(b"go\n");
        }
        Ok(vec![writer, reader])
    }
}

/// Waits, up to STARTUP, for `ready` or for `process` to end.
fn wait_for(process: &mut Process, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + STARTUP;
    while !ready() && !process.poll() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for the processes (the reader last in `processes`), killing them at
/// `deadline`, or the writer once it outlives its reader by WRITER_GRACE.
fn supervise(processes: &mut [Process], deadline: Instant) -> Vec<String> {
    let mut notes = Vec::new();
    let mut reader_done_at = None;
    loop {
        let done: Vec<bool> = processes.iter_mut().map(Process::poll).collect();
        if done.iter().all(|&done| done) {
            break;
        }
        let now = Instant::now();
        if processes.len() == 2 && done[1] {
            let since = *reader_done_at.get_or_insert(now);
            if now.duration_since(since) > WRITER_GRACE {
                processes[0].kill();
                notes.push(format!(
                    "writer still running {} s after the reader ended; killed",
                    WRITER_GRACE.as_secs()
                ));
            }
        }
        if now > deadline {
            for process in processes.iter_mut() {
                process.kill();
            }
        }
        std::thread::sleep(POLL);
    }
    notes
}

/// Turns what the processes left behind into the run's outcome.
fn judge(workload: &Workload, processes: &[Process], latency_file: &Path, mut notes: Vec<String>) -> RunOutcome {
    let writer = &processes[0];
    let reader = processes.last().expect("a run has at least one process");
    let writer_report = writer.report();
    let reader_report = reader.report();
    let record_size = workload.media.buffer_size();
    let timeout = workload.timeout.as_secs();

    let failure = match &reader_report {
        _ if reader.killed => Some(format!(
            "hung: killed at the {timeout} s timeout{}",
            reader_report
                .as_ref()
                .map(|report| format!(
                    " after {} of {} buffers",
                    received(report, record_size),
                    workload.buffers
                ))
                .unwrap_or_default()
        )),
        None => Some(format!(
            "{} failed ({}): {}",
            reader.role,
            exit_text(reader),
            reader.last_words()
        )),
        Some(report) => match report.text("status") {
            "ok" => None,
            "stalled" => Some(format!(
                "hung: no buffer for {} s after {} of {} buffers",
                STALL.as_secs(),
                received(report, record_size),
                workload.buffers
            )),
            "no-buffer" => Some(format!("hung: no buffer within {} s of start", STARTUP.as_secs())),
            "eos-early" if !report.text("end").starts_with("error") => Some(format!(
                "EOS after {} of {} buffers",
                received(report, record_size),
                workload.buffers
            )),
            _ => Some(format!(
                "{} ended after {} of {} buffers: {}",
                reader.role,
                received(report, record_size),
                workload.buffers,
                report.text("end")
            )),
        },
    };

    for process in processes {
        let report = process.report();
        let (status, end) = report
            .as_ref()
            .map_or(("", ""), |report| (report.text("status"), report.text("end")));
        // A clean EOS is what every transport should do; only the others are told.
        match end {
            "" | "eos" => {}
            "none" if status == "ok" => notes.push(format!("{} saw no EOS", process.role)),
            "none" => {}
            other => notes.push(format!("{} stream end: {other}", process.role)),
        }
        if report.as_ref().is_some_and(|report| report.text("teardown") == "hung") {
            notes.push(format!("{} did not reach NULL in time (teardown hung)", process.role));
        }
        if process.exit.as_deref().is_some_and(|exit| exit != "exit code 0") && !process.killed {
            notes.push(format!("{} {}", process.role, exit_text(process)));
        }
    }

    let rate = reader_report.as_ref().filter(|_| failure.is_none()).and_then(|report| {
        let bytes = report.number("bytes")? - report.number("first_bytes")?;
        let seconds = report.number("arrival_ns")? as f64 / 1e9;
        (seconds > 0.0).then(|| bytes as f64 / record_size as f64 / seconds)
    });
    let reader_buffers = reader_report.as_ref().map_or(0, |report| received(report, record_size));
    let writer_buffers = writer_report
        .as_ref()
        .and_then(|report| report.number("stamped"))
        .unwrap_or(0);
    let (writer_stats, reader_stats) = if processes.len() == 1 {
        let stats = writer_report
            .as_ref()
            .and_then(|r| r.side_stats(reader_buffers, writer.syscall_count()));
        (stats, None)
    } else {
        (
            writer_report
                .as_ref()
                .and_then(|r| r.side_stats(writer_buffers, writer.syscall_count())),
            reader_report
                .as_ref()
                .and_then(|r| r.side_stats(reader_buffers, reader.syscall_count())),
        )
    };
    if let Some(out_of_order) = reader_report.as_ref().and_then(|report| report.number("out_of_order"))
        && out_of_order > 0
    {
        notes.push(format!("{out_of_order} stamps out of sequence"));
    }
    let latencies_ns = match (&failure, workload.measure) {
        (None, Measure::Latency) => std::fs::read_to_string(latency_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    RunOutcome {
        failure,
        wall: Duration::ZERO,
        rate,
        writer: writer_stats,
        reader: reader_stats,
        latencies_ns,
        notes,
    }
}

fn received(report: &ChildReport, record_size: u64) -> u64 {
    report.number("bytes").unwrap_or(0) / record_size
}

fn exit_text(process: &Process) -> String {
    match process.exit.as_deref() {
        Some(exit) if exit == format!("exit code {STALLED_EXIT}") => "ended by its watchdog".to_owned(),
        Some(exit) => format!("exited with {exit}"),
        None => "still running".to_owned(),
    }
}

/// shmsink's areas in /dev/shm.
fn shm_areas() -> HashSet<String> {
    std::fs::read_dir(SHM_DIR)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(SHM_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}
