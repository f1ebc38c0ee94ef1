//! Elements are started and stopped many times in long-lived processes:
//! 1,000 NULL -> PLAYING -> NULL cycles of each element must leave no file
//! descriptor behind and let memory grow by no more than noise.
//!
//! Three set-ups, each with elements made once and cycled:
//! - a shmringsink and a shmringsrc connected through a socket, each cycle
//!   carrying at least one frame;
//! - a shmringsink alone, waiting in `render` for a reader that never comes;
//! - a shmringsrc alone, waiting for a socket that does not exist.
//!
//! Everything runs in one test, so that no other test of this binary opens
//! or closes descriptors meanwhile. Counts are taken after a warm-up, once
//! GStreamer's thread pools and caches are filled.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;

mod common;
use common::*;

const WARM_UP: usize = 50;
const CYCLES: usize = 1000;
/// How much the resident set may grow over `CYCLES`: generous, since the
/// allocator keeps freed memory and GStreamer caches some. A leak of a heap,
/// a mapping or a thread per cycle shows far above it.
const RSS_BOUND: u64 = 8 << 20;
/// 64x48 I420 frames: 4608 bytes, so each travels in a heap block.
const SMALL_VIDEO: &str = "video/x-raw,format=I420,width=64,height=48,framerate=200/1";

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .count()
}

fn rss_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm's second field is the resident set in pages");
    pages * 4096
}

/// What a set-up looked like before and after its cycles.
struct Footprint {
    fds: usize,
    rss: u64,
}

impl Footprint {
    fn now() -> Self {
        Self {
            fds: open_fds(),
            rss: rss_bytes(),
        }
    }
}

struct Pipeline(gst::Pipeline);

impl Pipeline {
    fn parse(description: &str) -> Self {
        let pipeline = gst::parse::launch(description)
            .unwrap_or_else(|err| panic!("parsing {description:?}: {err}"))
            .downcast::<gst::Pipeline>()
            .expect("a description with several elements makes a pipeline");
        Self(pipeline)
    }

    fn set(&self, state: gst::State, what: &str, cycle: usize) {
        if let Err(err) = self.0.set_state(state) {
            panic!("cycle {cycle}: setting the {what} to {state:?} failed: {err}");
        }
        if let Some(message) = self
            .0
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            && let gst::MessageView::Error(err) = message.view()
        {
            panic!("cycle {cycle}: the {what} failed: {} ({:?})", err.error(), err.debug());
        }
    }

    /// Counts the buffers that reach the pad of `element`'s sink pad.
    fn count_buffers(&self, element: &str) -> Arc<AtomicU64> {
        let element = self
            .0
            .by_name(element)
            .unwrap_or_else(|| panic!("no element {element}"));
        common::count_buffers(&element)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Waits until `count` has moved past `from`.
fn wait_for_buffer(count: &AtomicU64, from: u64, what: &str, cycle: usize) {
    let deadline = Instant::now() + DEADLINE;
    while count.load(Ordering::SeqCst) <= from {
        assert!(
            Instant::now() < deadline,
            "cycle {cycle}: no buffer reached the {what} within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `cycle` `WARM_UP` times, then `CYCLES` times between two
/// footprints, and checks them.
fn measure(name: &str, mut cycle: impl FnMut(usize)) {
    for index in 0..WARM_UP {
        cycle(index);
    }
    let before = Footprint::now();
    let started = Instant::now();
    for index in WARM_UP..WARM_UP + CYCLES {
        cycle(index);
    }
    let after = Footprint::now();
    let growth = after.rss.saturating_sub(before.rss);
    println!(
        "{name}: {CYCLES} cycles in {:.1?}; fds {} -> {}; RSS {} KiB -> {} KiB (+{} KiB)",
        started.elapsed(),
        before.fds,
        after.fds,
        before.rss >> 10,
        after.rss >> 10,
        growth >> 10
    );
    assert_eq!(
        after.fds,
        before.fds,
        "{name}: {CYCLES} cycles left {} descriptors open",
        after.fds as i64 - before.fds as i64
    );
    assert!(
        growth < RSS_BOUND,
        "{name}: the resident set grew by {} KiB over {CYCLES} cycles",
        growth >> 10
    );
}

#[test]
fn start_stop_cycles_leak_no_fd_and_no_memory() {
    init_gst();
    let scratch = Scratch::new("cycles");
    let socket = scratch.socket();
    let socket = socket.to_str().expect("scratch paths are UTF-8");

    // A writer and a reader in this process, each cycle carrying frames.
    let writer = Pipeline::parse(&format!(
        "videotestsrc is-live=true ! {SMALL_VIDEO} ! shmringsink socket-path={socket}"
    ));
    let reader = Pipeline::parse(&format!(
        "shmringsrc socket-path={socket} is-live=true ! fakesink name=sink sync=false"
    ));
    let read = reader.count_buffers("sink");
    measure("connected sink and src", |cycle| {
        let from = read.load(Ordering::SeqCst);
        writer.set(gst::State::Playing, "writer", cycle);
        reader.set(gst::State::Playing, "reader", cycle);
        wait_for_buffer(&read, from, "reader's fakesink", cycle);
        // Alternate which side stops first.
        if cycle % 2 == 0 {
            reader.set(gst::State::Null, "reader", cycle);
            writer.set(gst::State::Null, "writer", cycle);
        } else {
            writer.set(gst::State::Null, "writer", cycle);
            reader.set(gst::State::Null, "reader", cycle);
        }
    });
    drop((writer, reader));

    // A sink whose render waits for a reader when it is stopped.
    let lonely_socket = scratch.path("no-reader.sock");
    let lonely_writer = Pipeline::parse(&format!(
        "videotestsrc is-live=true ! {SMALL_VIDEO} ! shmringsink name=sink socket-path={} wait-for-connection=true",
        lonely_socket.display()
    ));
    let rendered = lonely_writer.count_buffers("sink");
    measure("sink alone, waiting for a reader", |cycle| {
        let from = rendered.load(Ordering::SeqCst);
        lonely_writer.set(gst::State::Playing, "writer", cycle);
        wait_for_buffer(&rendered, from, "shmringsink", cycle);
        lonely_writer.set(gst::State::Null, "writer", cycle);
    });
    drop(lonely_writer);

    // A source waiting for a socket that never appears.
    let lonely_reader = Pipeline::parse(&format!(
        "shmringsrc socket-path={} is-live=true ! fakesink sync=false",
        scratch.path("no-writer.sock").display()
    ));
    measure("src alone, waiting for a writer", |cycle| {
        lonely_reader.set(gst::State::Playing, "reader", cycle);
        // Nothing tells when the streaming thread starts waiting for the
        // socket; it has by now, or is about to: either way, stopping must
        // end it. (The sink completes its state change only with a first
        // buffer, so the pipeline's state says nothing either.)
        thread::sleep(Duration::from_millis(2));
        lonely_reader.set(gst::State::Null, "reader", cycle);
    });
    drop(lonely_reader);

    assert_no_criticals_here("this process");
}
