//! A heap the writer cannot create is an error an application can inspect
//! from a synchronous bus handler: the sink posts it after letting go of
//! the heap lock, which the `stats` getter takes.
//!
//! The heap cannot be made because this process's file-size limit
//! (RLIMIT_FSIZE) is below the heap's size: memfds obey it. That limit
//! holds for the whole process, so this file has this one test.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use gst::prelude::*;

/// The heap asked for, far above the file-size limit.
const RING_SIZE: u64 = 64 << 20;
/// Room for the record queues (256 KiB each), not for the heap.
const FILE_SIZE_LIMIT: u64 = 4 << 20;
/// Bounds a hang; nothing here is timed.
const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn heap_error_lets_a_sync_bus_handler_read_stats() {
    common::init_gst();
    // SAFETY: setrlimit and signal take plain values; ignoring SIGXFSZ makes
    // a write past the limit fail with EFBIG instead of killing the process.
    unsafe {
        let limit = libc::rlimit {
            rlim_cur: FILE_SIZE_LIMIT,
            rlim_max: FILE_SIZE_LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let scratch = common::Scratch::new("heap-failure");
    let socket = scratch.socket();
    let writer = common::parse_pipeline(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240 \
         ! shmringsink name=sink socket-path={} ring-size={RING_SIZE}",
        socket.display()
    ));
    let sink = writer.by_name("sink").expect("the sink is named");
    let (errors, error_seen) = mpsc::channel();
    let watched = sink.clone();
    writer
        .bus()
        .expect("a pipeline has a bus")
        .set_sync_handler(move |_, message| {
            if let gst::MessageView::Error(error) = message.view() {
                // What an application does on an error: look at the counters.
                let stats = watched.property::<gst::Structure>("stats");
                let _ = errors.send((
                    error.debug().map(|debug| debug.to_string()).unwrap_or_default(),
                    stats.get::<u64>("held-bytes").ok(),
                ));
            }
            gst::BusSyncReply::Pass
        });
    let reader = common::parse_pipeline(&format!("shmringsrc socket-path={} ! fakesink", socket.display()));
    writer.set_state(gst::State::Playing).expect("the writer starts");
    reader.set_state(gst::State::Playing).expect("the reader starts");

    // Checked before stopping: stopping a streaming thread that hangs would
    // hang the test instead of failing it.
    let (text, held) = error_seen
        .recv_timeout(WATCHDOG)
        .expect("the writer posts an error, and the handler reading stats returns");
    reader.set_state(gst::State::Null).expect("the reader stops");
    writer.set_state(gst::State::Null).expect("the writer stops");
    assert!(text.contains("heap"), "the error names the heap: {text}");
    assert_eq!(held, Some(0), "stats answer while the error is handled");
}
