//! What the elements downstream of a shmringsrc see: a downstream linked
//! while the stream runs gets the stream's sticky events, and one that does
//! not take GstVideoMeta gets frames in the default layout.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use gst::prelude::*;

mod common;
use common::*;

/// What a sink pad received, in order: an event's type name, or "buffer".
type Seen = Arc<Mutex<Vec<(String, Option<gst::Event>)>>>;

/// A fakesink whose sink pad writes down everything that reaches it.
fn recording_sink(name: &str) -> (gst::Element, Seen) {
    let sink = gst::ElementFactory::make("fakesink")
        .name(name)
        .property("sync", false)
        .build()
        .expect("a fakesink");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    sink.static_pad("sink").expect("a sink pad").add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            let mut record = record.lock().unwrap();
            match &info.data {
                Some(gst::PadProbeData::Event(event)) => {
                    record.push((event.type_().name().to_string(), Some(event.clone())));
                }
                Some(gst::PadProbeData::Buffer(_)) => record.push(("buffer".to_owned(), None)),
                Some(gst::PadProbeData::BufferList(list)) => {
                    record.extend(list.iter().map(|_| ("buffer".to_owned(), None)));
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    (sink, seen)
}

fn buffers_in(seen: &Seen) -> usize {
    seen.lock().unwrap().iter().filter(|(kind, _)| kind == "buffer").count()
}

fn wait_for_buffers(seen: &Seen, count: usize, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while buffers_in(seen) < count {
        assert!(
            Instant::now() < deadline,
            "{what} got no {count} buffers within {DEADLINE:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// The event of type `kind` that came first, before any buffer.
fn first_before_data(seen: &[(String, Option<gst::Event>)], kind: &str) -> Option<gst::Event> {
    seen.iter()
        .take_while(|(name, _)| name != "buffer")
        .find(|(name, _)| name == kind)
        .and_then(|(_, event)| event.clone())
}

/// An application moves shmringsrc's output from one sink to another while
/// the stream runs, as a player switching outputs does. GStreamer sends the
/// new sink the sticky events the source pad holds: it must get the
/// writer's stream-start and segment, not only the caps.
#[test]
fn a_downstream_linked_while_playing_gets_stream_start_caps_and_segment() {
    init_gst();
    let scratch = Scratch::new("relink");
    let socket = scratch.socket().display().to_string();
    let mut writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! shmringsink socket-path={socket}"
        ),
    );
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("shmringsrc")
        .property("socket-path", &socket)
        .build()
        .expect("a shmringsrc");
    pipeline.add(&src).expect("adding the source");
    let (first, first_seen) = recording_sink("first");
    pipeline.add(&first).expect("adding the first sink");
    src.link(&first).expect("linking the first sink");
    pipeline.set_state(gst::State::Playing).expect("the reader starts");
    wait_for_buffers(&first_seen, 5, "the first sink");

    let (second, second_seen) = recording_sink("second");
    pipeline.add(&second).expect("adding the second sink");
    second.sync_state_with_parent().expect("the second sink starts");
    let src_pad = src.static_pad("src").expect("a src pad");
    let (first_pad, second_pad) = (
        first.static_pad("sink").expect("a sink pad"),
        second.static_pad("sink").expect("a sink pad"),
    );
    // Relinked where no data is in flight, as GStreamer's docs advise.
    src_pad.add_probe(gst::PadProbeType::BLOCK_DOWNSTREAM, move |pad, _| {
        pad.unlink(&first_pad).expect("unlinking the first sink");
        pad.link(&second_pad).expect("linking the second sink");
        gst::PadProbeReturn::Remove
    });
    wait_for_buffers(&second_seen, 5, "the second sink");
    pipeline.set_state(gst::State::Null).expect("the reader stops");
    writer.assert_running();

    let first_seen = first_seen.lock().unwrap().clone();
    let second_seen = second_seen.lock().unwrap().clone();
    let shape = |seen: &[(String, Option<gst::Event>)]| -> Vec<String> {
        seen.iter()
            .take_while(|(name, _)| name != "buffer")
            .map(|(name, _)| name.clone())
            .collect()
    };
    assert_eq!(
        shape(&second_seen),
        ["stream-start", "caps", "segment"],
        "what the second sink got before its first buffer"
    );
    // The same stream-start and segment as the first sink: the writer's.
    let stream_id = |seen: &[(String, Option<gst::Event>)]| {
        let event = first_before_data(seen, "stream-start").expect("a stream-start");
        let gst::EventView::StreamStart(start) = event.view() else {
            unreachable!("a stream-start event")
        };
        start.stream_id().to_owned()
    };
    assert_eq!(stream_id(&second_seen), stream_id(&first_seen));
    let segment = |seen: &[(String, Option<gst::Event>)]| {
        let event = first_before_data(seen, "segment").expect("a segment");
        let gst::EventView::Segment(segment) = event.view() else {
            unreachable!("a segment event")
        };
        segment.segment().clone()
    };
    assert_eq!(segment(&second_seen), segment(&first_seen));
    assert_no_criticals_here("the reader");
}
const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;
const FRAMES: u8 = 10;

/// Frame `n` of I420 at WIDTH x HEIGHT, plane by plane in the default layout:
/// every row different, so that a row out of place shows.
fn unpadded_frame(n: u8, info: &gst_video::VideoInfo) -> Vec<Vec<Vec<u8>>> {
    (0..3u8)
        .map(|plane| {
            let (width, height) = if plane == 0 {
                (WIDTH, HEIGHT)
            } else {
                (WIDTH / 2, HEIGHT / 2)
            };
            assert_eq!(info.comp_width(plane), width);
            (0..height)
                .map(|row| {
                    (0..width)
                        .map(|column| (u32::from(n) * 31 + u32::from(plane) * 7 + row * 3 + column) as u8)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// A writer whose frames have padded rows and gaps between planes, described
/// by a GstVideoMeta, read by `gst-launch-1.0 shmringsrc ! filesink`, which
/// ignores the meta: the file must hold the frames in the default layout,
/// the bytes a one-process `appsrc ! filesink` writes for them unpadded.
#[test]
fn padded_video_reaches_a_downstream_without_video_meta_in_the_default_layout() {
    init_gst();
    let scratch = Scratch::new("padded_video");
    let socket = scratch.socket().display().to_string();
    let caps = format!("video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1");
    let info = gst_video::VideoInfo::from_caps(&caps.parse::<gst::Caps>().expect("caps")).expect("video info");
    let writer = parse_pipeline(&format!(
        "appsrc name=app format=time caps={caps} ! shmringsink socket-path={socket}"
    ));
    let app = writer
        .by_name("app")
        .expect("the appsrc")
        .downcast::<gst_app::AppSrc>()
        .expect("an appsrc");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    let output = scratch.path("frames.yuv");
    let reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={socket} ! filesink location={}",
            output.display()
        ),
    );

    let strides = [WIDTH as i32 + 16, WIDTH as i32 / 2 + 16, WIDTH as i32 / 2 + 16];
    let mut offsets = [0usize; 3];
    let mut size = 0;
    for plane in 0..3 {
        offsets[plane] = size;
        let rows = if plane == 0 { HEIGHT } else { HEIGHT / 2 } as usize;
        size += rows * strides[plane] as usize + 64;
    }
    assert_ne!(&strides[..], info.stride(), "the frames are padded");
    let mut expected = Vec::new();
    for n in 0..FRAMES {
        let planes = unpadded_frame(n, &info);
        let mut bytes = vec![0xEEu8; size];
        for (plane, rows) in planes.iter().enumerate() {
            for (row, pixels) in rows.iter().enumerate() {
                let at = offsets[plane] + row * strides[plane] as usize;
                bytes[at..at + pixels.len()].copy_from_slice(pixels);
                expected.extend_from_slice(pixels);
            }
        }
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        {
            let buffer = buffer.get_mut().expect("a new buffer is writable");
            buffer.set_pts(gst::ClockTime::from_mseconds(u64::from(n) * 33));
            gst_video::VideoMeta::add_full(
                buffer,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::I420,
                WIDTH,
                HEIGHT,
                &offsets,
                &strides,
            )
            .expect("a video meta");
        }
        app.push_buffer(buffer).expect("the writer takes the frame");
    }
    app.end_of_stream().expect("the writer takes EOS");
    wait_for_eos(&writer, "writer");
    reader.finish().assert_success();
    assert_eq!(expected.len(), info.size() * usize::from(FRAMES));

    let written = std::fs::read(&output).expect("the reader's file");
    assert_eq!(
        written.len(),
        expected.len(),
        "the reader wrote {} bytes, {} frames in the default layout are {} bytes",
        written.len(),
        FRAMES,
        expected.len()
    );
    assert!(
        written == expected,
        "the frames the reader wrote differ from those sent"
    );
    assert_no_criticals_here("the writer");
}
