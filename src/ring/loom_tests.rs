//! Model checks, with loom, of the record queue, the release queue and the
//! sleep/wake protocol. Run them with `scripts/loom.sh`.
//!
//! The code checked is the real `Producer`, `Consumer`, `ReleaseProducer`,
//! `ReleaseConsumer`, `Sleeper` and `Waker`, unmodified: under `--cfg loom`
//! only [`sync`](super::sync) changes, so the shared words they load and
//! store are loom atomics with the orderings the code wrote. Loom runs each
//! model once per interleaving of the two sides, and for each load, once
//! per value the memory model lets it return.
//!
//! Modelled: the shared positions, sleep sequences and release slots; data
//! races on the record queue's bytes (each 8 bytes are a loom cell,
//! indexed modulo the capacity as the double mapping aliases it) and on the
//! heap blocks (cells kept by the models); the eventfds, as a counter under
//! a lock that a sleeper polls level-triggered (the release queue, as the
//! sink does) or edge-triggered (the record queue, as both elements do);
//! batched wake-ups (see `wake`), with a reader that asks for a batch and a
//! writer that leaves it asleep through small buffer records until they
//! fill the batch, a caps record comes, or a record does not fit. A lost
//! wake-up leaves a side asleep for good, which loom reports as a
//! deadlock. The bytes themselves are real: the record queue is a real
//! channel memfd, double mapped, and the heap a real heap memfd.
//!
//! Not modelled: the kernel (the eventfd is the model's counter, not the
//! fd the code also writes; poll and epoll are the waits above, with no
//! timeouts and no other fds, so a reader asks for a batch only where a
//! record still to come must end its sleep, as the element's timeout
//! otherwise would); the reader's own read-only mapping of the
//! channel (both sides share one `ChannelMemory`, and `ChannelMemory::open`
//! would give a reader words of its own); a hostile peer; `SeqCst` accesses
//! are a fence plus the access, since loom treats them as `AcqRel` (see
//! `sync`); membarrier, whose guarantee is modelled as a `SeqCst` fence in
//! the reader before it re-checks and one in the writer between its light
//! publish and its load of the sleep sequence (see `wake`).
//!
//! Every model runs twice: with the writer publishing light, as it does when
//! both processes can use membarrier, and with `SeqCst` publishes, as when
//! one cannot.
//!
//! Bound: at most `LOOM_MAX_PREEMPTIONS` preemptions per execution (3 by
//! default here): every interleaving with up to that many switches away
//! from a side that could go on, plus any number at the points where a
//! side blocks. Each model also checks that the sleeps it is about happened
//! (both sides asleep at once included), so it cannot pass vacuously.
//!
//! Each of these weakenings makes some model fail (a deadlock, a race on
//! the record or heap cells, or wrong bytes): publishing a record before
//! writing its header; a `Relaxed` or `Release` store, or an `Acquire` load,
//! where the wake-up protocol has `SeqCst` (the sleep sequence, the
//! positions, the waker's load, the reloads in `prepare_wait`); a `Relaxed`
//! reader publish, release push, or reload in `peek` or `take_all`; a
//! release push that does not wake the writer; a batch counted from the
//! writer's position instead of the reader's; a batch honoured for caps; a
//! record that does not fit leaving a reader asleep for its batch. Loading
//! the read position before the sleep sequence is not one: a stale read
//! position only wakes the reader early.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use loom::thread;

use super::layout::{MIN_HEAP_SIZE, MIN_RECORD_CAPACITY, NONE, OFFSET_WRITER_LIGHT, RECORD_HEADER_SIZE};
use super::memory::{ChannelMemory, ChannelSizes, HeapMemory};
use super::notifier::Notifier;
use super::records::{Consumer, Producer, ReadRecord};
use super::releases::{ReleaseConsumer, ReleaseProducer};
use super::sync::{ModelBytes, ModelEvent, SeqCstFence, set_seq_cst_fence};
use super::{HeapBooks, Payload, RecordHeader, RecordKind};

/// Preemptions per execution unless `LOOM_MAX_PREEMPTIONS` says otherwise.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Rounds of `spin_for_data` before a reader sleeps, as `shmringsrc` does
/// (with far more rounds).
const SPINS: u32 = 1;

/// Where a side sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// The writer, on a full record queue.
    WriterOnFull,
    /// The writer, until a block comes back.
    WriterForABlock,
    /// The reader, on an empty record queue.
    ReaderOnEmpty,
    /// The reader, on an empty record queue, asking for a batch.
    ReaderForABatch,
}

impl Sleep {
    fn is_writer(self) -> bool {
        matches!(self, Self::WriterOnFull | Self::WriterForABlock)
    }
}

/// How often the sides slept over all executions of a model, so that a
/// model that never makes a side sleep fails instead of passing for nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Sleeps {
    writer_on_full: usize,
    writer_for_a_block: usize,
    reader_on_empty: usize,
    reader_for_a_batch: usize,
    /// Sleeps begun while the other side was asleep too.
    both_at_once: usize,
    writer_asleep: bool,
    reader_asleep: bool,
}

thread_local! {
    // Loom runs a model's threads as coroutines on the test's thread.
    static SLEEPS: Cell<Sleeps> = Cell::default();
    /// Whether the writer of the model's channels may publish light.
    static LIGHT: Cell<bool> = const { Cell::new(true) };
}

/// Notes that a side found it must sleep (`prepare_wait` returned `true`).
fn falls_asleep(sleep: Sleep) {
    let mut sleeps = SLEEPS.get();
    match sleep {
        Sleep::WriterOnFull => sleeps.writer_on_full += 1,
        Sleep::WriterForABlock => sleeps.writer_for_a_block += 1,
        Sleep::ReaderOnEmpty => sleeps.reader_on_empty += 1,
        Sleep::ReaderForABatch => sleeps.reader_for_a_batch += 1,
    }
    let other_asleep = if sleep.is_writer() {
        sleeps.writer_asleep = true;
        sleeps.reader_asleep
    } else {
        sleeps.reader_asleep = true;
        sleeps.writer_asleep
    };
    sleeps.both_at_once += usize::from(other_asleep);
    SLEEPS.set(sleeps);
}

/// Notes that a side woke up.
fn wakes_up(sleep: Sleep) {
    let mut sleeps = SLEEPS.get();
    if sleep.is_writer() {
        sleeps.writer_asleep = false;
    } else {
        sleeps.reader_asleep = false;
    }
    SLEEPS.set(sleeps);
}

/// Runs `model` under loom for every execution within the bound, once with
/// each placement of the fences that stand for `SeqCst` (see `sync`), prints
/// how many executions there were, and checks that each sleep in `expected`
/// happened in some of them, and both sides slept at once if `both` says so.
fn check(name: &str, expected: &[Sleep], both: bool, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let model = Arc::new(model);
    let runs = [true, false].map(|light| [SeqCstFence::Leading, SeqCstFence::Trailing].map(|fence| (light, fence)));
    for (light, fence) in runs.into_iter().flatten() {
        LIGHT.set(light);
        set_seq_cst_fence(fence);
        let executions = Arc::new(AtomicUsize::new(0));
        let (counted, model) = (executions.clone(), model.clone());
        let started = Instant::now();
        SLEEPS.set(Sleeps::default());
        builder.check(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            model();
            // A model that failed never gets here; one that passed left
            // both sides awake.
            let sleeps = SLEEPS.get();
            assert!(!sleeps.writer_asleep && !sleeps.reader_asleep);
        });
        let sleeps = SLEEPS.get();
        let publish = if light { "light" } else { "SeqCst" };
        println!(
            "{name}, {publish} publishes, {fence:?} SeqCst fences: {} executions, at most {} preemptions each, in {:.1} s; \
             sleeps: writer on full {}, writer for a block {}, reader on empty {}, reader for a batch {}, \
             both at once {}",
            executions.load(Ordering::Relaxed),
            builder.preemption_bound.unwrap_or(0),
            started.elapsed().as_secs_f64(),
            sleeps.writer_on_full,
            sleeps.writer_for_a_block,
            sleeps.reader_on_empty,
            sleeps.reader_for_a_batch,
            sleeps.both_at_once,
        );
        for sleep in expected {
            let count = match sleep {
                Sleep::WriterOnFull => sleeps.writer_on_full,
                Sleep::WriterForABlock => sleeps.writer_for_a_block,
                Sleep::ReaderOnEmpty => sleeps.reader_on_empty,
                Sleep::ReaderForABatch => sleeps.reader_for_a_batch,
            };
            assert!(count > 0, "{name}: no execution had the sleep {sleep:?}");
        }
        assert!(
            !both || sleeps.both_at_once > 0,
            "{name}: the sides never slept at once"
        );
    }
}

/// The writer's end of a channel, and the model counters of the eventfds
/// it sleeps on.
struct Writer {
    records: Producer,
    releases: ReleaseConsumer,
    /// Written by the reader when the record queue is no longer full.
    space_ready: Arc<ModelEvent>,
    /// Written by the reader when it gives a block back.
    release_ready: Arc<ModelEvent>,
}

/// The reader's end of the same channel.
struct Reader {
    records: Consumer,
    releases: ReleaseProducer,
    /// Written by the writer when the record queue is no longer empty.
    data_ready: Arc<ModelEvent>,
}

/// A channel of a 4096-byte record queue (the smallest there is), as
/// `ring::channel` makes one, but with one `ChannelMemory` for both ends.
fn channel(release_slots: u64) -> (Writer, Reader) {
    let sizes = ChannelSizes {
        record_capacity: MIN_RECORD_CAPACITY,
        release_slots,
        heap_size: MIN_HEAP_SIZE,
    };
    let memory = Arc::new(ChannelMemory::create(sizes).unwrap());
    if !LIGHT.get() {
        memory.control_u64(OFFSET_WRITER_LIGHT).store(0, Ordering::Relaxed);
    }
    let data_ready = Notifier::new().unwrap();
    let space_ready = Notifier::new().unwrap();
    let release_ready = Notifier::new().unwrap();
    let reader = Reader {
        records: Consumer::new(memory.clone(), data_ready.model_peer(), space_ready.model_peer(), true).unwrap(),
        releases: ReleaseProducer::new(memory.clone(), release_ready.model_peer()),
        data_ready: data_ready.model(),
    };
    let writer = Writer {
        space_ready: space_ready.model(),
        release_ready: release_ready.model(),
        records: Producer::new(memory.clone(), data_ready, space_ready),
        releases: ReleaseConsumer::new(memory, release_ready),
    };
    (writer, reader)
}

/// The header of record `index`, of `kind`: its index in three fields.
fn header(index: u64, kind: RecordKind) -> RecordHeader {
    RecordHeader {
        kind,
        flags: index as u32,
        pts: index,
        dts: NONE,
        duration: NONE,
        offset: index,
        offset_end: NONE,
    }
}

/// The byte that fills the payload of record `index`.
fn fill(index: u64) -> u8 {
    0xa0 + index as u8
}

impl Writer {
    /// Writes record `index` as the sink does: take a grant, or sleep until
    /// the reader makes room (edge-triggered, as `shmringsink` waits).
    fn write_record(&mut self, index: u64, kind: RecordKind, payload: Payload) {
        loop {
            if let Some(mut grant) = self.records.grant(payload).unwrap() {
                let bytes = vec![fill(index); payload.inline_len() as usize];
                assert!(grant.write_inline(0, &bytes));
                grant.commit(&header(index, kind));
                return;
            }
            if self.records.prepare_wait(payload.inline_len()).unwrap() {
                falls_asleep(Sleep::WriterOnFull);
                self.space_ready.wait_edge();
                wakes_up(Sleep::WriterOnFull);
                self.records.finish_edge_wait();
            }
        }
    }

    /// Takes released offsets, handing each to `take`, until `take` says it
    /// has what it waits for, sleeping as the sink's heap does
    /// (level-triggered poll, then drain).
    fn take_releases_until(&mut self, mut take: impl FnMut(u64) -> bool) {
        let mut done = false;
        loop {
            self.releases.take_all(|offset| done |= take(offset)).unwrap();
            if done {
                return;
            }
            if self.releases.prepare_wait().unwrap() {
                falls_asleep(Sleep::WriterForABlock);
                self.release_ready.wait_readable();
                wakes_up(Sleep::WriterForABlock);
                self.releases.finish_wait();
            }
        }
    }
}

impl Reader {
    /// Reads `count` records as `shmringsrc` does: peek, else spin, else
    /// sleep until the writer commits (edge-triggered), asking for the
    /// batch that `batch` gives for the index of the record awaited (0 for
    /// none). `take` checks each record and may release blocks.
    fn read_records(
        &mut self,
        count: u64,
        batch: impl Fn(u64) -> u64,
        mut take: impl FnMut(u64, ReadRecord<'_>, &mut ReleaseProducer),
    ) {
        let mut index = 0;
        while index < count {
            if let Some(record) = self.records.peek().unwrap() {
                take(index, record, &mut self.releases);
                index += 1;
                continue;
            }
            if self.records.spin_for_data(SPINS).unwrap() {
                continue;
            }
            let batch = batch(index);
            if self.records.prepare_wait_batched(batch).unwrap() {
                let sleep = if batch > 0 {
                    Sleep::ReaderForABatch
                } else {
                    Sleep::ReaderOnEmpty
                };
                falls_asleep(sleep);
                self.data_ready.wait_edge();
                wakes_up(sleep);
                self.records.finish_edge_wait();
            }
        }
    }
}

/// Checks that `record` is record `index`, of `kind`, with an inline
/// payload of `len` bytes, all of them as the writer wrote them, and frees
/// its place.
fn check_inline(index: u64, kind: RecordKind, record: ReadRecord<'_>, len: u64) {
    assert_eq!(*record.header(), header(index, kind), "record {index} out of order");
    assert_eq!(record.payload(), Payload::Inline { len });
    assert!(
        record.inline_to_vec().iter().all(|&byte| byte == fill(index)),
        "record {index} has bytes the writer did not write"
    );
    record.release();
}

/// For a reader that never asks for a batch.
fn no_batch(_: u64) -> u64 {
    0
}

/// Writes `count` records of `inline` payload bytes while the reader reads
/// them, each side sleeping on full or empty as it finds the queue.
fn records_model(count: u64, inline: u64) {
    let (mut writer, mut reader) = channel(1);
    let writing = thread::spawn(move || {
        for index in 0..count {
            writer.write_record(index, RecordKind::Buffer, Payload::Inline { len: inline });
        }
        writer
    });
    reader.read_records(count, no_batch, |index, record, _| {
        check_inline(index, RecordKind::Buffer, record, inline)
    });
    let writer = writing.join().unwrap();
    // The reader said it fences when it attached, so the writer's first
    // commit saw it: every later one was light.
    assert_eq!(writer.records.publishes_light(), LIGHT.get());
}

/// Three records in a queue that holds two: the writer sleeps on full, the
/// reader on empty, and the third record crosses the end of the queue into
/// the second mapping. Every record arrives once, in order, with its bytes.
#[test]
fn loom_record_queue_keeps_order_and_bytes_across_the_wrap() {
    // Records of 1504 bytes (a 16-byte base, 1472 bytes of payload and a
    // trailer of two words), for which the writer makes room of 1536: two
    // fit in 4096 bytes, and the third starts at 3008.
    let sleeps = [Sleep::WriterOnFull, Sleep::ReaderOnEmpty];
    check("record queue across the wrap", &sleeps, true, || {
        records_model(3, 1536 - RECORD_HEADER_SIZE)
    });
}

/// Records that fill the whole queue: after every commit it is full and
/// after every read it is empty, so both sides go to sleep at once, the
/// writer on full and the reader on empty, again and again. Neither may
/// sleep for good.
#[test]
fn loom_both_sides_sleep_at_once_on_a_full_then_empty_queue() {
    let sleeps = [Sleep::WriterOnFull, Sleep::ReaderOnEmpty];
    check("full then empty", &sleeps, true, || {
        records_model(3, MIN_RECORD_CAPACITY - RECORD_HEADER_SIZE)
    });
}

/// The release queue on its own: the reader gives back three offsets while
/// the writer takes them, sleeping when there are none. Each arrives
/// exactly once, in order.
#[test]
fn loom_release_queue_returns_every_offset_once_in_order() {
    const OFFSETS: [u64; 3] = [4096, 0, 8192];
    check("release queue", &[Sleep::WriterForABlock], false, || {
        let (mut writer, mut reader) = channel(OFFSETS.len() as u64);
        let taking = thread::spawn(move || {
            let mut taken = Vec::new();
            writer.take_releases_until(|offset| {
                taken.push(offset);
                taken.len() == OFFSETS.len()
            });
            taken
        });
        for offset in OFFSETS {
            reader.releases.push(offset).unwrap();
        }
        assert_eq!(taking.join().unwrap(), OFFSETS);
    });
}

/// The whole loop of a block: a heap of one block and a release queue of
/// one slot, so the writer waits for the block to come back while the
/// reader waits for the record naming it, three times over. The reader
/// sees each block's bytes as written; the writer reuses the block only
/// after the reader's last look at it (loom checks the heap cells); the
/// block comes back each time, and the last release wakes the writer too.
#[test]
fn loom_writer_waits_for_a_block_while_the_reader_waits_for_data() {
    const COUNT: u64 = 3;
    const LEN: u64 = MIN_HEAP_SIZE;
    let sleeps = [Sleep::WriterForABlock, Sleep::ReaderOnEmpty];
    check("block loop", &sleeps, true, || {
        let holder = super::reader(0);
        let (mut writer, mut reader) = channel(1);
        let heap = Arc::new(HeapMemory::create(MIN_HEAP_SIZE).unwrap());
        let heap_lines = Arc::new(ModelBytes::new(MIN_HEAP_SIZE));
        let writer_heap = (heap.clone(), heap_lines.clone());
        let writing = thread::spawn(move || {
            let (heap, heap_lines) = writer_heap;
            let mut books = HeapBooks::new(heap.size());
            for index in 0..COUNT {
                let offset = loop {
                    if let Some(offset) = books.allocate(LEN, holder) {
                        break offset;
                    }
                    writer.take_releases_until(|offset| {
                        assert_eq!(books.release(offset, holder), Ok(true), "a block came back twice");
                        true
                    });
                };
                heap_lines.write(offset, LEN);
                // SAFETY: the block was just allocated, and the reader has
                // not been sent it.
                unsafe { heap.block_mut(offset, LEN) }.unwrap().fill(fill(index));
                writer.write_record(index, RecordKind::Buffer, Payload::Block { offset, len: LEN });
            }
            writer.take_releases_until(|offset| {
                assert_eq!(books.release(offset, holder), Ok(true), "a block came back twice");
                books.allocated_bytes() == 0
            });
        });
        reader.read_records(COUNT, no_batch, |index, record, releases| {
            assert_eq!(
                *record.header(),
                header(index, RecordKind::Buffer),
                "record {index} out of order"
            );
            let Payload::Block { offset, len } = record.payload() else {
                panic!("record {index} has no block");
            };
            assert_eq!(len, LEN);
            heap_lines.read(offset, len);
            assert!(
                heap.block_to_vec(offset, len)
                    .unwrap()
                    .iter()
                    .all(|&byte| byte == fill(index)),
                "block of record {index} has bytes the writer did not write"
            );
            record.release();
            releases.push(offset).unwrap();
        });
        writing.join().unwrap();
    });
}

/// The inline payload of a small buffer record.
const SMALL_INLINE: u64 = 64;
/// Bytes a small buffer record takes (a 16-byte base, the payload and a
/// trailer of two words): less than a batch of `BATCH` bytes, and two of
/// them more.
const SMALL_RECORD: u64 = 96;
/// The batch the reader of the batched models asks for.
const BATCH: u64 = 128;

/// Writes records of `kinds` with inline payloads of `inline` bytes, with
/// batched wake-ups on and `limit` bytes let wait unread, while the reader
/// reads them, asking for the batch that `batch` gives (see
/// [`Reader::read_records`]). The first record is a small buffer, and the
/// reader asks for a batch before it.
fn batched_model(kinds: &'static [RecordKind], inline: &'static [u64], limit: u64, batch: impl Fn(u64) -> u64) {
    let (mut writer, mut reader) = channel(1);
    writer.records.set_batch_wakes(true);
    writer.records.set_limit(limit);
    let writing = thread::spawn(move || {
        for (index, (&kind, &len)) in kinds.iter().zip(inline).enumerate() {
            writer.write_record(index as u64, kind, Payload::Inline { len });
            // The reader's first sleep counts from 0, where no read position
            // can be stale: it must sleep through the first record, or the
            // model would not be about batches.
            if index == 0 {
                assert_eq!(writer.records.wakeups_sent(), 0, "half a batch woke the reader");
            }
        }
    });
    reader.read_records(kinds.len() as u64, batch, |index, record, _| {
        let index = index as usize;
        check_inline(index as u64, kinds[index], record, inline[index]);
    });
    writing.join().unwrap();
}

/// Three small buffer records, to a reader that sleeps asking for a batch
/// of two while the records still to come fill one, and for none before
/// the last, as the element's reader does once its bounded sleep expired.
/// The writer leaves it asleep through the first record of a batch and
/// must wake it at the second at the latest: the second sleep may begin
/// before or after the writer's next commit, and the writer may count that
/// batch from the read position of before the first sleep (stale, which
/// wakes the reader early).
#[test]
fn loom_a_batched_sleep_is_woken_once_its_batch_of_buffers_waits() {
    const KINDS: [RecordKind; 3] = [RecordKind::Buffer; 3];
    const INLINE: [u64; 3] = [SMALL_INLINE; 3];
    check("batch fills", &[Sleep::ReaderForABatch], false, || {
        batched_model(&KINDS, &INLINE, MIN_RECORD_CAPACITY, |index| {
            if (KINDS.len() as u64 - index) * SMALL_RECORD >= BATCH {
                BATCH
            } else {
                0
            }
        })
    });
}

/// Three buffer records whose payloads are heap blocks (40 bytes each in
/// the queue), to a reader that sleeps asking for a batch of 64 bytes while
/// the records still to come fill one: batched like small inline buffers,
/// so the writer may leave the reader asleep through the first and must
/// wake it at the second at the latest.
#[test]
fn loom_buffers_in_blocks_fill_a_batch_too() {
    const COUNT: u64 = 3;
    const BLOCK_RECORD: u64 = 40;
    const BLOCK_BATCH: u64 = 64;
    check("blocks fill a batch", &[Sleep::ReaderForABatch], false, || {
        let (mut writer, mut reader) = channel(1);
        writer.records.set_batch_wakes(true);
        let block = |index: u64| Payload::Block {
            offset: 64 * index,
            len: 8,
        };
        let writing = thread::spawn(move || {
            for index in 0..COUNT {
                writer.write_record(index, RecordKind::Buffer, block(index));
                if index == 0 {
                    assert_eq!(writer.records.wakeups_sent(), 0, "part of a batch woke the reader");
                }
            }
        });
        let batch = |index: u64| {
            if (COUNT - index) * BLOCK_RECORD >= BLOCK_BATCH {
                BLOCK_BATCH
            } else {
                0
            }
        };
        reader.read_records(COUNT, batch, |index, record, _| {
            assert_eq!(
                *record.header(),
                header(index, RecordKind::Buffer),
                "record {index} out of order"
            );
            assert_eq!(record.payload(), block(index));
            record.release();
        });
        writing.join().unwrap();
    });
}

/// A small buffer record, less than the batch the reader always asks for,
/// then caps, which wake it at once: the batch never fills.
#[test]
fn loom_caps_after_a_buffer_wake_a_batched_sleep() {
    const KINDS: [RecordKind; 2] = [RecordKind::Buffer, RecordKind::Caps];
    const INLINE: [u64; 2] = [SMALL_INLINE, 8];
    check("caps end a batch", &[Sleep::ReaderForABatch], false, || {
        batched_model(&KINDS, &INLINE, MIN_RECORD_CAPACITY, |_| BATCH)
    });
}

/// A writer that lets 256 bytes wait unread (as `ring-time` makes the sink
/// do), so that the batch stays at 128: a small buffer record, less than
/// the batch, then a buffer record of 160 bytes that fits only once the
/// reader has read the first. The batch would fill, but the writer cannot
/// write the record that fills it until the reader wakes, so the record
/// that does not fit must wake it.
#[test]
fn loom_a_record_that_does_not_fit_wakes_a_batched_sleep() {
    const KINDS: [RecordKind; 2] = [RecordKind::Buffer; 2];
    const INLINE: [u64; 2] = [SMALL_INLINE, 128];
    let sleeps = [Sleep::WriterOnFull, Sleep::ReaderForABatch];
    check("full before the batch", &sleeps, true, || {
        batched_model(&KINDS, &INLINE, 256, |_| BATCH)
    });
}
