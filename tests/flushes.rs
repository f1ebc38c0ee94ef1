//! A flushing seek in the writer's pipeline reaches the reader's pipeline,
//! in another process, as it would downstream in one process: FLUSH_START
//! and FLUSH_STOP (with reset-time), then the new segment, and the seek
//! target as the first buffer; a `sync=true` sink after the reader drops
//! no frame as late afterwards.

use std::sync::atomic::Ordering;

use gst::prelude::*;

mod common;
use common::*;

/// A writer's stream and the seek its application does.
struct Seek {
    /// The writer's frame rate.
    framerate: &'static str,
    /// The seek comes once the reader's identity has passed the buffer of
    /// this pts.
    after: &'static str,
    target: gst::ClockTime,
    stop: gst::ClockTime,
    /// The target, as identity prints it.
    target_printed: &'static str,
    /// Frames from the target to the stop.
    frames: usize,
    /// The frames last so long that the reader is stopped once its sink
    /// has the EOS, rather than wait out the last one.
    lasts: bool,
}

/// From frame 60 to 6 s, playing to 8 s, at 30 frames per second.
const AT_FRAME_60: Seek = Seek {
    framerate: "30/1",
    after: "0:00:02.000000000",
    target: gst::ClockTime::from_seconds(6),
    stop: gst::ClockTime::from_seconds(8),
    target_printed: "0:00:06.000000000",
    frames: 60,
    lasts: false,
};

/// The pts of an `identity`/`fakesink` last-message line of a buffer.
fn pts(line: &str) -> Option<&str> {
    let start = line.find("pts: ")? + "pts: ".len();
    let rest = &line[start..];
    Some(&rest[..rest.find(',')?])
}

/// Runs a writer whose pipeline seeks (flushing) as `seek` says, and
/// checks what the reader's pipeline saw.
fn flushing_seek_crosses(test: &str, writer_sink: &str, seek: &Seek) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "videotestsrc ! video/x-raw,format=I420,width=64,height=48,framerate={} ! shmringsink socket-path={} {writer_sink}",
        seek.framerate,
        socket.display()
    ));
    writer.set_state(gst::State::Playing).expect("the writer starts");
    // identity prints every event and buffer it passes; fakesink prints the
    // buffers it renders, and drops those more than 20 ms late.
    let mut reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "-v shmringsrc socket-path={} ! identity silent=false ! fakesink sync=true qos=true max-lateness=20000000 silent=false",
            socket.display()
        ),
    );
    reader.wait_for_stdout(&[&format!("pts: {}", seek.after)]);
    writer
        .seek(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            seek.target,
            gst::SeekType::Set,
            seek.stop,
        )
        .expect("the writer seeks");
    wait_for_eos(&writer, "writer");
    assert_no_criticals_here("the writer");
    reader.wait_for_stdout(&["(fakesink0:sink) E (type: eos"]);
    let (stdout, described) = if seek.lasts {
        // The sink waits out the last frame before it posts EOS.
        let stdout = reader.stdout_text();
        let described = reader.describe();
        reader.kill();
        assert!(
            !described.contains("CRITICAL"),
            "the reader logged a CRITICAL\n{described}"
        );
        (stdout, described)
    } else {
        let finished = reader.finish();
        finished.assert_success();
        (finished.stdout.clone(), finished.describe())
    };
    let lines: Vec<&str> = stdout.lines().collect();
    let flush_stop = lines
        .iter()
        .position(|line| line.contains("identity0: last-message = event") && line.contains("flush-stop"))
        .unwrap_or_else(|| panic!("the reader saw no FLUSH_STOP\n{}", described));
    assert!(
        lines[flush_stop].contains("reset-time=(boolean)true"),
        "the FLUSH_STOP lost its reset-time: {}",
        lines[flush_stop]
    );
    assert!(
        lines[..flush_stop]
            .iter()
            .any(|line| line.contains("identity0: last-message = event") && line.contains("flush-start")),
        "no FLUSH_START came before the FLUSH_STOP\n{}",
        described
    );
    let after = &lines[flush_stop..];
    let passed: Vec<&str> = after
        .iter()
        .filter(|line| line.contains("identity0: last-message = chain"))
        .filter_map(|line| pts(line))
        .collect();
    let rendered: Vec<&str> = after
        .iter()
        .filter(|line| {
            line.contains("fakesink0: last-message = chain") || line.contains("fakesink0: last-message = preroll")
        })
        .filter_map(|line| pts(line))
        .collect();
    assert_eq!(
        passed.first().copied(),
        Some(seek.target_printed),
        "the first buffer after the flush is not the seek target"
    );
    let segment = after
        .iter()
        .position(|line| line.contains("identity0: last-message = event") && line.contains("type: segment"));
    let first_buffer = after
        .iter()
        .position(|line| line.contains("identity0: last-message = chain"));
    assert!(
        segment.is_some() && segment < first_buffer,
        "no segment between the FLUSH_STOP and the first buffer"
    );
    assert_eq!(passed.len(), seek.frames, "buffers after the flush: {passed:?}");
    assert_eq!(
        rendered, passed,
        "the sync=true sink dropped frames as late after the flush"
    );
}

/// The writer runs ahead unpaced, so the ring is full of the old stream and
/// the writer blocked on it when the seek comes (`when-full=block`).
#[test]
fn a_flushing_seek_reaches_a_reader_behind_a_full_ring() {
    flushing_seek_crosses(
        "a_flushing_seek_reaches_a_reader_behind_a_full_ring",
        "when-full=block",
        &AT_FRAME_60,
    );
}

/// A writer paced by its clock, in `when-full=drop`.
#[test]
fn a_flushing_seek_reaches_a_reader_in_drop_mode() {
    flushing_seek_crosses(
        "a_flushing_seek_reaches_a_reader_in_drop_mode",
        "when-full=drop sync=true",
        &AT_FRAME_60,
    );
}

/// The reader's streaming thread is stuck downstream: its sync=true sink
/// waits for the clock to reach a frame 1000 s away. The FLUSH_START must
/// come from elsewhere to free it; were it to wait for the streaming
/// thread, the reader would sit there for 1000 s, and the watchdog fail
/// the test long before.
#[test]
fn a_flushing_seek_frees_a_reader_stuck_in_a_waiting_sink() {
    flushing_seek_crosses(
        "a_flushing_seek_frees_a_reader_stuck_in_a_waiting_sink",
        "when-full=block",
        &Seek {
            framerate: "1/1000",
            after: "0:16:40.000000000",
            target: gst::ClockTime::from_seconds(2000),
            stop: gst::ClockTime::from_seconds(2500),
            target_printed: "0:33:20.000000000",
            frames: 1,
            lasts: true,
        },
    );
}

/// A flush of the reader's own pipeline (an application flushing the
/// source) still works beside the writer's: the stream goes on after it,
/// to the writer's EOS.
#[test]
fn the_reader_can_still_be_flushed_from_its_own_side() {
    let scratch = Scratch::new("the_reader_can_still_be_flushed_from_its_own_side");
    let socket = scratch.socket();
    let writer = start_writer(
        &scratch,
        &format!(
            "videotestsrc num-buffers=120 ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! shmringsink socket-path={}",
            socket.display()
        ),
    );
    let reader = parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} ! fakesink name=sink sync=true",
        socket.display()
    ));
    let source = reader.by_name("src").expect("the source");
    let buffers = count_buffers(&reader.by_name("sink").expect("the sink"));
    reader.set_state(gst::State::Playing).expect("the reader starts");
    wait_until("30 buffers before the flush", || buffers.load(Ordering::SeqCst) >= 30);
    assert!(
        source.send_event(gst::event::FlushStart::new()),
        "the source takes FLUSH_START"
    );
    assert!(
        source.send_event(gst::event::FlushStop::new(true)),
        "the source takes FLUSH_STOP"
    );
    let before_end = buffers.load(Ordering::SeqCst);
    wait_for_eos(&reader, "reader");
    assert_no_criticals_here("the reader");
    writer.finish().assert_success();
    let total = buffers.load(Ordering::SeqCst);
    assert!(
        total > before_end && total <= 120,
        "{total} buffers in all, {before_end} by the flush"
    );
}
