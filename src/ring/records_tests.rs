use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::*;
use crate::ring::{self, ChannelSizes, HeapBooks, HeapMemory, ReaderChannel, WriterChannel};

const CAPACITY: u64 = 4096;
const HEAP: u64 = 64 * 1024;
const SIZES: ChannelSizes = ChannelSizes {
    record_capacity: CAPACITY,
    release_slots: 64,
    heap_size: HEAP,
};

/// Both ends of one record queue, the heap as each side maps it, and the
/// hostile peer: a second handle on the channel memfd, able to write any
/// byte of it.
struct Ends {
    producer: Producer,
    consumer: Consumer,
    writer_heap: Arc<HeapMemory>,
    reader_heap: Arc<HeapMemory>,
    peer: File,
}

fn ends() -> Ends {
    let (writer, writer_heap, reader) = ring::channel(SIZES).unwrap();
    let peer = File::from(writer.fds(&writer_heap).channel.try_clone_to_owned().unwrap());
    let (producer, _releases) = writer.into_parts();
    Ends {
        producer,
        consumer: reader.records,
        writer_heap,
        reader_heap: reader.heap,
        peer,
    }
}

fn put_u32(file: &File, at: u64, value: u32) {
    file.write_all_at(&value.to_ne_bytes(), at).unwrap();
}

fn put_u64(file: &File, at: u64, value: u64) {
    file.write_all_at(&value.to_ne_bytes(), at).unwrap();
}

/// Memfd offset of the record byte at stream position `position`.
fn record_at(position: u64) -> u64 {
    CONTROL_SIZE as u64 + position % CAPACITY
}

/// Memfd offsets of a header's fields, for the record at `position`.
fn kind_at(position: u64) -> u64 {
    record_at(position)
}

fn len_at(position: u64) -> u64 {
    record_at(position) + 8
}

fn block_at(position: u64) -> u64 {
    record_at(position) + 56
}

fn caps() -> RecordHeader {
    RecordHeader::untimed(RecordKind::Caps, 0)
}

fn buffer(sequence: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Buffer,
        flags: sequence as u32 ^ 0x4040,
        pts: sequence * 40 + 20,
        dts: sequence * 40,
        duration: 40,
        offset: sequence,
        offset_end: sequence + 1,
    }
}

fn send(producer: &mut Producer, payload: &[u8], header: &RecordHeader) {
    let len = payload.len() as u64;
    let mut grant = producer
        .grant(Payload::Inline { len })
        .unwrap()
        .expect("room for the record");
    assert!(grant.write_inline(0, payload));
    grant.commit(header);
}

fn send_block(producer: &mut Producer, offset: u64, len: u64, header: &RecordHeader) {
    let grant = producer.grant(Payload::Block { offset, len }).unwrap();
    grant.expect("room for the record").commit(header);
}

/// Takes the oldest record out of the queue: its header, where its payload
/// is, and its inline bytes.
fn receive(consumer: &mut Consumer) -> Option<(RecordHeader, Payload, Vec<u8>)> {
    let record = consumer.peek().unwrap()?;
    let taken = (*record.header(), record.payload(), record.inline_to_vec());
    record.release();
    Some(taken)
}

/// The inline bytes of the oldest record, which must be an inline one.
fn receive_inline(consumer: &mut Consumer) -> Vec<u8> {
    let (_, payload, bytes) = receive(consumer).expect("a record");
    assert_eq!(
        payload,
        Payload::Inline {
            len: bytes.len() as u64
        }
    );
    bytes
}

fn assert_corrupt(result: Result<Option<ReadRecord<'_>>, RingError>) {
    match result {
        Err(RingError::Corrupt(_)) => {}
        Err(other) => panic!("expected RingError::Corrupt, got {other:?}"),
        Ok(Some(record)) => panic!("a corrupt record was accepted: {:?}", record.payload()),
        Ok(None) => panic!("a corrupt queue was read as empty"),
    }
}

fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
}

#[test]
fn every_record_kind_round_trips() {
    let mut ends = ends();
    let frame: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let mut books = HeapBooks::new(HEAP);
    let block = books.allocate(frame.len() as u64, ring::reader(0)).unwrap();
    // SAFETY: the block was just allocated and no reader has been sent it.
    unsafe { ends.writer_heap.block_mut(block, frame.len() as u64) }
        .unwrap()
        .copy_from_slice(&frame);

    let inline = [
        (buffer(7), b"frame bytes".to_vec()),
        (caps(), b"video/x-raw, format=I420, width=64, height=48".to_vec()),
        (RecordHeader::untimed(RecordKind::Event, 0x8000_1c06), vec![0xff; 7]),
        (RecordHeader::untimed(RecordKind::VideoLayout, 0), vec![]),
        (RecordHeader::untimed(RecordKind::Event, 0x1), vec![]),
    ];
    for (header, payload) in &inline {
        send(&mut ends.producer, payload, header);
    }
    send_block(&mut ends.producer, block, frame.len() as u64, &buffer(8));
    // An empty buffer can name a block too.
    send_block(&mut ends.producer, 0, 0, &buffer(9));

    for (header, payload) in inline {
        let len = payload.len() as u64;
        assert_eq!(
            receive(&mut ends.consumer),
            Some((header, Payload::Inline { len }, payload))
        );
    }
    let record = ends.consumer.peek().unwrap().unwrap();
    assert_eq!(*record.header(), buffer(8));
    let Payload::Block { offset, len } = record.payload() else {
        panic!("expected a block, got {:?}", record.payload());
    };
    assert_eq!((offset, len), (block, frame.len() as u64));
    assert!(record.inline_to_vec().is_empty());
    assert_eq!(ends.reader_heap.block_to_vec(offset, len).unwrap(), frame);
    record.release();
    assert_eq!(
        receive(&mut ends.consumer),
        Some((buffer(9), Payload::Block { offset: 0, len: 0 }, vec![]))
    );
    assert_eq!(receive(&mut ends.consumer), None);
}

#[test]
fn every_combination_of_set_fields_round_trips() {
    // Each of the 32 combinations of set timing fields, inline and naming a
    // block, all queued before the first is read: the reader takes most
    // trailers with one read of a whole trailer's words, and the last
    // records, whose whole trailer would lie past what was written, word
    // by word.
    let mut ends = ends();
    let headers: Vec<RecordHeader> = (0..32u64)
        .map(|mask| {
            let field = |bit: u64, value: u64| if mask & (1 << bit) != 0 { value } else { NONE };
            RecordHeader {
                kind: RecordKind::Buffer,
                flags: mask as u32,
                pts: field(0, 1000 + mask),
                dts: field(1, 2000 + mask),
                duration: field(2, 3000 + mask),
                offset: field(3, 4000 + mask),
                offset_end: field(4, 5000 + mask),
            }
        })
        .collect();
    for header in &headers {
        send(&mut ends.producer, &[header.flags as u8; 9], header);
        send_block(&mut ends.producer, 64 * u64::from(header.flags), 7, header);
    }
    for header in &headers {
        assert_eq!(
            receive(&mut ends.consumer),
            Some((*header, Payload::Inline { len: 9 }, vec![header.flags as u8; 9]))
        );
        let offset = 64 * u64::from(header.flags);
        assert_eq!(
            receive(&mut ends.consumer),
            Some((*header, Payload::Block { offset, len: 7 }, vec![]))
        );
    }
    assert_eq!(receive(&mut ends.consumer), None);
}

#[test]
fn inline_payloads_are_copied_in_pieces_and_bounds_checked() {
    let mut ends = ends();
    // Push the write position near the end, so that the record wraps.
    let filler = vec![1; (CAPACITY - 2 * RECORD_HEADER_SIZE - 64) as usize];
    send(&mut ends.producer, &filler, &caps());
    assert_eq!(receive_inline(&mut ends.consumer), filler);
    let mut grant = ends.producer.grant(Payload::Inline { len: 200 }).unwrap().unwrap();
    assert!(!grant.write_inline(150, &[9; 51]), "a write past the payload");
    assert!(!grant.write_inline(u64::MAX, &[9]), "a write at an overflowing offset");
    assert!(grant.write_inline(0, &[2; 100]));
    assert!(grant.write_inline(100, &[3; 100]));
    grant.commit(&caps());
    let record = ends.consumer.peek().unwrap().unwrap();
    assert!(!record.read_inline(&mut [0; 199]), "a copy into a shorter buffer");
    assert!(!record.read_inline(&mut [0; 201]), "a copy into a longer buffer");
    let mut copy = [0; 200];
    assert!(record.read_inline(&mut copy));
    record.release();
    assert_eq!(copy[..100], [2; 100]);
    assert_eq!(copy[100..], [3; 100]);
}

#[test]
fn records_are_aligned_and_a_small_one_costs_its_fields_only() {
    let mut ends = ends();
    // A 64-byte payload takes a 16-byte base header and a trailer of the
    // fields that are set: none for caps, four for a timed audio buffer.
    let audio = RecordHeader { dts: NONE, ..buffer(3) };
    for (header, size) in [(caps(), 80), (audio, 112), (buffer(3), 120)] {
        let before = ends.producer.position();
        send(&mut ends.producer, &[6; 64], &header);
        assert_eq!(ends.producer.position() - before, size);
        assert_eq!(
            receive(&mut ends.consumer),
            Some((header, Payload::Inline { len: 64 }, vec![6; 64]))
        );
    }
    for len in [0, 1, 63, 64, 65, 200, 1000] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        send(&mut ends.producer, &bytes, &caps());
        assert_eq!(ends.producer.position() % RECORD_ALIGN, 0, "len {len}");
        assert_eq!(receive_inline(&mut ends.consumer), bytes);
    }
    // Heap blocks of any size, on both sides' mappings.
    let mut books = HeapBooks::new(HEAP);
    for len in [1, 63, 65, 100, 4097, 5000] {
        let block = books.allocate(len, ring::WRITER).unwrap();
        // SAFETY: the block was just allocated and no reader has been sent it.
        let written = unsafe { ends.writer_heap.block_mut(block, len) }.unwrap();
        assert_eq!(written.as_ptr() as usize % BLOCK_ALIGN as usize, 0, "len {len}");
        let read = ends.reader_heap.block_pointer(block, len).unwrap();
        assert_eq!(read.as_ptr() as usize % BLOCK_ALIGN as usize, 0, "len {len}");
    }
}

#[test]
fn full_and_empty() {
    let mut ends = ends();
    assert!(ends.consumer.peek().unwrap().is_none());
    // Records without inline bytes are only a header, 56 bytes for an empty
    // timed buffer and 64 with a block. They are granted while the room left
    // holds the largest header, so the queue fills to within 64 bytes.
    let mut sent = 0;
    loop {
        let payload = if sent % 2 == 0 {
            Payload::Inline { len: 0 }
        } else {
            Payload::Block {
                offset: sent * 64,
                len: 64,
            }
        };
        let Some(grant) = ends.producer.grant(payload).unwrap() else {
            break;
        };
        grant.commit(&buffer(sent));
        sent += 1;
    }
    assert_eq!(sent, 2 * (CAPACITY / 120), "34 pairs of 56 + 64 bytes fill 4080 bytes");
    assert!(ends.producer.position() > CAPACITY - RECORD_HEADER_SIZE);
    assert!(
        ends.producer
            .grant(Payload::Block { offset: 0, len: 64 })
            .unwrap()
            .is_none()
    );
    for sequence in 0..sent {
        let (header, payload, inline) = receive(&mut ends.consumer).unwrap();
        assert_eq!(header, buffer(sequence));
        let expected = if sequence % 2 == 0 {
            Payload::Inline { len: 0 }
        } else {
            Payload::Block {
                offset: sequence * 64,
                len: 64,
            }
        };
        assert_eq!(payload, expected);
        assert!(inline.is_empty());
    }
    assert_eq!(receive(&mut ends.consumer), None);
    assert!(ends.producer.grant(Payload::Inline { len: 0 }).unwrap().is_some());
}

#[test]
fn grant_needs_room_and_a_dropped_grant_writes_nothing() {
    let mut ends = ends();
    // 1000 bytes of caps take a 16-byte header and 1000 bytes: three fit,
    // and a fourth does not, since room is checked for the largest trailer.
    let payload = [7u8; 1000];
    for _ in 0..3 {
        send(&mut ends.producer, &payload, &caps());
    }
    assert!(ends.producer.grant(Payload::Inline { len: 1000 }).unwrap().is_none());
    // The bytes left hold exactly one header with the largest trailer and
    // the largest payload below; one byte more pads to another 8.
    let largest = CAPACITY - 3 * exact_record_size(1000, 0).unwrap() - RECORD_HEADER_SIZE;
    // Filled, then dropped without a commit.
    let filler = vec![0xee; largest as usize];
    let mut grant = ends.producer.grant(Payload::Inline { len: largest }).unwrap().unwrap();
    assert!(grant.write_inline(0, &filler));
    assert!(
        ends.producer
            .grant(Payload::Inline { len: largest + 1 })
            .unwrap()
            .is_none()
    );
    for _ in 0..3 {
        assert_eq!(receive_inline(&mut ends.consumer), payload);
    }
    assert!(ends.consumer.peek().unwrap().is_none());
    assert!(ends.producer.grant(Payload::Inline { len: 1000 }).unwrap().is_some());
}

#[test]
fn peek_without_release_keeps_the_record() {
    let mut ends = ends();
    send(&mut ends.producer, b"first", &caps());
    send(&mut ends.producer, b"second", &caps());
    for _ in 0..2 {
        assert_eq!(ends.consumer.peek().unwrap().unwrap().inline_to_vec(), b"first");
    }
    assert_eq!(receive_inline(&mut ends.consumer), b"first");
    assert_eq!(receive_inline(&mut ends.consumer), b"second");
}

#[test]
fn largest_record_fills_the_queue_and_larger_is_too_large() {
    let mut ends = ends();
    let max = max_inline(CAPACITY);
    let payload: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    send(&mut ends.producer, &payload, &caps());
    assert!(ends.producer.grant(Payload::Inline { len: 0 }).unwrap().is_none());
    assert!(matches!(
        ends.producer.grant(Payload::Inline { len: max + 1 }),
        Err(RingError::TooLarge { payload_len, capacity: CAPACITY }) if payload_len == max + 1
    ));
    // Refused before any arithmetic on the length can overflow.
    for len in [u64::MAX - 63, u64::MAX - 62, u64::MAX] {
        assert!(
            matches!(
                ends.producer.grant(Payload::Inline { len }),
                Err(RingError::TooLarge { .. })
            ),
            "len {len}"
        );
        assert!(
            matches!(ends.producer.prepare_wait(len), Err(RingError::TooLarge { .. })),
            "len {len}"
        );
    }
    assert!(matches!(
        ends.producer.prepare_wait(max + 1),
        Err(RingError::TooLarge { .. })
    ));
    assert_eq!(receive_inline(&mut ends.consumer), payload);
    assert!(ends.producer.grant(Payload::Inline { len: max }).unwrap().is_some());
}

#[test]
fn record_across_the_end_comes_out_contiguous() {
    let mut ends = ends();
    // A first record that ends one base header before 4032 puts the next
    // payload at 4032, so it runs past the end of the queue at 4096.
    let payload_start = CAPACITY - 64;
    let first = payload_start - 2 * RECORD_BASE_SIZE;
    send(&mut ends.producer, &vec![0; first as usize], &caps());
    receive(&mut ends.consumer).unwrap();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    send(&mut ends.producer, &payload, &buffer(5));

    // The payload really is split: its tail sits at the start of the queue.
    let mut tail = vec![0; 1000 - 64];
    ends.peer.read_exact_at(&mut tail, record_at(0)).unwrap();
    assert_eq!(tail, payload[64..]);
    let mut head = [0; 64];
    ends.peer.read_exact_at(&mut head, record_at(payload_start)).unwrap();
    assert_eq!(head, payload[..64]);

    assert_eq!(
        receive(&mut ends.consumer),
        Some((buffer(5), Payload::Inline { len: 1000 }, payload))
    );
}

#[test]
fn records_of_varied_sizes_survive_many_wraps() {
    let mut ends = ends();
    let mut in_flight = VecDeque::new();
    let mut sequence = 0u64;
    while sequence < 3000 {
        // Sizes that put record boundaries at every 64-byte offset, with
        // every fifth record naming a block instead.
        let len = (sequence * 389) % 1500;
        let payload = if sequence % 5 == 4 {
            Payload::Block {
                offset: (sequence * 64) % (HEAP - 2048),
                len,
            }
        } else {
            Payload::Inline { len }
        };
        let bytes: Vec<u8> = (0..payload.inline_len()).map(|i| (i ^ sequence) as u8).collect();
        match ends.producer.grant(payload).unwrap() {
            Some(mut grant) => {
                assert!(grant.write_inline(0, &bytes));
                grant.commit(&buffer(sequence));
                in_flight.push_back((buffer(sequence), payload, bytes));
                sequence += 1;
            }
            None => {
                assert!(!in_flight.is_empty(), "an empty queue refused {payload:?}");
                while let Some(expected) = in_flight.pop_front() {
                    assert_eq!(receive(&mut ends.consumer), Some(expected));
                }
                assert_eq!(receive(&mut ends.consumer), None);
            }
        }
    }
    while let Some(expected) = in_flight.pop_front() {
        assert_eq!(receive(&mut ends.consumer), Some(expected));
    }
    assert_eq!(receive(&mut ends.consumer), None);
    assert!(ends.producer.write > 100 * CAPACITY);
    assert_eq!(ends.consumer.read, ends.producer.write);
}

#[test]
fn commit_wakes_a_sleeping_consumer_once() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    assert!(consumer.prepare_wait().unwrap());
    assert!(!readable(consumer.data_fd()));
    send(producer, b"a", &caps());
    assert!(readable(consumer.data_fd()));
    send(producer, b"b", &caps());
    assert_eq!(producer.wakeups_sent(), 1);
    consumer.finish_wait();
    assert!(!readable(consumer.data_fd()));

    // With data waiting, the consumer does not sleep, and an awake consumer
    // gets no wake-up.
    assert!(!consumer.prepare_wait().unwrap());
    send(producer, b"c", &caps());
    assert_eq!(producer.wakeups_sent(), 1);
    assert!(!readable(consumer.data_fd()));
    for expected in [b"a", b"b", b"c"] {
        assert_eq!(receive_inline(consumer), expected);
    }
    // Nobody waited for room, so taking records woke nobody.
    assert_eq!(consumer.wakeups_sent(), 0);

    // Each later sleep gets exactly one wake-up of its own, block records
    // included.
    for sleep in 2..10 {
        assert!(consumer.prepare_wait().unwrap());
        assert!(!readable(consumer.data_fd()));
        send_block(producer, 0, 64, &caps());
        send_block(producer, 64, 64, &caps());
        assert_eq!(producer.wakeups_sent(), sleep);
        assert!(readable(consumer.data_fd()));
        consumer.finish_wait();
        assert!(!readable(consumer.data_fd()));
        receive(consumer).unwrap();
        receive(consumer).unwrap();
    }
}

/// Bytes one 64-byte buffer record of `buffer(_)` takes: its base, payload
/// and five timing words.
const SMALL_BUFFER_RECORD: u64 = 16 + 64 + 40;

#[test]
fn a_batched_sleep_is_woken_once_its_batch_of_buffers_waits() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    producer.set_batch_wakes(true);
    // Batches of 512 bytes: the fifth record crosses.
    assert!(consumer.prepare_wait_batched(512).unwrap());
    for sequence in 0..4 {
        send(producer, &[sequence as u8; 64], &buffer(sequence));
        assert!(!readable(consumer.data_fd()), "record {sequence} is inside the batch");
    }
    assert_eq!(4 * SMALL_BUFFER_RECORD, 480);
    send(producer, &[4; 64], &buffer(4));
    assert!(readable(consumer.data_fd()), "the batch filled");
    assert_eq!(producer.wakeups_sent(), 1);
    consumer.finish_wait();
    for sequence in 0..5 {
        assert_eq!(receive_inline(consumer), [sequence as u8; 64]);
    }

    // A record that is not a small buffer wakes at once.
    assert!(consumer.prepare_wait_batched(512).unwrap());
    send(producer, &[9; 64], &buffer(9));
    assert!(!readable(consumer.data_fd()));
    send(producer, b"caps", &caps());
    assert!(readable(consumer.data_fd()), "caps woke the batched sleep");
    consumer.finish_wait();
    receive(consumer).unwrap();
    receive(consumer).unwrap();

    // Buffers in heap blocks fill a batch too: 64 bytes each in the queue
    // (a base and six words), so the eighth crosses 512.
    assert!(consumer.prepare_wait_batched(512).unwrap());
    for sequence in 10..17 {
        send_block(producer, 64 * sequence, 64, &buffer(sequence));
        assert!(
            !readable(consumer.data_fd()),
            "block record {sequence} is inside the batch"
        );
    }
    send_block(producer, 64 * 17, 64, &buffer(17));
    assert!(readable(consumer.data_fd()), "the batch of block records filled");
    consumer.finish_wait();
    for sequence in 10..18 {
        let (header, payload, _) = receive(consumer).unwrap();
        assert_eq!(header, buffer(sequence));
        assert_eq!(
            payload,
            Payload::Block {
                offset: 64 * sequence,
                len: 64
            }
        );
    }
    assert_eq!(producer.wakeups_sent(), 3);

    // An event after a buffer in a block wakes at once.
    assert!(consumer.prepare_wait_batched(512).unwrap());
    send_block(producer, 0, 64, &buffer(18));
    assert!(!readable(consumer.data_fd()));
    send(producer, &[1; 8], &RecordHeader::untimed(RecordKind::Event, 0x1));
    assert!(readable(consumer.data_fd()), "an event woke the batched sleep");
    consumer.finish_wait();
    receive(consumer).unwrap();
    receive(consumer).unwrap();
    assert_eq!(producer.wakeups_sent(), 4);
}

#[test]
fn staged_records_are_seen_at_the_publish_with_one_wake_up() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    assert!(consumer.prepare_wait().unwrap());
    for sequence in 0..5 {
        let mut grant = producer.grant(Payload::Inline { len: 64 }).unwrap().unwrap();
        assert!(grant.write_inline(0, &[sequence as u8; 64]));
        grant.stage(&buffer(sequence));
        assert!(!readable(consumer.data_fd()), "record {sequence} is only staged");
    }
    consumer.finish_wait();
    assert!(consumer.peek().unwrap().is_none(), "staged records are not visible");
    assert!(consumer.prepare_wait().unwrap());
    producer.publish();
    assert!(readable(consumer.data_fd()));
    assert_eq!(producer.wakeups_sent(), 1);
    consumer.finish_wait();
    for sequence in 0..5 {
        let (header, _, bytes) = receive(consumer).unwrap();
        assert_eq!((header, bytes), (buffer(sequence), vec![sequence as u8; 64]));
    }
    // Publishing nothing new wakes nobody.
    assert!(consumer.prepare_wait().unwrap());
    producer.publish();
    assert!(!readable(consumer.data_fd()));
    assert_eq!(producer.wakeups_sent(), 1);

    // With batches on, a staged record that is not a small buffer makes the
    // publish wake a batched sleep, however little was staged.
    consumer.finish_wait();
    producer.set_batch_wakes(true);
    assert!(consumer.prepare_wait_batched(CAPACITY / 2).unwrap());
    let mut grant = producer.grant(Payload::Inline { len: 4 }).unwrap().unwrap();
    assert!(grant.write_inline(0, b"caps"));
    grant.stage(&caps());
    send(producer, &[1; 64], &buffer(1));
    assert!(readable(consumer.data_fd()), "the staged caps woke the batched sleep");
    assert_eq!(producer.wakeups_sent(), 2);
}

#[test]
fn room_for_several_records_counts_the_limit_even_in_an_empty_queue() {
    let mut ends = ends();
    let producer = &mut ends.producer;
    let record = record_size(64).unwrap();
    producer.set_limit(3 * record);
    assert!(producer.has_room_for(3 * record).unwrap());
    assert!(
        !producer.has_room_for(4 * record).unwrap(),
        "four records exceed the limit"
    );
    for sequence in 0..3 {
        let mut grant = producer
            .grant(Payload::Inline { len: 64 })
            .unwrap()
            .expect("room was promised");
        assert!(grant.write_inline(0, &[1; 64]));
        grant.stage(&buffer(sequence));
    }
    assert!(!producer.has_room_for(record).unwrap());
    producer.publish();
}

#[test]
fn a_writer_waiting_for_room_first_publishes_what_it_staged() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    let mut staged = 0;
    while let Some(mut grant) = producer.grant(Payload::Inline { len: 64 }).unwrap() {
        assert!(grant.write_inline(0, &[7; 64]));
        grant.stage(&buffer(staged));
        staged += 1;
    }
    assert!(consumer.peek().unwrap().is_none());
    assert!(producer.prepare_wait(64).unwrap(), "the queue is full");
    let mut read = 0;
    while receive(consumer).is_some() {
        read += 1;
    }
    assert_eq!(
        read, staged,
        "the reader saw every staged record once the writer waited"
    );
    assert!(readable(producer.space_fd()), "and made room for the writer");
}

#[test]
fn a_writer_that_does_not_batch_wakes_a_batched_sleep_at_the_first_record() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    // The default: a live stream.
    assert!(consumer.prepare_wait_batched(2048).unwrap());
    send(producer, &[1; 64], &buffer(1));
    assert!(readable(consumer.data_fd()));
    consumer.finish_wait();
    receive(consumer).unwrap();
}

#[test]
fn a_batch_never_outgrows_half_of_what_may_wait_unread() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    producer.set_batch_wakes(true);
    // Three records may wait: the writer would stall before a batch of the
    // whole queue filled, so it wakes the reader at half of that.
    producer.set_limit(3 * SMALL_BUFFER_RECORD);
    assert!(consumer.prepare_wait_batched(CAPACITY).unwrap());
    send(producer, &[1; 64], &buffer(1));
    assert!(!readable(consumer.data_fd()));
    send(producer, &[2; 64], &buffer(2));
    assert!(readable(consumer.data_fd()), "woken at half the limit");
    consumer.finish_wait();
}

#[test]
fn a_record_that_does_not_fit_wakes_a_batched_sleep() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    producer.set_batch_wakes(true);
    producer.set_limit(3 * SMALL_BUFFER_RECORD);
    assert!(consumer.prepare_wait_batched(CAPACITY).unwrap());
    send(producer, &[1; 64], &buffer(1));
    assert!(!readable(consumer.data_fd()));
    // A larger buffer does not fit beside the first, so the batch could
    // fill only after the reader had read: the writer must not wait for it.
    assert!(producer.grant(Payload::Inline { len: 256 }).unwrap().is_none());
    assert!(readable(consumer.data_fd()), "the full queue woke the batched sleep");
    consumer.finish_wait();
    assert_eq!(receive_inline(consumer), [1; 64]);
    assert!(producer.grant(Payload::Inline { len: 256 }).unwrap().is_some());
}

#[test]
fn a_batch_counts_from_the_read_position_published_before_the_sleep() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    producer.set_batch_wakes(true);
    for round in 0..3u64 {
        for sequence in 0..3 {
            send(producer, &[sequence as u8; 64], &buffer(sequence));
        }
        for _ in 0..3 {
            receive(consumer).unwrap();
        }
        assert!(consumer.prepare_wait_batched(128).unwrap());
        send(producer, &[0; 64], &buffer(0));
        assert!(
            !readable(consumer.data_fd()),
            "round {round}: one record is half a batch"
        );
        send(producer, &[0; 64], &buffer(0));
        assert!(readable(consumer.data_fd()), "round {round}: two fill it");
        consumer.finish_wait();
        receive(consumer).unwrap();
        receive(consumer).unwrap();
    }
}

#[test]
fn release_wakes_a_producer_waiting_for_room_once() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    for _ in 0..3 {
        send(producer, &[1; 1000], &caps());
    }
    assert!(producer.grant(Payload::Inline { len: 1000 }).unwrap().is_none());
    assert!(producer.prepare_wait(1000).unwrap());
    assert!(!readable(producer.space_fd()));
    receive(consumer).unwrap();
    assert!(readable(producer.space_fd()));
    receive(consumer).unwrap();
    assert_eq!(consumer.wakeups_sent(), 1);
    producer.finish_wait();
    assert!(!readable(producer.space_fd()));

    // With room, the producer does not sleep, and an awake producer gets no
    // wake-up.
    assert!(!producer.prepare_wait(1000).unwrap());
    receive(consumer).unwrap();
    assert_eq!(consumer.wakeups_sent(), 1);
    assert!(!readable(producer.space_fd()));
    assert_eq!(producer.wakeups_sent(), 0);

    // A record that needs the whole queue waits until it is empty; each
    // sleep gets exactly one wake-up.
    let max = max_inline(CAPACITY);
    for sleep in 2..10 {
        send(producer, &[2; 100], &caps());
        send(producer, &[3; 100], &caps());
        assert!(producer.prepare_wait(max).unwrap());
        receive(consumer).unwrap();
        assert_eq!(consumer.wakeups_sent(), sleep);
        assert!(readable(producer.space_fd()));
        receive(consumer).unwrap();
        assert_eq!(consumer.wakeups_sent(), sleep);
        producer.finish_wait();
        assert!(!readable(producer.space_fd()));
        assert!(producer.grant(Payload::Inline { len: max }).unwrap().is_some());
    }
}

#[test]
fn an_undrained_wake_up_does_not_swallow_the_next() {
    let mut ends = ends();
    let (producer, consumer) = (&mut ends.producer, &mut ends.consumer);
    assert!(consumer.prepare_wait().unwrap());
    send(producer, b"a", &caps());
    // Ended without reading the counter: it stays readable, and the next
    // sleep's wake-up is a new write on top of it.
    consumer.finish_edge_wait();
    receive(consumer).unwrap();
    assert!(consumer.prepare_wait().unwrap());
    send(producer, b"b", &caps());
    assert_eq!(producer.wakeups_sent(), 2);
    assert!(readable(consumer.data_fd()));
    consumer.finish_wait();
    assert!(!readable(consumer.data_fd()));
}

#[test]
fn a_reader_that_leaves_is_seen_and_woken_no_more() {
    let mut ends = ends();
    assert!(!ends.producer.reader_detached());
    // A sleeping reader is still there.
    assert!(ends.consumer.prepare_wait().unwrap());
    assert!(!ends.producer.reader_detached());
    drop(ends.consumer);
    assert!(ends.producer.reader_detached());
    send(&mut ends.producer, b"to nobody", &caps());
    assert_eq!(ends.producer.wakeups_sent(), 0);
}

#[test]
fn the_readers_header_is_a_private_copy() {
    let mut ends = ends();
    send(&mut ends.producer, b"abc", &buffer(1));
    let record = ends.consumer.peek().unwrap().unwrap();
    // The writer rewrites the base header and the trailer (after the 3
    // bytes padded to 8) after the reader checked them.
    ends.peer.write_all_at(&[0xff; 16], record_at(0)).unwrap();
    ends.peer.write_all_at(&[0xff; 40], record_at(24)).unwrap();
    assert_eq!(*record.header(), buffer(1));
    assert_eq!(record.payload(), Payload::Inline { len: 3 });
    assert_eq!(record.inline_to_vec(), b"abc");
    record.release();
    assert!(ends.consumer.peek().unwrap().is_none());
}

#[test]
fn unknown_record_kind_or_reserved_bits_are_corrupt() {
    let mut ends = ends();
    send(&mut ends.producer, b"x", &caps());
    for kind in [0, RecordKind::Flush as u32 + 1, u32::MAX] {
        put_u32(&ends.peer, kind_at(0), kind);
        assert_corrupt(ends.consumer.peek());
    }
    // Bits 6 and 7 of the trailer byte, and the two zero bytes, are
    // reserved; a trailer that runs past what was written is too long.
    let caps_kind = RecordKind::Caps as u32;
    for reserved in [0x40 << 8, 0x80 << 8, 1 << 16, 1 << 24, 0x3f << 8] {
        put_u32(&ends.peer, kind_at(0), caps_kind | reserved);
        assert_corrupt(ends.consumer.peek());
    }
    put_u32(&ends.peer, kind_at(0), caps_kind);
    assert_eq!(
        receive(&mut ends.consumer),
        Some((caps(), Payload::Inline { len: 1 }, b"x".to_vec()))
    );
}

#[test]
fn inline_payload_longer_than_what_was_written_is_corrupt() {
    let mut ends = ends();
    // A base header and 10 bytes of payload, padded to 16, written; 17
    // bytes would need another 8.
    send(&mut ends.producer, &[3; 10], &caps());
    for len in [
        17,
        max_inline(CAPACITY),
        CAPACITY,
        u64::MAX - 63,
        u64::MAX - 62,
        u64::MAX,
    ] {
        put_u64(&ends.peer, len_at(0), len);
        assert_corrupt(ends.consumer.peek());
    }
    // Still corrupt when the writer has written more records after it: a
    // record may not claim the next ones' bytes either.
    send(&mut ends.producer, &[4; 10], &caps());
    put_u64(&ends.peer, len_at(0), 200);
    assert_corrupt(ends.consumer.peek());
    put_u64(&ends.peer, len_at(0), 10);
    assert_eq!(receive_inline(&mut ends.consumer), [3; 10]);
    assert_eq!(receive_inline(&mut ends.consumer), [4; 10]);
}

#[test]
fn block_outside_the_heap_or_misaligned_is_corrupt() {
    let mut ends = ends();
    send_block(&mut ends.producer, 4096, 100, &buffer(1));
    let bad = [
        // (offset, len)
        (HEAP, 64),
        (HEAP - 64, 65),
        (HEAP + 4096, 0),
        (0, HEAP + 1),
        (32, 100),
        (4097, 100),
        (u64::MAX - 63, 64),
        (u64::MAX - 63, u64::MAX),
        (64, u64::MAX),
        (u64::MAX - 1, 1),
    ];
    for (offset, len) in bad {
        put_u64(&ends.peer, block_at(0), offset);
        put_u64(&ends.peer, len_at(0), len);
        assert_corrupt(ends.consumer.peek());
    }
    // `NONE` in the block field names no block in the heap either.
    put_u64(&ends.peer, block_at(0), NONE);
    assert_corrupt(ends.consumer.peek());
    // The last block that fits is fine.
    put_u64(&ends.peer, block_at(0), HEAP - 128);
    put_u64(&ends.peer, len_at(0), 128);
    let (_, payload, _) = receive(&mut ends.consumer).unwrap();
    assert_eq!(
        payload,
        Payload::Block {
            offset: HEAP - 128,
            len: 128
        }
    );
    assert!(ends.reader_heap.block_to_vec(HEAP - 128, 128).is_some());
    send_block(&mut ends.producer, 0, 10, &buffer(2));
    assert_eq!(
        receive(&mut ends.consumer),
        Some((buffer(2), Payload::Block { offset: 0, len: 10 }, vec![]))
    );
}

#[test]
fn write_position_moved_backwards_or_past_the_queue_is_corrupt() {
    let mut ends = ends();
    send(&mut ends.producer, b"a", &caps());
    send(&mut ends.producer, b"b", &caps());
    receive(&mut ends.consumer).unwrap();
    receive(&mut ends.consumer).unwrap();
    let write_position = OFFSET_RECORD_WRITE as u64;
    let write = 2 * exact_record_size(1, 0).unwrap();
    for bad in [write - 8, 0, write + CAPACITY + 8, write + 4, u64::MAX - 7, u64::MAX] {
        put_u64(&ends.peer, write_position, bad);
        assert_corrupt(ends.consumer.peek());
        assert!(
            matches!(ends.consumer.prepare_wait(), Err(RingError::Corrupt(_))),
            "write position {bad}"
        );
    }
    // The consumer's own view survived the attempts.
    put_u64(&ends.peer, write_position, write);
    assert!(ends.consumer.peek().unwrap().is_none());
    assert_eq!(ends.consumer.read, write);
    send(&mut ends.producer, b"c", &caps());
    assert_eq!(receive_inline(&mut ends.consumer), b"c");
}

#[test]
fn read_position_moved_backwards_or_past_the_writer_is_corrupt() {
    let mut ends = ends();
    for _ in 0..3 {
        send(&mut ends.producer, &[0; 1000], &caps());
    }
    receive(&mut ends.consumer).unwrap();
    // The grant finds the queue too full, reloads the read position one
    // record in, and still finds too little room; the grants below must look
    // at the position again.
    let size = exact_record_size(1000, 0).unwrap();
    assert!(CAPACITY - 2 * size < record_size(2100).unwrap());
    assert!(ends.producer.grant(Payload::Inline { len: 2100 }).unwrap().is_none());
    let read_position = OFFSET_RECORD_READ as u64;
    let write = 3 * size;
    for bad in [0, write + 8, size + 4, u64::MAX] {
        put_u64(&ends.peer, read_position, bad);
        assert!(
            matches!(
                ends.producer.grant(Payload::Inline { len: 2100 }),
                Err(RingError::Corrupt(_))
            ),
            "read position {bad}"
        );
        assert!(
            matches!(ends.producer.prepare_wait(2100), Err(RingError::Corrupt(_))),
            "read position {bad}"
        );
    }
    // The producer's own view survived the attempts.
    put_u64(&ends.peer, read_position, size);
    assert!(ends.producer.grant(Payload::Inline { len: 2100 }).unwrap().is_none());
    receive(&mut ends.consumer).unwrap();
    send(&mut ends.producer, &[9; 2100], &caps());
    receive(&mut ends.consumer).unwrap();
    assert_eq!(receive_inline(&mut ends.consumer), [9; 2100]);
}

#[test]
fn a_reader_attached_plainly_keeps_the_writer_publishing_seqcst() {
    let sizes = SIZES;
    let heap = Arc::new(HeapMemory::create(sizes.heap_size).unwrap());
    let writer = WriterChannel::create(sizes).unwrap();
    let mut reader = attach(&writer, &heap).unwrap();
    let (mut producer, _releases) = writer.into_parts();
    send(&mut producer, b"first", &caps());
    assert!(!producer.publishes_light(), "the reader does not fence");
    assert_eq!(receive_inline(&mut reader.records), b"first");
    assert!(reader.records.prepare_wait().unwrap());
    send(&mut producer, b"second", &caps());
    assert!(
        readable(reader.records.data_fd()),
        "the writer woke the sleeping reader"
    );
    assert!(!producer.publishes_light());
}

/// Attaches a reader to `writer`'s channel, as a reader in another process
/// would from the fds it received.
fn attach(writer: &WriterChannel, heap: &HeapMemory) -> Result<ReaderChannel, RingError> {
    let received = writer.fds(heap).try_clone_to_owned().unwrap();
    ReaderChannel::attach(received, writer.sizes())
}

#[test]
fn attach_rejects_positions_outside_the_queue() {
    let heap = HeapMemory::create(HEAP).unwrap();
    let writer = WriterChannel::create(SIZES).unwrap();
    let peer = File::from(writer.fds(&heap).channel.try_clone_to_owned().unwrap());
    let read = OFFSET_RECORD_READ as u64;
    let write = OFFSET_RECORD_WRITE as u64;
    // (read, write)
    for (bad_read, bad_write) in [
        (36, 36),
        (0, 36),
        (0, CAPACITY + 64),
        (u64::MAX, 64 + CAPACITY),
        (0, u64::MAX),
    ] {
        put_u64(&peer, read, bad_read);
        put_u64(&peer, write, bad_write);
        assert!(
            matches!(attach(&writer, &heap), Err(RingError::Corrupt(_))),
            "read {bad_read}, write {bad_write}"
        );
    }
    put_u64(&peer, read, 0);
    put_u64(&peer, write, 0);
    let mut reader = attach(&writer, &heap).unwrap();
    assert!(reader.records.peek().unwrap().is_none());
}

#[test]
fn read_position_left_by_the_writer_is_ignored() {
    // The read position is the reader's own; a writer that leaves the
    // highest positions there cannot bring the reader near an overflow,
    // since the reader starts every new channel at 0.
    let heap = HeapMemory::create(HEAP).unwrap();
    let writer = WriterChannel::create(SIZES).unwrap();
    let peer = File::from(writer.fds(&heap).channel.try_clone_to_owned().unwrap());
    let last = u64::MAX - (RECORD_ALIGN - 1);
    put_u64(&peer, OFFSET_RECORD_READ as u64, last);
    let encoded = caps().encode(Payload::Inline { len: 0 }).unwrap();
    let record = encoded.to_bytes();
    assert_eq!(record.len() as u64, RECORD_HEADER_SIZE);
    peer.write_all_at(&record[..encoded.size as usize], record_at(0))
        .unwrap();
    put_u64(&peer, OFFSET_RECORD_WRITE as u64, RECORD_BASE_SIZE);
    let mut reader = attach(&writer, &heap).unwrap();
    assert_eq!(
        receive(&mut reader.records),
        Some((caps(), Payload::Inline { len: 0 }, vec![]))
    );
    assert_eq!(receive(&mut reader.records), None);
    assert!(
        reader.records.prepare_wait().unwrap(),
        "the sleep publishes the position"
    );
    let mut word = [0u8; 8];
    peer.read_exact_at(&mut word, OFFSET_RECORD_READ as u64).unwrap();
    assert_eq!(u64::from_ne_bytes(word), RECORD_BASE_SIZE);
}

#[test]
fn a_large_queue_publishes_the_read_position_in_steps_and_before_sleeping() {
    // 64 KiB of queue: the reader publishes every 1 KiB it reads, so a
    // writer that finds the queue full is woken after at most that much,
    // and at the latest when the reader goes to sleep on an empty queue.
    let sizes = ChannelSizes {
        record_capacity: 64 * 1024,
        ..SIZES
    };
    let (writer, _heap, mut reader) = super::super::channel(sizes).unwrap();
    let (mut producer, _releases) = writer.into_parts();
    let read_position = producer.progress();
    // 256-byte records (a 16-byte base header, no trailer): 255 of them
    // leave too little room for one more with the largest trailer.
    let payload = [5u8; 240];
    for _ in 0..255 {
        send(&mut producer, &payload, &caps());
    }
    assert!(producer.prepare_wait(240).unwrap(), "the queue is full");
    for taken in 1..=3 {
        receive(&mut reader.records).unwrap();
        assert_eq!(read_position.read_position(), 0, "published after {taken} records");
        assert!(!readable(producer.space_fd()));
    }
    receive(&mut reader.records).unwrap();
    assert_eq!(read_position.read_position(), 1024);
    assert!(readable(producer.space_fd()), "the publish woke the writer");
    producer.finish_wait();

    // The reader drains the rest and sleeps: the sleep publishes
    // everything it read.
    let mut left = 251;
    while receive(&mut reader.records).is_some() {
        left -= 1;
    }
    assert_eq!(left, 0);
    assert!(reader.records.prepare_wait().unwrap());
    assert_eq!(read_position.read_position(), 255 * 256);
    reader.records.finish_wait();
}

#[test]
fn a_reader_that_fences_lets_the_writer_publish_light_and_still_wakes() {
    let mut ends = ends();
    // On a kernel that offers membarrier's global expedited barrier (and
    // this machine's does), the reader announced at attach that it fences.
    let fences = wake::heavy_barrier_available() && wake::register_light_publisher();
    assert!(!ends.producer.publishes_light(), "nothing seen of the reader yet");
    send(&mut ends.producer, b"first", &caps());
    assert_eq!(ends.producer.publishes_light(), fences);
    assert_eq!(receive_inline(&mut ends.consumer), b"first");
    // A light publish still wakes a reader asleep on the empty queue, once.
    assert!(ends.consumer.prepare_wait().unwrap());
    assert!(!readable(ends.consumer.data_fd()));
    send(&mut ends.producer, b"second", &caps());
    assert!(readable(ends.consumer.data_fd()));
    send(&mut ends.producer, b"third", &caps());
    assert_eq!(ends.producer.wakeups_sent(), 1);
    ends.consumer.finish_wait();
    assert_eq!(receive_inline(&mut ends.consumer), b"second");
    assert_eq!(receive_inline(&mut ends.consumer), b"third");
}
