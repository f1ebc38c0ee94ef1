//! The child side: the bench binary re-executed to run one pipeline (a
//! writer, a reader, or the in-process limit) and watch it through pad probes.
//!
//! What a child measures covers a window: from the first buffer it sees to
//! the last one it waits for (the reader's last expected buffer, or the
//! writer's EOS). Start-up, plugin loading and teardown fall outside it. CPU
//! time and context switches are `getrusage` deltas over the window, and
//! syscalls are counted by `perf stat`, which the child switches on and off
//! at the window's edges through perf's control fifo.
//!
//! The child reports in a `key=value` file. It never hangs the benchmark: a
//! watchdog thread ends the process when buffers stop moving, and a teardown
//! that does not return in time is abandoned.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use gst::prelude::*;

use crate::sys::{monotonic_ns, usage};

/// The first argument that makes the bench binary a child.
pub const FLAG: &str = "--child";

/// Bytes at the start of each stamped buffer: sequence number, then the
/// writer's CLOCK_MONOTONIC in ns, both little-endian.
const STAMP_LEN: u64 = 16;
/// The name of the bus message a probe posts when the window closes.
const WINDOW_CLOSED: &str = "ipc-bench-window-closed";
const WATCHDOG_PERIOD: Duration = Duration::from_millis(500);
/// How long a reader waits after its last buffer to see how the stream ends.
const READER_LINGER: Duration = Duration::from_secs(1);
/// How long a writer waits for its EOS message after the EOS event went by.
const WRITER_LINGER: Duration = Duration::from_secs(5);
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Exit code of a child that its watchdog ended.
pub const STALLED_EXIT: i32 = 3;

pub fn main(args: &[String]) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("run") => Config::parse(&args[1..]).and_then(run),
        _ => Err(format!("unknown child mode {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ipc bench child: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Makes sure every element the benchmark needs can be made, and prints
/// the GStreamer version.
fn check(factories: &[String]) -> Result<(), String> {
    gst::init().map_err(|err| err.to_string())?;
    let missing: Vec<&str> = factories
        .iter()
        .map(String::as_str)
        .filter(|name| gst::ElementFactory::find(name).is_none())
        .collect();
    if missing.is_empty() {
        println!("{}", gst::version_string());
        Ok(())
    } else {
        Err(format!("missing GStreamer elements: {}", missing.join(", ")))
    }
}

/// What to run and watch, from the command line the parent wrote.
struct Config {
    pipeline: String,
    result: PathBuf,
    /// `element.pad` where buffers are counted, and stamped if `write_stamps`.
    stamp_pad: Option<String>,
    /// `element.pad` where arrivals are counted, and stamps read if
    /// `latency_out` is set.
    measure_pad: Option<String>,
    write_stamps: bool,
    record_size: u64,
    /// Records the measure pad waits for.
    expect: u64,
    latency_out: Option<PathBuf>,
    perf: Option<(PathBuf, PathBuf)>,
    /// Writer: start the stream only once a line arrives on stdin, that is
    /// once the reader runs. A live pipeline waits in PAUSED, where it makes
    /// no data (going to PLAYING first would make its clock run, and the
    /// buffers it owes would come in a burst); any other holds its first
    /// buffer in the stamp probe, so that no stamp is taken early.
    wait_go: bool,
    /// Reader: made once the pipeline is set to PLAYING.
    ready: Option<PathBuf>,
    /// `element.pad` where the consumer keeps the latest `keep` buffers, as
    /// an element that holds on to buffers would (W5).
    keep_pad: Option<String>,
    keep: usize,
    stall: Duration,
    startup: Duration,
}

impl Config {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut config = Config {
            pipeline: String::new(),
            result: PathBuf::new(),
            stamp_pad: None,
            measure_pad: None,
            write_stamps: false,
            record_size: 1,
            expect: 0,
            latency_out: None,
            perf: None,
            wait_go: false,
            ready: None,
            keep_pad: None,
            keep: 0,
            stall: Duration::from_secs(3),
            startup: Duration::from_secs(15),
        };
        let mut perf_ctl = None;
        let mut perf_ack = None;
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let switch = match flag.as_str() {
                "--write-stamps" => Some(&mut config.write_stamps),
                "--wait-go" => Some(&mut config.wait_go),
                _ => None,
            };
            if let Some(switch) = switch {
                *switch = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || value.parse::<u64>().map_err(|err| format!("{flag} {value}: {err}"));
            match flag.as_str() {
                "--pipeline" => config.pipeline = value.clone(),
                "--result" => config.result = value.into(),
                "--stamp" => config.stamp_pad = Some(value.clone()),
                "--measure" => config.measure_pad = Some(value.clone()),
                "--record-size" => config.record_size = number()?.max(1),
                "--expect" => config.expect = number()?,
                "--latency-out" => config.latency_out = Some(value.into()),
                "--ready" => config.ready = Some(value.into()),
                "--keep-pad" => config.keep_pad = Some(value.clone()),
                "--keep" => config.keep = number()? as usize,
                "--perf-ctl" => perf_ctl = Some(PathBuf::from(value)),
                "--perf-ack" => perf_ack = Some(PathBuf::from(value)),
                "--stall-ms" => config.stall = Duration::from_millis(number()?),
                "--startup-ms" => config.startup = Duration::from_millis(number()?),
                _ => return Err(format!("unknown child flag {flag}")),
            }
        }
        config.perf = perf_ctl.zip(perf_ack);
        if config.pipeline.is_empty() || config.result.as_os_str().is_empty() {
            return Err("--pipeline and --result are required".into());
        }
        Ok(config)
    }

    fn expect_bytes(&self) -> u64 {
        self.expect * self.record_size
    }
}

/// perf's control fifo: `enable` and `disable` each wait for perf's ack, so
/// that counting has really switched when the call returns.
struct PerfControl {
    ctl: File,
    ack: BufReader<File>,
}

impl PerfControl {
    /// Opens the fifos in the order perf expects: ctl for writing, then ack
    /// for reading.
    fn open(ctl: &Path, ack: &Path) -> Result<Self, String> {
        let ctl = OpenOptions::new()
            .write(true)
            .open(ctl)
            .map_err(|err| format!("perf ctl fifo: {err}"))?;
        let ack = File::open(ack).map_err(|err| format!("perf ack fifo: {err}"))?;
        Ok(Self {
            ctl,
            ack: BufReader::new(ack),
        })
    }

    fn command(&mut self, command: &str) {
        let mut reply = String::new();
        if writeln!(self.ctl, "{command}").is_ok() {
            // An error here only means perf is gone; the count is then
            // missing and the parent reports it so.
            let _ = self.ack.read_line(&mut reply);
        }
    }
}

/// The process's clock and resource usage at one edge of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    at_ns: u64,
    user_us: u64,
    sys_us: u64,
    voluntary: u64,
    involuntary: u64,
}

impl Snapshot {
    fn now() -> Self {
        let usage = usage();
        Snapshot {
            at_ns: monotonic_ns(),
            user_us: usage.user_us,
            sys_us: usage.sys_us,
            voluntary: usage.voluntary_switches,
            involuntary: usage.involuntary_switches,
        }
    }
}

/// The measured window: opened by the first buffer, closed once.
struct Window {
    perf: Mutex<Option<PerfControl>>,
    start: OnceLock<Snapshot>,
    end: OnceLock<Snapshot>,
}

impl Window {
    fn perf(&self, command: &str) {
        if let Some(perf) = self
            .perf
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            perf.command(command);
        }
    }

    fn open(&self) {
        self.start.get_or_init(|| {
            self.perf("enable");
            Snapshot::now()
        });
    }

    /// Closes the window; true for the call that did it.
    fn close(&self) -> bool {
        let mut closed_now = false;
        self.end.get_or_init(|| {
            closed_now = true;
            let end = Snapshot::now();
            self.perf("disable");
            end
        });
        closed_now
    }

    fn is_closed(&self) -> bool {
        self.end.get().is_some()
    }
}

/// Finds the writer's stamps in what arrives. A record starts every
/// `record_size` bytes of the stream. Transports that keep buffers whole give
/// one stamp per buffer; a pipe may split or join them, so a stamp can
/// straddle two reads and is finished by the later one.
struct StampScanner {
    record_size: u64,
    offset: u64,
    pending: Vec<u8>,
    next_seq: u64,
    /// Stamps whose sequence number was not the one expected: lost,
    /// repeated or torn buffers.
    out_of_order: u64,
    latencies_ns: Vec<u64>,
}

impl StampScanner {
    fn new(record_size: u64, expect: u64) -> Self {
        StampScanner {
            record_size,
            offset: 0,
            pending: Vec::with_capacity(STAMP_LEN as usize),
            next_seq: 0,
            out_of_order: 0,
            latencies_ns: Vec::with_capacity(expect as usize),
        }
    }

    fn feed(&mut self, mut data: &[u8], now_ns: u64) {
        while !data.is_empty() {
            let in_record = self.offset % self.record_size;
            let take = if in_record < STAMP_LEN {
                let take = (STAMP_LEN - in_record).min(data.len() as u64) as usize;
                self.pending.extend_from_slice(&data[..take]);
                if self.pending.len() == STAMP_LEN as usize {
                    self.finish_stamp(now_ns);
                }
                take
            } else {
                (self.record_size - in_record).min(data.len() as u64) as usize
            };
            data = &data[take..];
            self.offset += take as u64;
        }
    }

    fn finish_stamp(&mut self, now_ns: u64) {
        let field = |range: std::ops::Range<usize>| {
            u64::from_le_bytes(self.pending[range].try_into().expect("stamp fields are 8 bytes"))
        };
        let (seq, stamp_ns) = (field(0..8), field(8..16));
        if seq != self.next_seq {
            self.out_of_order += 1;
        }
        self.next_seq = seq.wrapping_add(1);
        self.latencies_ns.push(now_ns.saturating_sub(stamp_ns));
        self.pending.clear();
    }
}

/// What has reached the measure pad.
#[derive(Default)]
struct Arrivals {
    bytes: u64,
    first_ns: u64,
    first_bytes: u64,
    last_ns: u64,
    eos: bool,
    scanner: Option<StampScanner>,
}

/// State shared by the probes, the watchdog and the main thread.
struct Shared {
    config: Config,
    window: Window,
    /// Buffers seen on the stamp pad.
    stamped: AtomicU64,
    arrivals: Mutex<Arrivals>,
    /// When a probe last saw a buffer; 0 before the first.
    progress_ns: AtomicU64,
    launched_ns: u64,
    /// Set when the main thread takes over from the watchdog.
    settled: AtomicBool,
    /// Set once the parent's go has been read (or is being waited for).
    went: AtomicBool,
    /// The buffers the consumer keeps, oldest first.
    kept: Mutex<VecDeque<gst::Buffer>>,
}

impl Shared {
    fn on_stamp_buffer(&self, buffer: &mut gst::Buffer) {
        let seq = self.stamped.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            self.wait_go();
            self.window.open();
        }
        if self.config.write_stamps {
            let buffer = buffer.make_mut();
            if let Ok(mut map) = buffer.map_writable()
                && map.len() >= STAMP_LEN as usize
            {
                map[..8].copy_from_slice(&seq.to_le_bytes());
                map[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
            }
        }
        self.progress_ns.store(monotonic_ns(), Ordering::Relaxed);
    }

    /// Blocks until the parent says go, unless it already has (or need not).
    fn wait_go(&self) {
        if self.config.wait_go && !self.went.swap(true, Ordering::AcqRel) {
            // Any line, or the parent closing the pipe, means go.
            let _ = std::io::stdin().lock().read_line(&mut String::new());
        }
    }

    /// Counts an arrival; true if it was the last one expected.
    fn on_arrival(&self, buffer: &gst::BufferRef) -> bool {
        let now = monotonic_ns();
        let mut arrivals = self.lock_arrivals();
        if let Some(scanner) = arrivals.scanner.as_mut()
            && let Ok(map) = buffer.map_readable()
        {
            scanner.feed(&map, now);
        }
        let size = buffer.size() as u64;
        if arrivals.first_ns == 0 {
            self.window.open();
            arrivals.first_ns = monotonic_ns();
            arrivals.first_bytes = size;
        }
        arrivals.bytes += size;
        arrivals.last_ns = now.max(arrivals.first_ns);
        self.progress_ns.store(now, Ordering::Relaxed);
        arrivals.bytes >= self.config.expect_bytes()
    }

    fn lock_arrivals(&self) -> std::sync::MutexGuard<'_, Arrivals> {
        self.arrivals.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `buffer` and drops the oldest kept one once more than `keep`
    /// are held.
    fn keep(&self, buffer: &gst::BufferRef) {
        let mut kept = self.lock_kept();
        kept.push_back(buffer.to_owned());
        let oldest = (kept.len() > self.config.keep).then(|| kept.pop_front());
        drop(kept);
        // Released outside the lock: this may hand a block back to the writer.
        drop(oldest);
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, VecDeque<gst::Buffer>> {
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The result file's lines.
    fn report(&self, status: &str, end: &str, teardown: &str) -> String {
        let mut lines = vec![
            format!("status={status}"),
            format!("end={end}"),
            format!("teardown={teardown}"),
            format!("stamped={}", self.stamped.load(Ordering::Relaxed)),
        ];
        // The watchdog may report while a probe holds the lock; it then
        // reports without the arrivals rather than wait.
        if let Ok(arrivals) = self.arrivals.try_lock() {
            lines.push(format!("bytes={}", arrivals.bytes));
            lines.push(format!("first_bytes={}", arrivals.first_bytes));
            lines.push(format!("arrival_ns={}", arrivals.last_ns - arrivals.first_ns));
            if let Some(scanner) = &arrivals.scanner {
                lines.push(format!("stamps={}", scanner.latencies_ns.len()));
                lines.push(format!("out_of_order={}", scanner.out_of_order));
            }
        }
        if let (Some(start), Some(end)) = (self.window.start.get(), self.window.end.get()) {
            lines.push(format!("window_ns={}", end.at_ns - start.at_ns));
            lines.push(format!("user_us={}", end.user_us - start.user_us));
            lines.push(format!("sys_us={}", end.sys_us - start.sys_us));
            lines.push(format!("voluntary={}", end.voluntary - start.voluntary));
            lines.push(format!("involuntary={}", end.involuntary - start.involuntary));
        }
        lines.join("\n") + "\n"
    }

    fn write_report(&self, status: &str, end: &str, teardown: &str) {
        let path = &self.config.result;
        let partial = path.with_extension("partial");
        let written =
            std::fs::write(&partial, self.report(status, end, teardown)).and_then(|()| std::fs::rename(&partial, path));
        if let Err(err) = written {
            eprintln!("ipc bench child: cannot write {}: {err}", path.display());
        }
    }

    fn write_latencies(&self) {
        let (Some(path), Some(scanner)) = (&self.config.latency_out, &self.lock_arrivals().scanner) else {
            return;
        };
        let text: String = scanner.latencies_ns.iter().map(|ns| format!("{ns}\n")).collect();
        if let Err(err) = std::fs::write(path, text) {
            eprintln!("ipc bench child: cannot write {}: {err}", path.display());
        }
    }
}

fn find_pad(bin: &gst::Bin, spec: &str) -> Result<gst::Pad, String> {
    let (element, pad) = spec
        .split_once('.')
        .ok_or_else(|| format!("pad {spec} is not element.pad"))?;
    bin.by_name(element)
        .and_then(|element| element.static_pad(pad))
        .ok_or_else(|| format!("no pad {spec} in the pipeline"))
}

fn post_window_closed(pad: &gst::Pad) {
    if let Some(element) = pad.parent_element() {
        let message = gst::message::Application::builder(gst::Structure::new_empty(WINDOW_CLOSED))
            .src(&element)
            .build();
        let _ = element.post_message(message);
    }
}

fn add_probes(bin: &gst::Bin, shared: &Arc<Shared>) -> Result<(), String> {
    let types = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
    // shmringsrc pushes the buffers it finds waiting together as a list.
    let arrivals = types | gst::PadProbeType::BUFFER_LIST;
    let has_measure = shared.config.measure_pad.is_some();
    if let Some(spec) = &shared.config.stamp_pad {
        let shared = Arc::clone(shared);
        find_pad(bin, spec)?.add_probe(types, move |pad, info| {
            if let Some(buffer) = info.buffer_mut() {
                shared.on_stamp_buffer(buffer);
            } else if let Some(event) = info.event()
                && event.type_() == gst::EventType::Eos
                && !has_measure
                && shared.window.close()
            {
                post_window_closed(pad);
            }
            gst::PadProbeReturn::Ok
        });
    }
    if let Some(spec) = &shared.config.measure_pad {
        let shared = Arc::clone(shared);
        find_pad(bin, spec)?.add_probe(arrivals, move |pad, info| {
            let last = if let Some(buffer) = info.buffer() {
                shared.on_arrival(buffer)
            } else if let Some(list) = info.buffer_list() {
                // Every buffer counts, even after the last expected one.
                let mut last = false;
                for buffer in list.iter() {
                    last |= shared.on_arrival(buffer);
                }
                last
            } else if let Some(event) = info.event()
                && event.type_() == gst::EventType::Eos
            {
                shared.lock_arrivals().eos = true;
                true
            } else {
                false
            };
            if last && shared.window.close() {
                post_window_closed(pad);
            }
            gst::PadProbeReturn::Ok
        });
    }
    // Added last: where it shares a pad with the others, a buffer is
    // stamped and counted before it is kept.
    if let Some(spec) = &shared.config.keep_pad
        && shared.config.keep > 0
    {
        let shared = Arc::clone(shared);
        find_pad(bin, spec)?.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                if let Some(buffer) = info.buffer() {
                    shared.keep(buffer);
                } else if let Some(list) = info.buffer_list() {
                    list.iter().for_each(|buffer| shared.keep(buffer));
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    Ok(())
}

/// Ends the process if buffers stop moving before the window closes, after
/// writing what was seen. `_exit` because the stuck threads would never let
/// a normal exit finish.
fn spawn_watchdog(shared: Arc<Shared>) {
    thread::spawn(move || {
        loop {
            thread::sleep(WATCHDOG_PERIOD);
            if shared.settled.load(Ordering::Acquire) {
                return;
            }
            let now = monotonic_ns();
            let progress = shared.progress_ns.load(Ordering::Relaxed);
            let (since, limit) = if progress == 0 {
                (now - shared.launched_ns, shared.config.startup)
            } else {
                (now.saturating_sub(progress), shared.config.stall)
            };
            if since > limit.as_nanos() as u64 {
                let what = if progress == 0 { "no-buffer" } else { "stalled" };
                shared.write_report(what, "none", "skipped");
                // SAFETY: `_exit` takes no pointers and never returns; skipping
                // destructors and atexit handlers is the point.
                unsafe { libc::_exit(STALLED_EXIT) };
            }
        }
    });
}

/// How the stream ended, as the bus saw it.
fn describe(message: &gst::MessageRef) -> Option<String> {
    match message.view() {
        gst::MessageView::Eos(_) => Some("eos".to_owned()),
        gst::MessageView::Error(err) => Some(format!("error: {}", err.error()).replace('\n', " ")),
        _ => None,
    }
}

fn run(config: Config) -> Result<(), String> {
    let launched_ns = monotonic_ns();
    let perf = match &config.perf {
        Some((ctl, ack)) => Some(PerfControl::open(ctl, ack)?),
        None => None,
    };
    gst::init().map_err(|err| err.to_string())?;
    let pipeline = gst::parse::launch(&config.pipeline)
        .map_err(|err| format!("cannot build `{}`: {err}", config.pipeline))?
        .downcast::<gst::Bin>()
        .map_err(|_| "the pipeline is not a bin".to_owned())?;
    let scanner = config
        .latency_out
        .is_some()
        .then(|| StampScanner::new(config.record_size, config.expect));
    let is_reader = config.measure_pad.is_some();
    let shared = Arc::new(Shared {
        config,
        window: Window {
            perf: Mutex::new(perf),
            start: OnceLock::new(),
            end: OnceLock::new(),
        },
        stamped: AtomicU64::new(0),
        arrivals: Mutex::new(Arrivals {
            scanner,
            ..Arrivals::default()
        }),
        progress_ns: AtomicU64::new(0),
        launched_ns,
        settled: AtomicBool::new(false),
        went: AtomicBool::new(false),
        kept: Mutex::new(VecDeque::new()),
    });
    add_probes(&pipeline, &shared)?;
    spawn_watchdog(Arc::clone(&shared));

    let bus = pipeline.bus().ok_or("the pipeline has no bus")?;
    if let Ok(gst::StateChangeSuccess::NoPreroll) = pipeline.set_state(gst::State::Paused) {
        shared.wait_go();
    }
    let _ = pipeline.set_state(gst::State::Playing);
    if let Some(ready) = &shared.config.ready
        && let Err(err) = std::fs::write(ready, "")
    {
        eprintln!("ipc bench child: cannot write {}: {err}", ready.display());
    }
    let types = [
        gst::MessageType::Eos,
        gst::MessageType::Error,
        gst::MessageType::Application,
    ];
    let mut end = None;
    while let Some(message) = bus.timed_pop_filtered(gst::ClockTime::NONE, &types) {
        end = describe(&message);
        let closed = matches!(message.view(), gst::MessageView::Application(app)
            if app.structure().is_some_and(|s| s.name() == WINDOW_CLOSED));
        if closed || end.is_some() {
            break;
        }
    }
    shared.settled.store(true, Ordering::Release);
    if end.is_none() {
        let linger = if is_reader { READER_LINGER } else { WRITER_LINGER };
        let linger = gst::ClockTime::from_nseconds(linger.as_nanos() as u64);
        end = bus
            .timed_pop_filtered(linger, &types[..2])
            .and_then(|message| describe(&message));
    }
    let end = end.unwrap_or_else(|| "none".to_owned());

    let status = if is_reader {
        let arrivals = shared.lock_arrivals();
        if arrivals.bytes >= shared.config.expect_bytes() {
            "ok"
        } else if arrivals.eos {
            "eos-early"
        } else {
            "error"
        }
    } else if shared.window.is_closed() {
        "ok"
    } else {
        "error"
    };
    shared.write_latencies();
    shared.write_report(status, &end, "pending");
    // The consumer lets go of what it kept while the pipeline still runs.
    shared.lock_kept().clear();

    let (done_tx, done_rx) = mpsc::channel();
    let teardown = pipeline.clone();
    thread::spawn(move || {
        let _ = teardown.set_state(gst::State::Null);
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(TEARDOWN_TIMEOUT).is_ok() {
        shared.write_report(status, &end, "ok");
        Ok(())
    } else {
        shared.write_report(status, &end, "hung");
        // SAFETY: `_exit` takes no pointers and never returns; the pipeline's
        // threads are stuck, so a normal exit could wait on them forever.
        unsafe { libc::_exit(0) }
    }
}
