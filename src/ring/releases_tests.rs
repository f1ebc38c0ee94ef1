use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::*;
use crate::ring::{self, ChannelSizes, HeapMemory, ReaderChannel, WriterChannel};

fn sizes(slots: u64) -> ChannelSizes {
    ChannelSizes {
        record_capacity: 4096,
        release_slots: slots,
        heap_size: 64 * 1024,
    }
}

/// Both ends of one release queue, and the hostile peer: a second handle on
/// the channel memfd, able to write any byte of it.
struct Ends {
    producer: ReleaseProducer,
    consumer: ReleaseConsumer,
    peer: File,
}

fn ends(slots: u64) -> Ends {
    let (writer, heap, reader) = ring::channel(sizes(slots)).unwrap();
    let peer = File::from(writer.fds(&heap).channel.try_clone_to_owned().unwrap());
    let (_records, consumer) = writer.into_parts();
    Ends {
        producer: reader.releases,
        consumer,
        peer,
    }
}

fn put_u64(file: &File, at: usize, value: u64) {
    file.write_all_at(&value.to_ne_bytes(), at as u64).unwrap();
}

/// Everything the writer takes back, oldest first.
fn take(consumer: &mut ReleaseConsumer) -> Vec<u64> {
    let mut taken = Vec::new();
    let count = consumer.take_all(|offset| taken.push(offset)).unwrap();
    assert_eq!(count, taken.len());
    taken
}

fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, RingError>) {
    match result {
        Err(RingError::Corrupt(_)) => {}
        other => panic!("expected RingError::Corrupt, got {other:?}"),
    }
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
}

#[test]
fn pushes_come_out_in_order() {
    let mut ends = ends(64);
    assert!(take(&mut ends.consumer).is_empty());
    // Any order of blocks, and any value: the writer's books judge them.
    let pushed = [4096, 0, 64, 1 << 20, 128, u64::MAX];
    for offset in pushed {
        ends.producer.push(offset).unwrap();
    }
    assert_eq!(take(&mut ends.consumer), pushed);
    assert!(take(&mut ends.consumer).is_empty());
    ends.producer.push(192).unwrap();
    assert_eq!(take(&mut ends.consumer), [192]);
}

#[test]
fn entries_survive_many_wraps() {
    let slots = 8;
    let mut ends = ends(slots);
    let mut next = 0u64;
    let mut expected = 0u64;
    for round in 0..2000u64 {
        // From one entry to a full queue between takes.
        for _ in 0..1 + round * 5 % slots {
            ends.producer.push(next * 64).unwrap();
            next += 1;
        }
        for offset in take(&mut ends.consumer) {
            assert_eq!(offset, expected * 64);
            expected += 1;
        }
        assert_eq!(expected, next);
    }
    assert!(next > 1000 * slots);
    assert_eq!(ends.producer.write, next);
    assert_eq!(ends.consumer.read, next);
}

#[test]
fn a_release_wakes_the_writer_only_when_it_sleeps_and_once_per_sleep() {
    let mut ends = ends(64);
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    // An awake writer gets no wake-up.
    producer.push(0).unwrap();
    assert_eq!(producer.wakeups_sent(), 0);
    assert!(!readable(consumer.release_fd()));
    assert_eq!(take(consumer), [0]);

    assert!(consumer.prepare_wait().unwrap());
    assert!(!readable(consumer.release_fd()));
    producer.push(64).unwrap();
    assert!(readable(consumer.release_fd()));
    producer.push(128).unwrap();
    assert_eq!(producer.wakeups_sent(), 1);
    consumer.finish_wait();
    assert!(!readable(consumer.release_fd()));

    // With releases waiting, the writer does not sleep, and gets no wake-up.
    assert!(!consumer.prepare_wait().unwrap());
    producer.push(192).unwrap();
    assert_eq!(producer.wakeups_sent(), 1);
    assert!(!readable(consumer.release_fd()));
    assert_eq!(take(consumer), [64, 128, 192]);

    for sleep in 2..10 {
        assert!(consumer.prepare_wait().unwrap());
        assert!(!readable(consumer.release_fd()));
        producer.push(sleep * 64).unwrap();
        producer.push(sleep * 128).unwrap();
        assert_eq!(producer.wakeups_sent(), sleep);
        assert!(readable(consumer.as_fd()));
        consumer.finish_wait();
        assert!(!readable(consumer.release_fd()));
        assert_eq!(take(consumer), [sleep * 64, sleep * 128]);
    }
}

#[test]
fn a_writer_that_stops_taking_releases_is_corrupt_not_a_hang() {
    let slots = 4;
    let mut ends = ends(slots);
    for offset in 0..slots {
        ends.producer.push(offset * 64).unwrap();
    }
    for _ in 0..3 {
        assert_corrupt(ends.producer.push(999 * 64));
    }
    // The refused releases were dropped; the queue kept the first ones.
    assert_eq!(take(&mut ends.consumer), [0, 64, 128, 192]);
    ends.producer.push(256).unwrap();
    assert_eq!(take(&mut ends.consumer), [256]);
}

#[test]
fn release_position_moved_by_the_reader_is_corrupt() {
    let slots = 8;
    let mut ends = ends(slots);
    ends.producer.push(0).unwrap();
    ends.producer.push(64).unwrap();
    assert_eq!(take(&mut ends.consumer), [0, 64]);
    for bad in [1, 0, 2 + slots + 1, u64::MAX] {
        put_u64(&ends.peer, OFFSET_RELEASE_WRITE, bad);
        let mut called = false;
        assert_corrupt(ends.consumer.take_all(|_| called = true));
        assert!(!called, "an entry was taken at write position {bad}");
        assert_corrupt(ends.consumer.prepare_wait());
    }
    // The writer's own view survived the attempts.
    put_u64(&ends.peer, OFFSET_RELEASE_WRITE, 2);
    assert!(take(&mut ends.consumer).is_empty());
    ends.producer.push(128).unwrap();
    assert_eq!(take(&mut ends.consumer), [128]);
}

#[test]
fn release_position_moved_by_the_writer_is_corrupt() {
    let slots = 4;
    let mut ends = ends(slots);
    for offset in 0..slots {
        ends.producer.push(offset).unwrap();
    }
    assert_eq!(take(&mut ends.consumer), [0, 1, 2, 3]);
    // Full again: the next push must look at the writer's position.
    for offset in 4..8 {
        ends.producer.push(offset).unwrap();
    }
    for bad in [3, 0, 9, u64::MAX] {
        put_u64(&ends.peer, OFFSET_RELEASE_READ, bad);
        assert_corrupt(ends.producer.push(100));
    }
    // The reader's own view survived the attempts.
    put_u64(&ends.peer, OFFSET_RELEASE_READ, 4);
    assert_corrupt(ends.producer.push(100));
    assert_eq!(take(&mut ends.consumer), [4, 5, 6, 7]);
    ends.producer.push(8).unwrap();
    assert_eq!(take(&mut ends.consumer), [8]);
}

/// Attaches a reader to `writer`'s channel, as a reader in another process
/// would from the fds it received.
fn attach(writer: &WriterChannel, heap: &HeapMemory) -> ReaderChannel {
    let received = writer.fds(heap).try_clone_to_owned().unwrap();
    ReaderChannel::attach(received, writer.sizes()).unwrap()
}

#[test]
fn starting_positions_from_a_hostile_writer_cannot_panic_the_reader() {
    let slots = 4;
    for (read, write) in [
        (u64::MAX, u64::MAX),
        (u64::MAX - 2, u64::MAX - 2),
        (0, u64::MAX),
        (5, 3),
    ] {
        let heap = HeapMemory::create(64 * 1024).unwrap();
        let writer = WriterChannel::create(sizes(slots)).unwrap();
        let peer = File::from(writer.fds(&heap).channel.try_clone_to_owned().unwrap());
        put_u64(&peer, OFFSET_RELEASE_READ, read);
        put_u64(&peer, OFFSET_RELEASE_WRITE, write);
        let mut reader = attach(&writer, &heap);
        // However the writer set things up, each push is taken or refused
        // as corrupt, and never wraps a position.
        for offset in 0..2 * slots {
            match reader.releases.push(offset) {
                Ok(()) | Err(RingError::Corrupt(_)) => {}
                Err(other) => panic!("read {read}, write {write}: {other:?}"),
            }
        }
    }
}
