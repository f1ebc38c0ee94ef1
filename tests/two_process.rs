//! End-to-end tests across real processes: each test runs `gst-launch-1.0`
//! children that load the freshly built plugin, so the handshake, the ring
//! and both elements run exactly as users run them, in separate address
//! spaces.
//!
//! Nothing here measures time. Where start-up order matters, a test waits for
//! something observable (a line on a child's stdout, the socket file) rather
//! than sleeping, and every wait has a generous deadline after which the child
//! is killed, so that a hang fails the test instead of hanging CI. Tests about
//! something other than start-up order start the writer first and wait until
//! it listens (see `start_writer`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;

mod common;
use common::*;

/// What `fakesink silent=false` under `gst-launch-1.0 -v` reported receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Caps { width: u32, height: u32 },
    Buffer { size: usize },
}

/// The caps events and buffers a verbose fakesink reported, in order. Every
/// report travels as a bus message, which gst-launch prints in posting order
/// before it handles the EOS posted after them, so the list is complete.
fn received(stdout: &str) -> Vec<Received> {
    stdout
        .lines()
        .filter_map(|line| {
            let report = line.split_once("last-message = ")?.1;
            if report.starts_with("chain") {
                // "chain   ******* (fakesink0:sink) (28800 bytes, dts: ..."
                let before = &report[..report.find(" bytes,")?];
                let size = before.rsplit(|c: char| !c.is_ascii_digit()).next()?;
                Some(Received::Buffer {
                    size: size.parse().ok()?,
                })
            } else if report.contains("(type: caps") {
                Some(Received::Caps {
                    width: number_after(report, "width")?,
                    height: number_after(report, "height")?,
                })
            } else {
                None
            }
        })
        .collect()
}

/// The first number after `name` in `text`. A fakesink event report quotes
/// the caps escaped ("width\=\(int\)16"), so whatever stands between the field
/// name and its value is skipped.
fn number_after(text: &str, name: &str) -> Option<u32> {
    let rest = &text[text.find(name)? + name.len()..];
    let rest = &rest[rest.find(|c: char| c.is_ascii_digit())?..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn buffers_received(stdout: &str) -> Vec<usize> {
    received(stdout)
        .into_iter()
        .filter_map(|report| match report {
            Received::Buffer { size } => Some(size),
            Received::Caps { .. } => None,
        })
        .collect()
}

/// Initializes GStreamer in the test process, once for all tests.
/// Everything a buffer carries that the ring must preserve.
#[derive(Debug, PartialEq, Eq)]
struct BufferRecord {
    pts: Option<gst::ClockTime>,
    dts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
    offset: u64,
    offset_end: u64,
    flags: gst::BufferFlags,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Collected {
    /// Each distinct caps, in the order they arrived.
    caps: Vec<gst::Caps>,
    buffers: Vec<BufferRecord>,
}

/// Runs `description`, whose last element is `appsink name=sink`, in this
/// process until EOS, and returns what the appsink got.
fn collect(description: &str, what: &str) -> Collected {
    let pipeline = parse_pipeline(description);
    let sink = pipeline
        .by_name("sink")
        .and_then(|sink| sink.downcast::<gst_app::AppSink>().ok())
        .expect("the pipeline ends in an appsink named sink");
    let collected = Arc::new(Mutex::new(Collected::default()));
    let into = Arc::clone(&collected);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut into = into.lock().unwrap();
                if let Some(caps) = sample.caps()
                    && !into.caps.last().is_some_and(|last| last.as_ref() == caps)
                {
                    into.caps.push(caps.to_owned());
                }
                into.buffers.push(BufferRecord {
                    pts: buffer.pts(),
                    dts: buffer.dts(),
                    duration: buffer.duration(),
                    offset: buffer.offset(),
                    offset_end: buffer.offset_end(),
                    flags: buffer.flags(),
                    bytes: map.to_vec(),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    play_to_eos(&pipeline, what);
    std::mem::take(&mut *collected.lock().unwrap())
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Compares two files of `frames` frames of `frame_size` bytes in chunks, so
/// that a gigabyte of video never sits in memory.
fn assert_same_frames(actual: &Path, expected: &Path, frame_size: u64, frames: u64) {
    const CHUNK: usize = 1 << 20;
    for path in [expected, actual] {
        let len = fs::metadata(path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .len();
        assert_eq!(
            len,
            frame_size * frames,
            "{} holds {len} bytes, not {frames} frames of {frame_size} bytes",
            path.display()
        );
    }
    let open = |path: &Path| File::open(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let (mut actual_file, mut expected_file) = (open(actual), open(expected));
    let (mut actual_chunk, mut expected_chunk) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut position = 0u64;
    loop {
        let got = read_full(&mut actual_file, &mut actual_chunk).expect("reading the transferred file");
        let want = read_full(&mut expected_file, &mut expected_chunk).expect("reading the reference file");
        // Both files have the same length and every read but the last fills
        // the chunk, so the two reads always return the same amount.
        assert_eq!(got, want);
        if got == 0 {
            return;
        }
        // Slice comparison is a memcmp even in debug builds; the byte-wise
        // search runs only to report a difference.
        if actual_chunk[..got] != expected_chunk[..got] {
            let index = (0..got)
                .find(|&index| actual_chunk[index] != expected_chunk[index])
                .expect("unequal slices differ somewhere");
            let at = position + index as u64;
            panic!(
                "the transferred file differs from the reference at byte {at} (frame {})",
                at / frame_size
            );
        }
        position += got as u64;
    }
}

/// 300 frames of 1080p I420 through the ring are the bytes a single process
/// writes. The colour bars scroll by 7 pixels a frame, so every frame differs
/// from its neighbours and a dropped, repeated or reordered frame shows up.
#[test]
fn video_1080p_arrives_byte_identical() {
    const FRAMES: u64 = 300;
    const FRAME_SIZE: u64 = 1920 * 1080 * 3 / 2;
    let scratch = Scratch::new("video_1080p");
    let socket = scratch.socket().display().to_string();
    let transferred = scratch.path("transferred.i420");
    let reference = scratch.path("reference.i420");
    let producer = format!(
        "videotestsrc pattern=smpte horizontal-speed=7 num-buffers={FRAMES} ! video/x-raw,format=I420,width=1920,height=1080"
    );

    let writer = start_writer(&scratch, &format!("{producer} ! shmringsink socket-path={socket}"));
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={socket} ! filesink location={}",
            transferred.display()
        ),
    );
    // The reference needs no ring, so it runs alongside the transfer.
    let single = Launch::spawn(
        &scratch,
        "single-process pipeline",
        &format!("{producer} ! filesink location={}", reference.display()),
    );
    writer.finish().assert_success();
    reader.finish().assert_success();
    single.finish().assert_success();

    assert_same_frames(&transferred, &reference, FRAME_SIZE, FRAMES);
}

/// 50,000 small audio buffers, where per-record overhead dominates, keep
/// their bytes, timestamps, offsets and flags, and the reader ends up with
/// the writer's caps.
#[test]
fn audio_small_buffers_keep_bytes_and_metadata() {
    const BUFFERS: usize = 50_000;
    let scratch = Scratch::new("audio_small_buffers");
    let socket = scratch.socket().display().to_string();
    let producer = format!(
        "audiotestsrc num-buffers={BUFFERS} samplesperbuffer=64 ! audio/x-raw,format=S16LE,rate=48000,channels=2"
    );

    let writer = start_writer(&scratch, &format!("{producer} ! shmringsink socket-path={socket}"));
    let transferred = collect(
        &format!("shmringsrc socket-path={socket} ! appsink name=sink sync=false"),
        "in-process reader",
    );
    writer.finish().assert_success();
    let reference = collect(
        &format!("{producer} ! appsink name=sink sync=false"),
        "in-process reference",
    );

    assert_eq!(reference.buffers.len(), BUFFERS, "the reference pipeline is off");
    assert_eq!(reference.caps.len(), 1, "the reference pipeline is off");
    assert_eq!(
        transferred.caps, reference.caps,
        "the reader's caps differ from the writer's"
    );
    assert_eq!(
        transferred.buffers.len(),
        reference.buffers.len(),
        "the reader got a different number of buffers"
    );
    // Report the first difference rather than a diff of 50,000 records.
    if let Some(index) = (0..BUFFERS).find(|&index| transferred.buffers[index] != reference.buffers[index]) {
        panic!(
            "buffer {index} differs:\n  transferred {:?}\n  reference   {:?}",
            transferred.buffers[index], reference.buffers[index]
        );
    }
}

const SMALL_VIDEO: &str = "videotestsrc num-buffers=50 ! video/x-raw,format=I420,width=160,height=120";
const SMALL_FRAMES: usize = 50;
const SMALL_FRAME_SIZE: usize = 160 * 120 * 3 / 2;

fn assert_got_small_video(reader: &Finished) {
    assert_eq!(
        buffers_received(&reader.stdout),
        vec![SMALL_FRAME_SIZE; SMALL_FRAMES],
        "the reader did not get every frame\n{}",
        reader.describe()
    );
}

/// The reader starts, finds no socket and waits; the writer then appears.
/// This once hung when the socket was renamed into place before `listen()`:
/// a reader woken by the rename was refused and slept on.
#[test]
fn reader_started_first() {
    let scratch = Scratch::new("reader_first");
    let socket = scratch.socket();
    let mut reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={} ! fakesink silent=false", socket.display()),
    );
    reader.wait_until_started();
    assert!(!socket.exists(), "no writer has run yet, so there is no socket");
    let writer = Launch::spawn(
        &scratch,
        "writer",
        &format!("{SMALL_VIDEO} ! shmringsink socket-path={}", socket.display()),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    assert_got_small_video(&reader);
}

/// The writer starts, listens and waits for a reader, which comes later.
#[test]
fn writer_started_first() {
    let scratch = Scratch::new("writer_first");
    let socket = scratch.socket();
    let mut writer = start_writer(
        &scratch,
        &format!("{SMALL_VIDEO} ! shmringsink socket-path={}", socket.display()),
    );
    assert!(is_socket(&socket), "a started writer listens on its socket");
    writer.assert_running();
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={} ! fakesink silent=false", socket.display()),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    assert_got_small_video(&reader);
    assert!(!socket.exists(), "a writer that stops cleanly removes its socket");
}

/// With no capsfilter after shmringsrc, the writer's caps alone let a
/// converter negotiate.
#[test]
fn reader_negotiates_from_the_rings_caps() {
    let scratch = Scratch::new("reader_negotiates");
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{SMALL_VIDEO} ! shmringsink socket-path={socket}"));
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={socket} ! videoconvert ! video/x-raw,format=RGB ! fakesink"),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    let sink_caps = reader
        .stdout
        .lines()
        .find_map(|line| line.split_once("fakesink0.GstPad:sink: caps = ").map(|(_, caps)| caps))
        .unwrap_or_else(|| panic!("the reader's fakesink never got caps\n{}", reader.describe()));
    for field in ["format=(string)RGB", "width=(int)160", "height=(int)120"] {
        assert!(
            sink_caps.contains(field),
            "the fakesink got {sink_caps}, without {field}"
        );
    }
}

/// Caps that change mid-stream reach the reader in stream order: each
/// buffer arrives after the caps that describe it.
#[test]
fn caps_change_reaches_the_reader() {
    const FRAMES_PER_CAPS: usize = 10;
    const SIZES: [u32; 2] = [16, 32];
    let scratch = Scratch::new("caps_change");
    let socket = scratch.socket().display().to_string();
    // gst-launch cannot change caps mid-stream, so the writer is an appsrc
    // in this process, with the plugin registered statically.
    let writer = parse_pipeline(&format!(
        "appsrc name=src format=time ! shmringsink socket-path={socket}"
    ));
    let appsrc = writer
        .by_name("src")
        .and_then(|src| src.downcast::<gst_app::AppSrc>().ok())
        .expect("the writer starts with an appsrc named src");
    // The sink listens once this returns, before the reader exists.
    writer
        .set_state(gst::State::Playing)
        .expect("the in-process writer starts");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={socket} ! fakesink silent=false"),
    );
    let frame_duration = gst::ClockTime::SECOND / 30;
    let mut frame = 0u64;
    for size in SIZES {
        let caps: gst::Caps = format!("video/x-raw,format=GRAY8,width={size},height={size},framerate=30/1")
            .parse()
            .expect("valid caps");
        // appsrc queues new caps behind the buffers already pushed, so they
        // take effect exactly between the two groups.
        appsrc.set_caps(Some(&caps));
        for _ in 0..FRAMES_PER_CAPS {
            let mut buffer = gst::Buffer::from_mut_slice(vec![frame as u8; (size * size) as usize]);
            let buffer_ref = buffer.get_mut().expect("a new buffer is writable");
            buffer_ref.set_pts(frame_duration * frame);
            buffer_ref.set_duration(frame_duration);
            appsrc.push_buffer(buffer).expect("the appsrc takes the buffer");
            frame += 1;
        }
    }
    appsrc.end_of_stream().expect("the appsrc takes EOS");
    wait_for_eos(&writer, "in-process writer");

    let reader = reader.finish();
    reader.assert_success();
    let expected: Vec<Received> = SIZES
        .into_iter()
        .flat_map(|size| {
            let caps = Received::Caps {
                width: size,
                height: size,
            };
            let buffer = Received::Buffer {
                size: (size * size) as usize,
            };
            std::iter::once(caps).chain(std::iter::repeat_n(buffer, FRAMES_PER_CAPS))
        })
        .collect();
    assert_eq!(
        received(&reader.stdout),
        expected,
        "the reader's fakesink saw a different sequence\n{}",
        reader.describe()
    );
}

#[test]
fn sink_without_socket_path_fails() {
    let scratch = Scratch::new("no_socket_path");
    Launch::spawn(&scratch, "writer", "videotestsrc num-buffers=1 ! shmringsink")
        .finish()
        .assert_failure("socket-path is not set");
}

/// Both elements refuse a socket-path whose directory is missing, rather
/// than a sink failing obscurely or a source waiting forever.
#[test]
fn socket_path_in_missing_directory_fails() {
    let scratch = Scratch::new("missing_directory");
    let socket = scratch.path("missing").join("ring.sock");
    Launch::spawn(
        &scratch,
        "writer",
        &format!(
            "videotestsrc num-buffers=1 ! shmringsink socket-path={}",
            socket.display()
        ),
    )
    .finish()
    .assert_failure("does not exist");
    Launch::spawn(
        &scratch,
        "reader",
        &format!("shmringsrc socket-path={} ! fakesink", socket.display()),
    )
    .finish()
    .assert_failure("does not exist");
}

const FRAME_LARGER_THAN_RING: &str =
    "videotestsrc num-buffers=5 ! video/x-raw,format=I420,width=1920,height=1080 ! shmringsink ring-size=65536";

/// Buffers of caps that say nothing of their size, each larger than the
/// whole heap: only rendering finds out, once a reader is linked.
const BUFFER_LARGER_THAN_RING: &str = "fakesrc num-buffers=5 sizetype=fixed sizemax=200000 filltype=zero ! application/x-big ! shmringsink ring-size=65536";

/// Raw caps whose frames cannot fit in ring-size are an error at once,
/// naming both sizes and the fix, with no reader connected.
#[test]
fn frame_larger_than_ring_fails_at_once() {
    let scratch = Scratch::new("frame_too_large");
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{FRAME_LARGER_THAN_RING} socket-path={socket}"));
    let finished = writer.finish();
    finished.assert_failure("raise ring-size");
    finished.assert_failure("3110400");
    finished.assert_failure("65536");
}

/// A buffer bigger than the whole heap is an error that names the fix, and
/// the reader does not wait forever afterwards.
#[test]
fn buffer_larger_than_ring_fails() {
    let scratch = Scratch::new("buffer_too_large");
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(&scratch, &format!("{BUFFER_LARGER_THAN_RING} socket-path={socket}"));
    // Live, so that it does not preroll: gst-launch-1.0 1.22 sometimes
    // stays in its main loop when a source fails while its pipeline still
    // prerolls, whatever the source element.
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("shmringsrc socket-path={socket} is-live=true ! fakesink"),
    );
    writer.finish().assert_failure("raise ring-size");
    // That the reader then fails too is pinned down, without a race, by
    // `writer_failure_is_not_a_clean_end_for_the_reader`.
    reader.finish();
}

/// After a flow error GstBaseSrc still pushes EOS; shmringsink must not pass
/// it on, or the reader would end cleanly (exit 0) on a stream that its
/// writer abandoned. The writer runs in this process so that the test can
/// wait until that EOS is handled before stopping it, which makes the
/// outcome certain.
#[test]
fn writer_failure_is_not_a_clean_end_for_the_reader() {
    let scratch = Scratch::new("writer_failure");
    let socket = scratch.socket().display().to_string();
    let writer = parse_pipeline(&format!("{BUFFER_LARGER_THAN_RING} socket-path={socket}"));
    writer
        .set_state(gst::State::Playing)
        .expect("the in-process writer starts");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("shmringsrc socket-path={socket} is-live=true ! fakesink"),
    );
    let bus = writer.bus().expect("a pipeline has a bus");
    let deadline = gst::ClockTime::from_nseconds(DEADLINE.as_nanos() as u64);
    let error = bus.timed_pop_filtered(deadline, &[gst::MessageType::Error]);
    let eos = error
        .is_some()
        .then(|| bus.timed_pop_filtered(deadline, &[gst::MessageType::Eos]))
        .flatten();
    writer.set_state(gst::State::Null).expect("the in-process writer stops");
    match error.as_ref().map(|message| message.view()) {
        Some(gst::MessageView::Error(err)) => assert!(
            format!("{:?}", err.debug()).contains("raise ring-size"),
            "the writer failed for another reason: {} ({:?})",
            err.error(),
            err.debug()
        ),
        _ => panic!("the writer did not fail within {DEADLINE:?}"),
    }
    assert!(eos.is_some(), "the failed writer's sink never got EOS");
    reader.finish().assert_failed();
}

/// A second sink on a socket-path that a running sink serves fails, and the
/// running sink keeps serving it.
#[test]
fn second_sink_on_served_path_fails() {
    let scratch = Scratch::new("already_served");
    let socket = scratch.socket().display().to_string();
    // Live and unbounded, so that it keeps serving until it is killed.
    let mut first = start_writer(
        &scratch,
        &format!("videotestsrc is-live=true ! video/x-raw,width=160,height=120 ! shmringsink socket-path={socket}"),
    );
    Launch::spawn(
        &scratch,
        "second writer",
        &format!("videotestsrc num-buffers=5 ! shmringsink socket-path={socket}"),
    )
    .finish()
    .assert_failure("already served");
    first.assert_running();
    // num-buffers makes the reader stop on its own once it has read a few.
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("shmringsrc socket-path={socket} num-buffers=5 ! fakesink"),
    );
    reader.finish().assert_success();
    first.assert_running();
    first.kill();
}

/// Starts a live, unbounded writer (so that it is still streaming when it is
/// killed) and a reader with `reader_tail` after its shmringsrc, and waits
/// until a frame has crossed, so that the two are linked mid-stream.
fn linked_pair(scratch: &Scratch, src_properties: &str, reader_tail: &str) -> (Launch, Launch) {
    let socket = scratch.socket().display().to_string();
    let writer = start_writer(
        scratch,
        &format!("videotestsrc is-live=true ! video/x-raw,width=320,height=240 ! shmringsink socket-path={socket}"),
    );
    let mut reader = Launch::spawn(
        scratch,
        "reader",
        &format!("-v shmringsrc socket-path={socket} {src_properties} ! {reader_tail}"),
    );
    reader.wait_for_stdout(&["last-message = chain"]);
    (writer, reader)
}

/// By default (on-disconnect=error) a writer killed mid-stream makes the
/// reader fail with a message saying so, instead of waiting forever for data
/// that will never come.
#[test]
fn killed_writer_fails_the_reader_by_default() {
    let scratch = Scratch::new("killed_writer_error");
    let (mut writer, reader) = linked_pair(&scratch, "", "fakesink silent=false");
    writer.kill();
    reader.finish().assert_failure("went away");
}

/// With on-disconnect=eos a writer killed mid-stream ends the reader's
/// stream with a warning, so that what was recorded is finalized: the WAV
/// header counts every byte the file holds.
#[test]
fn killed_writer_ends_the_readers_stream_with_on_disconnect_eos() {
    let scratch = Scratch::new("killed_writer_eos");
    let socket = scratch.socket().display().to_string();
    let wav = scratch.path("recording.wav");
    let writer_description = format!(
        "audiotestsrc is-live=true samplesperbuffer=480 ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! shmringsink socket-path={socket}"
    );
    let mut writer = start_writer(&scratch, &writer_description);
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={socket} is-live=true on-disconnect=eos ! wavenc ! filesink location={}",
            wav.display()
        ),
    );
    // Some audio has been recorded.
    let recorded = Instant::now();
    while fs::metadata(&wav).map_or(0, |metadata| metadata.len()) < 64 * 1024 {
        assert!(
            recorded.elapsed() < DEADLINE,
            "nothing was recorded\n{}",
            reader.describe()
        );
        thread::sleep(Duration::from_millis(20));
    }
    writer.kill();
    let reader = reader.finish();
    reader.assert_success();
    assert!(reader.stdout.contains("went away"), "no warning\n{}", reader.describe());
    let bytes = fs::read(&wav).expect("reading the recording");
    assert_eq!(&bytes[0..4], b"RIFF");
    let riff_size = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    assert_eq!(
        riff_size + 8,
        bytes.len(),
        "the RIFF header does not count the whole file"
    );
}

/// With on-disconnect=wait the reader's pipeline keeps running when its
/// writer is killed, and resumes, with DISCONT, when a writer comes back.
#[test]
fn killed_writer_is_waited_for_and_a_new_one_resumes_the_stream() {
    let scratch = Scratch::new("killed_writer_wait");
    let socket = scratch.socket().display().to_string();
    let (mut writer, mut reader) = linked_pair(&scratch, "on-disconnect=wait is-live=true", "fakesink silent=false");
    writer.kill();
    reader.wait_for_stdout(&["waiting for a writer to come back"]);
    thread::sleep(Duration::from_millis(300));
    reader.assert_running();
    let before = reader.stdout_text().len();
    // The new writer ends with EOS, which ends the reader too.
    let writer = start_writer(
        &scratch,
        &format!("videotestsrc num-buffers=20 ! video/x-raw,width=160,height=120 ! shmringsink socket-path={socket}"),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    let resumed = &reader.stdout[before..];
    let first_chain = resumed
        .lines()
        .find(|line| line.contains("last-message = chain"))
        .unwrap_or_else(|| panic!("no buffer after the restart\n{}", reader.describe()));
    assert!(
        first_chain.contains("discont"),
        "the first buffer after the restart is not DISCONT: {first_chain}"
    );
    assert!(
        resumed.contains("width=(int)160"),
        "the new writer's caps did not arrive\n{}",
        reader.describe()
    );
}

/// A SIGKILLed sink leaves its socket file behind; the next sink on that
/// path replaces it and the stream works.
#[test]
fn stale_socket_is_replaced() {
    let scratch = Scratch::new("stale_socket");
    let socket = scratch.socket();
    let writer_description = format!("{SMALL_VIDEO} ! shmringsink socket-path={}", socket.display());
    let mut crashed = Launch::spawn(&scratch, "crashed writer", &writer_description);
    crashed.wait_until_started();
    crashed.kill();
    assert!(is_socket(&socket), "a SIGKILLed writer cannot remove its socket file");

    let writer = start_writer(&scratch, &writer_description);
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("-v shmringsrc socket-path={} ! fakesink silent=false", socket.display()),
    );
    writer.finish().assert_success();
    let reader = reader.finish();
    reader.assert_success();
    assert_got_small_video(&reader);
}
