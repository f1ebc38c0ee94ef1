//! `shmringdeviceprovider`: running named streams are listed as devices with
//! their writers' caps, follow their writers coming and going, make a
//! `shmringsrc` that reads them, and asking a writer never makes it a
//! reader nor lets a writer that does not answer hold up the listing.
//!
//! Every test here shares one stream directory, this process's
//! `XDG_RUNTIME_DIR` (the provider in this process reads it), so each uses
//! its own stream names and looks only at those.

mod common;

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

use common::{DEADLINE, Launch, Scratch, assert_no_criticals_here, init_gst, parse_pipeline, play_to_eos, wait_until};
use gst::prelude::*;
use gstshmring::ipc::{self, Listener, PROTOCOL_VERSION};
use gstshmring::ring::Notifier;

const VIDEO: &str =
    "videotestsrc num-buffers=20 pattern=smpte ! video/x-raw,format=I420,width=160,height=120,framerate=30/1";
const LIVE_VIDEO: &str = "videotestsrc is-live=true ! video/x-raw,format=I420,width=64,height=48,framerate=30/1";

/// This process's stream directory's parent, set as `XDG_RUNTIME_DIR` once,
/// before GStreamer starts; children get it too.
fn runtime() -> &'static Path {
    static RUNTIME: OnceLock<PathBuf> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = std::env::temp_dir().join(format!("shmring-{}-devices-run", std::process::id()));
        let _ = fs::remove_dir_all(&runtime);
        fs::create_dir_all(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: every test calls this first, and `get_or_init` holds the
        // others back until it returns, so no thread of this process reads
        // the environment while it changes: GStreamer starts after this.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &runtime) };
        runtime
    })
}

/// The provider is one object per process, which every test's monitor
/// starts and stops, and a writer that does not answer holds up a probe of
/// the whole directory for a second: the tests run one at a time, so that
/// none sees another's writers or waits on them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn setup() -> PathBuf {
    let directory = runtime().join("shmring");
    init_gst();
    directory
}

fn launch(scratch: &Scratch, name: &str, description: &str) -> Launch {
    let mut command = Command::new("gst-launch-1.0");
    command
        .env("XDG_RUNTIME_DIR", runtime())
        .args(description.split_whitespace());
    Launch::spawn_command(scratch, name, command)
}

/// The device `name` as the provider lists it now, as an application asks
/// when it does not follow devices.
fn listed(name: &str) -> Option<gst::Device> {
    let provider = gst::DeviceProviderFactory::by_name("shmringdeviceprovider").expect("the provider is registered");
    provider
        .devices()
        .into_iter()
        .find(|device| device.display_name() == name)
}

/// The device `name` once it is listed as `class`. The provider is one
/// object per process: while another test's monitor runs it is started, and
/// lists what its thread has looked at so far instead of probing.
fn listed_as(name: &str, class: &str) -> gst::Device {
    let mut found = None;
    wait_until(&format!("{name} listed as {class}"), || {
        found = listed(name).filter(|device| device.device_class() == class);
        found.is_some()
    });
    found.unwrap()
}

/// A started monitor, stopped when dropped: GStreamer logs a CRITICAL for
/// a monitor disposed while started, which would hide a failing assertion.
struct Monitor(gst::DeviceMonitor);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A monitor of `class` devices, started.
fn monitor(class: &str) -> Monitor {
    let monitor = gst::DeviceMonitor::new();
    monitor.add_filter(Some(class), None);
    monitor.start().expect("the device monitor starts");
    Monitor(monitor)
}

/// The next device-added (true) or device-removed (false) message about
/// the device `name` on `monitor`'s bus.
fn next_change(monitor: &Monitor, name: &str) -> (bool, gst::Device) {
    let bus = monitor.0.bus();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::DeviceAdded, gst::MessageType::DeviceRemoved],
            )
            .unwrap_or_else(|| panic!("no device message about {name} within {DEADLINE:?}"));
        let change = match message.view() {
            gst::MessageView::DeviceAdded(added) => (true, added.device()),
            gst::MessageView::DeviceRemoved(removed) => (false, removed.device()),
            _ => continue,
        };
        if change.1.display_name() == name {
            return change;
        }
    }
}

fn caps_field(device: &gst::Device, field: &str) -> Option<String> {
    let caps = device.caps()?;
    let structure = caps.structure(0)?;
    Some(structure.value(field).ok()?.serialize().ok()?.to_string())
}

/// The acceptance test of the issue: `gst-device-monitor-1.0 Video/Source`,
/// run as a process, lists a running stream with its caps, and the writer
/// serves the same readers afterwards. The writer runs at max-readers with
/// its one reader, so a probe taken for a reader would be refused as busy,
/// and the listing would have no caps.
#[test]
fn gst_device_monitor_lists_a_stream_with_its_caps_and_no_reader_more() {
    let _one_at_a_time = one_at_a_time();
    let directory = setup();
    let scratch = Scratch::new("devices_monitor");
    let pipeline = parse_pipeline(&format!(
        "{LIVE_VIDEO} ! shmringsink name=sink stream=listed max-readers=1"
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_until("the writer listens", || common::is_socket(&directory.join("listed")));
    let mut reader = launch(&scratch, "reader", "shmringsrc stream=listed ! fakesink");
    wait_until("the reader links", || sink.property::<u32>("readers") == 1);

    let mut command = Command::new("gst-device-monitor-1.0");
    command.env("XDG_RUNTIME_DIR", runtime()).arg("Video/Source");
    let output = Launch::spawn_command(&scratch, "monitor", command).finish();
    output.assert_success();
    let text = fs::read_to_string(scratch.path("monitor.stdout")).unwrap();
    let entry = text
        .split("Device found:")
        .find(|entry| entry.contains("name  : listed\n"))
        .unwrap_or_else(|| panic!("gst-device-monitor-1.0 did not list the stream:\n{}", output.describe()));
    assert!(entry.contains("class : Video/Source"), "{entry}");
    assert!(
        entry.contains("caps  : video/x-raw, format=I420, width=64, height=48, framerate=30/1"),
        "{entry}"
    );
    assert!(entry.contains("shmringsrc stream=listed"), "{entry}");

    assert_eq!(
        sink.property::<u32>("readers"),
        1,
        "the listing changed the reader count"
    );
    reader.assert_running();
    pipeline.set_state(gst::State::Null).unwrap();
    assert_no_criticals_here("the writer");
}

/// A device appears when its writer starts and goes when it stops, and
/// when it is killed with its socket file left behind.
#[test]
fn a_device_comes_and_goes_with_its_writer() {
    let _one_at_a_time = one_at_a_time();
    let directory = setup();
    let scratch = Scratch::new("devices_follow");

    // A writer killed while the provider has nothing left to look at is
    // seen to go by its pidfd alone: nothing changes in the directory. So
    // it runs, with its caps announced and answered, before the monitor
    // starts, and the monitor finds it when it starts.
    let mut killed = launch(&scratch, "killed", &format!("{LIVE_VIDEO} ! shmringsink stream=killed"));
    listed_as("killed", "Video/Source");
    let monitor = monitor("Video/Source");
    assert!(
        monitor
            .0
            .devices()
            .iter()
            .any(|device| device.display_name() == "killed"),
        "a running writer is not listed when the monitor starts"
    );
    killed.kill();
    assert!(
        common::is_socket(&directory.join("killed")),
        "SIGKILL left no socket file behind, so this test no longer tells"
    );
    // The monitor may still hold the device-added of its start.
    while next_change(&monitor, "killed").0 {}
    fs::remove_file(directory.join("killed")).unwrap();

    let mut writer = launch(
        &scratch,
        "writer",
        &format!("{LIVE_VIDEO} ! shmringsink stream=follows"),
    );
    let (added, device) = next_change(&monitor, "follows");
    assert!(added, "the first message about a new writer is not device-added");
    assert_eq!(device.device_class(), "Video/Source");
    assert_eq!(caps_field(&device, "width").as_deref(), Some("64"));
    writer.interrupt();
    let (added, _) = next_change(&monitor, "follows");
    assert!(!added, "a writer that stopped is still listed");
    writer.finish().assert_success();
    assert!(
        !directory.join("follows").exists(),
        "a writer that stops removes its socket"
    );
    drop(monitor);
    assert_no_criticals_here("the monitor");
}

/// A writer whose caps change is listed again with its new caps: it
/// touches its socket file, and nothing else would make the provider ask.
#[test]
fn a_device_follows_its_writers_caps() {
    let _one_at_a_time = one_at_a_time();
    setup();
    let monitor = monitor("Video/Source");
    let pipeline = parse_pipeline(
        "videotestsrc is-live=true ! capsfilter name=filter caps=video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! shmringsink stream=changes wait-for-connection=false",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let (added, device) = next_change(&monitor, "changes");
    assert!(added);
    assert_eq!(caps_field(&device, "width").as_deref(), Some("64"));

    let smaller = gst::Caps::from_str("video/x-raw,format=I420,width=32,height=24,framerate=30/1").unwrap();
    pipeline.by_name("filter").unwrap().set_property("caps", smaller);
    let (added, old) = next_change(&monitor, "changes");
    assert!(!added, "the device with the old caps stays");
    assert_eq!(caps_field(&old, "width").as_deref(), Some("64"));
    let (added, new) = next_change(&monitor, "changes");
    assert!(added);
    assert_eq!(caps_field(&new, "width").as_deref(), Some("32"));
    pipeline.set_state(gst::State::Null).unwrap();
    drop(monitor);
    assert_no_criticals_here("the writer and the monitor");
}

/// The device's element is a shmringsrc that reads the stream, every byte.
#[test]
fn a_device_makes_a_shmringsrc_that_reads_the_stream() {
    let _one_at_a_time = one_at_a_time();
    let directory = setup();
    let scratch = Scratch::new("devices_element");
    let expected = scratch.path("expected.raw");
    let received = scratch.path("received.raw");
    play_to_eos(
        &parse_pipeline(&format!("{VIDEO} ! filesink location={}", expected.display())),
        "the reference",
    );
    let writer = launch(&scratch, "writer", &format!("{VIDEO} ! shmringsink stream=made"));
    wait_until("the writer listens", || common::is_socket(&directory.join("made")));
    let device = listed_as("made", "Video/Source");

    let source = device.create_element(Some("from-device")).unwrap();
    assert_eq!(source.factory().unwrap().name(), "shmringsrc");
    assert_eq!(source.property::<Option<String>>("stream").as_deref(), Some("made"));
    let pipeline = gst::Pipeline::new();
    let sink = gst::ElementFactory::make("filesink")
        .property("location", received.to_str().unwrap())
        .build()
        .unwrap();
    pipeline.add_many([&source, &sink]).unwrap();
    source.link(&sink).unwrap();
    play_to_eos(&pipeline, "the device's element");
    writer.finish().assert_success();
    let (expected, received) = (fs::read(expected).unwrap(), fs::read(received).unwrap());
    assert!(!expected.is_empty());
    assert!(
        expected == received,
        "{} bytes received of {}",
        received.len(),
        expected.len()
    );
    assert_no_criticals_here("the reader");
}

/// A writer that has no caps (fdsrc pushes none; its EOS waits for a
/// reader) is listed as Source/Generic, with caps ANY: unknown.
#[test]
fn a_writer_without_caps_is_listed_without_them() {
    let _one_at_a_time = one_at_a_time();
    let directory = setup();
    let scratch = Scratch::new("devices_no_caps");
    let mut writer = launch(&scratch, "writer", "fdsrc fd=0 ! shmringsink stream=capsless");
    wait_until("the writer listens", || common::is_socket(&directory.join("capsless")));
    let device = listed_as("capsless", "Source/Generic");
    assert!(device.caps().is_some_and(|caps| caps.is_any()), "{:?}", device.caps());
    writer.assert_running();
    // Still prerolling, where gst-launch-1.0 does not handle SIGINT yet.
    writer.kill();
    fs::remove_file(directory.join("capsless")).unwrap();
}

/// Stands at `path` as a writer would, and answers every probe with
/// `answer`, until dropped; with no answer it never even accepts.
struct Impostor {
    stop: Arc<Notifier>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Impostor {
    fn new(path: &Path, answer: Option<Vec<u8>>) -> Self {
        let listener = Listener::bind(path, 0o600).unwrap();
        let stop = Arc::new(Notifier::new().unwrap());
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            loop {
                let ready = ipc::wait_readable_any(&[thread_stop.as_fd(), listener.as_fd()]).unwrap();
                if ready[0] {
                    return;
                }
                let Some(answer) = &answer else {
                    // Leave the connections in the listen queue, unanswered.
                    ipc::wait_readable_any(&[thread_stop.as_fd()]).unwrap();
                    return;
                };
                while let Some(connection) = listener.accept().unwrap() {
                    nix::sys::socket::send(
                        connection.as_fd().as_raw_fd(),
                        answer,
                        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                    )
                    .unwrap();
                    held.push(connection);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A probe answer as the wire format has it, with `caps` as its text.
fn probe_answer(caps: &[u8]) -> Vec<u8> {
    let mut answer = b"SHMRRING".to_vec();
    answer.extend_from_slice(&PROTOCOL_VERSION.to_ne_bytes());
    answer.extend_from_slice(&3u32.to_ne_bytes());
    answer.extend_from_slice(&(caps.len() as u32).to_ne_bytes());
    answer.extend_from_slice(&0u32.to_ne_bytes());
    answer.extend_from_slice(caps);
    answer
}

/// Sockets that never answer, or answer garbage, are listed with caps ANY,
/// within the watchdog, and with no CRITICAL; a well-formed answer from the
/// same impostor is believed, so the garbage is what made the difference.
#[test]
fn writers_that_never_answer_or_answer_garbage_do_not_hold_up_the_listing() {
    let _one_at_a_time = one_at_a_time();
    let directory = setup();
    let silent = Impostor::new(&directory.join("silent"), None);
    let garbage = Impostor::new(
        &directory.join("garbage"),
        Some(b"not a shmring writer at all".to_vec()),
    );
    let bad_caps = Impostor::new(
        &directory.join("bad-caps"),
        Some(probe_answer(b"video/x-raw, width=(int)")),
    );
    let nested = Impostor::new(
        &directory.join("nested"),
        Some(probe_answer(b"video/x-raw, s=(structure)\"a, b=(int)1;\"")),
    );
    let long = Impostor::new(&directory.join("long"), Some(probe_answer(&[b'a'; 20_000])));
    let honest = Impostor::new(
        &directory.join("honest"),
        Some(probe_answer(b"audio/x-raw, rate=(int)8000")),
    );

    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut devices: Vec<_> = ["silent", "garbage", "bad-caps", "nested", "long"]
            .iter()
            .map(|name| listed_as(name, "Source/Generic"))
            .collect();
        devices.push(listed_as("honest", "Audio/Source"));
        let _ = done.send(devices.iter().map(|device| device.caps().unwrap()).collect::<Vec<_>>());
    });
    let caps = finished
        .recv_timeout(DEADLINE)
        .expect("the listing returns although some writers never answer");
    assert!(caps[..5].iter().all(|caps| caps.is_any()), "{caps:?}");
    assert_eq!(caps[5].to_string(), "audio/x-raw, rate=(int)8000");
    drop((silent, garbage, bad_caps, nested, long, honest));
    assert_no_criticals_here("the provider");
}
