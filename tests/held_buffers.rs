//! Elements keep buffers: a sink its last sample, filesink up to 64 KiB of
//! them, an application its last few frames, an element upstream of the sink
//! its reference frames. These tests pin down what the ring promises then:
//! a kept buffer pins only itself, so the stream never stalls behind it, the
//! bytes arrive intact, and a sink that keeps a buffer or two costs no copy.
//! They also cover a caps change under load, a BYTES segment and a ring too
//! small for the caps.
//!
//! Writers and readers run as `gst-launch-1.0` children that load the freshly
//! built plugin, except the side whose buffers or `stats` a test needs to
//! reach: that one runs in this process, with the plugin registered
//! statically. Every child runs with `G_DEBUG=fatal-criticals`, and this
//! process records every GLib critical; either fails the test.
//!
//! Nothing here measures time. Every wait has a generous deadline that only
//! turns a hang into a failure that says what hung.

use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Instant;

use gst::prelude::*;

mod common;
use common::*;

/// Watches for GLib criticals in this process while a test runs.
struct NoCriticals {
    seen_before: usize,
}

impl NoCriticals {
    fn watch() -> Self {
        init_gst();
        Self {
            seen_before: logged_criticals().len(),
        }
    }

    /// Fails if GLib logged a critical or warning since `watch`. Tests run
    /// in parallel and GStreamer logs from its own threads, so one logged
    /// for another test may show here too: either way it is a bug.
    fn check(self) {
        let criticals = logged_criticals();
        let new = &criticals[self.seen_before..];
        assert!(
            new.is_empty(),
            "GLib logged in this process while this test ran:\n{}",
            new.join("\n")
        );
    }
}

/// An in-process pipeline, stopped when dropped, also when a test fails
/// halfway: disposing of a playing pipeline is itself a GStreamer-CRITICAL.
struct Pipeline(gst::Pipeline);

impl std::ops::Deref for Pipeline {
    type Target = gst::Pipeline;

    fn deref(&self) -> &gst::Pipeline {
        &self.0
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

fn parse_pipeline(description: &str) -> Pipeline {
    init_gst();
    let pipeline = gst::parse::launch(description)
        .unwrap_or_else(|err| panic!("parsing {description:?}: {err}"))
        .downcast::<gst::Pipeline>()
        .expect("a description with several elements makes a pipeline");
    Pipeline(pipeline)
}

/// Runs `work` on a thread of its own and returns its result. If it has not
/// finished by the deadline, the test fails saying that `what` (asked only
/// then, so that it can tell how far the work got) hung, instead of hanging
/// CI; the stuck thread dies with the test binary.
fn within<T: Send + 'static>(what: impl FnOnce() -> String, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    // Named after the test, so that a panic message printed from it says
    // which test it belongs to.
    let name = format!("{}-worker", thread::current().name().unwrap_or("test"));
    let worker = thread::Builder::new()
        .name(name)
        .spawn(move || {
            let result = work();
            let _ = done.send(());
            result
        })
        .expect("spawning a worker thread");
    match finished.recv_timeout(DEADLINE) {
        // A worker that panicked dropped `done` without sending: join and
        // pass its panic on.
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{} did not finish within {DEADLINE:?}: it hung", what()),
    }
}

/// Waits for a started in-process pipeline to reach EOS, without stopping it,
/// so that the caller can still read its elements' stats. An error fails the
/// test after stopping the pipeline.
fn wait_for_eos(pipeline: &gst::Pipeline, what: &str) {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let deadline = gst::ClockTime::from_nseconds(DEADLINE.as_nanos() as u64);
    let message = bus.timed_pop_filtered(deadline, &[gst::MessageType::Eos, gst::MessageType::Error]);
    match message.as_ref().map(|message| message.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        Some(gst::MessageView::Error(err)) => {
            let _ = pipeline.set_state(gst::State::Null);
            panic!(
                "the {what} failed: {} ({:?})",
                err.error(),
                err.debug().unwrap_or_default()
            )
        }
        _ => {
            // Stopping wakes a shmring element still waiting for its peer.
            let _ = pipeline.set_state(gst::State::Null);
            panic!("the {what} did not reach EOS within {DEADLINE:?}")
        }
    }
}

fn start(pipeline: &gst::Pipeline, what: &str) {
    pipeline
        .set_state(gst::State::Playing)
        .unwrap_or_else(|err| panic!("starting the {what}: {err}"));
}

fn stop(pipeline: &gst::Pipeline, what: &str) {
    pipeline
        .set_state(gst::State::Null)
        .unwrap_or_else(|err| panic!("stopping the {what}: {err}"));
}

fn stats(pipeline: &gst::Pipeline, element: &str) -> gst::Structure {
    pipeline
        .by_name(element)
        .unwrap_or_else(|| panic!("no element {element}"))
        .property::<gst::Structure>("stats")
}

fn counter(stats: &gst::Structure, field: &str) -> u64 {
    stats
        .get::<u64>(field)
        .unwrap_or_else(|err| panic!("stats {stats} lack a u64 {field}: {err}"))
}

fn appsink(pipeline: &gst::Pipeline) -> gst_app::AppSink {
    pipeline
        .by_name("sink")
        .and_then(|sink| sink.downcast::<gst_app::AppSink>().ok())
        .expect("the pipeline ends in an appsink named sink")
}

/// Pulls every sample from `sink` until EOS and hands each to `each`. An
/// error on the bus, or the deadline, fails the test.
fn pull_until_eos(pipeline: &gst::Pipeline, sink: &gst_app::AppSink, what: &str, mut each: impl FnMut(gst::Sample)) {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
            let _ = pipeline.set_state(gst::State::Null);
            if let gst::MessageView::Error(err) = message.view() {
                panic!(
                    "the {what} failed: {} ({:?})",
                    err.error(),
                    err.debug().unwrap_or_default()
                );
            }
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            Some(sample) => each(sample),
            None if sink.is_eos() => return,
            None => {}
        }
        if Instant::now() >= deadline {
            let _ = pipeline.set_state(gst::State::Null);
            panic!("the {what} did not reach EOS within {DEADLINE:?}: it stalled");
        }
    }
}

/// The bytes of every buffer a one-process pipeline ending in
/// `appsink name=sink` produces.
fn one_process_buffers(producer: &str) -> Vec<Vec<u8>> {
    let pipeline = parse_pipeline(&format!("{producer} ! appsink name=sink sync=false"));
    let sink = appsink(&pipeline);
    start(&pipeline, "one-process reference");
    let mut buffers = Vec::new();
    pull_until_eos(&pipeline, &sink, "one-process reference", |sample| {
        let buffer = sample.buffer().expect("a sample from appsink has a buffer");
        buffers.push(buffer.map_readable().expect("readable").to_vec());
    });
    stop(&pipeline, "one-process reference");
    buffers
}

/// Fails unless `got` is `want`, naming the first byte that differs.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(got, want)| got != want);
    panic!(
        "{what} differs from the one-process pipeline's: {} bytes against {}, first difference at byte {}",
        got.len(),
        want.len(),
        first.map_or_else(
            || "(none: one is a prefix of the other)".to_owned(),
            |at| at.to_string()
        )
    );
}

fn assert_same_file(actual: &Path, expected: &Path) {
    let read = |path: &Path| fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let (got, want) = (read(actual), read(expected));
    assert!(!want.is_empty(), "the one-process pipeline wrote nothing");
    assert_same_bytes(&got, &want, &format!("{}", actual.display()));
}

const VIDEO_720P_FRAMES: usize = 60;
const VIDEO_720P_FRAME_SIZE: u64 = 1280 * 720 * 3 / 2;
/// The ball moves every frame, so a dropped, repeated or reordered frame, or
/// one overwritten while the reader still held it, shows up.
const VIDEO_720P: &str = "videotestsrc pattern=ball num-buffers=60 ! video/x-raw,format=I420,width=1280,height=720";

/// The frames of `VIDEO_720P` made in one process, computed once.
fn video_720p_reference() -> &'static [Vec<u8>] {
    static REFERENCE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let frames = one_process_buffers(VIDEO_720P);
        assert_eq!(frames.len(), VIDEO_720P_FRAMES, "the reference pipeline is off");
        frames
    })
}

/// Fails unless frame `index`, kept until now, still holds the bytes it
/// arrived with: the writer must not have reused its memory meanwhile.
fn assert_still_intact(index: usize, sample: &gst::Sample) {
    let buffer = sample.buffer().expect("a sample from appsink has a buffer");
    assert_same_bytes(
        &buffer.map_readable().expect("readable"),
        &video_720p_reference()[index],
        &format!("frame {index}, when the reader let go of it,"),
    );
}

/// Streams `VIDEO_720P` from a `gst-launch-1.0` writer with default settings
/// into a reader application in this process that keeps its last `keep`
/// samples, as a viewer keeping a few frames for display would. Every frame
/// is checked against the one-process pipeline's when it arrives and again
/// when the application lets go of it. Returns the reader's stats.
fn stream_720p_to_app_keeping(test: &str, keep: usize) -> gst::Structure {
    let criticals = NoCriticals::watch();
    let reference = video_720p_reference();
    let scratch = Scratch::new(test);
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{VIDEO_720P} ! shmringsink socket-path={socket}"));
    // max-buffers=1: the appsink queues one sample, so what the reader holds
    // is what the application keeps, plus that one, not whatever piled up.
    let reader = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={socket} ! appsink name=sink sync=false max-buffers=1"
    ));
    let what = format!("reader app keeping {keep} samples");
    let received = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&received);
    let hung = || {
        format!(
            "the {what}, after {} of {} frames,",
            progress.load(Ordering::Relaxed),
            reference.len()
        )
    };
    let label = what.clone();
    let stats = within(hung, move || {
        let what = label;
        let sink = appsink(&reader);
        start(&reader, &what);
        let mut kept = VecDeque::with_capacity(keep + 1);
        let mut index = 0;
        pull_until_eos(&reader, &sink, &what, |sample| {
            let buffer = sample.buffer().expect("a sample from appsink has a buffer");
            let want = reference
                .get(index)
                .unwrap_or_else(|| panic!("the {what} got more than the {} frames sent", reference.len()));
            assert_same_bytes(
                &buffer.map_readable().expect("readable"),
                want,
                &format!("frame {index}"),
            );
            kept.push_back((index, sample));
            if kept.len() > keep
                && let Some((index, sample)) = kept.pop_front()
            {
                assert_still_intact(index, &sample);
            }
            index += 1;
            received.store(index, Ordering::Relaxed);
        });
        assert_eq!(
            index,
            reference.len(),
            "the {what} got {index} of {} frames",
            reference.len()
        );
        let stats = stats(&reader, "src");
        stop(&reader, &what);
        // The kept samples outlive the reader element, as an application's
        // last frame does.
        for (index, sample) in kept {
            assert_still_intact(index, &sample);
        }
        stats
    });
    writer.finish().assert_success();
    criticals.check();
    stats
}

/// Held buffers pin only themselves: an application keeping its last frame
/// gets every frame of 720p video intact, and the stream never stalls.
#[test]
fn app_keeping_1_frame_gets_every_frame_intact() {
    stream_720p_to_app_keeping("keep_1", 1);
}

/// As above, keeping the last 3 frames, as a display with triple buffering
/// does.
#[test]
fn app_keeping_3_frames_gets_every_frame_intact() {
    stream_720p_to_app_keeping("keep_3", 3);
}

/// As above, keeping 8 frames. The stream must go on, copying if it has to,
/// without stalling or corrupting a frame.
#[test]
fn app_keeping_8_frames_gets_every_frame_intact() {
    stream_720p_to_app_keeping("keep_8", 8);
}

/// As above, keeping 20 frames: more than a default-sized ring is meant to
/// hold for a reader, so the reader has to copy some and must not stall.
#[test]
fn app_keeping_20_frames_gets_every_frame_intact() {
    stream_720p_to_app_keeping("keep_20", 20);
}

/// Streams `producer` from a `gst-launch-1.0` writer to a `gst-launch-1.0`
/// reader ending in `consumer` (a sink taking `location=`), and compares the
/// file with the one the same consumer writes in a single process.
fn audio_file_matches_one_process(test: &str, producer: &str, consumer: &str) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket().display().to_string();
    let transferred = scratch.path("transferred");
    let reference = scratch.path("reference");
    let writer = start_writer(&scratch, &format!("{producer} ! shmringsink socket-path={socket}"));
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={socket} ! {consumer} location={}",
            transferred.display()
        ),
    );
    let single = Launch::spawn(
        &scratch,
        "single-process pipeline",
        &format!("{producer} ! {consumer} location={}", reference.display()),
    );
    writer.finish().assert_success();
    reader.finish().assert_success();
    single.finish().assert_success();
    assert_same_file(&transferred, &reference);
}

/// filesink keeps buffers until it has 64 KiB, then writes them all at
/// once: 256 of these 64-sample buffers held together. The WAV file (512 KB
/// of samples) must still come out as one process writes it, without a stall.
#[test]
fn small_audio_buffers_held_by_filesink_arrive_intact_in_wav() {
    audio_file_matches_one_process(
        "wav_64",
        "audiotestsrc wave=sine samplesperbuffer=64 num-buffers=2000 ! audio/x-raw,format=S16LE,rate=48000,channels=2",
        "wavenc ! filesink",
    );
}

/// The same with 1024-sample buffers (4 KiB), 16 of which fill filesink's
/// 64 KiB.
#[test]
fn large_audio_buffers_held_by_filesink_arrive_intact_in_wav() {
    audio_file_matches_one_process(
        "wav_1024",
        "audiotestsrc wave=ticks samplesperbuffer=1024 num-buffers=128 ! audio/x-raw,format=S16LE,rate=48000,channels=2",
        "wavenc ! filesink",
    );
}

/// filesink straight after shmringsrc keeps the ring's own buffers, not
/// wavenc's: the raw samples must still be the one-process bytes.
#[test]
fn small_audio_buffers_held_by_filesink_arrive_intact_raw() {
    audio_file_matches_one_process(
        "raw_64",
        "audiotestsrc wave=sine samplesperbuffer=64 num-buffers=2000 ! audio/x-raw,format=S16LE,rate=48000,channels=2",
        "filesink",
    );
}

/// A default fakesink keeps its last sample (enable-last-sample is true):
/// that one kept buffer must cost the reader no copy of 720p video.
#[test]
fn reader_sink_keeping_last_sample_costs_no_copy() {
    let criticals = NoCriticals::watch();
    let scratch = Scratch::new("fakesink_last_sample");
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{VIDEO_720P} ! shmringsink socket-path={socket}"));
    let reader = parse_pipeline(&format!("shmringsrc name=src socket-path={socket} ! fakesink"));
    let stats = within(
        || "the reader with a default fakesink".to_owned(),
        move || {
            start(&reader, "reader");
            wait_for_eos(&reader, "reader");
            let stats = stats(&reader, "src");
            stop(&reader, "reader");
            stats
        },
    );
    writer.finish().assert_success();
    criticals.check();
    assert_eq!(
        counter(&stats, "buffers"),
        VIDEO_720P_FRAMES as u64,
        "reader stats: {stats}"
    );
    assert_eq!(
        counter(&stats, "bytes"),
        VIDEO_720P_FRAMES as u64 * VIDEO_720P_FRAME_SIZE,
        "reader stats: {stats}"
    );
    assert_eq!(counter(&stats, "bytes-copied"), 0, "reader stats: {stats}");
}

/// An application that keeps its last frame costs the reader no copy either,
/// and gets every frame intact.
#[test]
fn reader_app_keeping_last_frame_costs_no_copy() {
    let stats = stream_720p_to_app_keeping("app_last_frame", 1);
    assert!(counter(&stats, "bytes") > 0, "reader stats: {stats}");
    assert_eq!(counter(&stats, "bytes-copied"), 0, "reader stats: {stats}");
}

/// Runs `description`, a writer ending in `shmringsink name=sink`, in this
/// process until EOS, and returns the sink's stats and the reader that
/// `reader` spawned once the sink listened. `setup` gets the writer before it
/// starts.
fn run_writer_in_process(
    description: &str,
    setup: impl FnOnce(&gst::Pipeline),
    reader: impl FnOnce() -> Launch,
) -> (gst::Structure, Launch) {
    let writer = parse_pipeline(description);
    setup(&writer);
    // The sink listens once this returns.
    start(&writer, "in-process writer");
    let reader = reader();
    let stats = within(
        || "the in-process writer".to_owned(),
        move || {
            wait_for_eos(&writer, "in-process writer");
            let stats = stats(&writer, "sink");
            stop(&writer, "in-process writer");
            stats
        },
    );
    (stats, reader)
}

/// Upstream may keep buffers from the sink's pool after pushing them, as an
/// encoder keeps reference frames: an element just before the sink keeps the
/// last 3 it passed on. The writer must still copy nothing, and the reader
/// must get the one-process bytes.
#[test]
fn upstream_keeping_pool_buffers_costs_no_copy() {
    let criticals = NoCriticals::watch();
    const FRAMES: u64 = 200;
    const FRAME_SIZE: u64 = 640 * 480 * 3 / 2;
    const KEEP: usize = 3;
    let scratch = Scratch::new("upstream_keeps");
    let socket = scratch.socket().display().to_string();
    let transferred = scratch.path("transferred.i420");
    let reference = scratch.path("reference.i420");
    let producer =
        format!("videotestsrc pattern=ball num-buffers={FRAMES} ! video/x-raw,format=I420,width=640,height=480");

    let single = Launch::spawn(
        &scratch,
        "single-process pipeline",
        &format!("{producer} ! filesink location={}", reference.display()),
    );
    let kept = Arc::new(Mutex::new(VecDeque::<gst::Buffer>::new()));
    let into = Arc::clone(&kept);
    let (stats, reader) = run_writer_in_process(
        &format!("{producer} ! identity name=keeper ! shmringsink name=sink socket-path={socket}"),
        move |writer| {
            // identity passes the allocation query through, so these are
            // buffers of the sink's pool, kept before the sink renders them.
            let pad = writer
                .by_name("keeper")
                .and_then(|keeper| keeper.static_pad("src"))
                .expect("the writer has an identity named keeper");
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    let mut kept = into.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    kept.push_back(buffer.clone());
                    if kept.len() > KEEP {
                        kept.pop_front();
                    }
                }
                gst::PadProbeReturn::Ok
            });
        },
        || {
            Launch::spawn(
                &scratch,
                "reader",
                &format!(
                    "shmringsrc socket-path={socket} ! filesink location={}",
                    transferred.display()
                ),
            )
        },
    );
    // Upstream lets go only now, after the sink has stopped.
    kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    reader.finish().assert_success();
    single.finish().assert_success();
    criticals.check();

    assert_same_file(&transferred, &reference);
    assert_eq!(counter(&stats, "buffers"), FRAMES, "writer stats: {stats}");
    assert_eq!(counter(&stats, "bytes"), FRAMES * FRAME_SIZE, "writer stats: {stats}");
    assert_eq!(counter(&stats, "bytes-copied"), 0, "writer stats: {stats}");
}

const JPEG_FRAMES: usize = 30;
const JPEG_PRODUCER: &str =
    "videotestsrc pattern=ball num-buffers=30 ! video/x-raw,format=I420,width=640,height=480 ! jpegenc";

/// The JPEGs of `JPEG_PRODUCER` made in one process.
fn jpeg_reference() -> Vec<Vec<u8>> {
    let jpegs = one_process_buffers(JPEG_PRODUCER);
    assert_eq!(jpegs.len(), JPEG_FRAMES, "the reference pipeline is off");
    jpegs
}

/// A `gst-launch-1.0` reader that writes each buffer to a file of its own
/// in `dir`, so that buffer boundaries are checked too, not only bytes.
fn spawn_jpeg_reader(scratch: &Scratch, socket: &str, dir: &Path) -> Launch {
    fs::create_dir(dir).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
    Launch::spawn(
        scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={socket} ! multifilesink location={}/%05d.jpg",
            dir.display()
        ),
    )
}

fn assert_reader_wrote(dir: &Path, reference: &[Vec<u8>]) {
    let written = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .count();
    assert_eq!(
        written,
        reference.len(),
        "the reader wrote {written} files, not {}",
        reference.len()
    );
    for (index, want) in reference.iter().enumerate() {
        let path = dir.join(format!("{index:05}.jpg"));
        let got = fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert_same_bytes(&got, want, &format!("JPEG {index}"));
    }
}

/// Encoded frames vary in size: jpegenc's output must reach the reader
/// buffer for buffer, byte for byte, as one process makes it.
///
/// The writer's `bytes-copied` is not asserted here: jpegenc (1.22, and
/// later) takes its output memory from `gst_allocator_alloc(NULL, ...)`, the
/// process's default allocator, whatever the allocation query proposed, so
/// no sink can avoid copying it into shared memory. The test below holds
/// the writer to zero copies with an encoder that uses the sink's allocator.
#[test]
fn jpeg_frames_arrive_intact() {
    let criticals = NoCriticals::watch();
    let scratch = Scratch::new("jpeg");
    let socket = scratch.socket().display().to_string();
    let frames = scratch.path("frames");
    let reference = jpeg_reference();
    let (stats, reader) = run_writer_in_process(
        &format!("{JPEG_PRODUCER} ! shmringsink name=sink socket-path={socket}"),
        |_| {},
        || spawn_jpeg_reader(&scratch, &socket, &frames),
    );
    reader.finish().assert_success();
    criticals.check();
    assert_reader_wrote(&frames, &reference);
    let total: usize = reference.iter().map(Vec::len).sum();
    assert_eq!(counter(&stats, "buffers"), JPEG_FRAMES as u64, "writer stats: {stats}");
    assert_eq!(counter(&stats, "bytes"), total as u64, "writer stats: {stats}");
}

/// Encoded buffers that upstream allocates from the sink's allocator, as
/// GstVideoEncoder subclasses that call `allocate_output_frame` (x264enc,
/// hardware encoders) do, cross without a writer copy, and the reader gets
/// each JPEG as one process makes it. The encoder is this test: it asks the
/// sink for its allocator with an allocation query, as such an encoder's
/// base class does, and fills memory from it with jpegenc's output.
/// (The reader may copy compressed data; only the writer is held to zero.)
#[test]
fn encoded_buffers_from_the_sinks_allocator_cross_without_a_writer_copy() {
    let criticals = NoCriticals::watch();
    let scratch = Scratch::new("jpeg_allocator");
    let socket = scratch.socket().display().to_string();
    let frames = scratch.path("frames");
    let reference = jpeg_reference();
    let writer = parse_pipeline(&format!(
        "appsrc name=src format=time ! shmringsink name=sink socket-path={socket}"
    ));
    let appsrc = writer
        .by_name("src")
        .and_then(|src| src.downcast::<gst_app::AppSrc>().ok())
        .expect("the writer starts with an appsrc named src");
    let caps: gst::Caps = "image/jpeg,width=640,height=480,framerate=30/1"
        .parse()
        .expect("valid caps");
    appsrc.set_caps(Some(&caps));
    // The sink listens once this returns.
    start(&writer, "in-process writer");
    let reader = spawn_jpeg_reader(&scratch, &socket, &frames);
    let jpegs = reference.clone();
    let stats = within(
        || "the in-process writer".to_owned(),
        move || {
            let mut query = gst::query::Allocation::new(Some(&caps), false);
            let src_pad = appsrc.static_pad("src").expect("appsrc has a src pad");
            assert!(
                src_pad.peer_query(&mut query),
                "shmringsink answered no allocation query"
            );
            let allocator = query
                .allocation_params()
                .find_map(|(allocator, _)| allocator)
                .unwrap_or_else(|| panic!("shmringsink proposed no allocator for {caps}: {query:?}"));
            let frame_duration = gst::ClockTime::SECOND / 30;
            for (index, jpeg) in jpegs.iter().enumerate() {
                let mut memory = allocator
                    .alloc(jpeg.len(), None)
                    .unwrap_or_else(|err| panic!("the sink's allocator failed for JPEG {index}: {err}"));
                memory
                    .get_mut()
                    .expect("new memory is writable")
                    .map_writable()
                    .expect("new memory maps writable")
                    .copy_from_slice(jpeg);
                let mut buffer = gst::Buffer::new();
                let buffer_ref = buffer.get_mut().expect("a new buffer is writable");
                buffer_ref.append_memory(memory);
                buffer_ref.set_pts(frame_duration * index as u64);
                buffer_ref.set_duration(frame_duration);
                appsrc.push_buffer(buffer).expect("the appsrc takes the buffer");
            }
            appsrc.end_of_stream().expect("the appsrc takes EOS");
            wait_for_eos(&writer, "in-process writer");
            let stats = stats(&writer, "sink");
            stop(&writer, "in-process writer");
            stats
        },
    );
    reader.finish().assert_success();
    criticals.check();
    assert_reader_wrote(&frames, &reference);
    let total: usize = reference.iter().map(Vec::len).sum();
    assert_eq!(counter(&stats, "buffers"), JPEG_FRAMES as u64, "writer stats: {stats}");
    assert_eq!(counter(&stats, "bytes"), total as u64, "writer stats: {stats}");
    assert_eq!(counter(&stats, "bytes-copied"), 0, "writer stats: {stats}");
}

/// What a reader got: the frame size its caps said, and the buffer's size.
type Frame = ((i32, i32), usize);

const SMALL: (i32, i32) = (320, 240);
const LARGE: (i32, i32) = (640, 480);

fn i420_caps((width, height): (i32, i32)) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width)
        .field("height", height)
        .build()
}

/// One short stream whose caps change from `SMALL` to `LARGE` after
/// `before` frames, both sides in this process, on a fresh socket; returns
/// what the reader got.
fn stream_with_caps_change(socket: &Path, before: usize, frames: usize) -> Vec<Frame> {
    let writer = parse_pipeline(&format!(
        "videotestsrc name=src pattern=ball num-buffers={frames} ! capsfilter name=filter ! shmringsink socket-path={}",
        socket.display()
    ));
    let filter = writer
        .by_name("filter")
        .expect("the writer has a capsfilter named filter");
    filter.set_property("caps", i420_caps(SMALL));
    // The change is made in the streaming thread while frame `before` is on
    // its way, so it lands on the same frame every time: videotestsrc
    // renegotiates before it makes the next one.
    let pushed = AtomicUsize::new(0);
    let weak_filter = filter.downgrade();
    writer
        .by_name("src")
        .and_then(|src| src.static_pad("src"))
        .expect("the writer has a videotestsrc named src")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if pushed.fetch_add(1, Ordering::Relaxed) + 1 == before
                && let Some(filter) = weak_filter.upgrade()
            {
                filter.set_property("caps", i420_caps(LARGE));
            }
            gst::PadProbeReturn::Ok
        });
    let reader = parse_pipeline(&format!(
        "shmringsrc socket-path={} ! appsink name=sink sync=false",
        socket.display()
    ));
    let sink = appsink(&reader);
    start(&writer, "writer");
    start(&reader, "reader");
    let mut got = Vec::new();
    pull_until_eos(&reader, &sink, "reader", |sample| {
        let structure = sample
            .caps()
            .and_then(|caps| caps.structure(0))
            .expect("a sample from the ring has caps");
        let size = (
            structure.get::<i32>("width").expect("video caps have a width"),
            structure.get::<i32>("height").expect("video caps have a height"),
        );
        got.push((size, sample.buffer().expect("a sample has a buffer").size()));
    });
    wait_for_eos(&writer, "writer");
    stop(&reader, "reader");
    stop(&writer, "writer");
    got
}

/// A caps change never hangs: 200 short streams, each changing from 320x240
/// to 640x480 mid-stream, each with a fresh socket and reader, all end, and
/// every reader gets both sizes, each frame after the caps that describe it.
#[test]
fn caps_change_never_hangs() {
    let criticals = NoCriticals::watch();
    const ROUNDS: usize = 200;
    const BEFORE: usize = 4;
    const FRAMES: usize = 10;
    let scratch = Scratch::new("caps_change_loop");
    let frame_size = |(width, height): (i32, i32)| (width * height * 3 / 2) as usize;
    let expected: Vec<Frame> = std::iter::repeat_n((SMALL, frame_size(SMALL)), BEFORE)
        .chain(std::iter::repeat_n((LARGE, frame_size(LARGE)), FRAMES - BEFORE))
        .collect();
    let dir = scratch.path("");
    let round = Arc::new(AtomicUsize::new(0));
    let current = Arc::clone(&round);
    within(
        || format!("round {} of {ROUNDS}", round.load(Ordering::Relaxed)),
        move || {
            for index in 0..ROUNDS {
                current.store(index, Ordering::Relaxed);
                let got = stream_with_caps_change(&dir.join(format!("ring-{index}.sock")), BEFORE, FRAMES);
                assert_eq!(got, expected, "round {index}: the reader got other frames");
            }
        },
    );
    criticals.check();
}

/// Streams fakesrc's 50 buffers of 1000 bytes, in a BYTES segment, between
/// two `gst-launch-1.0` children, the reader ending in a verbose fakesink, and
/// returns what that fakesink reported, after checking that both children
/// exited 0 without a GStreamer-CRITICAL (under `G_DEBUG=fatal-criticals`
/// one would also have killed them).
fn stream_bytes_segment(test: &str) -> (Vec<String>, String) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(
        &scratch,
        &format!(
            "fakesrc num-buffers=50 sizetype=fixed filltype=pattern-span sizemax=1000 ! shmringsink socket-path={socket}"
        ),
    );
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={socket} ! fakesink silent=false"),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    let reports = reader
        .stdout
        .lines()
        .filter_map(|line| line.split_once("last-message = ").map(|(_, report)| report.to_owned()))
        .collect();
    (reports, reader.describe())
}

/// A BYTES segment, as fakesrc makes, crosses without a GStreamer-CRITICAL
/// on either side, both sides exit 0, and every buffer arrives.
#[test]
fn bytes_segment_crosses_without_critical() {
    let (reports, reader) = stream_bytes_segment("bytes_segment");
    let buffers = reports
        .iter()
        .filter(|report| report.starts_with("chain") && report.contains("(1000 bytes,"))
        .count();
    assert_eq!(buffers, 50, "the reader got {buffers} buffers of 1000 bytes\n{reader}");
}

/// The segment crosses as it is: downstream of the reader sees the
/// writer's BYTES segment, as it would in one process, not one in another
/// format made up by the reader.
#[test]
fn bytes_segment_reaches_the_readers_downstream() {
    let (reports, reader) = stream_bytes_segment("bytes_segment_format");
    let segments: Vec<&String> = reports
        .iter()
        .filter(|report| report.contains("type: segment"))
        .collect();
    assert!(
        !segments.is_empty()
            && segments
                .iter()
                .all(|segment| segment.contains("format=(GstFormat)bytes")),
        "the reader's fakesink got other segments than the writer's BYTES one:\n{}\n{reader}",
        segments
            .iter()
            .map(|segment| segment.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const UHD_FRAME_SIZE: &str = "12441600";
const SMALL_RING: &str = "1048576";

/// Whether an error message names both the frame size and the ring size.
fn names_both_sizes(text: &str) -> bool {
    text.contains(UHD_FRAME_SIZE) && text.contains(SMALL_RING)
}

/// A ring too small for the caps is an error at once, even with no reader
/// to write to: the writer must not drop frames that could never fit as if
/// nothing were wrong. One frame is enough for that to show. The format is
/// given because videotestsrc would otherwise pick ABGR64_LE, 8 bytes a
/// pixel, and the frame would not be the 12441600 bytes of I420.
#[test]
fn ring_too_small_for_caps_fails_without_reader() {
    let scratch = Scratch::new("ring_too_small");
    let socket = scratch.socket().display().to_string();
    let writer = Launch::spawn(
        &scratch,
        "writer",
        &format!(
            "videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=3840,height=2160 ! shmringsink socket-path={socket} ring-size={SMALL_RING} wait-for-connection=false"
        ),
    )
    .finish();
    writer.assert_failed();
    assert!(
        names_both_sizes(&writer.stderr),
        "the writer failed without naming {UHD_FRAME_SIZE} and {SMALL_RING}\n{}",
        writer.describe()
    );
}

/// The same with a reader connected, which has already got frames that fit:
/// when the caps change to frames larger than the ring, the writer fails at
/// once, naming both sizes, and the reader fails too rather than ending as
/// if the stream were complete.
#[test]
fn ring_too_small_for_caps_fails_with_reader() {
    let criticals = NoCriticals::watch();
    let scratch = Scratch::new("ring_too_small_reader");
    let socket = scratch.socket().display().to_string();
    let writer = parse_pipeline(&format!(
        "videotestsrc is-live=true ! capsfilter name=filter caps=video/x-raw,format=I420,width=320,height=240 ! shmringsink socket-path={socket} ring-size={SMALL_RING} wait-for-connection=false"
    ));
    start(&writer, "in-process writer");
    let mut reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={socket} ! fakesink silent=false"),
    );
    // A frame has crossed, so the reader is connected.
    reader.wait_for_stdout(&["last-message = chain"]);
    let error = within(
        || "the in-process writer".to_owned(),
        move || {
            writer
                .by_name("filter")
                .expect("the writer has a capsfilter named filter")
                .set_property("caps", i420_caps((3840, 2160)));
            let bus = writer.bus().expect("a pipeline has a bus");
            let deadline = gst::ClockTime::from_nseconds(DEADLINE.as_nanos() as u64);
            let message = bus.timed_pop_filtered(deadline, &[gst::MessageType::Error, gst::MessageType::Eos]);
            stop(&writer, "in-process writer");
            match message.as_ref().map(|message| message.view()) {
                Some(gst::MessageView::Error(err)) => format!("{} ({:?})", err.error(), err.debug()),
                Some(gst::MessageView::Eos(_)) => panic!("the writer ended instead of failing"),
                _ => panic!("the writer did not fail within {DEADLINE:?}"),
            }
        },
    );
    assert!(
        names_both_sizes(&error),
        "the writer failed without naming {UHD_FRAME_SIZE} and {SMALL_RING}: {error}"
    );
    reader.finish().assert_failed();
    criticals.check();
}

/// Pulls `count` samples from a started reader, with their bytes as they
/// arrived.
fn pull_samples(pipeline: &gst::Pipeline, count: usize, what: &str) -> Vec<(gst::Sample, Vec<u8>)> {
    let sink = appsink(pipeline);
    let deadline = Instant::now() + DEADLINE;
    let mut samples = Vec::with_capacity(count);
    while samples.len() < count {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            let bytes = sample
                .buffer()
                .expect("a sample from appsink has a buffer")
                .map_readable()
                .expect("readable")
                .to_vec();
            samples.push((sample, bytes));
        }
        assert!(
            Instant::now() < deadline,
            "the {what} got {} of {count} samples within {DEADLINE:?}",
            samples.len()
        );
    }
    samples
}

/// A reader that stops while its application still keeps samples: the
/// writer stops sending to it at once, but the blocks those samples show
/// are not reused, for the next reader, until the application lets go of
/// them, so that they never change under it.
#[test]
fn samples_kept_after_their_reader_stops_stay_intact() {
    let criticals = NoCriticals::watch();
    let scratch = Scratch::new("kept_after_stop");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc pattern=ball is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=100/1 ! shmringsink socket-path={socket}"
        ),
    );
    let path = socket.to_string();
    let reader = move |name: &str| {
        let socket = &path;
        parse_pipeline(&format!(
            "shmringsrc name=src socket-path={socket} ! appsink name={name} sync=false max-buffers=1"
        ))
    };
    let (kept, later) = within(
        || "a reader stopping while its samples are kept".to_owned(),
        move || {
            let first = reader("sink");
            start(&first, "first reader");
            let kept = pull_samples(&first, 5, "first reader");
            stop(&first, "first reader");
            drop(first);
            let second = reader("sink");
            start(&second, "second reader");
            let later = pull_samples(&second, 60, "second reader");
            stop(&second, "second reader");
            (kept, later)
        },
    );
    assert_eq!(later.len(), 60, "the writer serves the next reader");
    for (index, (sample, bytes)) in kept.iter().enumerate() {
        let now = sample
            .buffer()
            .expect("a buffer")
            .map_readable()
            .expect("readable")
            .to_vec();
        assert!(
            now == *bytes,
            "sample {index} kept from the first reader changed after that reader stopped"
        );
    }
    drop(kept);
    drop(later);
    assert!(
        writer.exited().is_none(),
        "the writer exited while serving\n{}",
        writer.describe()
    );
    criticals.check();
}

/// The reader copies small buffers into buffers it recycles once
/// downstream lets go of them. Downstream may change a buffer it was given
/// writable: here it flags each one DROPPABLE and adds a reference-timestamp
/// meta. A recycled buffer must come back clean, with its bytes intact.
#[test]
fn recycled_copies_carry_nothing_downstream_added() {
    let _guard = NoCriticals::watch();
    let producer =
        "audiotestsrc wave=sine samplesperbuffer=64 num-buffers=600 ! audio/x-raw,format=S16LE,rate=48000,channels=2";
    let want = one_process_buffers(producer);
    let scratch = Scratch::new("recycled_copies");
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{producer} ! shmringsink socket-path={socket}"));
    let reader = parse_pipeline(&format!(
        "shmringsrc socket-path={socket} ! appsink name=sink sync=false"
    ));
    let sink = appsink(&reader);
    let marker = gst::Caps::new_empty_simple("timestamp/x-shmring-test");
    let tainted = Arc::new(AtomicUsize::new(0));
    let pad = sink.static_pad("sink").expect("appsink has a sink pad");
    pad.add_probe(gst::PadProbeType::BUFFER, {
        let tainted = tainted.clone();
        move |_, info| {
            if let Some(buffer) = info.buffer_mut() {
                let carried = buffer.flags().contains(gst::BufferFlags::DROPPABLE)
                    || buffer.iter_meta::<gst::ReferenceTimestampMeta>().next().is_some();
                if carried {
                    tainted.fetch_add(1, Ordering::Relaxed);
                }
                let buffer = buffer.make_mut();
                buffer.set_flags(gst::BufferFlags::DROPPABLE);
                gst::ReferenceTimestampMeta::add(buffer, &marker, gst::ClockTime::SECOND, None);
            }
            gst::PadProbeReturn::Ok
        }
    });
    start(&reader, "reader");
    let mut got = Vec::new();
    pull_until_eos(&reader, &sink, "reader", |sample| {
        let buffer = sample.buffer().expect("a sample from appsink has a buffer");
        got.push(buffer.map_readable().expect("readable").to_vec());
    });
    stop(&reader, "reader");
    writer.finish().assert_success();
    assert_eq!(got.len(), want.len(), "buffers that arrived");
    for (index, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_same_bytes(got, want, &format!("buffer {index}"));
    }
    assert_eq!(
        tainted.load(Ordering::Relaxed),
        0,
        "buffers arrived with a flag or meta a downstream element had added to an earlier buffer"
    );
}
