//! A reader re-pointed while it plays: setting `socket-path` on a PLAYING
//! shmringsrc switches it to another writer, with no restart of its
//! pipeline, one DISCONT at the switch, nothing torn and no error.

mod common;

use std::sync::{Arc, Mutex};

use common::{DEADLINE, Launch, Scratch, assert_no_criticals_here, init_gst, parse_pipeline, wait_until};
use gst::prelude::*;

/// 10 ms of 48 kHz mono per buffer: a tone of 500 Hz crosses zero about 10
/// times in one, a tone of 4 kHz about 80 times.
const SAMPLES: usize = 480;
const LOW_HZ: u32 = 500;
const HIGH_HZ: u32 = 4000;
/// Buffers the recorder takes from each writer.
const WANTED: usize = 50;

/// A live tone into a sink (at `address`: `socket-path=...` or
/// `stream=...`) that neither waits for a reader nor loses buffers for one,
/// so that the recorder gets every buffer from when it joins.
fn start_tone_writer(scratch: &Scratch, name: &str, address: &str, freq: u32) -> Launch {
    let mut writer = Launch::spawn(
        scratch,
        name,
        &format!(
            "-e audiotestsrc is-live=true freq={freq} samplesperbuffer={SAMPLES} ! audio/x-raw,format=S16LE,rate=48000,channels=1 ! shmringsink {address} wait-for-connection=false when-full=block"
        ),
    );
    writer.wait_until_started();
    writer
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Low,
    High,
}

/// Which writer a buffer came from, by its zero crossings; `None` for a
/// buffer of neither tone (torn, or of the wrong size).
fn tone(bytes: &[u8]) -> Option<Tone> {
    if bytes.len() != SAMPLES * 2 {
        return None;
    }
    let samples: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|pair| i16::from_ne_bytes([pair[0], pair[1]]))
        .collect();
    let crossings = samples.windows(2).filter(|pair| (pair[0] < 0) != (pair[1] < 0)).count();
    match crossings {
        8..=12 => Some(Tone::Low),
        76..=84 => Some(Tone::High),
        _ => None,
    }
}

struct Recorded {
    discont: bool,
    tone: Option<Tone>,
}

/// Stops the pipeline when the test ends, also when it fails: dropping a
/// PLAYING pipeline is a CRITICAL, which would hide the failure.
struct Stopping(gst::Pipeline);

impl Drop for Stopping {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Records the low writer in this process with `shmringsrc SOURCE_PROPERTIES`,
/// calls `switch` on the PLAYING source, and records the high writer,
/// started at `high_address`, until its EOS.
fn record_across_a_switch(test: &str, source_properties: &str, high_address: &str, switch: impl FnOnce(&gst::Element)) {
    init_gst();
    let scratch = Scratch::new(test);
    let low_socket = scratch.path("low.sock");
    let mut low = start_tone_writer(
        &scratch,
        "low-writer",
        &format!("socket-path={}", low_socket.display()),
        LOW_HZ,
    );
    let mut high = start_tone_writer(&scratch, "high-writer", high_address, HIGH_HZ);

    let recorder = Stopping(parse_pipeline(&format!(
        "shmringsrc name=src socket-path={} {source_properties} ! appsink name=sink sync=false",
        low_socket.display()
    )));
    let recorder = &recorder.0;
    let recorded = Arc::new(Mutex::new(Vec::<Recorded>::new()));
    let sink = recorder
        .by_name("sink")
        .and_then(|sink| sink.downcast::<gst_app::AppSink>().ok())
        .expect("an appsink named sink");
    let into = recorded.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                into.lock().unwrap().push(Recorded {
                    discont: buffer.flags().contains(gst::BufferFlags::DISCONT),
                    tone: tone(&map),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    recorder.set_state(gst::State::Playing).unwrap();
    let count = || recorded.lock().unwrap().len();
    wait_until("the first writer's buffers", || {
        low.assert_running();
        count() >= WANTED
    });
    let switched_at = count();
    switch(&recorder.by_name("src").unwrap());
    wait_until("the second writer's buffers", || {
        high.assert_running();
        count() >= switched_at + 2 * WANTED
    });
    // The second writer's EOS ends the recording; the first, left without
    // a reader, drops its buffers and ends on its own EOS.
    high.interrupt();
    let bus = recorder.bus().unwrap();
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(DEADLINE.as_secs()),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Warning,
            ],
        )
        .expect("the recording ends within the deadline");
    assert!(
        matches!(message.view(), gst::MessageView::Eos(_)),
        "the recorder posted {message:?}"
    );
    recorder.set_state(gst::State::Null).unwrap();
    high.finish().assert_success();
    low.interrupt();
    low.finish().assert_success();
    assert_no_criticals_here("the recorder");

    let recorded = recorded.lock().unwrap();
    let tones: Vec<_> = recorded.iter().map(|buffer| buffer.tone).collect();
    let torn: Vec<usize> = (0..tones.len()).filter(|&index| tones[index].is_none()).collect();
    assert!(torn.is_empty(), "buffers of neither tone (torn?) at {torn:?}");
    let first_high = tones
        .iter()
        .position(|tone| *tone == Some(Tone::High))
        .expect("the second writer's tone was recorded");
    assert!(first_high >= WANTED, "the first writer's tone came first");
    assert!(
        tones[..first_high].iter().all(|tone| *tone == Some(Tone::Low))
            && tones[first_high..].iter().all(|tone| *tone == Some(Tone::High)),
        "the recording goes back and forth between the writers: {tones:?}"
    );
    let disconts: Vec<usize> = (0..recorded.len()).filter(|&index| recorded[index].discont).collect();
    // GStreamer marks a source's first buffer DISCONT; then only the switch.
    assert_eq!(disconts, [0, first_high], "DISCONT at the start and at the switch only");
}

#[test]
fn socket_path_set_while_playing_switches_writers() {
    let scratch = Scratch::new("repoint-target");
    let high_socket = scratch.path("high.sock");
    record_across_a_switch(
        "repoint",
        "",
        &format!("socket-path={}", high_socket.display()),
        |src| {
            src.set_property("socket-path", high_socket.display().to_string());
        },
    );
}

/// From `socket-path` to `stream`: setting `stream` first names two
/// sockets, which changes nothing; clearing `socket-path` then names the
/// stream's, and the source switches to it. The writer, a child, shares
/// this process's environment and so its stream directory.
#[test]
fn stream_set_while_playing_switches_writers() {
    let name = format!("repoint-test-{}", std::process::id());
    record_across_a_switch("repoint-stream", "", &format!("stream={name}"), |src| {
        src.set_property("stream", &name);
        src.set_property("socket-path", None::<String>);
    });
}

/// A live reader, which maps each writer's timestamps through its own
/// timeline, switches the same way.
#[test]
fn live_reader_switches_writers() {
    let scratch = Scratch::new("repoint-live-target");
    let high_socket = scratch.path("high.sock");
    record_across_a_switch(
        "repoint-live",
        "is-live=true",
        &format!("socket-path={}", high_socket.display()),
        |src| src.set_property("socket-path", high_socket.display().to_string()),
    );
}
