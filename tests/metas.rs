//! Metas cross with their buffers between processes: planar audio, whose
//! GstAudioMeta says where each channel is, and the metas an application
//! adds (time code, reference timestamp, custom, region of interest,
//! caption), each compared field by field on the other side.

use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;

mod common;
use common::*;

const BUFFERS: u64 = 50;
const FRAME: gst::ClockTime = gst::ClockTime::from_mseconds(40);
const CUSTOM_META: &str = "shmring-test-meta";
const REFERENCE: &str = "timestamp/x-shmring-test";
/// Set in the writer child: the socket it writes to.
const WRITER_SOCKET: &str = "SHMRING_METAS_WRITER_SOCKET";
/// Set in the writer child: more properties of its shmringsink.
const WRITER_SINK_PROPERTIES: &str = "SHMRING_METAS_WRITER_SINK_PROPERTIES";

#[test]
fn planar_audio_recorded_through_the_ring_is_byte_identical() {
    let scratch = Scratch::new("planar_audio_recorded_through_the_ring_is_byte_identical");
    let source = "audiotestsrc num-buffers=50 samplesperbuffer=1000 wave=sine freq=440 ! audio/x-raw,format=F32LE,layout=non-interleaved,rate=48000,channels=2";
    let record = |name: &str| {
        let path = scratch.path(name);
        (
            path.clone(),
            format!("audioconvert ! wavenc ! filesink location={}", path.display()),
        )
    };
    let (reference, sink) = record("reference.wav");
    Launch::spawn(&scratch, "one process", &format!("{source} ! {sink}"))
        .finish()
        .assert_success();
    let socket = scratch.socket();
    let writer = start_writer(
        &scratch,
        &format!("{source} ! shmringsink socket-path={}", socket.display()),
    );
    let (recording, sink) = record("ring.wav");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!("shmringsrc socket-path={} ! {sink}", socket.display()),
    );
    reader.finish().assert_success();
    writer.finish().assert_success();
    let expected = std::fs::read(&reference).expect("the one-process recording");
    let got = std::fs::read(&recording).expect("the recording through the ring");
    // 50 buffers of 1000 stereo F32 samples, and a header.
    assert!(expected.len() > 50 * 1000 * 2 * 4, "{} bytes", expected.len());
    assert!(
        got == expected,
        "the recordings differ ({} and {} bytes)",
        got.len(),
        expected.len()
    );
}

/// Buffer `index` of the writer: alternately inline and heap-sized, so that
/// both record paths carry metas.
fn payload(index: u64) -> Vec<u8> {
    let len = if index.is_multiple_of(2) { 100 } else { 10_000 };
    vec![index as u8; len]
}

/// Every third buffer has no metas: a lost buffer's metas must not land on
/// it.
fn has_metas(index: u64) -> bool {
    index % 3 != 2
}

fn time_code(index: u64) -> gst_video::ValidVideoTimeCode {
    gst_video::ValidVideoTimeCode::new(
        gst::Fraction::new(25, 1),
        None,
        gst_video::VideoTimeCodeFlags::empty(),
        1,
        2,
        (index / 25) as u32,
        (index % 25) as u32,
        0,
    )
    .expect("a valid time code")
}

fn custom_fields(index: u64) -> gst::Structure {
    gst::Structure::builder(CUSTOM_META)
        .field("index", index as i32)
        .field("label", format!("buffer {index}"))
        .build()
}

fn roi_param(index: u64) -> gst::Structure {
    gst::Structure::builder("detection")
        .field("confidence", 0.5 + index as f64 / 1000.0)
        .field("label", format!("face-{index}"))
        .build()
}

fn caption(index: u64) -> Vec<u8> {
    (0..=index % 7).map(|byte| byte as u8 + index as u8).collect()
}

fn reference_timestamp(index: u64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(1_000_000_007 * index + 3)
}

/// The writer child: appsrc adds every meta to each of its buffers.
fn run_writer(socket: &str) {
    init_gst();
    gst::meta::CustomMeta::register(CUSTOM_META, &[]);
    let properties = std::env::var(WRITER_SINK_PROPERTIES).unwrap_or_default();
    let pipeline = parse_pipeline(&format!(
        "appsrc name=src format=time caps=application/x-shmring-test ! shmringsink socket-path={socket} {properties}"
    ));
    let appsrc = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .expect("the appsrc");
    pipeline.set_state(gst::State::Playing).expect("the writer starts");
    let reference = gst::Caps::from_str(REFERENCE).expect("reference caps");
    for index in 0..BUFFERS {
        let mut buffer = gst::Buffer::from_mut_slice(payload(index));
        let writable = buffer.get_mut().expect("a new buffer is writable");
        writable.set_pts(FRAME * index);
        writable.set_duration(FRAME);
        if has_metas(index) {
            let buffer = writable;
            gst_video::VideoTimeCodeMeta::add(buffer, &time_code(index));
            gst::ReferenceTimestampMeta::add(buffer, &reference, reference_timestamp(index), FRAME);
            let mut custom = gst::meta::CustomMeta::add(buffer, CUSTOM_META).expect("the custom meta");
            for (field, value) in custom_fields(index).iter() {
                custom.mut_structure().set_value(field, value.clone());
            }
            let rect = (index as u32, 2 * index as u32, 10, 20);
            let mut roi = gst_video::VideoRegionOfInterestMeta::add(buffer, "face", rect);
            roi.set_id(index as i32);
            roi.set_parent_id(-1);
            roi.add_param(roi_param(index));
            gst_video::VideoCaptionMeta::add(buffer, gst_video::VideoCaptionType::Cea708Cdp, &caption(index));
            // A kind the ring does not carry: dropped, and logged once.
            gst_audio::AudioLevelMeta::add(buffer, 30, true);
        }
        appsrc.push_buffer(buffer).expect("the writer takes the buffer");
    }
    appsrc.end_of_stream().expect("EOS");
    wait_for_eos(&pipeline, "writer");
    assert_no_criticals_here("the writer child");
}

/// Checks every meta of buffer `index` as read (the writer's audio level
/// meta stays behind); returns how many it had.
fn check_metas(index: u64, buffer: &gst::BufferRef) -> usize {
    assert_eq!(buffer.map_readable().expect("readable").as_slice(), &payload(index)[..]);
    let count = buffer.iter_meta::<gst::Meta>().count();
    if !has_metas(index) {
        assert_eq!(count, 0, "buffer {index} has no metas");
        return count;
    }
    let tc = buffer
        .meta::<gst_video::VideoTimeCodeMeta>()
        .expect("a time code meta")
        .tc();
    let want = time_code(index);
    assert_eq!(
        (
            tc.fps(),
            tc.flags(),
            tc.hours(),
            tc.minutes(),
            tc.seconds(),
            tc.frames(),
            tc.field_count()
        ),
        (
            want.fps(),
            want.flags(),
            want.hours(),
            want.minutes(),
            want.seconds(),
            want.frames(),
            want.field_count()
        ),
        "buffer {index}"
    );
    let reference = buffer
        .meta::<gst::ReferenceTimestampMeta>()
        .expect("a reference timestamp meta");
    assert_eq!(reference.reference().to_string(), REFERENCE);
    assert_eq!(reference.timestamp(), reference_timestamp(index));
    assert_eq!(reference.duration(), Some(FRAME));
    let custom = gst::meta::CustomMeta::from_buffer(buffer, CUSTOM_META).expect("a custom meta");
    assert_eq!(custom.structure(), custom_fields(index).as_ref(), "buffer {index}");
    let roi = buffer
        .meta::<gst_video::VideoRegionOfInterestMeta>()
        .expect("a region of interest meta");
    assert_eq!(roi.roi_type(), "face");
    assert_eq!(roi.rect(), (index as u32, 2 * index as u32, 10, 20));
    assert_eq!((roi.id(), roi.parent_id()), (index as i32, -1));
    let params: Vec<gst::Structure> = roi.params().map(|param| param.to_owned()).collect();
    assert_eq!(params, vec![roi_param(index)], "buffer {index}");
    let caption_meta = buffer.meta::<gst_video::VideoCaptionMeta>().expect("a caption meta");
    assert_eq!(caption_meta.caption_type(), gst_video::VideoCaptionType::Cea708Cdp);
    assert_eq!(caption_meta.data(), &caption(index)[..]);
    assert_eq!(count, 5, "buffer {index}");
    count
}

/// Runs the writer child (this binary, in `run_writer`, as `test`) with
/// `properties` on its shmringsink, and reads it here, taking `pause` over
/// each buffer. Returns the index and
/// the number of metas of each buffer read, each checked against what the
/// writer added, the buffers the reader was told it lost, and the writer's
/// stderr (with the debug log of `shmringmetas`).
fn read_from_writer_child(test: &str, properties: &str, pause: Duration) -> (Vec<(u64, usize)>, u64, String) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_SOCKET, &socket)
        .env(WRITER_SINK_PROPERTIES, properties)
        .env("GST_DEBUG", "shmringmetas:5");
    let writer = Launch::spawn_command(&scratch, "writer", command);
    let pipeline = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! appsink name=sink sync=false",
        socket.display()
    ));
    let appsink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .expect("the appsink");
    let checked = Arc::new(Mutex::new(Vec::new()));
    let seen = checked.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let index = buffer.pts().expect("a timestamp").nseconds() / FRAME.nseconds();
                let metas = check_metas(index, buffer);
                seen.lock().unwrap().push((index, metas));
                std::thread::sleep(pause);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    play_to_eos(&pipeline, "reader");
    let lost = pipeline
        .by_name("src")
        .expect("the shmringsrc")
        .property::<gst::Structure>("stats")
        .get::<u64>("buffers-lost")
        .expect("a buffers-lost counter");
    let writer = writer.finish();
    writer.assert_success();
    assert_no_criticals_here("the reader");
    let checked = checked.lock().unwrap().clone();
    (checked, lost, writer.stderr)
}

/// The writer is another process; the reader here checks each buffer's
/// metas against what the writer added.
#[test]
fn metas_an_application_adds_cross_with_their_buffers() {
    const TEST: &str = "metas_an_application_adds_cross_with_their_buffers";
    if let Ok(socket) = std::env::var(WRITER_SOCKET) {
        run_writer(&socket);
        return;
    }
    let (checked, lost, writer_log) = read_from_writer_child(TEST, "", Duration::ZERO);
    let indices: Vec<u64> = checked.iter().map(|&(index, _)| index).collect();
    assert_eq!(indices, (0..BUFFERS).collect::<Vec<_>>());
    let with_metas = checked.iter().filter(|&&(_, metas)| metas == 5).count();
    assert_eq!(with_metas, (0..BUFFERS).filter(|&index| has_metas(index)).count());
    assert_eq!(lost, 0);
    let dropped = writer_log
        .matches("GstAudioLevelMetaAPI does not cross the ring")
        .count();
    assert_eq!(dropped, 1, "{writer_log}");
}

/// `when-full=drop` with a queue bounded to two buffers' worth of records
/// (`ring-time`) and a reader slower than the writer, which keeps to the
/// buffers' timestamps (`sync=true`): whichever buffers are
/// lost, a buffer read carries its own metas, never those of a lost one.
#[test]
fn lost_buffers_take_their_metas_with_them() {
    const TEST: &str = "lost_buffers_take_their_metas_with_them";
    if let Ok(socket) = std::env::var(WRITER_SOCKET) {
        run_writer(&socket);
        return;
    }
    let (checked, lost, _) = read_from_writer_child(
        TEST,
        "when-full=drop ring-time=80000 sync=true",
        Duration::from_millis(60),
    );
    eprintln!("{} buffers read, {lost} lost", checked.len());
    assert!(
        checked.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "out of order: {checked:?}"
    );
    assert_eq!(checked.len() as u64 + lost, BUFFERS, "{checked:?}");
}
