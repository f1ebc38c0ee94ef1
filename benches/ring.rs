//! Throughput of the core ring against rtrb and a plain memcpy.
//!
//! For each record size a writer thread sends records and the measured
//! thread reads them, copying every payload into one reused buffer, so each
//! ring pays for the same two copies (in on one core, out on the other).
//! Throughput counts payload bytes only: our record header (48 bytes for
//! a timed buffer) and padding, and the heap's bookkeeping, are overhead
//! the ring has to earn back. The headers are those of 64-sample audio as
//! audiotestsrc stamps it, a new one for every record, as a real writer's
//! are: one header for all would let the compiler encode it once, outside
//! the loop (161 instructions a write instead of 212, before the encoder
//! of 2026-12-04 brought it to 176).
//!
//! Our side takes the path a real writer takes: a payload of up to
//! `INLINE_MAX` bytes is copied into the record queue after its header, a
//! larger one into a heap block that the record names and that the reader
//! gives back through the release queue once it has copied it out.
//!
//! - `shmring` waits with the sleep protocol (`prepare_wait`, poll,
//!   `finish_wait`), as the elements do, on the record queue and, for
//!   blocks, on the release queue.
//! - `shmring-spin` waits like rtrb does here, so the gap between the two
//!   `shmring` lines is what the sleep protocol costs, or saves by letting
//!   records pile up while the reader sleeps.
//! - `rtrb` moves the bytes through its chunk API and spins, then yields,
//!   when full or empty: the fastest way to use it in this setting.
//! - `memcpy` copies the payload once in one thread: the ceiling.
//!
//! Where bytes land can decide more than the ring does. On AMD Zen 3 and 4
//! with glibc before 2.39, `memcpy` of 2 KiB and more runs 15-25 times
//! slower when its destination lies 1 to 31 bytes past its source modulo
//! 4 KiB (glibc bug 30994); our ring steers around that (`ring::copy_slice`)
//! and rtrb does not, so its luck depends on where the allocator put its
//! buffer and the bench's. Even 64-byte records move with placement: in one
//! session, page-aligned payload and copy buffers put our ring at
//! 0.53-0.55x rtrb's rate, and these allocations at 0.63-0.68x. The `copy` group shows
//! the trap and the way around it in one thread: `memcpy` and `copy_slice`
//! at the distances of `COPY_DISTANCES`.
//!
//! Both rings hold 1 MiB (our record queue, and our heap too), so about
//! sixteen 64 KiB records fit in either. With two threads the numbers are
//! only as steady as the machine's two least busy cores; compare lines from
//! one run.

use std::hint::{black_box, spin_loop};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[path = "shared/audio_header.rs"]
mod audio_header;

use audio_header::audio_header;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gstshmring::ipc::wait_readable;
use gstshmring::ring::{
    self, ChannelSizes, Consumer, HeapBooks, HeapMemory, Payload, Producer, ReleaseConsumer, ReleaseProducer,
};

const CAPACITY: usize = 1 << 20;
const PAGE: usize = 4096;
/// Distances from a copy's source to its destination, modulo 4 KiB, for
/// the `copy` group: 16 falls in the `memcpy` trap that
/// `ring::copy_slice` steers around, 0 and 2048 do not.
const COPY_DISTANCES: [usize; 3] = [0, 16, 2048];
const SIZES: [usize; 3] = [64, 4 << 10, 64 << 10];
/// The largest payload sent inline, as `shmringsink` does.
const INLINE_MAX: usize = 4096;

/// How our ring waits when it is full or empty.
#[derive(Clone, Copy)]
enum Wait {
    Sleep,
    Spin,
}

/// Spins with growing pauses, then yields: what a busy-waiting SPSC user
/// would write, and gentle enough that the waiting thread does not starve
/// the other when the two share a core.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    const SPIN_ROUNDS: u32 = 6;

    fn snooze(&mut self) {
        if self.0 < Self::SPIN_ROUNDS {
            for _ in 0..1 << self.0 {
                spin_loop();
            }
            self.0 += 1;
        } else {
            thread::yield_now();
        }
    }
}

/// Our writer: the record producer, and the heap with its books and the
/// release queue that brings blocks back.
struct ShmWriter {
    records: Producer,
    /// Records sent so far, which the next header's timing follows on from.
    sent: u64,
    releases: ReleaseConsumer,
    heap: Arc<HeapMemory>,
    books: HeapBooks,
}

/// Our reader: the record consumer, the heap it copies blocks out of, and
/// the release queue it gives them back through.
struct ShmReader {
    records: Consumer,
    releases: ReleaseProducer,
    heap: Arc<HeapMemory>,
}

fn shmring() -> (ShmWriter, ShmReader) {
    let sizes = ChannelSizes {
        record_capacity: CAPACITY as u64,
        release_slots: (CAPACITY / INLINE_MAX + 1) as u64,
        heap_size: CAPACITY as u64,
    };
    let (writer, heap, reader) = ring::channel(sizes).expect("creating the ring");
    let (records, releases) = writer.into_parts();
    let writer = ShmWriter {
        records,
        sent: 0,
        releases,
        books: HeapBooks::new(heap.size()),
        heap,
    };
    let reader = ShmReader {
        records: reader.records,
        releases: reader.releases,
        heap: reader.heap,
    };
    (writer, reader)
}

impl ShmWriter {
    fn push(&mut self, payload: &[u8], wait: Wait) {
        let len = payload.len() as u64;
        let place = if payload.len() <= INLINE_MAX {
            Payload::Inline { len }
        } else {
            let offset = self.allocate(len, wait);
            // SAFETY: the books just handed this block out, so no record
            // names it and the reader holds none of it.
            let block = unsafe { self.heap.block_mut(offset, len) }.expect("the books allocate inside the heap");
            ring::copy_slice(block, payload);
            Payload::Block { offset, len }
        };
        let header = audio_header(self.sent);
        self.sent += 1;
        let mut backoff = Backoff::default();
        loop {
            if let Some(mut grant) = self.records.grant(place).expect("the ring is not corrupt") {
                if let Payload::Inline { .. } = place {
                    assert!(grant.write_inline(0, payload), "the payload fits its grant");
                }
                grant.commit(&header);
                return;
            }
            let inline_len = if let Payload::Inline { len } = place { len } else { 0 };
            match wait {
                Wait::Spin => backoff.snooze(),
                Wait::Sleep => {
                    if self.records.prepare_wait(inline_len).expect("the record fits the ring") {
                        wait_readable([self.records.space_fd()]).expect("poll on an eventfd we own");
                        self.records.finish_wait();
                    }
                }
            }
        }
    }

    /// A block for `len` bytes, taking back what the reader has released
    /// and waiting for more when the heap is full.
    fn allocate(&mut self, len: u64, wait: Wait) -> u64 {
        let mut backoff = Backoff::default();
        loop {
            let books = &mut self.books;
            self.releases
                .take_all(|offset| {
                    books
                        .release(offset, ring::reader(0))
                        .expect("the reader held the block");
                })
                .expect("the release queue is not corrupt");
            if let Some(offset) = self.books.allocate(len, ring::reader(0)) {
                return offset;
            }
            match wait {
                Wait::Spin => backoff.snooze(),
                Wait::Sleep => {
                    if self.releases.prepare_wait().expect("the release queue is not corrupt") {
                        wait_readable([self.releases.release_fd()]).expect("poll on an eventfd we own");
                        self.releases.finish_wait();
                    }
                }
            }
        }
    }
}

impl ShmReader {
    fn pop(&mut self, out: &mut [u8], wait: Wait) {
        let mut backoff = Backoff::default();
        loop {
            if let Some(record) = self.records.peek().expect("the ring is not corrupt") {
                // Panics on a short record, which makes the copy double as a
                // check.
                let block = match record.payload() {
                    Payload::Inline { .. } => {
                        assert!(record.read_inline(out), "the record is as long as the payload");
                        None
                    }
                    Payload::Block { offset, len } => {
                        assert!(
                            len == out.len() as u64 && self.heap.read_block(offset, out),
                            "a short block"
                        );
                        Some(offset)
                    }
                };
                record.release();
                if let Some(offset) = block {
                    self.releases.push(offset).expect("the writer takes blocks back");
                }
                return;
            }
            match wait {
                Wait::Spin => backoff.snooze(),
                Wait::Sleep => {
                    if self.records.prepare_wait().expect("the ring is not corrupt") {
                        wait_readable([self.records.data_fd()]).expect("poll on an eventfd we own");
                        self.records.finish_wait();
                    }
                }
            }
        }
    }
}

// rtrb's slice calls are its chunk API with the copy done for us:
// `write_chunk_uninit` or `read_chunk`, one memcpy per half, `commit_all`.
// Writing that out here would need `unsafe` or a slice method newer than
// our MSRV, and could only be slower.
fn rtrb_push(producer: &mut rtrb::Producer<u8>, payload: &[u8]) {
    let mut backoff = Backoff::default();
    while producer.push_entire_slice(payload).is_err() {
        backoff.snooze();
    }
}

fn rtrb_pop(consumer: &mut rtrb::Consumer<u8>, out: &mut [u8]) {
    let mut backoff = Backoff::default();
    while consumer.pop_entire_slice(out).is_err() {
        backoff.snooze();
    }
}

/// `size` bytes of `memory` starting `placement` bytes past a page
/// boundary.
fn placed(memory: &mut Vec<u8>, size: usize, placement: usize) -> &mut [u8] {
    *memory = vec![0; size + 2 * PAGE];
    let start = (PAGE + placement - memory.as_ptr() as usize % PAGE) % PAGE;
    &mut memory[start..start + size]
}

/// Moves `records` records of `size` bytes from a writer thread to this
/// one and returns how long this thread took to copy them all out, counted
/// from the moment both threads are ready, so the spawn is not timed. The
/// payload and the reader's copy are ordinary allocations, wherever the
/// allocator puts them, as a caller's buffers would be.
fn transfer<P: Send, C>(
    records: u64,
    size: usize,
    producer: &mut P,
    consumer: &mut C,
    push: impl Fn(&mut P, &[u8]) + Send,
    pop: impl Fn(&mut C, &mut [u8]),
) -> Duration {
    let ready = &Barrier::new(2);
    thread::scope(|scope| {
        scope.spawn(move || {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            ready.wait();
            for _ in 0..records {
                push(producer, &payload);
            }
        });
        let mut out = vec![0u8; size];
        ready.wait();
        let started = Instant::now();
        for _ in 0..records {
            pop(consumer, &mut out);
        }
        let elapsed = started.elapsed();
        black_box(&out);
        elapsed
    })
}

fn bench_ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // One ring of each kind for the whole run: every sample leaves it empty,
    // and reusing it keeps page faults on fresh memory out of the numbers.
    let (mut writer, mut reader) = shmring();
    let (mut rtrb_producer, mut rtrb_consumer) = rtrb::RingBuffer::<u8>::new(CAPACITY);

    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, wait) in [("shmring", Wait::Sleep), ("shmring-spin", Wait::Spin)] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_custom(|records| {
                    transfer(
                        records,
                        size,
                        &mut writer,
                        &mut reader,
                        |writer, payload| writer.push(payload, wait),
                        |reader, out| reader.pop(out, wait),
                    )
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("rtrb", size), &size, |b, &size| {
            b.iter_custom(|records| {
                transfer(
                    records,
                    size,
                    &mut rtrb_producer,
                    &mut rtrb_consumer,
                    rtrb_push,
                    rtrb_pop,
                )
            })
        });
        // The ceiling: payload and copy half a page apart, where `memcpy`
        // runs at full speed on every machine.
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, &size| {
            let (mut from, mut to) = (Vec::new(), Vec::new());
            let payload = placed(&mut from, size, 0);
            payload.iter_mut().enumerate().for_each(|(i, byte)| *byte = i as u8);
            let out = placed(&mut to, size, PAGE / 2);
            b.iter(|| black_box(&mut *out).copy_from_slice(black_box(&*payload)))
        });
    }
    group.finish();
}

/// One thread copying `size` bytes to a destination `distance` bytes past
/// the source modulo 4 KiB: plain `memcpy` (`copy_from_slice`) against the
/// ring's `copy_slice`.
fn bench_copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    for size in [4 << 10, 64 << 10] {
        group.throughput(Throughput::Bytes(size as u64));
        for distance in COPY_DISTANCES {
            let (mut from, mut to) = (Vec::new(), Vec::new());
            let source = placed(&mut from, size, 0);
            source.iter_mut().enumerate().for_each(|(i, byte)| *byte = i as u8);
            let dest = placed(&mut to, size, distance);
            let parameter = format!("{size}+{distance}");
            group.bench_function(BenchmarkId::new("memcpy", &parameter), |b| {
                b.iter(|| black_box(&mut *dest).copy_from_slice(black_box(&*source)))
            });
            group.bench_function(BenchmarkId::new("copy_slice", &parameter), |b| {
                b.iter(|| ring::copy_slice(black_box(&mut *dest), black_box(&*source)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_ring, bench_copy);
criterion_main!(benches);
