//! Many readers knocking at once: readers started before the writer all wake
//! when its socket appears and connect in the same instant. With
//! `wait-for-readers` the writer waits for all of them, and in `block` mode
//! every one gets every frame, byte for byte, as a one-process run does.

mod common;

use common::{Launch, Scratch, init_gst, is_socket, parse_pipeline, wait_for_eos, wait_until};
use gst::prelude::*;

const FRAMES: u32 = 150;

/// Frames of 4,608 bytes: above the 4 KiB inline limit, so every reader
/// reads them from the one shared heap.
fn video() -> String {
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,format=I420,width=64,height=48,framerate=100/1"
    )
}

/// The checksums of a one-process run of `video()`.
fn reference(scratch: &Scratch) -> Vec<String> {
    let reference = Launch::spawn(scratch, "reference", &format!("{} ! checksumsink", video())).finish();
    reference.assert_success();
    let expected = common::checksums(&reference.stdout);
    assert_eq!(
        expected.len(),
        FRAMES as usize,
        "the reference run printed\n{}",
        reference.describe()
    );
    expected
}

fn assert_every_frame(reader: common::Finished, expected: &[String]) {
    reader.assert_success();
    let got = common::checksums(&reader.stdout);
    assert!(
        got == expected,
        "the {} got {} of {FRAMES} frames, or other bytes or timestamps\n{}",
        reader.name,
        got.len(),
        reader.describe()
    );
}

/// `readers` readers started before a writer that serves `served` of them
/// and waits for as many: each served reader gets every frame, and each of
/// the others is refused at once with the busy error.
fn readers_started_first(readers: usize, served: usize) {
    let scratch = Scratch::new(&format!("readers-at-once-{readers}"));
    let socket = scratch.socket();
    let expected = reference(&scratch);

    let mut launched: Vec<Launch> = (0..readers)
        .map(|index| {
            Launch::spawn(
                &scratch,
                &format!("reader{index}"),
                &format!("shmringsrc socket-path={} ! checksumsink", socket.display()),
            )
        })
        .collect();
    // Each is now in its source's start, waiting for the socket to appear.
    for reader in &mut launched {
        reader.wait_until_started();
    }
    let writer = Launch::spawn(
        &scratch,
        "writer",
        &format!(
            "{} ! shmringsink socket-path={} max-readers={served} wait-for-readers={served} when-full=block",
            video(),
            socket.display()
        ),
    );
    // `finish` kills a child that outlives the deadline and fails the test:
    // the watchdog for a reader left waiting.
    let finished: Vec<_> = launched.into_iter().map(Launch::finish).collect();
    writer.finish().assert_success();
    let (ok, refused): (Vec<_>, Vec<_>) = finished.into_iter().partition(|reader| reader.status.success());
    assert_eq!(
        ok.len(),
        served,
        "readers served of {readers}, with max-readers={served}"
    );
    for reader in ok {
        assert_every_frame(reader, &expected);
    }
    for reader in refused {
        reader.assert_failure(&format!("max-readers ({served})"));
    }
}

#[test]
fn sixteen_readers_started_first_get_every_frame() {
    readers_started_first(16, 16);
}

#[test]
fn thirty_one_readers_started_first_get_every_frame() {
    readers_started_first(31, 31);
}

#[test]
fn readers_beyond_max_readers_started_first_are_refused_not_left_waiting() {
    readers_started_first(20, 16);
}

/// Readers that arrive one by one, each after the one before is linked:
/// the writer holds its first buffer until the third, so that the first two
/// do not start the stream without it.
#[test]
fn writer_waits_for_the_readers_it_was_told_of() {
    init_gst();
    let scratch = Scratch::new("wait-for-readers");
    let socket = scratch.socket();
    let expected = reference(&scratch);
    let writer = parse_pipeline(&format!(
        "{} ! shmringsink name=sink socket-path={} max-readers=3 wait-for-readers=3 when-full=block",
        video(),
        socket.display()
    ));
    writer.set_state(gst::State::Playing).unwrap();
    wait_until("the writer's socket", || is_socket(&socket));
    let sink = writer.by_name("sink").unwrap();
    let mut launched = Vec::new();
    for index in 0..3 {
        let mut reader = Launch::spawn(
            &scratch,
            &format!("reader{index}"),
            &format!("shmringsrc socket-path={} ! checksumsink", socket.display()),
        );
        wait_until("the reader to link", || {
            // The last one starts the stream, and may read all of it and
            // leave before we look; what it read is checked below.
            if index == 2 && reader.exited().is_some() {
                return true;
            }
            reader.assert_running();
            sink.property::<u32>("readers") == index + 1
        });
        launched.push(reader);
    }
    wait_for_eos(&writer, "writer");
    writer.set_state(gst::State::Null).unwrap();
    for reader in launched {
        assert_every_frame(reader.finish(), &expected);
    }
}

/// Waiting for more readers than the sink serves would wait for good: the
/// sink refuses to start, naming both properties.
#[test]
fn wait_for_more_readers_than_served_is_refused() {
    init_gst();
    let scratch = Scratch::new("wait-for-too-many");
    let sink = gst::ElementFactory::make("shmringsink")
        .property("socket-path", scratch.socket().display().to_string())
        .property("max-readers", 2u32)
        .property("wait-for-readers", 3u32)
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    sink.set_bus(Some(&bus));
    assert!(sink.set_state(gst::State::Paused).is_err(), "the sink started");
    let message = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("a failed start posts an error");
    sink.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(err) = message.view() else {
        unreachable!("filtered to errors");
    };
    let debug = err.debug().unwrap_or_default();
    assert!(
        debug.contains("wait-for-readers=3 exceeds max-readers=2"),
        "{}: {debug}",
        err.error()
    );
}
