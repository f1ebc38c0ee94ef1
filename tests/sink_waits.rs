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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::{Launch, Scratch};

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    common::wait_until_within(WATCHDOG, what, done);
}
use gst::prelude::*;

/// Bounds a hang; nothing here is timed.
const WATCHDOG: Duration = Duration::from_secs(60);

/// What one process makes of `source` (a gst-launch description ending in
/// caps): the checksums of its buffers.
fn reference(scratch: &Scratch, source: &str) -> Vec<String> {
    let finished = Launch::spawn(scratch, "reference", &format!("{source} ! checksumsink")).finish();
    finished.assert_success();
    common::checksums(&finished.stdout)
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
        common::checksums(&finished.stdout),
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
    // Let it finish with that frame; the tests hold either way.
    thread::sleep(Duration::from_millis(100));
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
    // Written at most one a millisecond, so that the reader is frozen long
    // before it could have read them all.
    let source = "videotestsrc num-buffers=3000 ! video/x-raw,format=I420,width=32,height=32";
    let expected = reference(&scratch, source);
    let writer = common::parse_pipeline(&format!(
        "{source} ! identity sleep-time=1000 ! shmringsink name=sink when-full=block socket-path={}",
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
    // is in the frozen reader's hands. The writer is paced (identity
    // sleep-time, 20 ms a frame), so that the reader cannot read all 40
    // frames before it is frozen, which it did once under load, leaving
    // the writer nothing to wait for.
    let source = "videotestsrc num-buffers=40 ! video/x-raw,format=I420,width=640,height=480";
    let frame = 640 * 480 * 3 / 2;
    let expected = reference(&scratch, source);
    let writer = common::parse_pipeline(&format!(
        "{source} ! identity drop-allocation=true sleep-time=20000 ! shmringsink name=sink when-full=block ring-size={} socket-path={}",
        4 * frame + 65536,
        scratch.socket().display()
    ));
    let sink = writer.by_name("sink").expect("the sink is named");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    let reader = frozen_reader(&scratch);
    wait_until("the reader holds the heap", || stat(&sink, "held-bytes") >= 3 * frame);
    pause_and_resume(&scratch, &writer, Some(reader), &expected);
}

/// A writer in this process whose frames (GRAY8 640x480, larger than a
/// record queue) come from an appsrc in ordinary memory, so that render
/// copies each into a heap block of its own choosing.
struct AppWriter {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    sink: gst::Element,
    /// Frames that reached the sink: once the last one pushed has, every
    /// earlier one was rendered.
    arrived: Arc<AtomicU64>,
    pushed: u64,
}

const GRAY_WIDTH: usize = 640;
const GRAY_HEIGHT: usize = 480;
const GRAY_FRAME: usize = GRAY_WIDTH * GRAY_HEIGHT;

impl AppWriter {
    fn start(scratch: &Scratch, sink_properties: &str) -> Self {
        let pipeline = common::parse_pipeline(&format!(
            "appsrc name=src format=time caps=video/x-raw,format=GRAY8,width={GRAY_WIDTH},height={GRAY_HEIGHT},framerate=30/1 \
             ! shmringsink name=sink {sink_properties} socket-path={}",
            scratch.socket().display()
        ));
        let appsrc = pipeline
            .by_name("src")
            .and_downcast::<gst_app::AppSrc>()
            .expect("the appsrc");
        let sink = pipeline.by_name("sink").expect("the sink is named");
        let arrived = common::count_buffers(&sink);
        pipeline.set_state(gst::State::Playing).expect("the writer starts");
        Self {
            pipeline,
            appsrc,
            sink,
            arrived,
            pushed: 0,
        }
    }

    /// Queues a frame; appsrc's thread renders it.
    fn push(&mut self) {
        let mut buffer = gst::Buffer::from_mut_slice(vec![(self.pushed % 251) as u8; GRAY_FRAME]);
        let frame_ns = 33_333_333;
        let buffer_mut = buffer.get_mut().expect("a new buffer is writable");
        buffer_mut.set_pts(gst::ClockTime::from_nseconds(self.pushed * frame_ns));
        buffer_mut.set_duration(gst::ClockTime::from_nseconds(frame_ns));
        self.appsrc.push_buffer(buffer).expect("appsrc takes the frame");
        self.pushed += 1;
    }

    /// Pushes a frame and waits until render has handled every one before.
    fn push_rendered(&mut self) {
        self.push();
        let pushed = self.pushed;
        wait_until(&format!("frame {pushed} reached the sink"), || {
            self.arrived.load(Ordering::SeqCst) == pushed
        });
    }
}

/// Starts a reader that prints checksums (keeping the last frame, as any
/// sink does by default, if `keeps_last`), lets it read the first frame,
/// and freezes it.
fn reader_frozen_after_one_frame(scratch: &Scratch, writer: &mut AppWriter, keeps_last: bool) -> Launch {
    let mut reader = Launch::spawn(
        scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={} ! checksumsink enable-last-sample={keeps_last}",
            scratch.socket().display()
        ),
    );
    // Readers are taken in as frames pass; the first render waits for one.
    writer.push_rendered();
    wait_until("the reader is linked", || writer.sink.property::<u32>("readers") == 1);
    reader.wait_for_stdout(&["0:00:00.000000000 "]);
    // Let it finish with that frame; the tests hold either way.
    thread::sleep(Duration::from_millis(100));
    reader.freeze();
    reader
}

#[test]
fn drop_mode_never_waits_for_blocks_a_frozen_reader_has_not_read() {
    let scratch = Scratch::new("drop-no-wait");
    // Upstream fills blocks from the sink's pool, five frames a second, in a
    // heap of one frame. The reader gives the first frame back and is
    // frozen before the second comes; the second is sent to it, and then
    // no block is free until it reads. Upstream's allocations must not wait
    // for that block (they get ordinary memory), and the frozen reader
    // loses the frames.
    let writer = common::parse_pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=GRAY8,width={GRAY_WIDTH},height={GRAY_HEIGHT},framerate=5/1 \
         ! shmringsink name=sink when-full=drop ring-size={GRAY_FRAME} socket-path={}",
        scratch.socket().display()
    ));
    let sink = writer.by_name("sink").expect("the sink is named");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    let mut reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={} ! checksumsink enable-last-sample=false",
            scratch.socket().display()
        ),
    );
    reader.wait_for_stdout(&["0:00:00"]);
    reader.freeze();
    wait_until("the frozen reader loses frames", || stat(&sink, "buffers-lost") >= 3);
    reader.thaw();
    writer.set_state(gst::State::Null).expect("the writer stops");
    drop(reader);
    common::assert_no_criticals_here("the writer's process");
}

#[test]
fn render_queued_behind_an_upstream_allocation_ends_on_unlock() {
    let scratch = Scratch::new("turn-unlock");
    let mut writer = AppWriter::start(&scratch, &format!("when-full=block ring-size={}", 2 * GRAY_FRAME));
    // The sink's pool, asked for while the streaming thread is free: the
    // allocation query waits for it.
    let sink_pad = writer.sink.static_pad("sink").expect("the sink has a pad");
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "GRAY8")
        .field("width", GRAY_WIDTH as i32)
        .field("height", GRAY_HEIGHT as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(sink_pad.query(&mut query), "the sink answers the allocation query");
    let (pool, size, _, _) = query.allocation_pools().next().expect("the sink offers a pool");
    let pool = pool.expect("a pool");
    let mut config = pool.config();
    config.set_params(Some(&caps), size, 0, 0);
    pool.set_config(config).expect("the pool takes its config");
    pool.set_active(true).expect("the pool activates");
    let mut reader = reader_frozen_after_one_frame(&scratch, &mut writer, true);
    // Its sink keeps the first frame's block; the second block goes to a
    // record it does not read.
    writer.push_rendered();
    wait_until("the reader holds the heap", || {
        stat(&writer.sink, "held-bytes") >= 2 * GRAY_FRAME as u64
    });
    // Upstream's pool waits for a block, holding the turn to sleep on the
    // readers' release eventfds, until its own flush.
    let waiting_pool = pool.clone();
    let allocation = thread::spawn(move || waiting_pool.acquire_buffer(None).map(drop));
    thread::sleep(Duration::from_millis(200));
    // Render needs a block too, and queues behind the pool.
    writer.push();
    thread::sleep(Duration::from_millis(200));
    // Stopping unlocks the sink: its render must end though the pool waits on.
    let pipeline = writer.pipeline.clone();
    let (stopped, stop_done) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = stopped.send(pipeline.set_state(gst::State::Null));
    });
    let result = stop_done.recv_timeout(WATCHDOG);
    reader.thaw();
    pool.set_active(false).expect("the pool deactivates");
    assert!(
        matches!(result, Ok(Ok(_))),
        "stopping the writer hung behind upstream's allocation: {result:?}"
    );
    assert!(allocation.join().is_ok(), "the pool's allocation ended");
    drop(reader);
    common::assert_no_criticals_here("the writer's process");
}
