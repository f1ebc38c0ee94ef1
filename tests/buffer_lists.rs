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

/// Bytes of buffer `index` of the list tests: distinct in every buffer.
fn list_buffer_bytes(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|at| (index as usize * 7 + at) as u8).collect()
}

/// An application's writer, playing: `appsrc` of raw audio into
/// `shmringsink` (with `sink_properties`), listening on `socket`.
fn app_writer(socket: &std::path::Path, sink_properties: &str) -> (gst::Pipeline, gst_app::AppSrc) {
    let writer = parse_pipeline(&format!(
        "appsrc name=app format=time caps=audio/x-raw,format=S16LE,channels=2,rate=48000,layout=interleaved \
         ! shmringsink socket-path={} {sink_properties}",
        socket.display()
    ));
    let appsrc = writer
        .by_name("app")
        .and_downcast::<gst_app::AppSrc>()
        .expect("the appsrc");
    writer.set_state(gst::State::Playing).expect("the writer starts");
    wait_until("the writer listens", || is_socket(socket));
    (writer, appsrc)
}

/// Buffers `first` to `first + count - 1`, of `len(index)` bytes each and
/// 1333 µs apart, as one list; and their bytes in order.
fn timed_list(first: u64, count: u64, len: impl Fn(u64) -> usize) -> (gst::BufferList, Vec<u8>) {
    let mut list = gst::BufferList::new_sized(count as usize);
    let buffers = list.get_mut().expect("a new list is writable");
    let mut all = Vec::new();
    for index in first..first + count {
        let bytes = list_buffer_bytes(index, len(index));
        all.extend_from_slice(&bytes);
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        let timed = buffer.get_mut().expect("a new buffer is writable");
        timed.set_pts(gst::ClockTime::from_useconds(index * 1333));
        timed.set_duration(gst::ClockTime::from_useconds(1333));
        buffers.add(buffer);
    }
    (list, all)
}

/// An application that pushes buffer lists into `shmringsink`: small
/// buffers go through the sink's `render_list` (one publish per list), a
/// list with a buffer too large to travel inline goes buffer by buffer, and
/// a reader in another process records every byte in order.
#[test]
fn buffer_lists_pushed_into_the_sink_arrive_whole_and_in_order() {
    lists_arrive_whole_and_in_order("sink_buffer_lists", "");
}

/// The same with `ring-time` letting three buffers wait unread: a list of
/// ten never fits at once, and must go buffer by buffer, each waiting for
/// room, rather than lose what does not fit.
#[test]
fn buffer_lists_longer_than_ring_time_arrive_whole_and_in_order() {
    lists_arrive_whole_and_in_order("sink_buffer_lists_ring_time", "ring-time=4000");
}

fn lists_arrive_whole_and_in_order(test: &str, sink_properties: &str) {
    const LISTS: u64 = 300;
    const PER_LIST: u64 = 10;
    const SMALL: usize = 256;
    const LARGE: usize = 20_000;
    init_gst();
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let received = scratch.path("received.raw");
    let (writer, appsrc) = app_writer(&socket, sink_properties);
    let mut reader = Launch::spawn(
        &scratch,
        "reader",
        &format!(
            "shmringsrc socket-path={} ! filesink location={}",
            socket.display(),
            received.display()
        ),
    );
    let mut expected = Vec::new();
    for list_index in 0..LISTS {
        let first = list_index * PER_LIST;
        // One list in fifty holds a buffer that needs a heap block.
        let (list, bytes) = timed_list(first, PER_LIST, |index| {
            if list_index % 50 == 7 && index == first + 3 {
                LARGE
            } else {
                SMALL
            }
        });
        expected.extend_from_slice(&bytes);
        appsrc.push_buffer_list(list).expect("the writer takes the list");
    }
    appsrc.end_of_stream().expect("the writer takes EOS");
    wait_for_eos(&writer, "the writer");
    writer.set_state(gst::State::Null).expect("the writer stops");
    reader.allow(std::time::Duration::from_secs(60));
    reader.finish().assert_success();
    let received = std::fs::read(&received).expect("the reader wrote its recording");
    assert_eq!(received.len(), expected.len(), "bytes were lost or added");
    assert!(received == expected, "the recording differs from what was pushed");
    assert_no_criticals_here("the writer");
}

/// The reader's `stats` counter `name`.
fn reader_counter(source: &gst::Element, name: &str) -> u64 {
    source
        .property::<gst::Structure>("stats")
        .get::<u64>(name)
        .unwrap_or_else(|err| panic!("the reader counts {name}: {err}"))
}

/// A reader in this process, playing: `shmringsrc` (named `source`) into an
/// appsink, so that a test can read the source's counters as it goes; the
/// two pipelines still meet only through the socket and the ring.
fn app_reader(socket: &std::path::Path) -> (gst::Pipeline, gst::Element, gst_app::AppSink) {
    let reader = parse_pipeline(&format!(
        "shmringsrc name=source socket-path={} ! appsink name=out sync=false",
        socket.display()
    ));
    let source = reader.by_name("source").expect("the source is named");
    let out = reader
        .by_name("out")
        .and_downcast::<gst_app::AppSink>()
        .expect("the appsink");
    reader.set_state(gst::State::Playing).expect("the reader starts");
    (reader, source, out)
}

/// A burst test (`test` names its scratch directory): 8 lists of
/// `per_burst` buffers of `len` bytes, each pushed only once the reader has
/// received every buffer of the one before, byte for byte; then waits
/// until `done` holds for the reader's source (`what` says what it waits
/// for), and ends both pipelines.
fn bursts_until(test: &str, per_burst: u64, len: usize, what: &str, done: impl Fn(&gst::Element) -> bool) {
    init_gst();
    let scratch = Scratch::new(test);
    let socket = scratch.socket();
    let (writer, appsrc) = app_writer(&socket, "");
    let (reader, source, out) = app_reader(&socket);
    for burst in 0..8 {
        let first = burst * per_burst;
        let (list, _) = timed_list(first, per_burst, |_| len);
        appsrc.push_buffer_list(list).expect("the writer takes the burst");
        for expected in first..first + per_burst {
            pull_buffer(&out, expected, len);
        }
    }
    wait_until(what, || done(&source));
    end_bursts(&writer, &appsrc, &reader);
}

/// Pulls the next buffer from `out` and checks that it is buffer `index`
/// of `len` bytes, byte for byte.
fn pull_buffer(out: &gst_app::AppSink, index: u64, len: usize) {
    let sample = out
        .try_pull_sample(gst::ClockTime::from_seconds(30))
        .unwrap_or_else(|| panic!("buffer {index} never arrived"));
    let bytes = sample
        .buffer()
        .expect("a sample has a buffer")
        .map_readable()
        .unwrap()
        .to_vec();
    assert_eq!(bytes, list_buffer_bytes(index, len), "buffer {index}");
}

/// Ends both pipelines of a burst test with EOS.
fn end_bursts(writer: &gst::Pipeline, appsrc: &gst_app::AppSrc, reader: &gst::Pipeline) {
    appsrc.end_of_stream().expect("the writer takes EOS");
    wait_for_eos(writer, "the writer");
    wait_for_eos(reader, "the reader");
    writer.set_state(gst::State::Null).expect("the writer stops");
    reader.set_state(gst::State::Null).expect("the reader stops");
    assert_no_criticals_here("the writer and the reader");
}

/// A writer of a stream that is not live pushes bursts of small buffers
/// (lists, so that the reader finds each burst at once and then asks for a
/// batch), each only once the reader has received the one before: a
/// reader whose batched sleep had no bound would never see the next burst,
/// which fills no batch. At least half of the bursts must have ended such
/// a sleep at its bound. Not all: a list that comes while the stream
/// starts, or while the sink has news from a reader to handle, goes out
/// buffer by buffer, and a reader that keeps up with that reads it one
/// buffer at a time and asks for no batch.
#[test]
fn a_burst_that_fills_no_batch_ends_the_batched_sleep_at_its_bound() {
    bursts_until(
        "batch_bound",
        40,
        256,
        "half of the reader's batched sleeps end at their bound",
        |source| reader_counter(source, "batch-sleeps-timed-out") >= 4,
    );
}

/// The same with buffers too large to travel inline: the sink copies each
/// into a heap block, and a reader that finds such buffers coming fast asks
/// for a batch of them too. Each burst must still arrive whole before the
/// writer writes anything more, and at least one batched sleep must have
/// ended without the writer's wake-up (a burst is too short to fill a
/// batch): at its bound, or at the reader's own timer.
#[test]
fn bursts_of_buffers_in_heap_blocks_end_the_batched_sleep_without_the_writer() {
    bursts_until(
        "block_batch_bound",
        8,
        8192,
        "a batched sleep of the reader ends without the writer",
        |source| reader_counter(source, "batch-sleeps-timed-out") + reader_counter(source, "sleeps-ended-by-timer") > 0,
    );
}

/// Buffers in heap blocks that come one by one, steadily and faster than
/// a reader's sleep is worth (about 100 µs apart here): the reader learns
/// the gap and wakes itself one gap after it falls asleep, where the
/// writer would otherwise have to wake it. So in some window of 200
/// buffers its timer ended sleeps and the writer woke it for fewer than
/// half of them (a reader whose estimate of the gap went wrong had the
/// writer wake it for nearly every one). Pushed by a thread until such a
/// window came, on a loaded machine too; every buffer must arrive whole
/// and in order.
#[test]
fn frames_that_come_fast_wake_the_reader_at_its_own_timer() {
    const LEN: usize = 8192;
    const MOST: u64 = 100_000;
    init_gst();
    let scratch = Scratch::new("frame_timer");
    let socket = scratch.socket();
    let (writer, appsrc) = app_writer(&socket, "");
    let (reader, source, out) = app_reader(&socket);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (appsrc, stop) = (appsrc.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut pushed = 0;
            while !stop.load(Ordering::Relaxed) && pushed < MOST {
                let mut buffer = gst::Buffer::from_mut_slice(list_buffer_bytes(pushed, LEN));
                let timed = buffer.get_mut().expect("a new buffer is writable");
                timed.set_pts(gst::ClockTime::from_useconds(pushed * 100));
                timed.set_duration(gst::ClockTime::from_useconds(100));
                appsrc.push_buffer(buffer).expect("the writer takes the buffer");
                pushed += 1;
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            pushed
        })
    };
    const WINDOW: u64 = 200;
    let counters = || {
        (
            reader_counter(&source, "sleeps-ended-by-timer"),
            reader_counter(&source, "wakeups-received"),
        )
    };
    let mut received = 0;
    let mut window_start = counters();
    loop {
        assert!(
            received < MOST,
            "{MOST} buffers 100 µs apart, and in no window of {WINDOW} did the reader's timer \
             end sleeps with the writer waking it for fewer than half"
        );
        pull_buffer(&out, received, LEN);
        received += 1;
        if received % WINDOW == 0 {
            let now = counters();
            if now.0 > window_start.0 && now.1 - window_start.1 < WINDOW / 2 {
                break;
            }
            window_start = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let pushed = pusher.join().expect("the pushing thread");
    for index in received..pushed {
        pull_buffer(&out, index, LEN);
    }
    end_bursts(&writer, &appsrc, &reader);
}

/// What `shmringsink` decided about batching wake-ups for the stream of
/// `source`, from its debug log: `Some(true)` if it found upstream live.
fn sink_found_upstream_live(source: &str) -> Option<bool> {
    let said = Arc::new(std::sync::Mutex::new(None));
    let heard = said.clone();
    gst::log::set_threshold_for_name("shmringsink", gst::DebugLevel::Debug);
    let log = gst::log::add_log_function(move |category, _, _, _, _, _, message| {
        if category.name() != "shmringsink" {
            return;
        }
        let Some(text) = message.get() else {
            return;
        };
        let verdict = if text.starts_with("upstream is live") {
            Some(true)
        } else if text.starts_with("upstream is not live") {
            Some(false)
        } else {
            None
        };
        if verdict.is_some() {
            *heard.lock().unwrap() = verdict;
        }
    });
    let scratch = Scratch::new("upstream_live");
    play_to_eos(
        &parse_pipeline(&format!(
            "{source} num-buffers=20 ! audio/x-raw,format=S16LE,channels=2,rate=48000 \
             ! shmringsink socket-path={} wait-for-connection=false",
            scratch.socket().display()
        )),
        source,
    );
    gst::log::remove_log_function(log);
    gst::log::unset_threshold_for_name("shmringsink");
    *said.lock().unwrap()
}

/// Only a stream whose upstream is not live may leave a reader asleep for a
/// batch: the sink must ask upstream itself, since GstBaseSink answers "not
/// live" for a sink that does not sync, as `shmringsink` does not.
#[test]
fn only_a_stream_that_is_not_live_batches_wake_ups() {
    init_gst();
    assert_eq!(
        sink_found_upstream_live("audiotestsrc is-live=true samplesperbuffer=64"),
        Some(true),
        "a live source's readers must be woken at every record"
    );
    assert_eq!(
        sink_found_upstream_live("audiotestsrc samplesperbuffer=64"),
        Some(false),
        "a source that is not live lets readers ask for batches"
    );
    assert_no_criticals_here("the writers");
}
