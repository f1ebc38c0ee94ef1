//! A peer shares our eventfds' open file descriptions, so it can clear
//! O_NONBLOCK on them and saturate their counters. Neither may block the
//! wake-up we write or the drain we read, and both sides must notice.
//!
//! Each step that could block runs on its own thread under a watchdog, so a
//! regression fails the test instead of hanging it.

use std::os::fd::BorrowedFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::write;

use gstshmring::ring::{self, ChannelSizes, Payload, RecordHeader, RecordKind};

const SIZES: ChannelSizes = ChannelSizes {
    record_capacity: 16 * 1024,
    release_slots: 64,
    heap_size: 64 * 1024,
};
const WATCHDOG: Duration = Duration::from_secs(20);
/// The largest value an eventfd counter holds: one more write of 1 blocks,
/// or fails with EAGAIN on a non-blocking fd.
const SATURATED: u64 = u64::MAX - 1;

/// What a hostile peer does to a shared eventfd: makes it blocking.
fn clear_nonblocking(fd: BorrowedFd<'_>) {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL"));
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).expect("F_SETFL");
}

fn is_nonblocking(fd: BorrowedFd<'_>) -> bool {
    OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL")).contains(OFlag::O_NONBLOCK)
}

/// Runs `step` on a thread and fails if it has not returned within the
/// watchdog: it is blocked in a read or write.
fn must_not_block<T: Send + 'static>(what: &str, step: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(step());
    });
    finished
        .recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what} blocked for {WATCHDOG:?}"))
}

fn buffer_header(sequence: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Buffer,
        flags: 0,
        pts: sequence,
        dts: sequence,
        duration: 1,
        offset: sequence,
        offset_end: sequence + 1,
    }
}

/// The reader makes the writer's wake-up eventfd blocking and fills its
/// counter, then sleeps: the writer's commit still returns, the records
/// still arrive, O_NONBLOCK is back, and the writer knows what happened.
#[test]
fn a_saturated_blocking_wakeup_fd_does_not_block_the_writer() {
    let (writer, _heap, mut reader) = ring::channel(SIZES).expect("creating a channel");
    let (mut records, _releases) = writer.into_parts();
    let data_fd = reader.records.data_fd();
    clear_nonblocking(data_fd);
    write(data_fd, &SATURATED.to_ne_bytes()).expect("saturating the counter");
    assert!(
        reader.records.prepare_wait().expect("preparing to sleep"),
        "an empty queue is slept on"
    );

    let mut records = must_not_block("the writer's commit and wake-up", move || {
        for sequence in 0..3u64 {
            let mut grant = records
                .grant(Payload::Inline { len: 8 })
                .expect("a grant")
                .expect("room in an empty queue");
            assert!(grant.write_inline(0, &sequence.to_ne_bytes()));
            grant.commit(&buffer_header(sequence));
        }
        records
    });
    assert!(
        records.peer_tampered(),
        "the writer did not notice the cleared O_NONBLOCK"
    );
    assert!(is_nonblocking(reader.records.data_fd()), "O_NONBLOCK was not put back");

    reader.records.finish_edge_wait();
    for sequence in 0..3u64 {
        let record = reader.records.peek().expect("a valid record").expect("a record");
        assert_eq!(record.header().pts, sequence);
        assert_eq!(record.inline_to_vec(), sequence.to_ne_bytes());
        record.release();
    }
    // The writer keeps working after the peer's meddling.
    let grant = records.grant(Payload::Inline { len: 0 }).expect("a grant");
    assert!(grant.is_some(), "the writer cannot write after the tampering");
}

/// The reader makes the writer's own space eventfd blocking with its counter
/// at zero: the writer's drain after a wake-up (here, with nothing to read)
/// still returns.
#[test]
fn a_blocking_empty_fd_does_not_block_the_drain() {
    let (writer, _heap, reader) = ring::channel(SIZES).expect("creating a channel");
    let (records, mut releases) = writer.into_parts();
    clear_nonblocking(records.space_fd());
    clear_nonblocking(releases.release_fd());

    let (records, releases) = must_not_block("draining the writer's eventfds", move || {
        let mut records = records;
        records.finish_wait();
        releases.finish_wait();
        (records, releases)
    });
    assert!(records.peer_tampered(), "the record queue did not notice");
    assert!(releases.peer_tampered(), "the release queue did not notice");
    assert!(is_nonblocking(records.space_fd()));
    assert!(is_nonblocking(releases.release_fd()));
    drop(reader);
}

/// The mirror image: the writer makes the reader's wake-up eventfd for
/// released blocks blocking and saturated; the reader's release still
/// returns once the writer sleeps waiting for it.
#[test]
fn a_saturated_blocking_release_fd_does_not_block_the_reader() {
    let (writer, heap, reader) = ring::channel(SIZES).expect("creating a channel");
    let (_records, mut releases) = writer.into_parts();
    let release_fd = releases.release_fd();
    clear_nonblocking(release_fd);
    write(release_fd, &SATURATED.to_ne_bytes()).expect("saturating the counter");
    assert!(
        releases.prepare_wait().expect("preparing to sleep"),
        "an empty release queue is slept on"
    );
    let mut producer = reader.releases;
    let producer = must_not_block("the reader's release and wake-up", move || {
        producer.push(0).expect("room in the release queue");
        producer
    });
    assert!(
        producer.peer_tampered(),
        "the reader did not notice the cleared O_NONBLOCK"
    );
    releases.finish_edge_wait();
    let mut taken = Vec::new();
    releases.take_all(|offset| taken.push(offset)).expect("valid releases");
    assert_eq!(taken, [0]);
    drop(heap);
}
