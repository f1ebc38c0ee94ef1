//! Streams raw video from a writer process to this reader process through
//! shmringsink and shmringsrc, printing the rate once per second.
//!
//! The writer is a plain `gst-launch-1.0` child that loads the plugin from
//! the build directory, so the two sides share nothing but the socket path.
//! Run it with `./scripts/demo.sh [--frames N] [--width W] [--height H]`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: demo [--frames N] [--width W] [--height H]";

struct Options {
    frames: u64,
    width: u32,
    height: u32,
}

fn parse_args() -> Result<Options, String> {
    // Enough 1080p frames for a few seconds of progress lines: 3 to 10 s on
    // a 2-core VM, depending on how fast the reader keeps up.
    let mut options = Options {
        frames: 20_000,
        width: 1920,
        height: 1080,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--frames" => options.frames = parse(&value()?, &arg)?,
            "--width" => options.width = parse(&value()?, &arg)?,
            "--height" => options.height = parse(&value()?, &arg)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    if options.frames == 0 {
        return Err("--frames must be at least 1".into());
    }
    Ok(options)
}

fn parse<T: FromStr>(text: &str, name: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{name}: {text:?} is not a valid number"))
}

/// What the reader's pad probe has seen, shared with the main thread.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    /// u64::MAX until a buffer with a PTS arrives, as GST_CLOCK_TIME_NONE.
    last_pts: AtomicU64,
    first_at: OnceLock<Instant>,
}

/// The writer process. Dropping it kills the process if it still runs, so no
/// error path leaves a writer blocked on a ring nobody reads.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Writer {
    fn spawn(options: &Options, socket: &Path) -> Result<Self, Box<dyn Error>> {
        // The plugin is built next to this example: target/<profile>/.
        let plugin_dir = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or("cannot locate the build directory")?;
        if !plugin_dir.join("libgstshmring.so").exists() {
            return Err(format!("no libgstshmring.so in {}; run ./scripts/demo.sh", plugin_dir.display()).into());
        }
        let child = Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", &plugin_dir)
            // A registry of its own, so that gst-launch-1.0 runs elsewhere with
            // another libgstshmring.so on their path cannot shadow this build.
            .env("GST_REGISTRY", plugin_dir.join("demo-registry.bin"))
            // pattern=black keeps the source's drawing cost small, so the
            // rate mostly reflects the transfer.
            .args(["-q", "videotestsrc", "pattern=black"])
            .arg(format!("num-buffers={}", options.frames))
            .arg("!")
            .arg(format!(
                "video/x-raw,format=I420,width={},height={},framerate=60/1",
                options.width, options.height
            ))
            .args(["!", "shmringsink"])
            .arg(format!("socket-path={}", socket.display()))
            .spawn()
            .map_err(|err| format!("could not start gst-launch-1.0: {err}"))?;
        Ok(Self(child))
    }

    /// Waits for the writer to exit after EOS, and checks that it succeeded.
    fn finish(&mut self) -> Result<(), Box<dyn Error>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.0.try_wait()? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(format!("the writer failed: {status}").into()),
                None if Instant::now() > deadline => return Err("the writer did not exit after EOS".into()),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn run(options: &Options, socket: &Path) -> Result<(), Box<dyn Error>> {
    gst::init()?;
    gstshmring::plugin_register_static()?;

    let pipeline = gst::parse::launch(&format!(
        "shmringsrc socket-path={} ! fakesink name=sink sync=false enable-last-sample=false",
        socket.display()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "the reader is not a pipeline")?;
    let sink_pad = pipeline
        .by_name("sink")
        .and_then(|sink| sink.static_pad("sink"))
        .ok_or("fakesink has no sink pad")?;
    let counters = Arc::new(Counters::default());
    let probe_counters = Arc::clone(&counters);
    // shmringsrc pushes the frames it finds waiting together as a list.
    let types = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
    sink_pad.add_probe(types, move |_, info| {
        let count = |buffer: &gst::BufferRef| {
            probe_counters.first_at.get_or_init(Instant::now);
            probe_counters.frames.fetch_add(1, Relaxed);
            probe_counters.bytes.fetch_add(buffer.size() as u64, Relaxed);
            probe_counters
                .last_pts
                .store(buffer.pts().map_or(u64::MAX, |pts| pts.nseconds()), Relaxed);
        };
        if let Some(buffer) = info.buffer() {
            count(buffer);
        } else if let Some(list) = info.buffer_list() {
            list.iter().for_each(count);
        }
        gst::PadProbeReturn::Ok
    });

    // The reader starts first and waits for the socket to appear: either
    // order works, and this one shows the wait.
    pipeline.set_state(gst::State::Playing)?;
    let mut writer = Writer::spawn(options, socket)?;
    println!(
        "streaming {} frames of {}x{} I420 from gst-launch-1.0 (pid {}) to this process (pid {})",
        options.frames,
        options.width,
        options.height,
        writer.0.id(),
        std::process::id()
    );

    let result = receive(&pipeline, &counters, &mut writer);
    let caps = sink_pad.current_caps();
    pipeline.set_state(gst::State::Null)?;
    let end = result?;
    writer.finish()?;

    let frames = counters.frames.load(Relaxed);
    let bytes = counters.bytes.load(Relaxed);
    let seconds = counters
        .first_at
        .get()
        .map_or(0.0, |first| (end - *first).as_secs_f64());
    println!(
        "done: {frames} frames, {:.2} GB in {seconds:.2} s: {:.0} frames/s, {:.0} MB/s",
        bytes as f64 / 1e9,
        frames as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
    if let Some(caps) = caps {
        println!("caps: {caps}");
    }
    let last_pts = counters.last_pts.load(Relaxed);
    if last_pts != u64::MAX {
        println!("last pts: {}", gst::ClockTime::from_nseconds(last_pts));
    }
    if frames != options.frames {
        return Err(format!("expected {} frames, received {frames}", options.frames).into());
    }
    Ok(())
}

/// Runs the reader until EOS, printing the rate of each second. Returns when
/// EOS arrived.
fn receive(pipeline: &gst::Pipeline, counters: &Counters, writer: &mut Writer) -> Result<Instant, Box<dyn Error>> {
    let bus = pipeline.bus().ok_or("the pipeline has no bus")?;
    let mut last: Option<(Instant, u64, u64)> = None;
    loop {
        if let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) {
            match message.view() {
                gst::MessageView::Eos(_) => return Ok(Instant::now()),
                gst::MessageView::Error(err) => {
                    return Err(format!("reader: {} ({:?})", err.error(), err.debug()).into());
                }
                _ => {}
            }
        }
        // A writer that failed before EOS (bad caps, missing plugin) would
        // otherwise leave the reader waiting forever.
        if let Some(status) = writer.0.try_wait()?
            && !status.success()
        {
            return Err(format!("the writer failed: {status}").into());
        }

        let Some(&first) = counters.first_at.get() else {
            continue;
        };
        let (since, frames_before, bytes_before) = *last.get_or_insert((first, 0, 0));
        let now = Instant::now();
        let interval = (now - since).as_secs_f64();
        if interval >= 1.0 {
            let frames = counters.frames.load(Relaxed);
            let bytes = counters.bytes.load(Relaxed);
            println!(
                "{:5.1} s  {:7.0} frames/s  {:7.0} MB/s",
                (now - first).as_secs_f64(),
                (frames - frames_before) as f64 / interval,
                (bytes - bytes_before) as f64 / interval / 1e6
            );
            last = Some((now, frames, bytes));
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let socket = PathBuf::from(format!("/tmp/shmring-demo-{}.sock", std::process::id()));
    let result = run(&options, &socket);
    // The sink removes its socket when it stops; this covers a killed one.
    let _ = std::fs::remove_file(&socket);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}
