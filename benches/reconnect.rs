//! How fast a reader picks up a writer that restarts.
//!
//! A `shmringsrc on-disconnect=wait` pipeline runs in this process while a
//! writer (`gst-launch-1.0 ... ! shmringsink`, a real second process) is
//! started, streams a little, and is killed with SIGKILL, as a crash or a
//! `systemctl kill` would end it, over and over. Each round measures the time
//! from the socket's appearance (inotify on its directory, in this process)
//! to the first buffer the source pushes (a probe on its src pad), both on
//! this process's monotonic clock.
//!
//! `cargo bench --bench reconnect` runs 100 rounds; `cargo test --benches`
//! (CI) runs 3 as a smoke test. `-- --rounds N` picks another count.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

const SOCKET_NAME: &str = "ring.sock";
/// The goal: a restarted writer is read within this much of its socket
/// appearing.
const GOAL: Duration = Duration::from_millis(100);
/// How long each writer streams before it is killed.
const STREAMING: Duration = Duration::from_millis(50);
/// A round that takes longer than this has failed.
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

/// Times, in this process, at which things were seen.
#[derive(Default)]
struct Sightings {
    sockets: Vec<Instant>,
    discont_buffers: Vec<Instant>,
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let benchmark = arguments.iter().any(|argument| argument == "--bench");
    let rounds = arguments
        .iter()
        .position(|argument| argument == "--rounds")
        .and_then(|at| arguments.get(at + 1))
        .and_then(|count| count.parse().ok())
        .unwrap_or(if benchmark { 100 } else { 3 });
    if let Err(err) = run(rounds) {
        eprintln!("reconnect: {err}");
        std::process::exit(1);
    }
}

fn run(rounds: usize) -> Result<(), String> {
    gst::init().map_err(|err| format!("initializing GStreamer: {err}"))?;
    gstshmring::plugin_register_static().map_err(|err| format!("registering the plugin: {err}"))?;
    let scratch = std::env::temp_dir().join(format!("shmring-reconnect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|err| format!("creating {}: {err}", scratch.display()))?;
    let _ = std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700));
    // A copy of the plugin in a directory of its own: GStreamer rescans the
    // plugin path whenever a file in it changes, and cargo's deps directory
    // changes with every build.
    let plugin_dir = scratch.join("plugin");
    std::fs::create_dir_all(&plugin_dir).map_err(|err| format!("creating {}: {err}", plugin_dir.display()))?;
    std::fs::copy(built_plugin()?, plugin_dir.join("libgstshmring.so"))
        .map_err(|err| format!("copying the plugin: {err}"))?;
    let socket = scratch.join(SOCKET_NAME);
    let sightings = Arc::new(Mutex::new(Sightings::default()));
    watch_for_sockets(&scratch, sightings.clone())?;

    let pipeline = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={} on-disconnect=wait is-live=true ! fakesink sync=false",
        socket.display()
    ))
    .map_err(|err| format!("building the reader: {err}"))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "the reader is not a pipeline")?;
    let src = pipeline.by_name("src").ok_or("no src in the reader")?;
    let pad = src.static_pad("src").ok_or("no src pad")?;
    let seen = sightings.clone();
    // shmringsrc pushes the buffers it finds waiting together as a list;
    // a DISCONT buffer is always its list's first.
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            let first = info
                .buffer()
                .map(|buffer| buffer.as_ref())
                .or_else(|| info.buffer_list().and_then(|list| list.get(0)));
            if let Some(buffer) = first
                && buffer.flags().contains(gst::BufferFlags::DISCONT)
            {
                seen.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .discont_buffers
                    .push(Instant::now());
            }
            gst::PadProbeReturn::Ok
        },
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|err| format!("starting the reader: {err}"))?;

    let mut times = Vec::with_capacity(rounds);
    let mut outcome = Ok(());
    for round in 0..rounds {
        match restart_once(&plugin_dir, &socket, &sightings, &pipeline) {
            Ok(time) => {
                eprintln!("[{}/{rounds}] socket -> first buffer: {:.2} ms", round + 1, ms(time));
                times.push(time);
            }
            Err(err) => {
                outcome = Err(format!("round {}: {err}", round + 1));
                break;
            }
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let _ = std::fs::remove_dir_all(&scratch);
    outcome?;

    times.sort();
    let quantile = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let within = times.iter().filter(|time| **time <= GOAL).count();
    let late_watch = times.iter().filter(|time| time.is_zero()).count();
    println!(
        "reconnect: {} restarts; socket appearance -> first buffer pushed: median {:.2} ms, p90 {:.2} ms, max {:.2} ms; {within}/{} within {} ms ({late_watch} rounds where the watching thread saw the socket after the first buffer, counted as 0)",
        times.len(),
        ms(quantile(0.5)),
        ms(quantile(0.9)),
        ms(quantile(1.0)),
        times.len(),
        GOAL.as_millis()
    );
    Ok(())
}

/// Starts a writer, measures how long after its socket appeared the reader
/// pushed its first buffer, and kills it.
fn restart_once(
    plugin_dir: &Path,
    socket: &Path,
    sightings: &Mutex<Sightings>,
    pipeline: &gst::Pipeline,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut writer = Writer(
        Command::new("gst-launch-1.0")
            .args(
                format!(
                    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=100/1 ! shmringsink socket-path={}",
                    socket.display()
                )
                .split_whitespace(),
            )
            .env("GST_PLUGIN_PATH", plugin_dir)
            // This process's debug log, if any, is its own.
            .env_remove("GST_DEBUG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("starting the writer: {err}"))?,
    );
    let lock = || sightings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (appeared, pushed) = loop {
        if started.elapsed() > ROUND_DEADLINE {
            let appeared = lock().sockets.iter().any(|time| *time >= started);
            return Err(format!(
                "no buffer within {ROUND_DEADLINE:?} of starting the writer (its socket {})",
                if appeared { "appeared" } else { "never appeared" }
            ));
        }
        if let Some(message) = pipeline
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
        {
            return Err(format!("the reader failed: {message:?}"));
        }
        if let Ok(Some(status)) = writer.0.try_wait() {
            return Err(format!("the writer exited ({status})"));
        }
        let seen = lock();
        let appeared = seen.sockets.iter().find(|time| **time >= started).copied();
        let pushed = seen.discont_buffers.iter().find(|time| **time >= started).copied();
        if let (Some(appeared), Some(pushed)) = (appeared, pushed) {
            break (appeared, pushed);
        }
        drop(seen);
        thread::sleep(Duration::from_millis(1));
    };
    thread::sleep(STREAMING);
    drop(writer);
    // The source notices the hang-up; its next buffers come from the next
    // writer.
    thread::sleep(Duration::from_millis(20));
    // The watching thread may see the socket after the source, woken by its
    // own inotify, has already pushed: on a busy machine it is scheduled
    // late. Such a round counts as 0, and is reported.
    Ok(pushed.saturating_duration_since(appeared))
}

/// A writer process, killed with SIGKILL when dropped.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Notes the time at which the socket file appears (a sink binds it under
/// another name and renames it into place), on a thread of its own.
fn watch_for_sockets(directory: &Path, sightings: Arc<Mutex<Sightings>>) -> Result<(), String> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|err| format!("inotify_init: {err}"))?;
    inotify
        .add_watch(directory, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        .map_err(|err| format!("watching {}: {err}", directory.display()))?;
    thread::spawn(move || {
        while let Ok(events) = inotify.read_events() {
            let now = Instant::now();
            if events
                .iter()
                .any(|event| event.name.as_deref().is_some_and(|name| name == SOCKET_NAME))
            {
                sightings
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .sockets
                    .push(now);
            }
        }
    });
    Ok(())
}

/// The cdylib cargo built beside this binary, for the writer process to
/// load.
fn built_plugin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|err| format!("finding this binary: {err}"))?;
    let library = exe
        .parent()
        .ok_or("this binary has no directory")?
        .join("libgstshmring.so");
    if library.is_file() {
        Ok(library)
    } else {
        Err(format!("no {}", library.display()))
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
