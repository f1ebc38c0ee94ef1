//! Upstream events and queries cross from a reader process to the writer's
//! pipeline: the writer runs here, with a probe on its sink's pad, and the
//! reader in another process (this test binary again, or gst-launch-1.0).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;

mod common;
use common::*;

const READER_SOCKET: &str = "SHMRING_UPSTREAM_READER_SOCKET";
const SECOND: u64 = 1_000_000_000;

/// Upstream events seen on the shmringsink's sink pad, by kind.
#[derive(Default)]
struct Seen {
    navigation: AtomicU64,
    key_unit: AtomicU64,
    seek: AtomicU64,
}

fn count_upstream_events(pipeline: &gst::Pipeline) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let pad = pipeline
        .by_name("sink")
        .expect("an element named sink")
        .static_pad("sink")
        .expect("a sink pad");
    let counts = seen.clone();
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        if let Some(event) = info.event() {
            let counter = match event.view() {
                gst::EventView::Navigation(_) => Some(&counts.navigation),
                gst::EventView::Seek(_) => Some(&counts.seek),
                _ if gst_video::UpstreamForceKeyUnitEvent::parse(event).is_ok() => Some(&counts.key_unit),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        gst::PadProbeReturn::Ok
    });
    seen
}

/// The reader process: asks the writer's pipeline for its duration, sends a
/// click, a key-unit request and a seek to 6 s, and prints what it got.
fn run_reader(socket: &str) {
    let pipeline = parse_pipeline(&format!(
        "shmringsrc socket-path={socket} ! appsink name=sink sync=false max-buffers=2"
    ));
    let appsink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .expect("an appsink");
    pipeline.set_state(gst::State::Playing).expect("the reader plays");
    let pts = |sample: &gst::Sample| {
        sample
            .buffer()
            .and_then(|buffer| buffer.pts())
            .map_or(u64::MAX, gst::ClockTime::nseconds)
    };
    let pull = || {
        appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .expect("a sample within 30 s")
    };
    let mut last = pts(&pull());
    let duration = pipeline.query_duration::<gst::ClockTime>();
    println!("duration={}", duration.map_or(u64::MAX, gst::ClockTime::nseconds));
    let click = gst_video::NavigationEvent::MouseButtonPress {
        button: 1,
        x: 10.0,
        y: 20.0,
        modifier_state: gst_video::NavigationModifierType::empty(),
    };
    println!("navigation={}", appsink.send_event(click.build()));
    let key_unit = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    println!("key-unit={}", appsink.send_event(key_unit));
    let sought = pipeline.seek_simple(
        gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
        gst::ClockTime::from_seconds(6),
    );
    println!("seek={}", sought.is_ok());
    // The records already in the ring come first, until the writer's
    // flush crosses too; then the stream jumps to the seek target.
    loop {
        let now = pts(&pull());
        if now >= 6 * SECOND {
            println!("jumped from={last} to={now}");
            break;
        }
        last = now;
    }
    pipeline.set_state(gst::State::Null).expect("the reader stops");
}

fn printed(stdout: &str, key: &str) -> String {
    // libtest prints the test's name without a line break before the
    // reader's first line.
    let needle = format!(" {key}=");
    stdout
        .lines()
        .find_map(|line| {
            let line = format!(" {line}");
            line.find(&needle).map(|at| line[at + needle.len()..].to_owned())
        })
        .unwrap_or_else(|| panic!("the reader printed no {key}=\n{stdout}"))
}

/// A reader's duration query answers the writer's file duration; its
/// navigation, force-key-unit and seek reach the writer's sink pad; its
/// seek to 6 s makes the stream jump to 6 s.
#[test]
fn a_readers_events_and_queries_reach_the_writers_pipeline() {
    const TEST: &str = "a_readers_events_and_queries_reach_the_writers_pipeline";
    if let Ok(socket) = std::env::var(READER_SOCKET) {
        run_reader(&socket);
        return;
    }
    let scratch = Scratch::new(TEST);
    let file = scratch.path("ten-seconds.wav");
    // 10 s of 48 kHz stereo S16 in buffers of 0.1 s: 1.9 MB, many times
    // the ring, so the writer is early in the file when the seek comes.
    Launch::spawn(
        &scratch,
        "file maker",
        &format!(
            "audiotestsrc num-buffers=100 samplesperbuffer=4800 ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! wavenc ! filesink location={}",
            file.display()
        ),
    )
    .finish()
    .assert_success();
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "filesrc location={} ! wavparse ! shmringsink name=sink socket-path={} ring-size=262144 upstream-events=all",
        file.display(),
        socket.display()
    ));
    let seen = count_upstream_events(&writer);
    writer.set_state(gst::State::Playing).expect("the writer plays");
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(READER_SOCKET, &socket);
    let reader = Launch::spawn_command(&scratch, "reader", command).finish();
    writer.set_state(gst::State::Null).expect("the writer stops");
    reader.assert_success();
    let stdout = &reader.stdout;
    assert_eq!(printed(stdout, "duration"), (10 * SECOND).to_string(), "{stdout}");
    assert_eq!(printed(stdout, "navigation"), "true", "{stdout}");
    assert_eq!(printed(stdout, "key-unit"), "true", "{stdout}");
    assert_eq!(printed(stdout, "seek"), "true", "{stdout}");
    let jump = printed(stdout, "jumped from");
    let (from, to) = jump.split_once(" to=").expect("from and to");
    let (from, to): (u64, u64) = (from.parse().expect("a pts"), to.parse().expect("a pts"));
    assert_eq!(to, 6 * SECOND, "{stdout}");
    // Read in order without the seek, the buffer before 6 s would be 5.9 s.
    assert!(from < 5 * SECOND, "no jump: {stdout}");
    assert_eq!(seen.navigation.load(Ordering::SeqCst), 1);
    assert_eq!(seen.key_unit.load(Ordering::SeqCst), 1);
    assert_eq!(seen.seek.load(Ordering::SeqCst), 1);
    assert_no_criticals_here("the writer");
}

/// With the default `upstream-events=safe`, a reader's seek is refused and
/// never reaches the writer, while its click does, and a seeking query
/// answers not seekable.
#[test]
fn a_seek_is_refused_unless_the_writer_allows_it() {
    const TEST: &str = "a_seek_is_refused_unless_the_writer_allows_it";
    if let Ok(socket) = std::env::var(READER_SOCKET) {
        let pipeline = parse_pipeline(&format!(
            "shmringsrc socket-path={socket} ! appsink name=sink sync=false max-buffers=2"
        ));
        let appsink = pipeline
            .by_name("sink")
            .and_downcast::<gst_app::AppSink>()
            .expect("an appsink");
        pipeline.set_state(gst::State::Playing).expect("the reader plays");
        appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .expect("a sample within 30 s");
        let mut seeking = gst::query::Seeking::new(gst::Format::Time);
        println!("answered={}", pipeline.query(&mut seeking));
        println!("seekable={}", seeking.result().0);
        let click = gst_video::NavigationEvent::MouseButtonPress {
            button: 1,
            x: 1.0,
            y: 1.0,
            modifier_state: gst_video::NavigationModifierType::empty(),
        };
        println!("navigation={}", appsink.send_event(click.build()));
        let sought = pipeline.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::from_seconds(6));
        println!("seek={}", sought.is_ok());
        pipeline.set_state(gst::State::Null).expect("the reader stops");
        return;
    }
    let scratch = Scratch::new(TEST);
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "audiotestsrc num-buffers=1000 samplesperbuffer=4800 ! audio/x-raw,rate=48000,channels=2 ! shmringsink name=sink socket-path={} ring-size=262144",
        socket.display()
    ));
    let seen = count_upstream_events(&writer);
    writer.set_state(gst::State::Playing).expect("the writer plays");
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(READER_SOCKET, &socket);
    let reader = Launch::spawn_command(&scratch, "reader", command).finish();
    writer.set_state(gst::State::Null).expect("the writer stops");
    reader.assert_success();
    let stdout = &reader.stdout;
    assert_eq!(printed(stdout, "answered"), "true", "{stdout}");
    assert_eq!(printed(stdout, "seekable"), "false", "{stdout}");
    assert_eq!(printed(stdout, "navigation"), "true", "{stdout}");
    assert_eq!(printed(stdout, "seek"), "false", "{stdout}");
    assert_eq!(seen.navigation.load(Ordering::SeqCst), 1);
    assert_eq!(seen.seek.load(Ordering::SeqCst), 0);
    assert_no_criticals_here("the writer");
}

/// A viewer that joins live VP8 with a 20 s GOP decodes a picture long
/// before the encoder's next scheduled keyframe: the writer asks the
/// encoder for one when the viewer joins. The time it takes is measured
/// in bench/late-joiner.sh; this asserts only that it is far below the
/// GOP, so that a loaded machine cannot fail it.
#[test]
fn a_late_viewer_of_live_vp8_gets_a_keyframe_at_once() {
    let scratch = Scratch::new("a_late_viewer_of_live_vp8_gets_a_keyframe_at_once");
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! vp8enc keyframe-max-dist=600 deadline=1 ! shmringsink name=sink socket-path={} wait-for-connection=false",
        socket.display()
    ));
    let seen = count_upstream_events(&writer);
    writer.set_state(gst::State::Playing).expect("the writer plays");
    // Past the first keyframe: the next one is due at 20 s.
    let sink = writer.by_name("sink").expect("the sink");
    let written = count_buffers(&sink);
    wait_until("the writer encodes a second of frames", || {
        written.load(Ordering::SeqCst) >= 30
    });
    let started = Instant::now();
    let reader = Launch::spawn(
        &scratch,
        "viewer",
        &format!(
            "shmringsrc socket-path={} ! vp8dec ! identity eos-after=1 ! fakesink",
            socket.display()
        ),
    )
    .finish();
    let took = started.elapsed();
    writer.set_state(gst::State::Null).expect("the writer stops");
    reader.assert_success();
    assert!(
        took < Duration::from_secs(10),
        "the viewer took {took:?} to decode a picture: it waited for the scheduled keyframe"
    );
    // One per join; a viewer that falls behind while its decoder starts
    // may lose buffers, and asks again after them.
    assert!(seen.key_unit.load(Ordering::SeqCst) >= 1);
    assert_no_criticals_here("the writer");
}
