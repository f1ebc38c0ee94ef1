//! A writer paused while it waits plays on when it plays again.
//!
//! GstBaseSink unlocks its subclass on PLAYING to PAUSED as it does on a
//! flush. A render that waits (for a reader, for room in a reader's queue,
//! for a free block) must then hold on to its buffer, wait for PLAYING, and
//! wait again, instead of failing with `Flushing`, which stops upstream for
//! good. Each test pauses and resumes a writer (in this process) stuck in
//! one of those waits, with a reader in another process, and checks that
//! the pause completes and that the reader then gets every frame, byte for
//! byte as one process makes them.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Launch, Scratch};
use gst::prelude::*;

/// Bounds a hang; nothing here is timed.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The buffer lines of `checksumsink`'s output: a timestamp and a SHA-1.
fn checksums(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|line| {
            let mut fields = line.split(' ');
            let (Some(time), Some(sum), None) = (fields.next(), fields.next(), fields.next()) else {
                return false;
            };
            time.contains(':') && sum.len() == 40 && sum.chars().all(|c| c.is_ascii_hexdigit())
        })
        .map(str::to_owned)
        .collect()
}

/// What one process makes of `source` (a gst-launch description ending in
/// caps): the checksums of its buffers.
fn reference(scratch: &Scratch, source: &str) -> Vec<String> {
    let finished = Launch::spawn(scratch, "reference", &format!("{source} ! checksumsink")).finish();
    finished.assert_success();
    checksums(&finished.stdout)
}

/// Polls `done` until it holds; the watchdog fails the test.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn stat(sink: &gst::Element, name: &str) -> u64 {
    sink.property::<gst::Structure>("stats")
        .get::<u64>(name)
        .unwrap_or_else(|err| panic!("stats has no {name}: {err}"))
}

/// Sets `pipeline` to `state` and waits until it is there. A pause whose
/// render fails instead of prerolling never gets there.
fn reach(pipeline: &gst::Pipeline, state: gst::State) {
    pipeline
        .set_state(state)
        .unwrap_or_else(|err| panic!("setting the writer to {state:?}: {err}"));
    let (result, current, _) = pipeline.state(gst::ClockTime::from_seconds(WATCHDOG.as_secs()));
    assert_eq!(
        (result, current),
        (Ok(gst::StateChangeSuccess::Success), state),
        "the writer did not reach {state:?}"
    );
}

/// Pauses the writer while it waits, plays it again, then lets `reader`
/// go on, and checks that the reader gets exactly what one process makes.
fn pause_and_resume(scratch: &Scratch, writer: &gst::Pipeline, reader: Option<Launch>, expected: &[String]) {
    // Give render a moment to enter its wait; the test holds either way.
    thread::sleep(Duration::from_millis(100));
    reach(writer, gst::State::Paused);
    reach(writer, gst::State::Playing);
    let reader = match reader {
        Some(mut reader) => {
            reader.thaw();
            reader
        }
        None => Launch::spawn(
            scratch,
            "reader",
            &format!("shmringsrc socket-path={} ! checksumsink", scratch.socket().display()),
        ),
    };
    let finished = reader.finish();
    finished.assert_success();
    assert_eq!(
        checksums(&finished.stdout),
        expected,
        "the reader got other frames than one process makes"
    );
    let bus = writer.bus().expect("a pipeline has a bus");
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(WATCHDOG.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the writer ends");
    assert!(
        matches!(message.view(), gst::MessageView::Eos(_)),
        "the writer failed: {message:?}"
    );
    writer.set_state(gst::State::Null).expect("the writer stops");
    common::assert_no_criticals_here("the writer's process");
}

/// Starts a reader that prints checksums, and freezes it once it got the
/// first frame: the writer then fills what it may hand that reader.
fn frozen_reader(scratch: &Scratch) -> Launch {
    let mut reader = Launch::spawn(
        scratch,
        "reader",
        &format!("shmringsrc socket-path={} ! checksumsink", scratch.socket().display()),
    );
    reader.wait_for_stdout(&["0:00:00.000000000 "]);
    reader.freeze();
    reader
}

#[test]
fn writer_paused_while_waiting_for_a_reader_streams_again() {
    let scratch = Scratch::new("pause-no-reader");
    let source = "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=64,height=48";
    let expected = reference(&scratch, source);
    let writer = common::parse_pipeline(&format!(
        "{source} ! shmringsink socket-path={}",
        scratch.socket().display()
    ));
    // PLAYING is reached with the first buffer prerolled; render then waits
    // for a reader.
    reach(&writer, gst::State::Playing);
    pause_and_resume(&scratch, &writer, None, &expected);
}

#[test]
fn writer_paused_while_a_reader_queue_is_full_streams_again() {
    let scratch = Scratch::new("pause-queue-full");
    // Small frames travel inline: they fill the reader's record queue.
    let source = "videotestsrc num-buffers=3000 ! video/x-raw,format=I420,width=32,height=32";
    let expected = reference(&scratch, source);
    let writer = common::parse_pipeline(&format!(
        "{source} ! shmringsink name=sink when-full=block socket-path={}",
        scratch.socket().display()
    ));
    let sink = writer.by_name("sink").expect("the sink is named");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    let reader = frozen_reader(&scratch);
    wait_until("the writer waits for room", || stat(&sink, "times-blocked-full") > 0);
    pause_and_resume(&scratch, &writer, Some(reader), &expected);
}

#[test]
fn writer_paused_while_waiting_for_a_block_streams_again() {
    let scratch = Scratch::new("pause-no-block");
    // Frames larger than a record queue need a block; upstream's buffers
    // are its own (the allocation query stops at identity), so render
    // copies into a block, and waits for one while the heap of four frames
    // is in the frozen reader's hands.
    let source = "videotestsrc num-buffers=40 ! video/x-raw,format=I420,width=640,height=480";
    let frame = 640 * 480 * 3 / 2;
    let expected = reference(&scratch, source);
    let writer = common::parse_pipeline(&format!(
        "{source} ! identity drop-allocation=true ! shmringsink name=sink when-full=block ring-size={} socket-path={}",
        4 * frame + 65536,
        scratch.socket().display()
    ));
    let sink = writer.by_name("sink").expect("the sink is named");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    let reader = frozen_reader(&scratch);
    wait_until("the reader holds the heap", || stat(&sink, "held-bytes") >= 3 * frame);
    pause_and_resume(&scratch, &writer, Some(reader), &expected);
}
