//! `shmringsink` and `shmringsrc` driven through gst-check harnesses.
//!
//! Both elements run in this one test process, but everything between them
//! is real: the unix socket, the sealed memfd and the eventfds, exactly as
//! between two processes. Each test gets its own directory, so tests running
//! in parallel never share a socket-path.
//!
//! Anything that could hang on a bug (a push into a sink, a state change, a
//! handshake) runs on its own thread and is waited for at most `WATCHDOG`:
//! a hang fails the test instead of blocking CI. `WATCHDOG` only bounds
//! hangs; no test asserts how fast anything happens. Harness pulls need no
//! such thread, because `gst_harness_pull` gives up by itself after 60 s.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_check::Harness;
use gstshmring::ipc::{self, Connection};
use gstshmring::ring::{Payload, ReaderChannel, RecordKind};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg, send, socket,
};

/// How long anything may block before the test calls it a hang. Generous,
/// so that a loaded CI machine never trips it.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The ring size of the tests that fill the ring: four 16 KiB buffers do.
const SMALL_RING: u64 = 65536;

static REGISTER: Once = Once::new();

fn init() {
    gst::init().expect("GStreamer initializes");
    // Registering twice fails, and tests share one process.
    REGISTER.call_once(|| gstshmring::plugin_register_static().expect("the shmring plugin registers"));
}

/// A directory of its own for one test's sockets, removed afterwards.
struct TestDir(PathBuf);

impl TestDir {
    fn new(test: &str) -> Self {
        // The pid keeps concurrent runs of this binary (say, two checkouts
        // on one CI host) apart; the test name keeps the tests apart.
        let dir = std::env::temp_dir().join(format!("shmring-elements-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("creating the test directory");
        Self(dir)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Work on a thread of its own, whose result a test waits for at most
/// `WATCHDOG`.
struct Running<T> {
    what: String,
    result: mpsc::Receiver<thread::Result<T>>,
}

fn spawn<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> Running<T> {
    let (sender, result) = mpsc::channel();
    thread::Builder::new()
        .name(what.to_owned())
        .spawn(move || {
            // A panic is sent back rather than lost, so that the test
            // fails with the worker's own message.
            let _ = sender.send(panic::catch_unwind(AssertUnwindSafe(work)));
        })
        .expect("spawning a worker thread");
    Running {
        what: what.to_owned(),
        result,
    }
}

impl<T> Running<T> {
    fn join(self) -> T {
        match self.result.recv_timeout(WATCHDOG) {
            Ok(Ok(value)) => value,
            Ok(Err(payload)) => panic::resume_unwind(payload),
            // The stuck thread is left behind: nothing can unblock it, and
            // the process exit reaps it.
            Err(_) => panic!("{} still blocked after {WATCHDOG:?}: it hangs", self.what),
        }
    }
}

/// Runs `work` to completion on another thread, failing the test if it hangs.
fn bounded<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    spawn(what, work).join()
}

/// Drops a harness, which takes its element to NULL: that must not hang
/// either, whatever the element was waiting for.
fn teardown(what: &str, harness: Harness) {
    bounded(what, move || drop(harness));
}

/// Polls `done` until it holds, failing the test after `WATCHDOG`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {WATCHDOG:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// The scheduler state of thread `tid` of this process ('R', 'S', ...).
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The state follows the parenthesized command name, which may itself
    // contain spaces and parentheses, so split at the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Waits until thread `tid` sleeps in the kernel. The tests that unblock an
/// element use this to make sure the element is really blocked (in a poll)
/// when they unblock it, rather than merely on its way there.
fn wait_until_asleep(tid: i32) {
    wait_until(&format!("thread {tid} going to sleep"), || {
        thread_state(tid) == Some('S')
    });
}

/// The thread of this process named `name`, once it exists. GStreamer names
/// a pad's streaming thread `element:pad`, which is how a test finds the
/// task thread of a source.
fn find_thread(name: &str) -> i32 {
    let mut found = None;
    wait_until(&format!("thread {name} starting"), || {
        found = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .find(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name))
            .and_then(|task| task.file_name().to_str()?.parse().ok());
        found.is_some()
    });
    found.expect("wait_until returned, so the thread was found")
}

/// A sink fed as from a file. A harness answers latency queries as a live
/// source unless told otherwise, which would make `when-full=auto` drop for
/// a slow reader, and a reader that is not live rebase the timestamps (see
/// the README's `is-live`), where these tests check that they arrive as
/// they were sent.
fn sink_harness(path: &Path, properties: &str) -> Harness {
    let mut harness = Harness::new_parse(&format!(
        "shmringsink socket-path=\"{}\" when-full=block {properties}",
        path.display()
    ));
    harness.set_live(false);
    harness
}

/// A bus that collects the messages of a harness's element. Harnesses have
/// no pipeline, so without one, errors and warnings would go nowhere.
fn watch_bus(harness: &Harness) -> gst::Bus {
    let bus = gst::Bus::new();
    harness
        .element()
        .expect("the harness has an element")
        .set_bus(Some(&bus));
    bus
}

/// The text of the next message of type `kind` (error or warning) on `bus`.
fn next_message(bus: &gst::Bus, kind: gst::MessageType) -> String {
    let message = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(WATCHDOG.as_secs()), &[kind])
        .unwrap_or_else(|| panic!("no {kind:?} message within {WATCHDOG:?}"));
    match message.view() {
        gst::MessageView::Error(error) => format!("{} ({:?})", error.error(), error.debug()),
        gst::MessageView::Warning(warning) => format!("{} ({:?})", warning.error(), warning.debug()),
        other => panic!("asked for {kind:?}, got {other:?}"),
    }
}

/// What reached the output of a source, in stream order.
enum Seen {
    Event(gst::Event),
    Buffer,
}

/// A `shmringsrc` under a harness, with a record of everything it pushed.
/// The harness keeps buffers and events in separate queues; the record keeps
/// their interleaving, which some tests check.
struct SrcSide {
    harness: Harness,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl SrcSide {
    /// Starts a source reading from `path`. `name` names its task thread
    /// (`name:src`), so it must be unique among the tests and short: thread
    /// names are cut at 15 bytes.
    fn start(path: &Path, name: &str) -> Self {
        let mut harness = Harness::new_parse(&format!("shmringsrc name={name} socket-path=\"{}\"", path.display()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        // The harness finds elements by factory name; there is just one.
        harness.add_probe(
            "shmringsrc",
            "src",
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_pad, info| {
                let mut seen = record.lock().expect("the probe never panics");
                match &info.data {
                    Some(gst::PadProbeData::Buffer(_)) => seen.push(Seen::Buffer),
                    // Buffers the source found waiting together.
                    Some(gst::PadProbeData::BufferList(list)) => seen.extend(list.iter().map(|_| Seen::Buffer)),
                    Some(gst::PadProbeData::Event(event)) => seen.push(Seen::Event(event.clone())),
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
        // A harnessed source is not started for us, so that a test can set
        // it up first.
        harness.play();
        Self { harness, seen }
    }

    fn stop(self) {
        teardown("stopping the src", self.harness);
    }

    /// The events that came out of the source, up to and including EOS,
    /// which ends what a test looks at.
    fn pull_until_eos(&mut self) -> Vec<gst::Event> {
        let mut events = Vec::new();
        loop {
            let event = self.harness.pull_event().expect("an event, ending with EOS");
            let eos = event.type_() == gst::EventType::Eos;
            events.push(event);
            if eos {
                return events;
            }
        }
    }

    /// The stream as it came out, as event names and "buffer", leaving out
    /// stream-start: basesrc makes one of its own, which the element drops
    /// downstream of this record. `stream_ids` checks what comes out.
    fn shape(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("the probe never panics")
            .iter()
            .filter_map(|item| match item {
                Seen::Buffer => Some("buffer".to_owned()),
                Seen::Event(event) if event.type_() == gst::EventType::StreamStart => None,
                Seen::Event(event) => Some(event.type_().name().to_string()),
            })
            .collect()
    }

    /// What the source pushed in the events `pick` picks, in order.
    fn events_seen<T>(&self, pick: impl Fn(gst::EventView<'_>) -> Option<T>) -> Vec<T> {
        self.seen
            .lock()
            .expect("the probe never panics")
            .iter()
            .filter_map(|item| match item {
                Seen::Event(event) => pick(event.view()),
                Seen::Buffer => None,
            })
            .collect()
    }

    fn caps_seen(&self) -> Vec<gst::Caps> {
        self.events_seen(|event| match event {
            gst::EventView::Caps(caps) => Some(caps.caps_owned()),
            _ => None,
        })
    }

    fn segments_seen(&self) -> Vec<gst::Segment> {
        self.events_seen(|event| match event {
            gst::EventView::Segment(segment) => Some(segment.segment().clone()),
            _ => None,
        })
    }
}

/// The stream ids of the stream-start events among `events`.
fn stream_ids(events: &[gst::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event.view() {
            gst::EventView::StreamStart(start) => Some(start.stream_id().to_owned()),
            _ => None,
        })
        .collect()
}

/// The stream id the harness gave the stream it feeds into `sink`.
fn harness_stream_id(sink: &Harness) -> String {
    let pad = sink.srcpad().expect("a sink harness has a src pad");
    let start = pad
        .sticky_event::<gst::event::StreamStart>(0)
        .expect("the harness starts a stream when it is set up");
    start.stream_id().to_owned()
}

fn audio_caps(rate: i32, channels: i32) -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("rate", rate)
        .field("channels", channels)
        .field("layout", "interleaved")
        .build()
}

/// `len` bytes that differ from one `seed` to the next, so that a buffer
/// delivered in the wrong place or mangled does not compare equal.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A buffer whose payload begins with `sequence`, to recognise it later.
fn numbered(sequence: u64, len: usize) -> gst::Buffer {
    let mut payload = pattern(sequence as u8, len);
    payload[..8].copy_from_slice(&sequence.to_le_bytes());
    gst::Buffer::from_mut_slice(payload)
}

fn sequence_of(buffer: &gst::BufferRef) -> u64 {
    let map = buffer.map_readable().expect("a readable buffer");
    u64::from_le_bytes(map[..8].try_into().expect("a numbered buffer has 8 leading bytes"))
}

fn ms(value: u64) -> gst::ClockTime {
    gst::ClockTime::from_mseconds(value)
}

fn assert_same_buffer(expected: &gst::BufferRef, actual: &gst::BufferRef, which: usize) {
    assert_eq!(actual.pts(), expected.pts(), "pts of buffer {which}");
    assert_eq!(actual.dts(), expected.dts(), "dts of buffer {which}");
    assert_eq!(actual.duration(), expected.duration(), "duration of buffer {which}");
    assert_eq!(actual.offset(), expected.offset(), "offset of buffer {which}");
    assert_eq!(
        actual.offset_end(),
        expected.offset_end(),
        "offset_end of buffer {which}"
    );
    assert_eq!(actual.flags(), expected.flags(), "flags of buffer {which}");
    assert_same_bytes(expected, actual, which);
}

fn assert_same_bytes(expected: &gst::BufferRef, actual: &gst::BufferRef, which: usize) {
    let expected = expected.map_readable().expect("a readable buffer");
    let actual = actual.map_readable().expect("a readable buffer");
    // Not assert_eq!: a dump of two payloads of thousands of bytes would
    // bury the message.
    assert!(
        expected.as_slice() == actual.as_slice(),
        "bytes of buffer {which} differ"
    );
}

/// A reader that attaches to the sink at `path` and then reads nothing, so
/// that the sink's ring fills up. Returns once the sink has served it, which
/// happens when the sink renders its first buffer.
fn idle_reader(path: &Path) -> Running<(Connection, ReaderChannel)> {
    let path = path.to_owned();
    spawn("idle reader", move || {
        // Nothing ever interrupts this reader; the join's watchdog bounds it.
        let interrupt = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).expect("an eventfd");
        ipc::connect_reader(&path, &[interrupt.as_fd()])
            .expect("the sink accepts a reader of the same version")
            .expect("the interrupt never fires")
    })
}

/// Pushes 16 KiB buffers into `sink` until a push fails, counting the ones
/// that succeed in `pushed`. Gives up after 100, which a 64 KiB ring with a
/// reader that never reads cannot take: then the sink did not block.
fn fill_ring(mut sink: Harness, pushed: Arc<AtomicUsize>) -> (Harness, gst::FlowError) {
    for sequence in 0..100 {
        match sink.push(numbered(sequence, 16 * 1024)) {
            Ok(_) => pushed.fetch_add(1, Ordering::SeqCst),
            Err(err) => return (sink, err),
        };
    }
    panic!("100 pushes of 16 KiB into a {SMALL_RING}-byte ring that nobody reads never blocked");
}

/// Takes every record out of `consumer`: the kinds, and the payloads of the
/// buffer records.
fn drain(reader: &mut ReaderChannel) -> (Vec<RecordKind>, Vec<Vec<u8>>) {
    let (mut kinds, mut buffers) = (Vec::new(), Vec::new());
    while let Some(record) = reader.records.peek().expect("the sink writes a sound ring") {
        kinds.push(record.header().kind);
        let payload = match record.payload() {
            Payload::Inline { .. } => record.inline_to_vec(),
            Payload::Block { offset, len } => {
                let bytes = reader.heap.block_to_vec(offset, len).expect("blocks lie in the heap");
                reader.releases.push(offset).expect("the sink takes blocks back");
                bytes
            }
        };
        if record.header().kind == RecordKind::Buffer {
            buffers.push(payload);
        }
        record.release();
    }
    (kinds, buffers)
}

#[test]
fn round_trip_keeps_caps_segment_buffers_and_events() {
    init();
    let dir = TestDir::new("round-trip");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    let mut src = SrcSide::start(&path, "rtsrc");

    let caps = audio_caps(48000, 2);
    sink.set_src_caps(caps.clone());
    let stream_id = harness_stream_id(&sink);
    // No field at its default, so that a field lost on the way shows.
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_rate(2.0);
    segment.set_applied_rate(0.5);
    segment.set_flags(gst::SegmentFlags::SKIP);
    segment.set_start(gst::ClockTime::from_seconds(1));
    segment.set_stop(gst::ClockTime::from_seconds(30));
    segment.set_base(gst::ClockTime::from_seconds(5));
    segment.set_offset(ms(250));
    segment.set_time(gst::ClockTime::from_seconds(7));
    segment.set_position(gst::ClockTime::from_seconds(1));
    segment.set_duration(gst::ClockTime::from_seconds(60));
    assert!(sink.push_event(gst::event::Segment::new(&segment)));

    let mut buffers = Vec::new();
    // basesrc marks the first buffer after a start DISCONT whatever it was,
    // so the first buffer is DISCONT here too and the flags compare equal.
    let mut first = gst::Buffer::from_mut_slice(pattern(1, 1920));
    {
        let first = first.get_mut().expect("a new buffer is writable");
        first.set_pts(ms(1000));
        first.set_dts(ms(990));
        first.set_duration(ms(10));
        first.set_offset(48000);
        first.set_offset_end(48480);
        first.set_flags(gst::BufferFlags::DISCONT);
    }
    buffers.push(first);
    let mut second = gst::Buffer::from_mut_slice(pattern(2, 960));
    {
        let second = second.get_mut().expect("a new buffer is writable");
        second.set_pts(ms(1010));
        second.set_dts(ms(1005));
        second.set_duration(ms(5));
        second.set_offset(48480);
        second.set_offset_end(48720);
        second.set_flags(gst::BufferFlags::DELTA_UNIT | gst::BufferFlags::MARKER);
    }
    buffers.push(second);
    // Untimed, with no offsets: "none" must survive as "none".
    let mut third = gst::Buffer::from_mut_slice(pattern(3, 4));
    third
        .get_mut()
        .expect("a new buffer is writable")
        .set_flags(gst::BufferFlags::DELTA_UNIT | gst::BufferFlags::HEADER);
    buffers.push(third);

    let mut tags = gst::TagList::new();
    tags.make_mut()
        .add::<gst::tags::Title>(&"round trip", gst::TagMergeMode::Append);
    let custom = gst::Structure::builder("shmring-test")
        .field("answer", 42i32)
        .field("label", "through the ring")
        .build();
    let gap = (ms(1020), ms(40));

    let sent = buffers.clone();
    let (sent_tags, sent_custom) = (tags.clone(), custom.clone());
    let sink = bounded("pushing the round-trip stream", move || {
        for (which, buffer) in sent.into_iter().enumerate() {
            sink.push(buffer)
                .unwrap_or_else(|err| panic!("push {which} failed: {err:?}"));
        }
        assert!(sink.push_event(gst::event::Tag::new(sent_tags)));
        assert!(sink.push_event(gst::event::CustomDownstream::new(sent_custom)));
        assert!(sink.push_event(gst::event::Gap::builder(gap.0).duration(gap.1).build()));
        assert!(sink.push_event(gst::event::Eos::new()));
        sink
    });

    let events = src.pull_until_eos();
    for (which, expected) in buffers.iter().enumerate() {
        let actual = src.harness.pull().expect("every pushed buffer comes out");
        assert_same_buffer(expected, &actual, which);
    }
    assert!(src.harness.try_pull().is_none(), "more buffers came out than went in");

    // Downstream sees the writer's stream, once.
    assert_eq!(stream_ids(&events), [stream_id]);
    assert_eq!(src.caps_seen(), [caps]);
    assert_eq!(src.segments_seen(), [segment.upcast()]);
    let seen_tags = src.events_seen(|event| match event {
        gst::EventView::Tag(tag) => Some((tag.tag_owned(), tag.tag().scope())),
        _ => None,
    });
    assert_eq!(seen_tags, [(tags, gst::TagScope::Stream)]);
    let seen_custom = src.events_seen(|event| match event {
        gst::EventView::CustomDownstream(custom) => custom.structure().map(|s| s.to_owned()),
        _ => None,
    });
    assert_eq!(seen_custom, [custom]);
    let gaps = src.events_seen(|event| match event {
        gst::EventView::Gap(seen) => Some(seen.get()),
        _ => None,
    });
    assert_eq!(gaps, [(gap.0, Some(gap.1))]);

    // The events the buffers were pushed between stay between them.
    assert_eq!(
        src.shape(),
        [
            "caps",
            "segment",
            "buffer",
            "buffer",
            "buffer",
            "tag",
            "custom-downstream",
            "gap",
            "eos"
        ]
    );
    teardown("stopping the sink", sink);
    src.stop();
}

// A src already waiting when its sink appears must find it. It once mostly
// did not: `ipc::Listener::bind` renamed the socket into place before
// calling `listen()`, so a src woken by the rename got "connection refused",
// took the socket for a stale one and waited for a directory change that
// never came, while the sink waited for a reader forever.
#[test]
fn src_started_before_its_sink_finds_it() {
    init();
    let dir = TestDir::new("src-first");
    // That window was a few syscalls wide; a src already asleep when the
    // sink appeared hit it about every other time on an idle machine, less
    // often on a busy one, so enough rounds make a regression all but
    // certain to show. A round costs a few milliseconds.
    for round in 0..30 {
        let path = dir.socket(&format!("ring{round}"));
        let name = format!("first{round}");
        let mut src = SrcSide::start(&path, &name);
        wait_until_asleep(find_thread(&format!("{name}:src")));
        let mut sink = sink_harness(&path, "");
        sink.set_src_caps_str("application/x-shmring-test");
        let sink = bounded(&format!("pushing to a src that came first, round {round}"), move || {
            sink.push(numbered(round, 64)).expect("a push to the waiting src");
            sink
        });
        assert_eq!(sequence_of(&src.harness.pull().expect("the buffer comes out")), round);
        teardown("stopping the sink", sink);
        src.stop();
    }
}

// A reader that leaves while the ring has room must not take later buffers
// with it: the sink sees the detach in shared memory before its next write
// and serves the next reader instead.
#[test]
fn reader_that_comes_back_gets_the_stream() {
    init();
    let dir = TestDir::new("come-back");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    let caps = gst::Caps::new_empty_simple("application/x-shmring-test");
    sink.set_src_caps(caps.clone());

    let mut first = SrcSide::start(&path, "again1");
    let mut sink = bounded("pushing to the first reader", move || {
        sink.push(numbered(0, 64)).expect("a push to the first reader");
        sink
    });
    assert_eq!(sequence_of(&first.harness.pull().expect("the buffer comes out")), 0);
    // Stopping closes the first reader's end of the socket at once.
    first.stop();

    let mut second = SrcSide::start(&path, "again2");
    let sink = bounded("pushing after the first reader left", move || {
        sink.push(numbered(1, 64))
            .expect("a push that waits for the next reader");
        sink
    });
    let buffer = second
        .harness
        .pull()
        .expect("the buffer pushed after the first reader left reaches the second");
    assert_eq!(sequence_of(&buffer), 1);
    assert_eq!(second.caps_seen(), [caps]);
    teardown("stopping the sink", sink);
    second.stop();
}

/// A non-sticky event (here a custom one) that passes while no reader is
/// linked, before the first or between two, waits for the next reader like a
/// buffer does, instead of being lost: sticky events are replayed to every
/// new reader, non-sticky ones cannot be.
#[test]
fn events_between_readers_reach_the_next_reader() {
    init();
    let dir = TestDir::new("between");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    sink.set_src_caps(gst::Caps::new_empty_simple("application/x-shmring-test"));
    let before_first = gst::Structure::builder("shmring-test")
        .field("when", "before the first reader")
        .build();
    let between = gst::Structure::builder("shmring-test")
        .field("when", "between two readers")
        .build();

    // Pushed with no reader: the push waits for one.
    let sent = before_first.clone();
    let pushing = spawn("pushing before any reader", move || {
        assert!(sink.push_event(gst::event::CustomDownstream::new(sent)));
        sink.push(numbered(0, 64)).expect("a push to the first reader");
        sink
    });
    let mut first = SrcSide::start(&path, "between1");
    let mut sink = pushing.join();
    assert_eq!(sequence_of(&first.harness.pull().expect("the buffer comes out")), 0);
    first.stop();

    let sent = between.clone();
    let pushing = spawn("pushing between readers", move || {
        assert!(sink.push_event(gst::event::CustomDownstream::new(sent)));
        sink.push(numbered(1, 64)).expect("a push to the second reader");
        sink
    });
    let mut second = SrcSide::start(&path, "between2");
    let sink = pushing.join();
    assert_eq!(sequence_of(&second.harness.pull().expect("the buffer comes out")), 1);

    let custom_events = |side: &SrcSide| {
        side.events_seen(|event| match event {
            gst::EventView::CustomDownstream(custom) => custom.structure().map(|s| s.to_owned()),
            _ => None,
        })
    };
    assert_eq!(custom_events(&second), [between]);
    teardown("stopping the sink", sink);
    second.stop();
    let _ = before_first;
}

#[test]
fn caps_change_mid_stream_reaches_the_reader_in_place() {
    init();
    let dir = TestDir::new("caps-change");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    let mut src = SrcSide::start(&path, "ccsrc");
    let (caps_a, caps_b) = (audio_caps(48000, 2), audio_caps(44100, 1));

    sink.set_src_caps(caps_a.clone());
    let pushed_caps_b = caps_b.clone();
    let sink = bounded("pushing across a caps change", move || {
        for sequence in 0..3 {
            sink.push(numbered(sequence, 1024)).expect("a push under caps A");
        }
        assert!(sink.push_event(gst::event::Caps::new(&pushed_caps_b)));
        for sequence in 3..6 {
            sink.push(numbered(sequence, 1024)).expect("a push under caps B");
        }
        assert!(sink.push_event(gst::event::Eos::new()));
        sink
    });

    src.pull_until_eos();
    let sequences: Vec<u64> = (0..6)
        .map(|_| sequence_of(&src.harness.pull().expect("every pushed buffer comes out")))
        .collect();
    assert_eq!(sequences, [0, 1, 2, 3, 4, 5]);
    assert_eq!(src.caps_seen(), [caps_a, caps_b]);
    assert_eq!(
        src.shape(),
        [
            "caps", "segment", "buffer", "buffer", "buffer", "caps", "buffer", "buffer", "buffer", "eos"
        ]
    );
    teardown("stopping the sink", sink);
    src.stop();
}

/// `ring-time` bounds how far a reader may fall behind in time: with 10 ms
/// and buffers of 1 ms, a reader that reads nothing holds 10 buffers at most,
/// where the queue's size alone would let some 240 wait.
#[test]
fn ring_time_bounds_what_a_reader_may_lag_by() {
    init();
    let dir = TestDir::new("ring-time");
    let path = dir.socket("ring");
    let sink = sink_harness(&path, "ring-time=10000 when-full=block");
    let element = sink.element().expect("the harness has an element");
    let reader = idle_reader(&path);

    let pushed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pushed);
    let pusher = spawn("timed pusher", move || {
        let mut sink = sink;
        sink.set_src_caps_str("application/x-shmring-test");
        for sequence in 0..1000 {
            let mut buffer = numbered(sequence, 1024);
            buffer.make_mut().set_duration(ms(1));
            if let Err(err) = sink.push(buffer) {
                return (sink, err);
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        panic!("1000 buffers of 1 ms went to a reader that reads nothing, with ring-time=10000");
    });
    let (_connection, mut consumer) = reader.join();
    wait_until("the first buffer going into the ring", || {
        pushed.load(Ordering::SeqCst) >= 1
    });
    wait_until_asleep(find_thread("timed pusher"));
    let accepted = pushed.load(Ordering::SeqCst);
    // Caps and events share the queue, so a buffer fewer may fit.
    assert!(
        (9..=10).contains(&accepted),
        "{accepted} buffers of 1 ms wait in a 10 ms ring"
    );

    let change = bounded("setting the blocked sink to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    let (sink, err) = pusher.join();
    assert_eq!(err, gst::FlowError::Flushing);
    let (_, payloads) = drain(&mut consumer);
    assert_eq!(payloads.len(), accepted, "an accepted buffer was lost");
    teardown("stopping the sink", sink);
}

#[test]
fn sink_blocked_on_a_full_ring_stops_on_null() {
    init();
    let dir = TestDir::new("full-ring-null");
    let path = dir.socket("ring");
    let sink = sink_harness(&path, &format!("ring-size={SMALL_RING}"));
    let element = sink.element().expect("the harness has an element");
    let reader = idle_reader(&path);

    let pushed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pushed);
    let pusher = spawn("filling pusher", move || {
        let mut sink = sink;
        sink.set_src_caps_str("application/x-shmring-test");
        fill_ring(sink, counter)
    });
    let (_connection, mut consumer) = reader.join();
    // Once one buffer went through the reader is linked, so from then on the
    // pusher can only go to sleep waiting for room in the ring.
    wait_until("the first buffer going into the ring", || {
        pushed.load(Ordering::SeqCst) >= 1
    });
    wait_until_asleep(find_thread("filling pusher"));

    let change = bounded("setting the blocked sink to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    let (sink, err) = pusher.join();
    assert_eq!(err, gst::FlowError::Flushing);

    // Nothing the sink accepted was lost: every successful push is in the
    // ring, after the replayed sticky events, and intact.
    let (kinds, payloads) = drain(&mut consumer);
    let accepted = pushed.load(Ordering::SeqCst);
    assert_eq!(payloads.len(), accepted);
    assert!(
        kinds[..kinds.len() - accepted]
            .iter()
            .all(|kind| *kind != RecordKind::Buffer)
    );
    for (sequence, payload) in payloads.iter().enumerate() {
        let expected = numbered(sequence as u64, 16 * 1024);
        let expected = expected.map_readable().expect("a readable buffer");
        assert!(
            payload.as_slice() == expected.as_slice(),
            "buffer {sequence} was mangled"
        );
    }
    teardown("stopping the sink", sink);
}

#[test]
fn sink_blocked_on_a_full_ring_unblocks_on_flush_and_resumes() {
    init();
    let dir = TestDir::new("full-ring-flush");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, &format!("ring-size={SMALL_RING}"));
    let sink_pad = sink
        .find_element("shmringsink")
        .expect("the harness holds the shmringsink")
        .static_pad("sink")
        .expect("shmringsink has a sink pad");
    let reader = idle_reader(&path);

    let pushed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pushed);
    let pusher = spawn("flushed pusher", move || {
        sink.set_src_caps_str("application/x-shmring-test");
        fill_ring(sink, counter)
    });
    let (_connection, mut consumer) = reader.join();
    wait_until("the first buffer going into the ring", || {
        pushed.load(Ordering::SeqCst) >= 1
    });
    wait_until_asleep(find_thread("flushed pusher"));

    let pad = sink_pad.clone();
    assert!(bounded("flush-start", move || pad.send_event(gst::event::FlushStart::new())));
    let (mut sink, err) = pusher.join();
    assert_eq!(err, gst::FlowError::Flushing);
    let pad = sink_pad.clone();
    assert!(bounded("flush-stop", move || pad.send_event(gst::event::FlushStop::new(true))));

    // The ring is still full. After the flush the sink must wait for room
    // again, not trip over the old flush: the next push sleeps until the
    // reader makes room, then goes in.
    let pusher = spawn("resumed pusher", move || {
        // flush-stop dropped the sink pad's segment; a stream restarts with one.
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        assert!(sink.push_event(gst::event::Segment::new(&segment)));
        let result = sink.push(numbered(1000, 16 * 1024));
        (sink, result)
    });
    wait_until_asleep(find_thread("resumed pusher"));
    let (_, mut payloads) = drain(&mut consumer);
    let (sink, result) = pusher.join();
    assert_eq!(result, Ok(gst::FlowSuccess::Ok));
    payloads.extend(drain(&mut consumer).1);
    let sequences: Vec<u64> = payloads
        .iter()
        .map(|payload| u64::from_le_bytes(payload[..8].try_into().expect("8 leading bytes")))
        .collect();
    let accepted = pushed.load(Ordering::SeqCst) as u64;
    assert_eq!(sequences, (0..accepted).chain([1000]).collect::<Vec<_>>());
    teardown("stopping the sink", sink);
}

#[test]
fn sink_waiting_for_a_reader_stops_on_null() {
    init();
    let dir = TestDir::new("sink-no-reader");
    let mut sink = sink_harness(&dir.socket("ring"), "");
    let element = sink.element().expect("the harness has an element");
    sink.set_src_caps_str("application/x-shmring-test");
    // wait-for-connection is on, so the first buffer waits for a reader.
    let pusher = spawn("lonely pusher", move || {
        let result = sink.push(numbered(0, 64));
        (sink, result)
    });
    wait_until_asleep(find_thread("lonely pusher"));
    let change = bounded("setting the waiting sink to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    let (sink, result) = pusher.join();
    assert_eq!(result, Err(gst::FlowError::Flushing));
    teardown("stopping the sink", sink);
}

#[test]
fn src_waiting_for_a_sink_that_never_comes_stops_on_null() {
    init();
    let dir = TestDir::new("src-no-sink");
    let src = SrcSide::start(&dir.socket("nobody"), "nosink");
    wait_until_asleep(find_thread("nosink:src"));
    let element = src.harness.element().expect("the harness has an element");
    let change = bounded("setting the waiting src to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    src.stop();
}

#[test]
fn src_connected_to_an_idle_sink_stops_on_null() {
    init();
    let dir = TestDir::new("src-idle-sink");
    let path = dir.socket("ring");
    // The sink listens but never renders, so it never answers the src's
    // hello: the src sits in the handshake.
    let sink = sink_harness(&path, "");
    let src = SrcSide::start(&path, "idlesnk");
    wait_until_asleep(find_thread("idlesnk:src"));
    let element = src.harness.element().expect("the harness has an element");
    let change = bounded("setting the src in the handshake to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    src.stop();
    teardown("stopping the sink", sink);
}

#[test]
fn src_linked_to_a_quiet_sink_stops_on_null() {
    init();
    let dir = TestDir::new("src-quiet-sink");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    let mut src = SrcSide::start(&path, "quiet");
    sink.set_src_caps_str("application/x-shmring-test");
    let sink = bounded("pushing one buffer", move || {
        sink.push(numbered(0, 64)).expect("a push to a linked reader");
        sink
    });
    // The src has the one buffer and now waits on an empty ring.
    assert_eq!(sequence_of(&src.harness.pull().expect("the buffer comes out")), 0);
    wait_until_asleep(find_thread("quiet:src"));
    let element = src.harness.element().expect("the harness has an element");
    let change = bounded("setting the src on an empty ring to NULL", move || {
        element.set_state(gst::State::Null)
    });
    assert_eq!(change, Ok(gst::StateChangeSuccess::Success));
    src.stop();
    teardown("stopping the sink", sink);
}

/// Takes `factory` towards PAUSED, which must fail, and returns the text of
/// the error it posted. (basesink starts on the way to READY, basesrc on the
/// way to PAUSED.) A harness cannot be used here: it asserts that
/// its element starts, and that assertion aborts the whole test binary.
fn start_error(factory: &str, socket_path: Option<&Path>) -> String {
    let mut builder = gst::ElementFactory::make(factory);
    if let Some(path) = socket_path {
        builder = builder.property("socket-path", path.display().to_string());
    }
    let element = builder.build().expect("the element exists");
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert!(element.set_state(gst::State::Paused).is_err(), "{factory} started");
    let message = next_message(&bus, gst::MessageType::Error);
    let _ = element.set_state(gst::State::Null);
    message
}

#[test]
fn missing_socket_path_is_refused_at_start() {
    init();
    for factory in ["shmringsink", "shmringsrc"] {
        let message = start_error(factory, None);
        assert!(message.contains("socket-path is not set"), "{factory}: {message}");
    }
}

#[test]
fn socket_path_in_a_missing_directory_is_refused_at_start() {
    init();
    let dir = TestDir::new("missing-dir");
    let path = dir.socket("no-such-directory").join("ring");
    for factory in ["shmringsink", "shmringsrc"] {
        let message = start_error(factory, Some(&path));
        assert!(message.contains("does not exist"), "{factory}: {message}");
    }
}

#[test]
fn buffer_larger_than_the_ring_is_an_error_and_loses_nothing_before_it() {
    init();
    let dir = TestDir::new("too-large");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, &format!("ring-size={SMALL_RING}"));
    let sink_bus = watch_bus(&sink);
    let mut src = SrcSide::start(&path, "toolarge");
    let src_bus = watch_bus(&src.harness);
    sink.set_src_caps_str("application/x-shmring-test");

    let small = [numbered(0, 1000), numbered(1, 1000)];
    let sent = small.clone();
    let (sink, result) = bounded("pushing an oversized buffer", move || {
        for buffer in sent {
            sink.push(buffer).expect("a buffer that fits");
        }
        let result = sink.push(gst::Buffer::from_mut_slice(vec![7u8; 100_000]));
        (sink, result)
    });
    assert_eq!(result, Err(gst::FlowError::Error));
    let message = next_message(&sink_bus, gst::MessageType::Error);
    assert!(message.contains("raise ring-size"), "{message}");
    assert!(message.contains("100000"), "{message}");

    // Bytes only: basesrc marks the first buffer after a start DISCONT.
    for (which, expected) in small.iter().enumerate() {
        let actual = src.harness.pull().expect("the buffers before the error come out");
        assert_same_bytes(expected, &actual, which);
    }
    // The writer goes away without EOS; the reader says so once it has
    // drained what the writer left.
    teardown("stopping the sink", sink);
    let message = next_message(&src_bus, gst::MessageType::Error);
    assert!(message.contains("went away"), "{message}");
    assert!(src.harness.try_pull().is_none(), "the oversized buffer came out");
    src.stop();
}

#[test]
fn without_wait_for_connection_buffers_drop_until_a_reader_comes() {
    init();
    let dir = TestDir::new("no-wait");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "wait-for-connection=false");
    let caps = audio_caps(48000, 2);
    sink.set_src_caps(caps.clone());
    let stream_id = harness_stream_id(&sink);
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(3));
    segment.set_base(gst::ClockTime::from_seconds(2));
    segment.set_rate(1.5);
    assert!(sink.push_event(gst::event::Segment::new(&segment)));

    // Nobody reads yet: these pushes must return rather than wait.
    let mut sink = bounded("pushing with no reader", move || {
        for sequence in 0..3 {
            sink.push(numbered(sequence, 512))
                .expect("a dropped buffer is not an error");
        }
        sink
    });

    // The sink takes a reader in only while it renders, and the src connects
    // on its own thread, so keep pushing until a buffer comes out: the first
    // one rendered after the src connected.
    let src = SrcSide::start(&path, "nowait");
    let (sink, mut src, first) = bounded("pushing while a reader comes", move || {
        let mut next = 3;
        wait_until("a buffer reaching the late reader", || {
            sink.push(numbered(next, 512)).expect("a push without waiting");
            next += 1;
            src.harness.buffers_in_queue() > 0
        });
        for sequence in next..next + 3 {
            sink.push(numbered(sequence, 512)).expect("a push to the linked reader");
        }
        assert!(sink.push_event(gst::event::Eos::new()));
        (sink, src, next)
    });

    let events = src.pull_until_eos();
    let mut sequences = Vec::new();
    while let Some(buffer) = src.harness.try_pull() {
        sequences.push(sequence_of(&buffer));
    }
    // Everything from the first buffer the reader got on arrives, in order;
    // what was pushed before any reader existed does not.
    let start = sequences[0];
    assert!(start >= 3, "a buffer pushed before the reader existed came out");
    assert_eq!(sequences, (start..first + 3).collect::<Vec<_>>());
    // The reader joined mid-stream and still got the sticky stream-start,
    // caps and segment before the first buffer.
    assert_eq!(stream_ids(&events), [stream_id]);
    assert_eq!(src.caps_seen(), [caps]);
    assert_eq!(src.shape()[..3], ["caps", "segment", "buffer"]);
    assert_eq!(src.segments_seen(), [segment.upcast()]);
    teardown("stopping the sink", sink);
    src.stop();
}

// With wait-for-connection=false a push must never wait, not even for a peer
// that connected and says nothing: its hello is awaited without blocking.
#[test]
fn without_wait_for_connection_a_silent_peer_does_not_block() {
    init();
    let dir = TestDir::new("silent-peer");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "wait-for-connection=false");
    sink.set_src_caps_str("application/x-shmring-test");
    let peer =
        socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).expect("a seqpacket socket");
    connect(peer.as_raw_fd(), &UnixAddr::new(&path).expect("a socket address")).expect("the sink listens");
    let sink = bounded("pushing past a silent peer", move || {
        sink.push(numbered(0, 64)).expect("a dropped buffer is not an error");
        sink
    });
    teardown("stopping the sink", sink);
    // Held open and silent until here, like a reader stuck mid-handshake.
    drop(peer);
}

#[test]
fn reader_with_another_protocol_version_is_refused() {
    init();
    let dir = TestDir::new("bad-version");
    let path = dir.socket("ring");
    let mut sink = sink_harness(&path, "");
    let sink_bus = watch_bus(&sink);
    sink.set_src_caps_str("application/x-shmring-test");
    // The sink serves readers while it renders, so a push waits for one.
    let pusher = spawn("version pusher", move || {
        let result = sink.push(numbered(0, 256));
        (sink, result)
    });

    let socket =
        socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).expect("a seqpacket socket");
    let address = UnixAddr::new(&path).expect("a socket address");
    connect(socket.as_raw_fd(), &address).expect("the sink listens");
    let mut hello = [0u8; 16];
    hello[..8].copy_from_slice(b"SHMRHELO");
    hello[8..12].copy_from_slice(&99u32.to_ne_bytes());
    assert_eq!(send(socket.as_raw_fd(), &hello, MsgFlags::empty()), Ok(16));

    let timeout = PollTimeout::try_from(WATCHDOG).expect("the watchdog fits a poll timeout");
    let mut ready = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut ready, timeout), Ok(1), "no reply within {WATCHDOG:?}");
    // Room for more than a hello and for fds, so that an oversized reply or
    // fds sent to a refused reader would show.
    let mut reply = [0u8; 64];
    let mut control = nix::cmsg_space!([RawFd; 6]);
    let mut iov = [IoSliceMut::new(&mut reply)];
    let received = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("the sink's reply");
    let len = received.bytes;
    let fds: Vec<RawFd> = received
        .cmsgs()
        .expect("readable control messages")
        .flat_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmRights(fds) => fds,
            _ => Vec::new(),
        })
        .collect();
    for fd in &fds {
        let _ = nix::unistd::close(*fd);
    }
    assert!(fds.is_empty(), "a refused reader was sent fds");
    assert_eq!(len, 48);
    assert_eq!(&reply[..8], b"SHMRRING");
    assert_eq!(reply[8..12], ipc::PROTOCOL_VERSION.to_ne_bytes());
    assert_eq!(reply[12..16], 1u32.to_ne_bytes(), "status is not 'version mismatch'");
    let warning = next_message(&sink_bus, gst::MessageType::Warning);
    assert!(warning.contains("version 99"), "{warning}");

    // The sink is still serving: a proper reader gets the waiting buffer.
    let mut src = SrcSide::start(&path, "goodver");
    let (sink, result) = pusher.join();
    assert_eq!(result, Ok(gst::FlowSuccess::Ok));
    assert_eq!(sequence_of(&src.harness.pull().expect("the buffer comes out")), 0);
    teardown("stopping the sink", sink);
    src.stop();
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_not() {
    init();
    let dir = TestDir::new("stale");
    let path = dir.socket("ring");
    // A socket file whose listener is gone, as a crashed sink leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("binding a socket"));
    assert!(
        std::fs::symlink_metadata(&path)
            .expect("the stale file")
            .file_type()
            .is_socket()
    );

    // A plain element rather than a harness: only its start and stop matter
    // here, and a harness would abort the binary if the start failed.
    let first = gst::ElementFactory::make("shmringsink")
        .property("socket-path", path.display().to_string())
        .build()
        .expect("the element exists");
    let bus = gst::Bus::new();
    first.set_bus(Some(&bus));
    assert!(
        first.set_state(gst::State::Ready).is_ok(),
        "the sink did not start over a stale socket: {}",
        next_message(&bus, gst::MessageType::Error)
    );
    assert!(
        Connection::connect(&path).is_ok(),
        "the stale socket was not replaced by a live one"
    );

    let message = start_error("shmringsink", Some(&path));
    assert!(message.contains("already served"), "{message}");
    // The refused sink must leave the live sink's socket alone.
    assert!(
        Connection::connect(&path).is_ok(),
        "the refused sink broke the live socket"
    );

    assert_eq!(first.set_state(gst::State::Null), Ok(gst::StateChangeSuccess::Success));
    assert!(!path.exists(), "the sink left its socket file behind");
}
