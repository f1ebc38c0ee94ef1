//! `buffer-lists=true` on the source: raw audio buffers that wait in the
//! queue go downstream as buffer lists, with every byte in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::prelude::*;

mod common;
use common::*;

const AUDIO: &str = "audiotestsrc num-buffers=3000 samplesperbuffer=64 wave=saw freq=333 \
                     ! audio/x-raw,format=S16LE,channels=2,rate=48000";

/// The reader sleeps 1 ms a buffer, so the writer, flat out, keeps records
/// waiting in the queue: they must arrive as lists, and the recording must
/// equal the one made in one process.
#[test]
fn waiting_raw_audio_buffers_arrive_as_lists_with_every_byte() {
    init_gst();
    let scratch = Scratch::new("buffer_lists");
    let socket = scratch.socket();
    let expected = scratch.path("expected.raw");
    let received = scratch.path("received.raw");
    play_to_eos(
        &parse_pipeline(&format!("{AUDIO} ! filesink location={}", expected.display())),
        "the reference",
    );
    let writer = start_writer(
        &scratch,
        &format!("{AUDIO} ! shmringsink socket-path={}", socket.display()),
    );
    let reader = parse_pipeline(&format!(
        "shmringsrc socket-path={} buffer-lists=true ! identity name=pace sleep-time=1000 ! filesink location={}",
        socket.display(),
        received.display()
    ));
    let lists = Arc::new(AtomicU64::new(0));
    let counted = lists.clone();
    reader
        .by_name("pace")
        .and_then(|pace| pace.static_pad("sink"))
        .expect("identity has a sink pad")
        .add_probe(gst::PadProbeType::BUFFER_LIST, move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    play_to_eos(&reader, "the reader");
    writer.finish().assert_success();
    assert!(lists.load(Ordering::Relaxed) > 0, "no buffer list reached downstream");
    let (expected, received) = (std::fs::read(&expected).unwrap(), std::fs::read(&received).unwrap());
    assert_eq!(expected.len(), 3000 * 256);
    assert!(
        expected == received,
        "the recording differs from the one made in one process"
    );
    assert_no_criticals_here("the reader");
}
