//! One shmringsink, many readers: every reader gets the same bytes from one
//! copy in shared memory, a late joiner starts cleanly, a killed reader
//! stalls nobody, and `when-full` decides what a slow reader costs.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{
    Launch, Scratch, init_gst, is_socket, parse_pipeline, play_to_eos, wait_for_eos, wait_for_eos_counting_qos,
    wait_until,
};
use gst::prelude::*;

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |metadata| metadata.len())
}

fn counter(element: &gst::Element, field: &str) -> u64 {
    element.property::<gst::Structure>("stats").get::<u64>(field).unwrap()
}

/// A reader that joined after the first buffer got every buffer from its
/// first one on: what it wrote is whole frames, and the end of `expected`.
fn assert_tail_of(actual: &Path, expected: &[u8], frame: usize, what: &str) {
    let actual = fs::read(actual).unwrap();
    assert!(!actual.is_empty(), "the {what} got nothing");
    assert_eq!(actual.len() % frame, 0, "the {what} got a partial frame");
    assert!(actual.len() <= expected.len(), "the {what} got more than was sent");
    assert!(
        actual[..] == expected[expected.len() - actual.len()..],
        "the {what}'s {} bytes differ from the last {} bytes sent",
        actual.len(),
        actual.len()
    );
}

const WIDTH: usize = 320;
const HEIGHT: usize = 240;
const I420_FRAME: usize = WIDTH * HEIGHT * 3 / 2;

/// The bytes of `raw_video(frames)` as a one-process run writes them.
fn reference_video(scratch: &Scratch, frames: u32) -> Vec<u8> {
    let path = scratch.path("expected.yuv");
    play_to_eos(
        &parse_pipeline(&format!("{} ! filesink location={}", raw_video(frames), path.display())),
        "reference run",
    );
    fs::read(&path).unwrap()
}

fn raw_video(frames: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1"
    )
}

/// Three gst-launch readers of one writer. The first is slow and linked
/// before the first buffer (the writer waits for a reader), so it gets the
/// whole stream, and it paces the writer long enough for the other two to
/// join: they get the rest. Every byte matches a one-process run, and the
/// writer copied none: its pool's blocks went to all three as they were.
#[test]
fn three_readers_get_the_same_bytes_from_one_copy() {
    init_gst();
    const FRAMES: u32 = 300;
    let scratch = Scratch::new("three-readers");
    let socket = scratch.socket();
    let expected = reference_video(&scratch, FRAMES);
    assert_eq!(expected.len(), I420_FRAME * FRAMES as usize);

    // A heap of 32 frames keeps the writer close behind the slow reader, so
    // the stream lasts about FRAMES × 20 ms, time for the others to join.
    let writer = parse_pipeline(&format!(
        "{} ! shmringsink name=sink socket-path={} max-readers=3 when-full=block ring-size={}",
        raw_video(FRAMES),
        socket.display(),
        32 * I420_FRAME
    ));
    writer.set_state(gst::State::Playing).unwrap();
    wait_until("the writer's socket", || is_socket(&socket));
    let outputs: Vec<_> = (0..3)
        .map(|index| scratch.path(&format!("reader{index}.yuv")))
        .collect();
    let mut first = Launch::spawn(
        &scratch,
        "reader0",
        &format!(
            "shmringsrc socket-path={} ! identity sleep-time=20000 ! filesink location={}",
            socket.display(),
            outputs[0].display()
        ),
    );
    wait_until("the first reader's first frame", || {
        first.assert_running();
        file_len(&outputs[0]) > 0
    });
    let others: Vec<Launch> = (1..3)
        .map(|index| {
            Launch::spawn(
                &scratch,
                &format!("reader{index}"),
                &format!(
                    "shmringsrc socket-path={} ! filesink location={}",
                    socket.display(),
                    outputs[index].display()
                ),
            )
        })
        .collect();
    let sink = writer.by_name("sink").unwrap();
    wait_for_eos(&writer, "writer");
    first.finish().assert_success();
    for reader in others {
        reader.finish().assert_success();
    }
    assert!(
        fs::read(&outputs[0]).unwrap() == expected,
        "the first reader's bytes differ"
    );
    assert_tail_of(&outputs[1], &expected, I420_FRAME, "second reader");
    assert_tail_of(&outputs[2], &expected, I420_FRAME, "third reader");
    println!(
        "readers got {:?} bytes of {}; writer stats {}",
        outputs.iter().map(|path| file_len(path)).collect::<Vec<_>>(),
        expected.len(),
        sink.property::<gst::Structure>("stats")
    );
    assert_eq!(counter(&sink, "buffers"), u64::from(FRAMES));
    assert_eq!(counter(&sink, "bytes-copied"), 0, "the writer copied frames");
    assert_eq!(counter(&sink, "buffers-lost"), 0);
}

/// A reader beyond max-readers is refused with an error naming the limit.
#[test]
fn reader_beyond_max_readers_is_refused() {
    init_gst();
    let scratch = Scratch::new("max-readers");
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=100/1 ! shmringsink name=sink socket-path={} max-readers=1",
        socket.display()
    ));
    writer.set_state(gst::State::Playing).unwrap();
    wait_until("the writer's socket", || is_socket(&socket));
    let mut first = Launch::spawn(
        &scratch,
        "first",
        &format!("shmringsrc socket-path={} ! fakesink", socket.display()),
    );
    let sink = writer.by_name("sink").unwrap();
    wait_until("the first reader to link", || {
        first.assert_running();
        sink.property::<u32>("readers") == 1
    });
    let second = Launch::spawn(
        &scratch,
        "second",
        &format!("shmringsrc socket-path={} is-live=true ! fakesink", socket.display()),
    );
    second.finish().assert_failure("max-readers (1)");
    first.assert_running();
    drop(first);
    writer.set_state(gst::State::Null).unwrap();
}

/// A reader killed while it stalls the writer (block mode) gives back its
/// blocks at once: the writer finishes, and a reader that joins gets every
/// remaining frame.
#[test]
fn killed_reader_does_not_stall_the_others() {
    init_gst();
    const FRAMES: u32 = 120;
    let scratch = Scratch::new("killed-reader");
    let socket = scratch.socket();
    let expected = reference_video(&scratch, FRAMES);
    // A heap of 8 frames: the stuck reader holds them all long before the
    // stream ends, so the writer stalls on it until it is killed.
    let writer = parse_pipeline(&format!(
        "{} ! shmringsink name=sink socket-path={} when-full=block ring-size={}",
        raw_video(FRAMES),
        socket.display(),
        8 * I420_FRAME
    ));
    writer.set_state(gst::State::Playing).unwrap();
    wait_until("the writer's socket", || is_socket(&socket));
    // Stuck for good on its first buffer: without the kill, the writer
    // would wait for it until the deadline.
    let mut stuck = Launch::spawn(
        &scratch,
        "stuck reader",
        &format!(
            "shmringsrc socket-path={} ! identity sleep-time=1000000000 ! fakesink",
            socket.display()
        ),
    );
    let sink = writer.by_name("sink").unwrap();
    wait_until("the stuck reader to stall the writer", || {
        stuck.assert_running();
        counter(&sink, "buffers") > 0
    });
    let output = scratch.path("other.yuv");
    let other = Launch::spawn(
        &scratch,
        "other reader",
        &format!(
            "shmringsrc socket-path={} ! filesink location={}",
            socket.display(),
            output.display()
        ),
    );
    let before_kill = counter(&sink, "buffers");
    stuck.kill();
    // Stalled: the writer got no further than the heap while the stuck
    // reader lived. After the kill it waits for the other reader, so that
    // reader gets every frame from there on.
    assert!(before_kill < u64::from(FRAMES), "the writer never stalled");
    wait_for_eos(&writer, "writer");
    other.finish().assert_success();
    assert_tail_of(&output, &expected, I420_FRAME, "other reader");
    assert_eq!(counter(&sink, "buffers"), u64::from(FRAMES));
}

/// A reader that joins a VP8 stream late starts with stream-start, caps and
/// a segment, then a keyframe, and decodes without an error.
#[test]
fn late_joiner_starts_at_a_keyframe() {
    init_gst();
    let scratch = Scratch::new("late-joiner");
    let socket = scratch.socket();
    let mut writer = Launch::spawn(
        &scratch,
        "writer",
        &format!(
            "videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=160,height=120,framerate=30/1 ! vp8enc keyframe-max-dist=30 deadline=1 ! shmringsink socket-path={}",
            socket.display()
        ),
    );
    writer.wait_until_started();
    let early = parse_pipeline(&format!(
        "shmringsrc socket-path={} ! fakesink name=sink signal-handoffs=true",
        socket.display()
    ));
    let early_buffers = Arc::new(AtomicU64::new(0));
    let count = early_buffers.clone();
    early.by_name("sink").unwrap().connect("handoff", false, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        None
    });
    early.set_state(gst::State::Playing).unwrap();
    // Past the first keyframe interval: the next reader joins mid-GOP or
    // on a keyframe, never at the stream's first buffer.
    wait_until("40 buffers at the first reader", || {
        early_buffers.load(Ordering::SeqCst) >= 40
    });

    let late = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! vp8dec ! fakesink",
        socket.display()
    ));
    // What reached the decoder before the first buffer, and that buffer.
    let seen: Arc<Mutex<(Vec<gst::EventType>, Option<gst::Buffer>)>> = Arc::default();
    let record = seen.clone();
    late.by_name("src").unwrap().static_pad("src").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let mut seen = record.lock().unwrap();
            if seen.1.is_none() {
                match &info.data {
                    Some(gst::PadProbeData::Event(event)) => seen.0.push(event.type_()),
                    Some(gst::PadProbeData::Buffer(buffer)) => seen.1 = Some(buffer.clone()),
                    Some(gst::PadProbeData::BufferList(list)) => seen.1 = list.get_owned(0),
                    _ => {}
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    late.set_state(gst::State::Playing).unwrap();
    wait_for_eos(&late, "late reader");
    wait_for_eos(&early, "early reader");
    writer.finish().assert_success();
    let (events, first) = seen.lock().unwrap().clone();
    let first = first.expect("the late reader got no buffer");
    for wanted in [
        gst::EventType::StreamStart,
        gst::EventType::Caps,
        gst::EventType::Segment,
    ] {
        assert!(
            events.contains(&wanted),
            "no {wanted:?} before the first buffer: {events:?}"
        );
    }
    assert!(
        !first.flags().contains(gst::BufferFlags::DELTA_UNIT),
        "the late reader's first buffer is a delta unit: {first:?}"
    );
    assert!(
        first.pts().is_some_and(|pts| pts > gst::ClockTime::ZERO),
        "the late reader started at the stream's start: {first:?}"
    );
}

/// Frames of 128x128 GRAY8 whose every byte says which frame it is, so that
/// a frame the writer overwrote while a reader still read it shows.
const DROP_FRAME: usize = 128 * 128;

fn frame_byte(index: u64, at: usize) -> u8 {
    (index.wrapping_mul(131) as u8) ^ (at as u8)
}

/// A reader's view: frames in order, each whole, and how many DISCONTs.
#[derive(Default, Debug)]
struct Checked {
    indices: Vec<u64>,
    torn: Vec<u64>,
    disconts: u64,
}

fn checking_reader(socket: &Path, slow: bool, checked: Arc<Mutex<Checked>>) -> gst::Pipeline {
    let pipeline = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! identity sleep-time={} ! fakesink name=sink signal-handoffs=true sync=false",
        socket.display(),
        if slow { 20000 } else { 0 }
    ));
    pipeline
        .by_name("sink")
        .unwrap()
        .connect("handoff", false, move |values| {
            let buffer = values[1].get::<gst::Buffer>().unwrap();
            let index = buffer.offset();
            let map = buffer.map_readable().unwrap();
            let whole =
                map.len() == DROP_FRAME && map.iter().enumerate().all(|(at, &byte)| byte == frame_byte(index, at));
            let mut checked = checked.lock().unwrap();
            checked.indices.push(index);
            if !whole {
                checked.torn.push(index);
            }
            if buffer.flags().contains(gst::BufferFlags::DISCONT) {
                checked.disconts += 1;
            }
            None
        });
    pipeline
}

/// `when-full=drop`: a reader of 20 ms per frame behind a writer of 500 Hz is
/// lapped over and over. It only ever delivers whole frames, in order, and
/// is told of its losses (DISCONT, buffers-lost); a fast reader beside it
/// loses nothing.
#[test]
fn drop_mode_never_tears_a_frame_and_spares_the_fast_reader() {
    init_gst();
    const FRAMES: u64 = 3000;
    let scratch = Scratch::new("drop-mode");
    let socket = scratch.socket();
    // Each reader may hold a third of the 32 MiB heap, about 680 frames:
    // the fast reader may fall 1.3 s behind, on a loaded machine, before it
    // would lose anything. The heap hands out its most recently freed block
    // first, so the slow reader's neighbours reuse the same few blocks
    // thousands of times while it holds its own.
    let writer = parse_pipeline(&format!(
        "appsrc name=src format=time max-bytes=1000000 block=true caps=video/x-raw,format=GRAY8,width=128,height=128,framerate=500/1 ! identity sleep-time=2000 ! shmringsink name=sink socket-path={} when-full=drop ring-size={}",
        socket.display(),
        32 << 20
    ));
    writer.set_state(gst::State::Playing).unwrap();
    wait_until("the writer's socket", || is_socket(&socket));
    let fast_seen = Arc::new(Mutex::new(Checked::default()));
    let slow_seen = Arc::new(Mutex::new(Checked::default()));
    let fast = checking_reader(&socket, false, fast_seen.clone());
    let slow = checking_reader(&socket, true, slow_seen.clone());
    fast.set_state(gst::State::Playing).unwrap();
    slow.set_state(gst::State::Playing).unwrap();
    let sink = writer.by_name("sink").unwrap();
    let appsrc = writer.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    // The writer takes in readers as buffers pass: each reader is checked
    // from its first frame on.
    for index in 0..FRAMES {
        let bytes: Vec<u8> = (0..DROP_FRAME).map(|at| frame_byte(index, at)).collect();
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_offset(index);
            buffer.set_pts(gst::ClockTime::from_mseconds(2 * index));
            buffer.set_duration(gst::ClockTime::from_mseconds(2));
        }
        appsrc.push_buffer(buffer).unwrap();
    }
    appsrc.end_of_stream().unwrap();
    wait_for_eos(&writer, "writer");
    let fast_qos = wait_for_eos_counting_qos(&fast, "fast reader");
    let slow_qos = wait_for_eos_counting_qos(&slow, "slow reader");

    let fast_seen = fast_seen.lock().unwrap();
    let slow_seen = slow_seen.lock().unwrap();
    assert!(
        fast_seen.torn.is_empty(),
        "the fast reader got torn frames {:?}",
        fast_seen.torn
    );
    assert!(
        slow_seen.torn.is_empty(),
        "the slow reader got torn frames {:?}",
        slow_seen.torn
    );
    let first = fast_seen.indices[0];
    assert!(
        fast_seen.indices.iter().copied().eq(first..FRAMES),
        "the fast reader lost frames: got {} of {}",
        fast_seen.indices.len(),
        FRAMES - first
    );
    assert!(
        slow_seen.indices.windows(2).all(|pair| pair[0] < pair[1]),
        "the slow reader's frames are out of order"
    );
    let slow_lost = counter(&slow.by_name("src").unwrap(), "buffers-lost");
    let fast_lost = counter(&fast.by_name("src").unwrap(), "buffers-lost");
    assert_eq!(fast_lost, 0);
    assert!(slow_lost > 0, "the slow reader lost nothing: {slow_seen:?}");
    assert!(slow_seen.disconts > 0, "the slow reader got no DISCONT");
    println!(
        "fast reader: {} frames from {first}; slow reader: {} frames, {slow_lost} lost, {} DISCONTs",
        fast_seen.indices.len(),
        slow_seen.indices.len(),
        slow_seen.disconts
    );
    let first_slow = slow_seen.indices[0];
    assert_eq!(
        slow_seen.indices.len() as u64 + slow_lost,
        FRAMES - first_slow,
        "the slow reader's frames and losses do not add up"
    );
    assert_eq!(counter(&sink, "buffers-lost"), slow_lost);
    // Each loss was posted, with the total dropped so far.
    assert!(fast_qos.is_empty(), "the fast reader posted QoS: {fast_qos:?}");
    assert_eq!(slow_qos.last().map(|&(_, dropped)| dropped), Some(slow_lost));
    assert!(slow_qos.windows(2).all(|pair| pair[0].1 < pair[1].1));
}

/// `when-full=block`: a slow recorder paces the writer and so loses
/// nothing, while a fast reader runs beside it. The WAV it writes is
/// sample-exact, header included.
#[test]
fn block_mode_recorder_is_sample_exact() {
    init_gst();
    let scratch = Scratch::new("block-recorder");
    let socket = scratch.socket();
    // 8 KiB buffers: payloads in heap blocks, held by both readers at once.
    let source =
        "audiotestsrc num-buffers=200 samplesperbuffer=2048 freq=441 ! audio/x-raw,format=S16LE,rate=44100,channels=2";
    let expected = scratch.path("expected.wav");
    play_to_eos(
        &parse_pipeline(&format!("{source} ! wavenc ! filesink location={}", expected.display())),
        "reference run",
    );
    let mut writer = Launch::spawn(
        &scratch,
        "writer",
        &format!(
            "{source} ! shmringsink socket-path={} when-full=block",
            socket.display()
        ),
    );
    writer.wait_until_started();
    // The writer waits for its first reader, so the recorder, started
    // alone, gets the stream from its first buffer.
    let recorded = scratch.path("recorded.wav");
    let mut recorder = Launch::spawn(
        &scratch,
        "recorder",
        &format!(
            "shmringsrc socket-path={} ! identity sleep-time=5000 ! wavenc ! filesink location={}",
            socket.display(),
            recorded.display()
        ),
    );
    wait_until("the recorder's first samples", || {
        recorder.assert_running();
        file_len(&recorded) > 0
    });
    let fast_output = scratch.path("fast.raw");
    let fast = Launch::spawn(
        &scratch,
        "fast reader",
        &format!(
            "shmringsrc socket-path={} ! filesink location={}",
            socket.display(),
            fast_output.display()
        ),
    );
    writer.finish().assert_success();
    recorder.finish().assert_success();
    fast.finish().assert_success();
    let expected = fs::read(&expected).unwrap();
    let recorded = fs::read(&recorded).unwrap();
    assert_eq!(recorded.len(), expected.len(), "the recording has another length");
    assert!(recorded == expected, "the recording's samples differ");
    // The fast reader joined a little later: it got the end of the stream.
    let raw = scratch.path("expected.raw");
    play_to_eos(
        &parse_pipeline(&format!("{source} ! filesink location={}", raw.display())),
        "raw reference run",
    );
    assert_tail_of(&fast_output, &fs::read(&raw).unwrap(), 2048 * 4, "fast reader");
}
