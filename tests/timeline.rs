//! One timeline across processes: a live reader turns the writer's
//! timestamps into running times of its own pipeline, so that the same
//! buffer is due at the same CLOCK_MONOTONIC instant in every reader,
//! whenever each started.
//!
//! The writer is a live videotestsrc at 100 frames/s in a gst-launch-1.0
//! process; its buffer with offset n has running time n * 10 ms. Readers run
//! here, each in a pipeline of its own with its own base time. For every
//! buffer a reader pushes, pts + base time is the clock time it is due at;
//! mapped right, that is (writer base time) + n * 10 ms for every reader.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;

mod common;
use common::*;

const FRAME: u64 = 10_000_000;
/// How far apart two readers may place the same buffer.
const TOLERANCE: u64 = 1_000_000;

/// One buffer as a reader pushed it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pushed {
    offset: u64,
    /// pts + the reader pipeline's base time: when the buffer is due.
    due: u64,
    /// The reader's running time when it pushed the buffer.
    pushed_at: u64,
    pts: u64,
}

/// Reads `count` buffers with a live shmringsrc in a pipeline of its own.
fn read_live(socket: &str, count: u32) -> Vec<Pushed> {
    read_live_with(socket, count, |_| ())
}

/// Like `read_live`, with `configure` called on the pipeline before it
/// starts (to give it another clock, say).
fn read_live_with(socket: &str, count: u32, configure: impl FnOnce(&gst::Pipeline)) -> Vec<Pushed> {
    let pipeline = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={socket} is-live=true num-buffers={count} ! fakesink sync=true"
    ))
    .expect("the reader pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let src = pipeline.by_name("src").expect("the source");
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let record = pushed.clone();
    let element = src.clone();
    src.static_pad("src").expect("a src pad").add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            let (Some(clock), Some(base)) = (element.clock(), element.base_time()) else {
                return gst::PadProbeReturn::Ok;
            };
            let pushed_at = clock.time().nseconds() - base.nseconds();
            let buffers: Vec<&gst::BufferRef> = match &info.data {
                Some(gst::PadProbeData::Buffer(buffer)) => vec![buffer.as_ref()],
                Some(gst::PadProbeData::BufferList(list)) => list.iter().collect(),
                _ => Vec::new(),
            };
            for buffer in buffers {
                let pts = buffer.pts().expect("a timestamped buffer").nseconds();
                record.lock().unwrap().push(Pushed {
                    offset: buffer.offset(),
                    due: pts + base.nseconds(),
                    pushed_at,
                    pts,
                });
            }
            gst::PadProbeReturn::Ok
        },
    );
    configure(&pipeline);
    pipeline.set_state(gst::State::Playing).expect("the reader starts");
    let bus = pipeline.bus().expect("a bus");
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(DEADLINE.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the reader ends within the deadline");
    if let gst::MessageView::Error(error) = message.view() {
        panic!("the reader failed: {} ({:?})", error.error(), error.debug());
    }
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    let pushed = pushed.lock().unwrap().clone();
    assert_eq!(pushed.len(), count as usize, "the reader pushed {pushed:?}");
    pushed
}

#[test]
fn readers_started_apart_place_every_buffer_at_the_same_instant() {
    init_gst();
    let scratch = Scratch::new("timeline");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=100/1 ! shmringsink socket-path={socket} wait-for-connection=false"
        ),
    );
    let first = read_live(&socket, 20);
    // Long enough that a reader which kept the writer's running times would
    // push timestamps seconds ahead of its own running time.
    thread::sleep(Duration::from_secs(3));
    let second = read_live(&socket, 20);
    writer.assert_running();

    // Every buffer, from either reader, lies on one line: due = origin + n * 10 ms.
    // A buffer captured before its reader started is due at that start,
    // running time 0, and is left out.
    let origins: Vec<u64> = first
        .iter()
        .chain(&second)
        .filter(|pushed| pushed.pts > 0)
        .map(|pushed| pushed.due - pushed.offset * FRAME)
        .collect();
    assert!(origins.len() >= 30, "most buffers were due before their reader started");
    let (low, high) = (origins.iter().min().unwrap(), origins.iter().max().unwrap());
    assert!(
        high - low <= TOLERANCE,
        "the readers place buffers {} µs apart\nfirst: {first:?}\nsecond: {second:?}",
        (high - low) / 1000
    );
    assert!(
        second[0].offset >= first[first.len() - 1].offset + 250,
        "the second reader did not start seconds later: {second:?}"
    );
    // Each buffer is due in the reader's own running time, no later than
    // when it was pushed (it was captured before), and not long before.
    for pushed in first.iter().chain(&second) {
        assert!(
            pushed.pts <= pushed.pushed_at + TOLERANCE && pushed.pushed_at.saturating_sub(pushed.pts) < 2_000_000_000,
            "a buffer due at {} ns was pushed at {} ns of the reader's running time",
            pushed.pts,
            pushed.pushed_at
        );
    }
}

/// Set in the second reader process, which is this test binary run again
/// for the test below: the file it writes what it pushed to.
const READER_OUTPUT: &str = "SHMRING_TIMELINE_READER_OUTPUT";

/// Two readers at once, one in this process and one in another, started a
/// second apart, read one live writer (which serves both): every buffer
/// either pushes lies on one line of due times.
#[test]
fn readers_in_two_processes_place_every_buffer_at_the_same_instant() {
    init_gst();
    if let Some(output) = std::env::var_os(READER_OUTPUT) {
        // The second process: read, write down, and end here.
        let socket = std::env::var("SHMRING_TIMELINE_SOCKET").expect("the socket path");
        let lines: Vec<String> = read_live(&socket, 200)
            .iter()
            .map(|pushed| format!("{} {} {} {}", pushed.offset, pushed.due, pushed.pushed_at, pushed.pts))
            .collect();
        std::fs::write(output, lines.join("\n")).expect("writing what was pushed");
        std::process::exit(0);
    }
    let scratch = Scratch::new("timeline_two_processes");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=100/1 ! shmringsink socket-path={socket} wait-for-connection=false"
        ),
    );
    let output = scratch.path("second-reader.txt");
    let mut other = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "readers_in_two_processes_place_every_buffer_at_the_same_instant",
            "--test-threads=1",
        ])
        .env(READER_OUTPUT, &output)
        .env("SHMRING_TIMELINE_SOCKET", &socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the second reader process");
    thread::sleep(Duration::from_secs(1));
    let here = read_live(&socket, 50);
    let status = other.wait().expect("waiting for the second reader");
    assert!(status.success(), "the second reader process failed ({status})");
    writer.assert_running();
    let there: Vec<Pushed> = std::fs::read_to_string(&output)
        .expect("what the second reader pushed")
        .lines()
        .map(|line| {
            let numbers: Vec<u64> = line.split(' ').map(|n| n.parse().expect("a number")).collect();
            Pushed {
                offset: numbers[0],
                due: numbers[1],
                pushed_at: numbers[2],
                pts: numbers[3],
            }
        })
        .collect();
    assert_eq!(there.len(), 200);
    // The two read at the same time: some buffers went to both.
    assert!(
        here.iter().any(|a| there.iter().any(|b| a.offset == b.offset)),
        "the readers did not overlap\nhere: {here:?}\nthere: {there:?}"
    );
    let origins: Vec<u64> = here
        .iter()
        .chain(&there)
        .filter(|pushed| pushed.pts > 0)
        .map(|pushed| pushed.due - pushed.offset * FRAME)
        .collect();
    assert!(
        origins.len() >= 200,
        "most buffers were due before their reader started"
    );
    let (low, high) = (origins.iter().min().unwrap(), origins.iter().max().unwrap());
    assert!(
        high - low <= TOLERANCE,
        "two processes place buffers {} µs apart",
        (high - low) / 1000
    );
}

/// A reader whose pipeline runs on a CLOCK_REALTIME system clock, not the
/// default monotonic one, still places buffers where a monotonic reader
/// does: its clock's offset from CLOCK_MONOTONIC is measured.
#[test]
fn a_reader_on_a_realtime_clock_shares_the_timeline() {
    init_gst();
    let scratch = Scratch::new("timeline_realtime");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=100/1 ! shmringsink socket-path={socket} wait-for-connection=false"
        ),
    );
    let monotonic = read_live(&socket, 20);
    let realtime = read_live_with(&socket, 20, |pipeline| {
        let clock = glib::Object::builder::<gst::SystemClock>()
            .property("clock-type", gst::ClockType::Realtime)
            .build();
        pipeline.use_clock(Some(&clock));
    });
    writer.assert_running();
    // Due times on each reader's own clock: map the realtime reader's to
    // CLOCK_MONOTONIC before comparing (its clock's offset, read now).
    let realtime_clock = glib::Object::builder::<gst::SystemClock>()
        .property("clock-type", gst::ClockType::Realtime)
        .build();
    let offset = realtime_clock.time().nseconds() as i128 - gstshmring::timeline::monotonic_now().unwrap() as i128;
    let origins: Vec<i128> = monotonic
        .iter()
        .map(|pushed| (pushed.due, pushed.offset, pushed.pts, 0))
        .chain(
            realtime
                .iter()
                .map(|pushed| (pushed.due, pushed.offset, pushed.pts, offset)),
        )
        .filter(|(_, _, pts, _)| *pts > 0)
        .map(|(due, offset_n, _, clock_offset)| due as i128 - clock_offset - (offset_n * FRAME) as i128)
        .collect();
    assert!(origins.len() >= 30, "most buffers were due before their reader started");
    let (low, high) = (origins.iter().min().unwrap(), origins.iter().max().unwrap());
    assert!(
        high - low <= TOLERANCE as i128,
        "a realtime-clock reader places buffers {} µs away from a monotonic one",
        (high - low) / 1000
    );
}

/// A live reader answers the latency query with the writer's upstream
/// latency: a live videotestsrc at 100 frames/s reports one frame, 10 ms.
#[test]
fn a_live_reader_reports_the_writers_latency() {
    init_gst();
    let scratch = Scratch::new("timeline_latency");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=100/1 ! shmringsink socket-path={socket} wait-for-connection=false"
        ),
    );
    let pipeline = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={socket} is-live=true ! fakesink name=out sync=true"
    ))
    .expect("the reader pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    pipeline.set_state(gst::State::Playing).expect("the reader starts");
    // Once a buffer has reached the sink the writer's timeline has arrived.
    let sink = pipeline.by_name("out").expect("the sink");
    let deadline = std::time::Instant::now() + DEADLINE;
    while sink.property::<Option<gst::Sample>>("last-sample").is_none() {
        assert!(std::time::Instant::now() < deadline, "no buffer reached the sink");
        thread::sleep(Duration::from_millis(10));
    }
    let src = pipeline.by_name("src").expect("the source");
    let mut query = gst::query::Latency::new();
    assert!(src.static_pad("src").expect("a src pad").query(&mut query));
    let (live, min, max) = query.result();
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    writer.assert_running();
    assert!(live);
    assert_eq!(min, gst::ClockTime::from_mseconds(10), "the writer's upstream latency");
    assert_eq!(max, gst::ClockTime::NONE);
}

/// The README's audio recipe: a live writer, and a reader that is not live
/// (no `is-live`) with a sink that syncs, joining after the writer has run
/// for a while. The reader's first buffer must play at once, not when the
/// reader's running time reaches the writer's.
#[test]
fn a_late_reader_that_is_not_live_plays_a_live_writer_at_once() {
    init_gst();
    let scratch = Scratch::new("timeline_late_not_live");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! shmringsink socket-path={socket} wait-for-connection=false"
        ),
    );
    // Far more than the bound below: a reader that kept the writer's
    // running times would wait this long before its first buffer.
    thread::sleep(WRITER_AHEAD);
    let pipeline = parse_pipeline(&format!(
        "shmringsrc socket-path={socket} ! fakesink name=out sync=true signal-handoffs=true"
    ));
    let rendered = Arc::new(Mutex::new(Vec::new()));
    let record = rendered.clone();
    pipeline
        .by_name("out")
        .expect("the sink")
        .connect("handoff", false, move |values| {
            let buffer = values[1].get::<gst::Buffer>().expect("a buffer");
            record.lock().unwrap().push((
                Instant::now(),
                buffer.pts().expect("a timestamp"),
                buffer.duration().expect("a duration"),
            ));
            None
        });
    let playing = Instant::now();
    pipeline.set_state(gst::State::Playing).expect("the reader starts");
    let deadline = playing + DEADLINE;
    while rendered.lock().unwrap().len() < RENDERED {
        assert!(Instant::now() < deadline, "the reader rendered too few buffers");
        thread::sleep(POLL_INTERVAL);
    }
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    writer.assert_running();
    let rendered = rendered.lock().unwrap().clone();
    let took = rendered[RENDERED - 1].0 - playing;
    assert!(
        took < PLAYS_WITHIN,
        "the reader took {took:?} to render {RENDERED} buffers of a writer that had run {WRITER_AHEAD:?}"
    );
    // The writer's spacing survives: each buffer starts where the one
    // before it ends.
    for pair in rendered.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + pair[0].2, "rendered: {rendered:?}");
    }
    assert_no_criticals_here("the reader");
}

/// How long the writer runs before the late reader joins.
const WRITER_AHEAD: Duration = Duration::from_secs(10);
/// Buffers of about 21 ms the late reader must render ...
const RENDERED: usize = 20;
/// ... within this much of PLAYING: about 0.5 s of audio and start-up,
/// with room for a loaded machine, and half of `WRITER_AHEAD`.
const PLAYS_WITHIN: Duration = Duration::from_secs(5);
