//! A reader the writer lets go while it still runs never shows a torn or
//! rewritten frame.
//!
//! In `when-full=drop` a reader that stops reading has its caps and events
//! kept in a backlog; past `MAX_BACKLOG` of them the writer lets it go. The
//! reader may still hold records naming heap blocks it has not read yet:
//! those blocks must stay its own until its socket hangs up, or the writer
//! hands them to the next frames and the reader pushes those frames' bytes
//! under its own timestamps.
//!
//! The writer is this process (appsrc, so that it can send events); the
//! reader that falls behind is a Python program in another process that
//! checks every frame against its timestamp; a second reader keeps the
//! heap's blocks cycling.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{Launch, Scratch};

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    common::wait_until_within(WATCHDOG, what, done);
}
use gst::prelude::*;

/// Debian's interpreter, which has PyGObject (python3-gi).
const PYTHON: &str = "/usr/bin/python3";
/// Bounds a hang; nothing here is timed.
const WATCHDOG: Duration = Duration::from_secs(60);
const WIDTH: usize = 256;
const HEIGHT: usize = 256;
/// GRAY8: one byte a pixel, 64 KiB a frame, so frames travel in blocks.
const FRAME: usize = WIDTH * HEIGHT;
const FRAME_NS: u64 = 33_333_333;
/// Sixteen frames: the lagging reader's share (a third, with two readers)
/// is five.
const RING_SIZE: usize = 16 * FRAME;
/// Events large enough that a few dozen fill a record queue (256 KiB); a
/// lagging reader is let go once more than 256 wait in its backlog.
const EVENT_BYTES: usize = 3000;
const EVENT_BATCH: usize = 16;

/// Reads frames, and prints `ok N` for a frame whose bytes are frame N's
/// (by its timestamp) and `bad N: ...` for any other. Frame N starts with N
/// as 8 little-endian bytes, and every other byte is N % 251.
const CHECKER: &str = r#"
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
pipeline = Gst.parse_launch("shmringsrc socket-path=" + sys.argv[1] + " ! appsink name=sink sync=false max-buffers=1")
sink = pipeline.get_by_name("sink")
pipeline.set_state(Gst.State.PLAYING)
while True:
    sample = sink.emit("try-pull-sample", Gst.SECOND)
    if sample is None:
        message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if message is not None:
            if message.type == Gst.MessageType.ERROR:
                print("error", message.parse_error()[0].message, message.parse_error()[1], flush=True)
            break
        continue
    buffer = sample.get_buffer()
    index = round(buffer.pts / int(sys.argv[2]))
    ok, info = buffer.map(Gst.MapFlags.READ)
    data = bytes(info.data)
    buffer.unmap(info)
    stamped = int.from_bytes(data[:8], "little")
    fill = bytes([index % 251]) * (len(data) - 8)
    if stamped == index and data[8:] == fill:
        print("ok", index, flush=True)
    else:
        print("bad", index, ": holds frame", stamped, flush=True)
pipeline.set_state(Gst.State.NULL)
"#;

fn frame(index: u64) -> gst::Buffer {
    let mut bytes = vec![(index % 251) as u8; FRAME];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    let buffer_mut = buffer.get_mut().expect("a new buffer is writable");
    buffer_mut.set_pts(gst::ClockTime::from_nseconds(index * FRAME_NS));
    buffer_mut.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
    buffer
}

#[test]
fn reader_dropped_for_its_backlog_never_shows_a_rewritten_frame() {
    let scratch = Scratch::new("dropped-reader");
    let socket = scratch.socket();
    let writer = common::parse_pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate=30/1 \
         ! shmringsink name=sink when-full=drop ring-size={RING_SIZE} socket-path={}",
        socket.display()
    ));
    let appsrc = writer
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .expect("the appsrc");
    let sink = writer.by_name("sink").expect("the sink");
    // Frames that reached the sink: when the last one pushed has, every
    // earlier one was rendered (or lost) already. The sink's own count
    // leaves out frames every reader lost.
    let arrived = common::count_buffers(&sink);
    writer.set_state(gst::State::Playing).expect("the writer starts");

    let mut checker_command = Command::new(PYTHON);
    checker_command
        .arg("-c")
        .arg(CHECKER)
        .arg(&socket)
        .arg(FRAME_NS.to_string());
    let mut lagging = Launch::spawn_command(&scratch, "lagging reader", checker_command);
    let keeping_up = Launch::spawn(
        &scratch,
        "fast reader",
        &format!("shmringsrc socket-path={} ! fakesink", socket.display()),
    );

    let mut next = 0;
    let mut push = |count: u64| {
        for _ in 0..count {
            appsrc.push_buffer(frame(next)).expect("appsrc takes the frame");
            next += 1;
        }
        let pushed = next;
        wait_until(&format!("the sink got {pushed} frames"), || {
            arrived.load(Ordering::SeqCst) == pushed
        });
        pushed
    };
    // Readers are taken in as frames pass.
    let deadline = Instant::now() + WATCHDOG;
    while sink.property::<u32>("readers") < 2 {
        assert!(Instant::now() < deadline, "timed out waiting for both readers to link");
        push(1);
        thread::sleep(Duration::from_millis(10));
    }
    let last = push(3) - 1;
    lagging.wait_for_stdout(&[&format!("ok {last}\n")]);
    lagging.freeze();
    // Frames it will not read for now: its share of the heap fills, and
    // its record queue names those blocks.
    push(20);
    // Events in small batches, each followed by a frame (appsrc hands
    // queued events on as it streams): the fast reader's queue never fills,
    // while the lagging reader's backlog grows past what the writer keeps.
    let deadline = Instant::now() + WATCHDOG;
    let mut sent = 0u64;
    while sink.property::<u32>("readers") > 1 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the lagging reader to be let go"
        );
        for _ in 0..EVENT_BATCH {
            let structure = gst::Structure::builder("test/filler")
                .field("index", sent)
                .field("padding", "x".repeat(EVENT_BYTES))
                .build();
            assert!(appsrc.send_event(gst::event::CustomDownstream::new(structure)));
            sent += 1;
        }
        push(1);
    }
    assert!(sent > 256, "the backlog overflowed after {sent} events");
    // The frames the fast reader gets now cycle through the heap: blocks
    // taken back from the lagging reader would be written here.
    push(60);
    lagging.thaw();

    appsrc.end_of_stream().expect("appsrc ends");
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
    keeping_up.finish().assert_success();
    let lagging = lagging.finish();
    lagging.assert_no_critical();

    let bad: Vec<&str> = lagging.stdout.lines().filter(|line| line.starts_with("bad")).collect();
    assert!(
        bad.is_empty(),
        "the dropped reader showed rewritten frames:\n{}",
        lagging.describe()
    );
    let shown = lagging.stdout.lines().filter(|line| line.starts_with("ok")).count();
    assert!(
        shown > 3,
        "the dropped reader read what it was sent before it was let go\n{}",
        lagging.describe()
    );
    assert!(
        lagging.stdout.contains("went away") || lagging.stdout.contains("let this reader go"),
        "the dropped reader says that the writer let it go\n{}",
        lagging.describe()
    );
    common::assert_no_criticals_here("the writer's process");
}
