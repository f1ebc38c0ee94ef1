//! `realtime-priority` on both elements: the streaming threads that run
//! them switch to SCHED_FIFO, or the element warns and the stream goes on
//! with normal scheduling when the process may not do that.

mod common;

use std::sync::{Arc, Mutex};

use common::Scratch;
use gst::prelude::*;

const PRIORITY: i32 = 7;

/// The scheduling policy and priority of the calling thread.
fn scheduling() -> (i32, i32) {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param for the kernel to fill, for the calling
    // thread.
    let policy = unsafe {
        assert_eq!(libc::sched_getparam(0, &mut param), 0);
        libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK
    };
    (policy, param.sched_priority)
}

/// Whether this process may use SCHED_FIFO at `PRIORITY` (root, or
/// CAP_SYS_NICE, or a high enough RLIMIT_RTPRIO), asked on a thread of its
/// own so that the test's thread keeps its scheduling.
fn may_use_fifo() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param {
            sched_priority: PRIORITY,
        };
        // SAFETY: a valid sched_param, for the calling thread, which ends
        // right after.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    })
    .join()
    .unwrap()
}

/// Records the scheduling of the thread that passes each buffer on `pad`.
fn watch(pad: &gst::Pad) -> Arc<Mutex<Vec<(i32, i32)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        record.lock().unwrap().push(scheduling());
        gst::PadProbeReturn::Ok
    });
    seen
}

#[test]
fn both_streaming_threads_run_at_the_priority_asked_for() {
    gst::init().unwrap();
    gstshmring::plugin_register_static().unwrap();
    let scratch = Scratch::new("realtime");
    let socket = scratch.socket();
    let writer = gst::parse::launch(&format!(
        "audiotestsrc is-live=true samplesperbuffer=64 num-buffers=300 ! audio/x-raw,rate=48000,channels=2 \
         ! queue ! shmringsink name=sink socket-path={} realtime-priority={PRIORITY}",
        socket.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let reader = gst::parse::launch(&format!(
        "shmringsrc name=src socket-path={} realtime-priority={PRIORITY} ! fakesink name=out sync=false",
        socket.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = writer.by_name("sink").unwrap();
    let src = reader.by_name("src").unwrap();
    assert_eq!(sink.property::<u32>("realtime-priority"), PRIORITY as u32);
    assert_eq!(src.property::<u32>("realtime-priority"), PRIORITY as u32);
    // The probe on the sink's pad runs before render on the same thread,
    // so from the second buffer on; the source's after create.
    let written = watch(&sink.static_pad("sink").unwrap());
    let read = watch(&src.static_pad("src").unwrap());
    writer.set_state(gst::State::Playing).unwrap();
    reader.set_state(gst::State::Playing).unwrap();
    let bus = writer.bus().unwrap();
    let ended = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    assert!(matches!(ended.map(|m| m.type_()), Some(gst::MessageType::Eos)));
    let warnings: Vec<_> = [&writer, &reader]
        .iter()
        .flat_map(|pipeline| {
            let bus = pipeline.bus().unwrap();
            std::iter::from_fn(move || bus.pop_filtered(&[gst::MessageType::Warning]))
        })
        .collect();
    writer.set_state(gst::State::Null).unwrap();
    reader.set_state(gst::State::Null).unwrap();

    let written = written.lock().unwrap().clone();
    let read = read.lock().unwrap().clone();
    assert!(
        written.len() == 300 && read.len() > 100,
        "{} written, {} read",
        written.len(),
        read.len()
    );
    if may_use_fifo() {
        assert!(warnings.is_empty(), "{warnings:?}");
        let fifo = (libc::SCHED_FIFO, PRIORITY);
        assert!(written[1..].iter().all(|&seen| seen == fifo), "{:?}", &written[..3]);
        assert!(read.iter().all(|&seen| seen == fifo), "{:?}", &read[..3]);
    } else {
        // One warning from each element, and the stream went on.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            written
                .iter()
                .chain(&read)
                .all(|&(policy, _)| policy != libc::SCHED_FIFO)
        );
    }
}
