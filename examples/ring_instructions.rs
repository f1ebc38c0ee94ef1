//! The record queue's per-record cost in instructions, writer and reader
//! apart, against rtrb's: a count that does not depend on how busy the
//! machine is, unlike `benches/ring.rs`'s times.
//!
//! One thread writes a batch of records, then reads it back, so neither side
//! ever waits and every instruction counted is the hot path's. Count one side
//! at a time with callgrind, which collects only inside the named function:
//!
//! ```text
//! cargo build --release --example ring_instructions
//! for side in shm_write shm_read rtrb_write rtrb_read; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         --toggle-collect="*ring_instructions*$side*" \
//!         target/release/examples/ring_instructions 64 2>&1 | grep refs
//! done
//! ```
//!
//! and divide the `Collected` count by the records moved (printed).

use std::hint::black_box;

#[path = "../benches/shared/audio_header.rs"]
mod audio_header;

use audio_header::audio_header;

use gstshmring::ring::{self, ChannelSizes, Consumer, Payload, Producer, RecordHeader};

const CAPACITY: u64 = 1 << 20;
const BATCHES: u64 = 100;

#[inline(never)]
fn shm_write(producer: &mut Producer, payload: &[u8], headers: &[RecordHeader]) {
    for header in headers {
        let place = Payload::Inline {
            len: payload.len() as u64,
        };
        let mut grant = producer.grant(place).expect("not corrupt").expect("room");
        assert!(grant.write_inline(0, payload));
        grant.commit(header);
    }
}

#[inline(never)]
fn shm_read(consumer: &mut Consumer, out: &mut [u8], records: u64) {
    for _ in 0..records {
        let record = consumer.peek().expect("not corrupt").expect("a record");
        assert!(record.read_inline(out));
        // The whole header, as the element uses every field: asking for the
        // pts alone let the compiler skip decoding the others.
        black_box(record.header());
        record.release();
    }
}

#[inline(never)]
fn rtrb_write(producer: &mut rtrb::Producer<u8>, payload: &[u8], records: u64) {
    for _ in 0..records {
        producer.push_entire_slice(payload).expect("room");
    }
}

#[inline(never)]
fn rtrb_read(consumer: &mut rtrb::Consumer<u8>, out: &mut [u8], records: u64) {
    for _ in 0..records {
        consumer.pop_entire_slice(out).expect("a record");
    }
}

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .map_or(64, |arg| arg.parse().expect("a payload size in bytes"));
    // Half the queue per batch, so that batches cross its end.
    let batch = CAPACITY / 2 / ring::layout::record_size(size as u64).expect("a small payload");
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut out = vec![0u8; size];
    // Made before counting starts, as a real writer has its buffers' times.
    let headers: Vec<RecordHeader> = (0..BATCHES * batch).map(audio_header).collect();
    let mut sent = 0;

    let sizes = ChannelSizes {
        record_capacity: CAPACITY,
        release_slots: 64,
        heap_size: 4096,
    };
    let (writer, _heap, reader) = ring::channel(sizes).expect("creating the ring");
    let (mut producer, _releases) = writer.into_parts();
    let mut consumer = reader.records;
    let (mut rtrb_producer, mut rtrb_consumer) = rtrb::RingBuffer::<u8>::new(CAPACITY as usize);
    for _ in 0..BATCHES {
        shm_write(
            &mut producer,
            &payload,
            &headers[sent as usize..(sent + batch) as usize],
        );
        sent += batch;
        shm_read(&mut consumer, &mut out, batch);
        rtrb_write(&mut rtrb_producer, &payload, batch);
        rtrb_read(&mut rtrb_consumer, &mut out, batch);
    }
    black_box(&out);
    println!("{} records of {size} bytes each way", BATCHES * batch);
}
