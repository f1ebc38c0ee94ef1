//! Throughput of the core ring against rtrb and a plain memcpy.
//!
//! For each record size a producer thread writes records and the measured
//! thread reads them, copying every payload into one reused buffer, so each
//! ring pays for the same two copies (in on one core, out on the other).
//! Throughput counts payload bytes only: our 64-byte record header and
//! padding are overhead the ring has to earn back.
//!
//! - `shmring` waits with the sleep protocol (`prepare_wait`, poll,
//!   `finish_wait`), as the elements do.
//! - `shmring-spin` waits like rtrb does here, so the gap between the two
//!   `shmring` lines is what the sleep protocol costs, or saves by letting
//!   records pile up while the reader sleeps.
//! - `rtrb` moves the bytes through its chunk API and spins, then yields,
//!   when full or empty: the fastest way to use it in this setting.
//! - `memcpy` copies the payload once in one thread: the ceiling.
//!
//! Both rings hold 1 MiB, so about sixteen 64 KiB records fit in either.
//! With two threads the numbers are only as steady as the machine's two
//! least busy cores; compare lines from one run.

use std::hint::{black_box, spin_loop};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gstshmring::ipc::wait_readable;
use gstshmring::ring::{self, Consumer, Producer, RecordHeader, RecordKind};

const CAPACITY: usize = 1 << 20;
const SIZES: [usize; 3] = [64, 4 << 10, 64 << 10];

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

fn shmring_push(producer: &mut Producer, payload: &[u8], wait: Wait) {
    // The elements send buffers, whose header is as costly to write as any.
    let header = RecordHeader::untimed(RecordKind::Buffer, 0);
    let mut backoff = Backoff::default();
    loop {
        if let Some(mut grant) = producer.grant(payload.len()).expect("the ring is not corrupt") {
            grant.payload().copy_from_slice(payload);
            grant.commit(&header);
            return;
        }
        match wait {
            Wait::Spin => backoff.snooze(),
            Wait::Sleep => {
                if producer.prepare_wait(payload.len()).expect("the record fits the ring") {
                    wait_readable([producer.space_fd()]).expect("poll on an eventfd we own");
                    producer.finish_wait();
                }
            }
        }
    }
}

fn shmring_pop(consumer: &mut Consumer, out: &mut [u8], wait: Wait) {
    let mut backoff = Backoff::default();
    loop {
        if let Some(record) = consumer.peek().expect("the ring is not corrupt") {
            // Panics on a short record, which makes the copy double as a check.
            out.copy_from_slice(record.payload());
            record.release();
            return;
        }
        match wait {
            Wait::Spin => backoff.snooze(),
            Wait::Sleep => {
                if consumer.prepare_wait().expect("the ring is not corrupt") {
                    wait_readable([consumer.data_fd()]).expect("poll on an eventfd we own");
                    consumer.finish_wait();
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

/// Moves `records` records of `size` bytes from a producer thread to this
/// one and returns how long this thread took to copy them all out, counted
/// from the moment both threads are ready, so the spawn is not timed.
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
    let (mut producer, mut consumer) = ring::channel(CAPACITY as u64).expect("creating the ring");
    let (mut rtrb_producer, mut rtrb_consumer) = rtrb::RingBuffer::<u8>::new(CAPACITY);

    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, wait) in [("shmring", Wait::Sleep), ("shmring-spin", Wait::Spin)] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_custom(|records| {
                    transfer(
                        records,
                        size,
                        &mut producer,
                        &mut consumer,
                        |producer, payload| shmring_push(producer, payload, wait),
                        |consumer, out| shmring_pop(consumer, out, wait),
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
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, &size| {
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut out = vec![0u8; size];
            b.iter(|| black_box(&mut out[..]).copy_from_slice(black_box(&payload)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
