//! Two threads push records through a small ring, so that it is full and
//! empty over and over and both sides keep going to sleep on their eventfds.
//!
//! Every poll has no timeout: a lost wake-up shows up as a hang, which a
//! watchdog turns into an abort with a message rather than a stuck test.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use gstshmring::ipc;
use gstshmring::ring::{self, Consumer, Producer, RecordHeader, RecordKind, RingError};

/// Small enough that a few records fill it.
const CAPACITY: u64 = 16 * 1024;
const MAX_PAYLOAD: usize = 3000;
const WATCHDOG: Duration = Duration::from_secs(120);

/// Pseudo-random bytes that record payloads are cut from.
struct Pool(Vec<u8>);

impl Pool {
    fn new() -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes = (0..2 * MAX_PAYLOAD + 4096)
            .map(|_| {
                state = splitmix64(state);
                state as u8
            })
            .collect();
        Self(bytes)
    }

    /// The payload of record `sequence`: a slice of the pool at an offset
    /// derived from the sequence number, with the number itself in its first
    /// bytes, so that no two records look alike.
    fn payload(&self, sequence: u64, out: &mut [u8]) {
        let start = (splitmix64(sequence ^ 0x5555) % 4096) as usize;
        out.copy_from_slice(&self.0[start..start + out.len()]);
        let stamp = sequence.to_ne_bytes();
        let stamped = out.len().min(stamp.len());
        out[..stamped].copy_from_slice(&stamp[..stamped]);
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn payload_len(sequence: u64) -> usize {
    (splitmix64(sequence) % MAX_PAYLOAD as u64) as usize
}

fn header(sequence: u64) -> RecordHeader {
    let flags = sequence as u32;
    match sequence % 5 {
        0 => RecordHeader::untimed(RecordKind::Caps, 0),
        1 => RecordHeader::untimed(RecordKind::Event, flags),
        _ => RecordHeader {
            kind: RecordKind::Buffer,
            flags,
            pts: sequence * 40 + 20,
            dts: sequence * 40,
            duration: 40,
            offset: sequence,
            offset_end: sequence + 1,
            meta_kind: (sequence % 3) as u32,
            meta: std::array::from_fn(|index| (sequence as usize + index) as u8),
        },
    }
}

/// Which side, if any, dawdles between records: in turns of `phase` records,
/// neither, then the producer, then the consumer. A `phase` of 0 never
/// slows either side.
#[derive(Clone, Copy)]
struct Slowdown {
    phase: u64,
}

impl Slowdown {
    fn producer_slow(self, sequence: u64) -> bool {
        self.phase != 0 && (sequence / self.phase) % 3 == 1
    }

    fn consumer_slow(self, sequence: u64) -> bool {
        self.phase != 0 && (sequence / self.phase) % 3 == 2
    }
}

fn dawdle() {
    for _ in 0..200 {
        thread::yield_now();
    }
}

fn produce(mut producer: Producer, records: u64, slowdown: Slowdown) -> Result<u64, RingError> {
    let pool = Pool::new();
    for sequence in 0..records {
        if slowdown.producer_slow(sequence) {
            dawdle();
        }
        let len = payload_len(sequence);
        loop {
            if let Some(mut grant) = producer.grant(len)? {
                pool.payload(sequence, grant.payload());
                grant.commit(&header(sequence));
                break;
            }
            if producer.prepare_wait(len)? {
                ipc::wait_readable([producer.space_fd()]).expect("polling the space eventfd");
                producer.finish_wait();
            }
        }
    }
    Ok(producer.wakeups_sent())
}

fn consume(mut consumer: Consumer, records: u64, slowdown: Slowdown) -> Result<u64, RingError> {
    let pool = Pool::new();
    let mut expected = vec![0; MAX_PAYLOAD];
    for sequence in 0..records {
        if slowdown.consumer_slow(sequence) {
            dawdle();
        }
        loop {
            if let Some(record) = consumer.peek()? {
                let len = payload_len(sequence);
                pool.payload(sequence, &mut expected[..len]);
                assert_eq!(*record.header(), header(sequence), "header of record {sequence}");
                assert_eq!(record.payload().len(), len, "length of record {sequence}");
                assert!(
                    record.payload() == &expected[..len],
                    "payload of record {sequence} differs"
                );
                record.release();
                break;
            }
            if consumer.prepare_wait()? {
                ipc::wait_readable([consumer.data_fd()]).expect("polling the data eventfd");
                consumer.finish_wait();
            }
        }
    }
    assert!(consumer.peek()?.is_none(), "records beyond the last one");
    Ok(consumer.wakeups_sent())
}

type Outcome = (&'static str, thread::Result<Result<u64, RingError>>);

/// Runs one side and reports how it ended, panics included.
fn spawn_side<F>(side: &'static str, results: mpsc::Sender<Outcome>, body: F)
where
    F: FnOnce() -> Result<u64, RingError> + Send + 'static,
{
    thread::spawn(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(body));
        let _ = results.send((side, outcome));
    });
}

/// Runs both sides on their own threads and returns the wake-ups each sent,
/// as (producer, consumer). Aborts the process if they hang.
fn run(name: &'static str, records: u64, slowdown: Slowdown) -> (u64, u64) {
    let (done, watchdog_done) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watchdog_done.recv_timeout(WATCHDOG) {
            // Straight to stderr: the harness captures `eprintln!` and would
            // lose it with the abort.
            let _ = writeln!(
                std::io::stderr(),
                "ring_stress::{name}: no progress in {WATCHDOG:?}; a wake-up was lost and both sides sleep"
            );
            std::process::abort();
        }
    });

    let (producer, consumer) = ring::channel(CAPACITY).unwrap();
    let (results, finished) = mpsc::channel();
    spawn_side("producer", results.clone(), move || {
        produce(producer, records, slowdown)
    });
    spawn_side("consumer", results, move || consume(consumer, records, slowdown));

    // Fail on the first side that fails, without waiting for the other,
    // which may now sleep forever.
    let mut wakeups = (0, 0);
    for _ in 0..2 {
        let (side, outcome) = finished.recv().unwrap();
        match outcome {
            Ok(Ok(sent)) if side == "producer" => wakeups.0 = sent,
            Ok(Ok(sent)) => wakeups.1 = sent,
            Ok(Err(err)) => panic!("{name}: the {side} failed: {err}"),
            Err(panic) => panic::resume_unwind(panic),
        }
    }
    drop(done);
    watchdog.join().unwrap();
    wakeups
}

#[test]
fn records_arrive_in_order_and_intact_through_a_small_ring() {
    run("full_speed", 200_000, Slowdown { phase: 0 });
}

#[test]
fn both_sides_sleep_and_wake_each_other() {
    let (producer_wakeups, consumer_wakeups) = run("alternating_slowdown", 30_000, Slowdown { phase: 1000 });
    assert!(producer_wakeups > 0, "the producer never woke a sleeping consumer");
    assert!(consumer_wakeups > 0, "the consumer never woke a sleeping producer");
}
