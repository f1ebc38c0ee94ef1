//! A flushing seek in the writer's pipeline reaches the reader's pipeline,
//! in another process, as it would downstream in one process: FLUSH_START
//! and FLUSH_STOP (with reset-time), then the new segment, and the seek
//! target as the first buffer; a `sync=true` sink after the reader drops
//! no frame as late afterwards.

use gst::prelude::*;

mod common;
use common::*;

const TARGET: gst::ClockTime = gst::ClockTime::from_seconds(6);
const STOP: gst::ClockTime = gst::ClockTime::from_seconds(8);

/// The pts of an `identity`/`fakesink` last-message line of a buffer.
fn pts(line: &str) -> Option<&str> {
    let start = line.find("pts: ")? + "pts: ".len();
    let rest = &line[start..];
    Some(&rest[..rest.find(',')?])
}

/// Runs a writer whose pipeline seeks (flushing) to 6 s once the reader
/// has shown frame 60, and checks what the reader's pipeline saw.
fn flushing_seek_crosses(test: &str, writer_sink: &str) {
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let writer = parse_pipeline(&format!(
        "videotestsrc ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! shmringsink socket-path={} {writer_sink}",
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
    reader.wait_for_stdout(&["pts: 0:00:02.000000000"]);
    writer
        .seek(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            TARGET,
            gst::SeekType::Set,
            STOP,
        )
        .expect("the writer seeks");
    wait_for_eos(&writer, "writer");
    let finished = reader.finish();
    finished.assert_success();
    assert_no_criticals_here("the writer");
    let lines: Vec<&str> = finished.stdout.lines().collect();
    let described = || finished.describe();
    let flush_stop = lines
        .iter()
        .position(|line| line.contains("identity0: last-message = event") && line.contains("flush-stop"))
        .unwrap_or_else(|| panic!("the reader saw no FLUSH_STOP\n{}", described()));
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
        described()
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
        Some("0:00:06.000000000"),
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
    // 6 s to 8 s at 30 frames per second.
    assert_eq!(passed.len(), 60, "buffers after the flush: {passed:?}");
    assert_eq!(
        rendered, passed,
        "the sync=true sink dropped frames as late after the flush"
    );
}

/// The writer runs ahead unpaced, so the ring is full of the old stream and
/// the writer blocked on it when the seek comes (`when-full=block`).
#[test]
fn a_flushing_seek_reaches_a_reader_behind_a_full_ring() {
    flushing_seek_crosses("a_flushing_seek_reaches_a_reader_behind_a_full_ring", "when-full=block");
}

/// A writer paced by its clock, in `when-full=drop`.
#[test]
fn a_flushing_seek_reaches_a_reader_in_drop_mode() {
    flushing_seek_crosses(
        "a_flushing_seek_reaches_a_reader_in_drop_mode",
        "when-full=drop sync=true",
    );
}
