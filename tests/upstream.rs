//! Upstream events and queries cross from a reader process to the writer's
//! pipeline: the writer runs here, with a probe on its sink's pad, and the
//! reader in another process (this test binary again, or gst-launch-1.0).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstshmring::ipc::messages::Message;
use gstshmring::ipc::{self, Connection, HelloStatus, Listener};
use gstshmring::ring::{ChannelSizes, HeapMemory, Notifier};

mod common;
use common::*;

const READER_SOCKET: &str = "SHMRING_UPSTREAM_READER_SOCKET";
const WRITER_SOCKET: &str = "SHMRING_UPSTREAM_WRITER_SOCKET";
/// Far above what any step here needs: it only turns a hang into a
/// failure.
const WATCHDOG: Duration = Duration::from_secs(30);
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

/// Starts this test binary again as the other process of `test`, with
/// `var` set to `socket`.
fn spawn_self(scratch: &Scratch, test: &str, name: &str, var: &str, socket: &Path) -> Launch {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, socket);
    Launch::spawn_command(scratch, name, command)
}

/// A reader that breaks the protocol (a message of an unknown kind) is no
/// longer listened to, with a warning naming the cause, and the stream
/// goes on: the event it sent before reached the writer, the one after did
/// not, and a reader that comes next gets buffers.
#[test]
fn a_reader_breaking_the_upstream_protocol_is_ignored_and_the_stream_goes_on() {
    const TEST: &str = "a_reader_breaking_the_upstream_protocol_is_ignored_and_the_stream_goes_on";
    if let Ok(socket) = std::env::var(READER_SOCKET) {
        let connection = Connection::connect(Path::new(&socket)).expect("connecting to the writer");
        connection
            .send_client_hello(ipc::HelloPurpose::Reader)
            .expect("sending the hello");
        let (hello, _fds) = loop {
            if let Some(reply) = connection.recv_server_hello().expect("the writer's hello") {
                break reply;
            }
            ipc::wait_readable([connection.as_fd()]).expect("waiting for the writer's hello");
        };
        assert_eq!(hello.status, HelloStatus::Accepted);
        let click = "application/x-gst-navigation, event=(string)mouse-button-press, button=(int)1, pointer_x=(double)1, pointer_y=(double)1";
        let navigation = Message::Navigation(click.into()).encode().expect("fits");
        let mut unknown = 99u32.to_ne_bytes().to_vec();
        unknown.extend_from_slice(&[0; 12]);
        for message in [&navigation, &unknown, &navigation] {
            assert!(connection.send_message(message).expect("the writer is there"));
        }
        println!("sent");
        // Stays linked, reading nothing, until the test ends it.
        std::thread::sleep(WATCHDOG);
        return;
    }
    // The test's name would make the socket's path too long.
    let scratch = Scratch::new("upstream-protocol-broken");
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=100/1 ! shmringsink name=sink socket-path={}",
        socket.display()
    ));
    let seen = count_upstream_events(&writer);
    let bus = writer.bus().expect("a bus");
    writer.set_state(gst::State::Playing).expect("the writer plays");
    let mut hostile = spawn_self(&scratch, TEST, "hostile reader", READER_SOCKET, &socket);
    hostile.wait_for_stdout(&["sent"]);
    let warning = loop {
        let message = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(WATCHDOG.as_secs()),
                &[gst::MessageType::Warning, gst::MessageType::Error],
            )
            .expect("a warning about the hostile reader within the watchdog");
        match message.view() {
            gst::MessageView::Warning(warning) => {
                break format!("{} {}", warning.error(), warning.debug().unwrap_or_default());
            }
            gst::MessageView::Error(error) => panic!("the writer failed: {}", error.error()),
            _ => {}
        }
    };
    assert!(warning.contains("unknown control message kind 99"), "{warning}");
    assert_eq!(seen.navigation.load(Ordering::SeqCst), 1);
    let next = Launch::spawn(
        &scratch,
        "next reader",
        &format!("shmringsrc socket-path={} num-buffers=20 ! fakesink", socket.display()),
    )
    .finish();
    hostile.kill();
    writer.set_state(gst::State::Null).expect("the writer stops");
    next.assert_success();
    assert_eq!(seen.navigation.load(Ordering::SeqCst), 1);
    assert_no_criticals_here("the writer");
}

/// A writer that never answers: the reader's duration query and seek fail
/// after their timeouts instead of hanging its application.
#[test]
fn a_query_the_writer_never_answers_fails_instead_of_hanging() {
    const TEST: &str = "a_query_the_writer_never_answers_fails_instead_of_hanging";
    if let Ok(socket) = std::env::var(WRITER_SOCKET) {
        let listener = Listener::bind(Path::new(&socket), 0o600).expect("binding the silent writer's socket");
        let connection = loop {
            if let Some(connection) = listener.accept().expect("accepting a reader") {
                break connection;
            }
            ipc::wait_readable([listener.as_fd()]).expect("waiting for a reader");
        };
        let sizes = ChannelSizes {
            record_capacity: 64 << 10,
            release_slots: 256,
            heap_size: 1 << 20,
        };
        let heap = HeapMemory::create(sizes.heap_size).expect("creating the heap");
        let interrupt = Notifier::new().expect("an eventfd");
        let _channel = ipc::serve_reader(&connection, sizes, &heap, interrupt.as_fd())
            .expect("the handshake")
            .expect("not interrupted");
        println!("served");
        // Reads nothing and answers nothing until the test ends it.
        std::thread::sleep(WATCHDOG);
        return;
    }
    let scratch = Scratch::new(TEST);
    let socket = scratch.socket();
    let mut writer = spawn_self(&scratch, TEST, "silent writer", WRITER_SOCKET, &socket);
    let reader = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! fakesink",
        socket.display()
    ));
    reader.set_state(gst::State::Playing).expect("the reader starts");
    writer.wait_for_stdout(&["served"]);
    let src = reader.by_name("src").expect("the source");
    // The source links as soon as the hello arrives; until then a query
    // stays here and is answered at once.
    let (done, outcome) = std::sync::mpsc::channel();
    let asking = std::thread::spawn(move || {
        let duration = src.query_duration::<gst::ClockTime>();
        let seek = gst::event::Seek::new(
            1.0,
            gst::SeekFlags::FLUSH,
            gst::SeekType::Set,
            gst::ClockTime::from_seconds(6),
            gst::SeekType::None,
            gst::ClockTime::NONE,
        );
        let sought = src.static_pad("src").expect("a src pad").send_event(seek);
        let _ = done.send((duration, sought));
    });
    let (duration, sought) = outcome
        .recv_timeout(WATCHDOG)
        .expect("the query and the seek return within the watchdog");
    asking.join().expect("the asking thread");
    writer.kill();
    reader.set_state(gst::State::Null).expect("the reader stops");
    assert_eq!(duration, None);
    assert!(!sought);
    assert_no_criticals_here("the reader");
}
