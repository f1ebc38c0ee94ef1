//! Zero-copy on both sides: which buffers cross without a copy, that the
//! bytes still arrive intact, and that downstream holding ring memory never
//! wedges the stream.

use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstshmring::plugin_register_static().unwrap();
    });
}

fn socket_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("shmring-zc-{}-{name}-{unique}", std::process::id()))
}

/// What the reader saw of one buffer.
#[derive(Debug)]
struct Seen {
    pts: Option<gst::ClockTime>,
    /// A digest rather than the bytes, so a mismatch prints readably.
    bytes: (usize, u64),
    video_meta: Option<(gst_video::VideoFormat, Vec<usize>, Vec<i32>)>,
}

/// Bytes and timestamps; the video layout is checked on its own, because
/// the writer's pool adds a GstVideoMeta that a plain pipeline does not.
impl PartialEq for Seen {
    fn eq(&self, other: &Self) -> bool {
        self.pts == other.pts && self.bytes == other.bytes
    }
}

fn seen(buffer: &gst::BufferRef) -> Seen {
    let meta = buffer
        .meta::<gst_video::VideoMeta>()
        .map(|meta| (meta.format(), meta.offset().to_vec(), meta.stride().to_vec()));
    let map = buffer.map_readable().unwrap();
    Seen {
        pts: buffer.pts(),
        bytes: (map.len(), digest(&map)),
        video_meta: meta,
    }
}

/// FNV-1a: enough to tell frames apart, and stable across runs.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn stats(pipeline: &gst::Pipeline, name: &str) -> gst::Structure {
    pipeline.by_name(name).unwrap().property::<gst::Structure>("stats")
}

fn counter(stats: &gst::Structure, field: &str) -> u64 {
    stats.get::<u64>(field).unwrap()
}

/// Runs a pipeline to EOS, failing on an error.
fn run_to_eos(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    for message in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match message.view() {
            gst::MessageView::Eos(_) => return,
            gst::MessageView::Error(err) => panic!("{}: {:?}", err.error(), err.debug()),
            _ => {}
        }
    }
    panic!("no EOS within 120 s");
}

/// The reader's buffers, pulled from an appsink in a thread. `hold` keeps
/// that many buffers and frees them out of order, like a decoder keeping
/// reference frames.
fn read_all(path: &std::path::Path, hold: usize) -> (Vec<Seen>, gst::Structure) {
    let reader = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={} ! appsink name=out sync=false max-buffers=1",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsink = reader.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    reader.set_state(gst::State::Playing).unwrap();
    let mut all = Vec::new();
    let mut held: Vec<gst::Sample> = Vec::new();
    while let Ok(sample) = appsink.pull_sample() {
        all.push(seen(sample.buffer().unwrap()));
        held.push(sample);
        if held.len() > hold {
            // Free them all, middle first and oldest last: out of order.
            while !held.is_empty() {
                held.remove(held.len() / 2);
            }
        }
    }
    drop(held);
    let stats = stats(&reader, "src");
    reader.set_state(gst::State::Null).unwrap();
    (all, stats)
}

fn reference(source: &str) -> Vec<Seen> {
    let pipeline = gst::parse::launch(&format!("{source} ! appsink name=out sync=false"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let appsink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut all = Vec::new();
    while let Ok(sample) = appsink.pull_sample() {
        all.push(seen(sample.buffer().unwrap()));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    all
}

/// Streams `source` through a sink and a source in this process (the ring
/// and socket are the real ones) and returns what the reader saw and both
/// sides' stats.
fn stream(source: &str, sink_extra: &str, hold: usize) -> (Vec<Seen>, gst::Structure, gst::Structure) {
    init();
    let path = socket_path("stream");
    let writer = gst::parse::launch(&format!(
        "{source} ! shmringsink name=sink socket-path={} {sink_extra}",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || read_all(&reader_path, hold));
    run_to_eos(&writer);
    let writer_stats = stats(&writer, "sink");
    let (seen, reader_stats) = reader.join().unwrap();
    writer.set_state(gst::State::Null).unwrap();
    (seen, writer_stats, reader_stats)
}

const VIDEO: &str = "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,format=I420,width=320,height=240";

#[test]
fn video_crosses_without_a_single_copy() {
    let (seen, writer, reader) = stream(VIDEO, "", 0);
    assert_eq!(seen, reference(VIDEO), "bytes and timestamps must match one process");
    // The pool gave upstream buffers with GstVideoMeta; the reader must
    // carry the same layout.
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 240)
        .build()
        .unwrap();
    let layout = (
        gst_video::VideoFormat::I420,
        info.offset().to_vec(),
        info.stride().to_vec(),
    );
    assert!(
        seen.iter().all(|frame| frame.video_meta.as_ref() == Some(&layout)),
        "{:?}",
        seen[0].video_meta
    );
    assert_eq!(counter(&writer, "buffers"), 60);
    assert_eq!(counter(&writer, "bytes-copied"), 0, "writer stats: {writer}");
    assert_eq!(counter(&writer, "buffers-zero-copy"), 60, "writer stats: {writer}");
    assert_eq!(counter(&reader, "bytes-copied"), 0, "reader stats: {reader}");
    assert_eq!(counter(&reader, "buffers-zero-copy"), 60, "reader stats: {reader}");
}

#[test]
fn foreign_memory_is_copied_once() {
    // identity drop-allocation hides the ring's pool from videotestsrc,
    // which then renders into its own memory.
    let source = format!("{VIDEO} ! identity drop-allocation=true");
    let (seen, writer, _) = stream(&source, "", 0);
    assert_eq!(seen, reference(VIDEO));
    assert_eq!(
        counter(&writer, "bytes-copied"),
        60 * 320 * 240 * 3 / 2,
        "writer stats: {writer}"
    );
    assert_eq!(counter(&writer, "buffers-zero-copy"), 0);
}

/// Small buffers travel inline in the record queue: copied once on each
/// side (cheaper than a block and its release at 256 bytes), and intact.
#[test]
fn small_audio_travels_inline_and_intact() {
    let audio = "audiotestsrc num-buffers=500 samplesperbuffer=64 ! audio/x-raw,format=S16LE,rate=48000,channels=2";
    let (seen, writer, reader) = stream(audio, "", 0);
    assert_eq!(seen, reference(audio));
    assert_eq!(counter(&writer, "bytes-copied"), 500 * 256);
    assert_eq!(counter(&reader, "bytes-copied"), 500 * 256, "reader stats: {reader}");
    assert_eq!(counter(&reader, "peak-held-bytes"), 0, "reader stats: {reader}");
}

#[test]
fn downstream_holding_buffers_out_of_order_never_wedges_the_ring() {
    // A ring of 6 frames while downstream holds 4 and then frees them out
    // of order: past half the ring the reader must copy instead of wrapping.
    let frame = 320 * 240 * 3 / 2;
    let (seen, _, reader) = stream(VIDEO, &format!("ring-size={}", 6 * (frame + 4096)), 4);
    assert_eq!(seen, reference(VIDEO));
    assert!(
        counter(&reader, "bytes-copied") > 0,
        "the reader should have copied under pressure: {reader}"
    );
    assert!(
        counter(&reader, "buffers-zero-copy") > 0,
        "and wrapped when it could: {reader}"
    );
}

#[test]
fn pool_buffers_dropped_before_render_leave_no_gap() {
    // videorate drops frames it took from the pool when it halves the rate;
    // those reservations become padding and the stream still matches.
    let source = "videotestsrc num-buffers=60 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! videorate drop-only=true ! video/x-raw,framerate=15/1";
    let (seen, _, _) = stream(source, "", 0);
    assert_eq!(seen, reference(source));
}

#[test]
fn a_queue_between_upstream_and_the_sink_never_deadlocks() {
    // Upstream runs ahead of the sink here, allocating pool buffers while
    // earlier ones wait in the queue: a mix of ring and ordinary memory that
    // once left the sink waiting for space only its own queue could free.
    let source = "videotestsrc num-buffers=200 pattern=ball ! video/x-raw,format=I420,width=320,height=240 ! queue";
    let frame = 320 * 240 * 3 / 2;
    let (seen, writer, _) = stream(source, &format!("ring-size={}", 4 * (frame + 8192)), 0);
    assert_eq!(seen, reference(source));
    assert_eq!(counter(&writer, "buffers"), 200);
}
