//! Two threads stream records through a small record queue and a small heap,
//! so that the queue fills and empties, and the heap runs out, over and
//! over, and each side keeps going to sleep on its eventfds.
//!
//! The writer sends payloads of up to 4096 bytes inline and larger ones in
//! heap blocks, as the sink does. The reader checks every header and byte,
//! keeps a random few blocks for a while and gives them back out of order,
//! and checks each kept block again as it gives it back, which catches a
//! writer that reused a block the reader still held.
//!
//! No poll has a timeout: a lost wake-up shows up as a hang, which a
//! watchdog turns into a test failure. Most of the run is free-running, so
//! which side sleeps when is up to the scheduler; but every `PHASE` records
//! the two sides meet and stage one sleep of each kind (reader on an empty
//! queue, writer on a full queue, writer on a full heap) whose wake-up is
//! certain, and check that it comes exactly once.

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use gstshmring::ipc;
use gstshmring::ring::{
    self, ChannelSizes, Consumer, HeapBooks, HeapMemory, Notifier, Payload, Producer, ReadRecord, ReaderChannel,
    RecordHeader, RecordKind, ReleaseConsumer, ReleaseProducer, RingError,
};

/// Small enough that four inline records of `INLINE_MAX` do not fit.
const RECORD_CAPACITY: u64 = 16 * 1024;
/// Room for four blocks of `HOLD_BLOCK`, or about eight of `BLOCK_MAX`.
const HEAP_SIZE: u64 = 256 * 1024;
/// Payloads up to this many bytes travel inline, larger ones in a block.
const INLINE_MAX: u64 = 4096;
const BLOCK_MAX: u64 = 32 * 1024;
/// Blocks the reader holds back at most while it runs free.
const KEEP_MAX: usize = 4;
const SIZES: ChannelSizes = ChannelSizes {
    record_capacity: RECORD_CAPACITY,
    // A slot for every block the heap can hold at once, as the sink sizes it.
    release_slots: HEAP_SIZE / INLINE_MAX + 1,
    heap_size: HEAP_SIZE,
};

/// Records between two staged meetings.
const PHASE: u64 = 25_000;
/// Inline records of `INLINE_MAX` bytes the writer sends while the reader
/// waits, more than the queue holds.
const FILL: u64 = 8;
/// Blocks the reader keeps until the writer runs out of heap.
const HOLD: u64 = 8;
const HOLD_BLOCK: u64 = HEAP_SIZE / 4;
// The writer runs out of room during the fill, and out of heap during the
// hold.
const _: () = assert!(FILL * (INLINE_MAX + 64) > RECORD_CAPACITY);
const _: () = assert!(HOLD * HOLD_BLOCK > HEAP_SIZE);
/// Records of a phase that are staged: the one the reader sleeps for, the
/// fill and the hold.
const STAGED: u64 = 1 + FILL + HOLD;

/// How long neither side may move before the test fails as a hang.
const WATCHDOG: Duration = Duration::from_secs(60);

/// What record `sequence` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The writer sends it only once the reader sleeps on an empty queue.
    ReaderSleeps,
    /// Sent while the reader waits, until the queue is full and the writer
    /// sleeps.
    Fill,
    /// Blocks the reader holds until the heap is full and the writer sleeps.
    Hold,
    /// Everything else: each side goes as fast as it can.
    Free,
}

fn stage(sequence: u64) -> Stage {
    match sequence % PHASE {
        0 => Stage::ReaderSleeps,
        at if at <= FILL => Stage::Fill,
        at if at < STAGED => Stage::Hold,
        _ => Stage::Free,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Inline,
    Block,
}

/// Where record `sequence`'s payload travels, and its length.
fn plan(sequence: u64) -> (Place, u64) {
    match stage(sequence) {
        Stage::ReaderSleeps => (Place::Inline, 100),
        Stage::Fill => (Place::Inline, INLINE_MAX),
        Stage::Hold => (Place::Block, HOLD_BLOCK),
        Stage::Free => {
            let roll = splitmix64(sequence);
            if roll.is_multiple_of(3) {
                (Place::Block, INLINE_MAX + 1 + (roll >> 8) % (BLOCK_MAX - INLINE_MAX))
            } else {
                (Place::Inline, (roll >> 8) % (INLINE_MAX + 1))
            }
        }
    }
}

fn header(sequence: u64) -> RecordHeader {
    let flags = sequence as u32;
    match sequence % 7 {
        0 => RecordHeader::untimed(RecordKind::Caps, 0),
        1 => RecordHeader::untimed(RecordKind::Event, flags),
        2 => RecordHeader::untimed(RecordKind::VideoLayout, 0),
        _ => RecordHeader {
            kind: RecordKind::Buffer,
            flags,
            pts: sequence * 40 + 20,
            dts: sequence * 40,
            duration: 40,
            offset: sequence,
            offset_end: sequence + 1,
        },
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pseudo-random bytes that payloads are cut from.
struct Pool(Vec<u8>);

impl Pool {
    fn new() -> Self {
        let mut state = 0x1234_5678u64;
        let bytes = (0..HOLD_BLOCK.max(BLOCK_MAX) + 4096)
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

/// Which side dawdles in the free-running part: in turns of 1000 records,
/// neither, then the writer, then the reader, so that each side finds the
/// other asleep for long stretches.
fn dawdles(sequence: u64) -> Option<Side> {
    match (stage(sequence), (sequence / 1000) % 3) {
        (Stage::Free, 1) => Some(Side::Writer),
        (Stage::Free, 2) => Some(Side::Reader),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Writer,
    Reader,
}

fn dawdle() {
    for _ in 0..20 {
        thread::yield_now();
    }
}

/// Empties an eventfd. At a meeting both sides are idle, so a count left
/// there can only be a stale wake-up, from a sleep that was cancelled in
/// the free-running part; it would end a staged sleep before its wake-up.
fn drain(fd: BorrowedFd<'_>) {
    let mut counter = [0u8; 8];
    let _ = nix::unistd::read(fd, &mut counter);
}

fn wait(fd: BorrowedFd<'_>) {
    ipc::wait_readable([fd]).expect("polling an eventfd");
}

/// What the two sides tell each other at a meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    ReaderAsleep,
    ReaderTookIt,
    WriterFull,
    WriterOutOfHeap,
}

/// What both threads share.
struct Meeting {
    barrier: Barrier,
    /// Records sent plus records received, for the watchdog.
    progress: AtomicU64,
}

/// The writing side: record producer, release consumer, heap and books.
struct Writer {
    records: Producer,
    releases: ReleaseConsumer,
    heap: Arc<HeapMemory>,
    books: HeapBooks,
    pool: Pool,
    meeting: Arc<Meeting>,
    notes: mpsc::Sender<Note>,
    answers: mpsc::Receiver<Note>,
    told_full: bool,
    told_out_of_heap: bool,
}

impl Writer {
    fn run(mut self, records: u64) -> Result<u64, RingError> {
        for sequence in 0..records {
            let stage = stage(sequence);
            if stage == Stage::ReaderSleeps {
                self.meet()?;
            }
            if dawdles(sequence) == Some(Side::Writer) {
                dawdle();
            }
            let (place, len) = plan(sequence);
            let payload = match place {
                Place::Inline => Payload::Inline { len },
                Place::Block => {
                    let offset = self.allocate(len, stage)?;
                    // SAFETY: the books just handed this block out, so no
                    // record names it and the reader holds none of it.
                    let bytes = unsafe { self.heap.block_mut(offset, len) }.expect("a block inside the heap");
                    self.pool.payload(sequence, bytes);
                    Payload::Block { offset, len }
                }
            };
            let woken = self.records.wakeups_sent();
            self.send(sequence, payload, stage)?;
            if stage == Stage::ReaderSleeps {
                assert_eq!(
                    self.records.wakeups_sent(),
                    woken + 1,
                    "record {sequence} did not wake the sleeping reader exactly once"
                );
                assert_eq!(self.answers.recv(), Ok(Note::ReaderTookIt));
            }
            self.take_releases()?;
            self.meeting.progress.fetch_add(1, Ordering::Relaxed);
        }
        // Every block comes back once the reader is done.
        loop {
            self.take_releases()?;
            if self.books.allocated_bytes() == 0 {
                return Ok(self.records.wakeups_sent());
            }
            if self.releases.prepare_wait()? {
                wait(self.releases.release_fd());
                self.releases.finish_wait();
            }
        }
    }

    /// Meets the reader when both are done with every record before this
    /// one, then waits until the reader sleeps.
    fn meet(&mut self) -> Result<(), RingError> {
        self.meeting.barrier.wait();
        self.take_releases()?;
        assert_eq!(
            self.books.allocated_bytes(),
            0,
            "blocks the reader gave back went missing"
        );
        drain(self.records.space_fd());
        drain(self.releases.release_fd());
        self.told_full = false;
        self.told_out_of_heap = false;
        self.meeting.barrier.wait();
        assert_eq!(self.answers.recv(), Ok(Note::ReaderAsleep));
        Ok(())
    }

    fn send(&mut self, sequence: u64, payload: Payload, stage: Stage) -> Result<(), RingError> {
        loop {
            if let Some(mut grant) = self.records.grant(payload)? {
                if let Payload::Inline { len } = payload {
                    let mut bytes = vec![0; len as usize];
                    self.pool.payload(sequence, &mut bytes);
                    assert!(grant.write_inline(0, &bytes), "record {sequence} fits its grant");
                }
                grant.commit(&header(sequence));
                return Ok(());
            }
            let inline_len = match payload {
                Payload::Inline { len } => len,
                Payload::Block { .. } => 0,
            };
            if self.records.prepare_wait(inline_len)? {
                if stage == Stage::Fill && !self.told_full {
                    self.told_full = true;
                    self.notes.send(Note::WriterFull).expect("the reader is gone");
                }
                wait(self.records.space_fd());
                self.records.finish_wait();
            }
        }
    }

    fn allocate(&mut self, len: u64, stage: Stage) -> Result<u64, RingError> {
        loop {
            self.take_releases()?;
            if let Some(offset) = self.books.allocate(len, ring::reader(0)) {
                return Ok(offset);
            }
            if self.releases.prepare_wait()? {
                if stage == Stage::Hold && !self.told_out_of_heap {
                    self.told_out_of_heap = true;
                    self.notes.send(Note::WriterOutOfHeap).expect("the reader is gone");
                }
                wait(self.releases.release_fd());
                self.releases.finish_wait();
            }
        }
    }

    fn take_releases(&mut self) -> Result<(), RingError> {
        let books = &mut self.books;
        let mut refused = None;
        self.releases.take_all(|offset| {
            if let Err(err) = books.release(offset, ring::reader(0)) {
                refused.get_or_insert(err);
            }
        })?;
        if let Some(err) = refused {
            panic!("the reader {err}");
        }
        Ok(())
    }
}

/// A block the reader holds back: record `sequence`'s payload.
struct Kept {
    sequence: u64,
    offset: u64,
    len: u64,
}

/// What the reader checks payloads with.
struct Checker {
    heap: Arc<HeapMemory>,
    pool: Pool,
    expected: Vec<u8>,
}

impl Checker {
    /// Checks record `sequence` and takes it; returns its block, if it has
    /// one.
    fn check(&mut self, sequence: u64, record: ReadRecord<'_>) -> Option<Kept> {
        assert_eq!(*record.header(), header(sequence), "header of record {sequence}");
        let (place, len) = plan(sequence);
        let block = match (place, record.payload()) {
            (Place::Inline, Payload::Inline { len: got }) => {
                assert_eq!(got, len, "length of record {sequence}");
                let expected = &mut self.expected[..len as usize];
                self.pool.payload(sequence, expected);
                assert!(
                    record.inline_to_vec() == expected,
                    "payload of record {sequence} differs"
                );
                None
            }
            (Place::Block, Payload::Block { offset, len: got }) => {
                assert_eq!(got, len, "length of record {sequence}");
                assert_eq!(offset % 64, 0, "block of record {sequence} is misaligned");
                let kept = Kept { sequence, offset, len };
                self.check_block(&kept, "arrived");
                Some(kept)
            }
            (_, payload) => panic!("record {sequence} was sent {place:?} but arrived as {payload:?}"),
        };
        record.release();
        block
    }

    fn check_block(&mut self, kept: &Kept, when: &str) {
        let sequence = kept.sequence;
        let bytes = self
            .heap
            .block_to_vec(kept.offset, kept.len)
            .expect("a block inside the heap");
        let expected = &mut self.expected[..kept.len as usize];
        self.pool.payload(sequence, expected);
        assert!(bytes == expected, "the block of record {sequence} differs as it {when}");
    }
}

/// The reading side: record consumer, release producer and the heap.
struct Reader {
    records: Consumer,
    releases: ReleaseProducer,
    checker: Checker,
    kept: Vec<Kept>,
    meeting: Arc<Meeting>,
    notes: mpsc::Receiver<Note>,
    answers: mpsc::Sender<Note>,
}

impl Reader {
    fn run(mut self, records: u64) -> Result<(u64, u64), RingError> {
        let (mut holding, mut out_of_heap) = (false, false);
        for sequence in 0..records {
            let stage = stage(sequence);
            match stage {
                Stage::ReaderSleeps => self.meet()?,
                Stage::Fill if sequence % PHASE == 1 => {
                    // Take nothing more until the writer has filled the queue
                    // and sleeps.
                    assert_eq!(self.notes.recv(), Ok(Note::WriterFull));
                }
                _ => {}
            }
            if stage == Stage::Hold && sequence % PHASE == 1 + FILL {
                (holding, out_of_heap) = (true, false);
            }
            let woken = self.records.wakeups_sent();
            let block = loop {
                if let Some(record) = self.records.peek()? {
                    break self.checker.check(sequence, record);
                }
                if holding {
                    // Every block of the hold is kept until the writer has
                    // run out of heap and sleeps, and every record it sent
                    // before is taken.
                    if !out_of_heap {
                        assert_eq!(self.notes.recv(), Ok(Note::WriterOutOfHeap));
                        out_of_heap = true;
                        continue;
                    }
                    holding = false;
                    self.give_back_all(true)?;
                    continue;
                }
                self.give_back_all(false)?;
                if self.records.prepare_wait()? {
                    wait(self.records.data_fd());
                    self.records.finish_wait();
                }
            };
            match stage {
                Stage::ReaderSleeps => self.answers.send(Note::ReaderTookIt).expect("the writer is gone"),
                Stage::Fill if sequence % PHASE == 1 => assert_eq!(
                    self.records.wakeups_sent(),
                    woken + 1,
                    "taking record {sequence} did not wake the writer exactly once"
                ),
                _ => {}
            }
            if let Some(kept) = block {
                self.keep_or_give_back(kept, holding)?;
            }
            if dawdles(sequence) == Some(Side::Reader) {
                dawdle();
            }
            self.meeting.progress.fetch_add(1, Ordering::Relaxed);
        }
        assert!(self.records.peek()?.is_none(), "records beyond the last one");
        self.give_back_all(false)?;
        Ok((self.records.wakeups_sent(), self.releases.wakeups_sent()))
    }

    /// Meets the writer when both are done with every record before this
    /// one, then sleeps until the writer sends the next.
    fn meet(&mut self) -> Result<(), RingError> {
        self.give_back_all(false)?;
        self.meeting.barrier.wait();
        drain(self.records.data_fd());
        self.meeting.barrier.wait();
        assert!(self.records.peek()?.is_none(), "a record the writer has not sent yet");
        assert!(
            self.records.prepare_wait()?,
            "the reader found a record it had not been sent"
        );
        self.answers.send(Note::ReaderAsleep).expect("the writer is gone");
        wait(self.records.data_fd());
        self.records.finish_wait();
        Ok(())
    }

    /// Gives a block back at once, or keeps it and perhaps gives back
    /// another one that was kept, in no particular order.
    fn keep_or_give_back(&mut self, block: Kept, holding: bool) -> Result<(), RingError> {
        if holding {
            self.kept.push(block);
            return Ok(());
        }
        let roll = splitmix64(block.sequence ^ 0xabcd);
        if roll.is_multiple_of(4) {
            if self.kept.len() == KEEP_MAX {
                let index = (roll >> 8) as usize % KEEP_MAX;
                let other = self.kept.swap_remove(index);
                self.give_back(other)?;
            }
            self.kept.push(block);
        } else {
            self.give_back(block)?;
        }
        if roll % 5 == 1 && !self.kept.is_empty() {
            let index = (roll >> 16) as usize % self.kept.len();
            let other = self.kept.swap_remove(index);
            self.give_back(other)?;
        }
        Ok(())
    }

    fn give_back(&mut self, block: Kept) -> Result<(), RingError> {
        self.checker.check_block(&block, "is given back");
        self.releases.push(block.offset)
    }

    /// Gives back every kept block. With `wakes`, the writer sleeps waiting
    /// for one, and the first release must wake it, once.
    fn give_back_all(&mut self, wakes: bool) -> Result<(), RingError> {
        let woken = self.releases.wakeups_sent();
        let mut first = true;
        while let Some(block) = self.kept.pop() {
            self.give_back(block)?;
            if wakes && first {
                assert_eq!(
                    self.releases.wakeups_sent(),
                    woken + 1,
                    "a release did not wake the writer out of heap exactly once"
                );
            }
            first = false;
        }
        assert!(!wakes || !first, "the writer ran out of heap with no block held");
        Ok(())
    }
}

/// How a side ended, panics included.
enum Outcome {
    Writer(thread::Result<Result<u64, RingError>>),
    Reader(thread::Result<Result<(u64, u64), RingError>>),
}

/// Wake-ups each side sent: the writer to a reader waiting for records, the
/// reader to a writer waiting for room, and to a writer waiting for blocks.
#[derive(Debug)]
struct Wakeups {
    data: u64,
    space: u64,
    release: u64,
}

/// The writer's ends of a channel and the reader's, however they were made.
struct Ends {
    records: Producer,
    releases: ReleaseConsumer,
    heap: Arc<HeapMemory>,
    reader: ReaderChannel,
}

fn in_process() -> Ends {
    let (writer, heap, reader) = ring::channel(SIZES).expect("creating a channel");
    let (records, releases) = writer.into_parts();
    Ends {
        records,
        releases,
        heap,
        reader,
    }
}

/// Streams `records` records from a writer thread to a reader thread.
/// Fails on the first side that fails, without waiting for the other, which
/// may now sleep forever; fails too if neither moves for `WATCHDOG`.
fn run(name: &str, records: u64, ends: Ends) {
    assert!(
        records < PHASE || records.is_multiple_of(PHASE),
        "a run ends between phases"
    );

    let meeting = Arc::new(Meeting {
        barrier: Barrier::new(2),
        progress: AtomicU64::new(0),
    });
    let (notes, notes_received) = mpsc::channel();
    let (answers, answers_received) = mpsc::channel();
    let writer = Writer {
        records: ends.records,
        releases: ends.releases,
        books: HeapBooks::new(ends.heap.size()),
        heap: ends.heap,
        pool: Pool::new(),
        meeting: meeting.clone(),
        notes,
        answers: answers_received,
        told_full: false,
        told_out_of_heap: false,
    };
    let reader = Reader {
        records: ends.reader.records,
        releases: ends.reader.releases,
        checker: Checker {
            heap: ends.reader.heap,
            pool: Pool::new(),
            expected: vec![0; HOLD_BLOCK.max(BLOCK_MAX) as usize],
        },
        kept: Vec::new(),
        meeting: meeting.clone(),
        notes: notes_received,
        answers,
    };
    let (outcomes, finished) = mpsc::channel();
    let writer_outcomes = outcomes.clone();
    thread::spawn(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| writer.run(records)));
        let _ = writer_outcomes.send(Outcome::Writer(outcome));
    });
    thread::spawn(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| reader.run(records)));
        let _ = outcomes.send(Outcome::Reader(outcome));
    });

    let mut wakeups = Wakeups {
        data: 0,
        space: 0,
        release: 0,
    };
    let mut last = (0, Instant::now());
    let mut ended = 0;
    while ended < 2 {
        let outcome = match finished.recv_timeout(Duration::from_secs(1)) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let progress = meeting.progress.load(Ordering::Relaxed);
                if progress != last.0 {
                    last = (progress, Instant::now());
                }
                assert!(
                    last.1.elapsed() < WATCHDOG,
                    "{name}: nothing moved for {WATCHDOG:?} after {progress} steps; a wake-up was lost and both sides sleep"
                );
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("a side ended without a word"),
        };
        ended += 1;
        match outcome {
            Outcome::Writer(Ok(Ok(data))) => wakeups.data = data,
            Outcome::Reader(Ok(Ok((space, release)))) => (wakeups.space, wakeups.release) = (space, release),
            Outcome::Writer(Ok(Err(err))) => panic!("{name}: the writer failed: {err}"),
            Outcome::Reader(Ok(Err(err))) => panic!("{name}: the reader failed: {err}"),
            Outcome::Writer(Err(panic)) | Outcome::Reader(Err(panic)) => panic::resume_unwind(panic),
        }
    }
    // Each meeting staged one sleep of each kind, and checked its wake-up.
    let meetings = records.div_ceil(PHASE);
    assert!(
        wakeups.data >= meetings && wakeups.space >= meetings && wakeups.release >= meetings,
        "{name}: {wakeups:?} in {meetings} meetings"
    );
}

#[test]
fn records_and_blocks_arrive_intact_and_in_order() {
    run("in_process", 200_000, in_process());
}

/// A directory of its own for the test's socket, removed afterwards.
struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_reader_attached_over_the_socket_gets_the_same_stream() {
    let dir = TestDir(std::env::temp_dir().join(format!("shmring-ring-stress-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir(&dir.0).expect("creating the test directory");
    let path = dir.0.join("socket");
    let listener = ipc::Listener::bind(&path, 0o600).expect("binding the socket");

    // Neither side is ever interrupted: these eventfds are never written.
    let reader = thread::spawn(move || {
        let interrupt = Notifier::new().expect("creating an eventfd");
        ipc::connect_reader(&path, &[interrupt.as_fd()])
    });
    let interrupt = Notifier::new().expect("creating an eventfd");
    let heap = Arc::new(HeapMemory::create(SIZES.heap_size).expect("creating the heap"));
    let connection = loop {
        if let Some(connection) = listener.accept().expect("accepting the reader") {
            break connection;
        }
        ipc::wait_readable([listener.as_fd()]).expect("polling the listener");
    };
    let writer = ipc::serve_reader(&connection, SIZES, &heap, interrupt.as_fd())
        .expect("the handshake")
        .expect("not interrupted");
    let (_reader_connection, reader) = reader
        .join()
        .expect("the reader's handshake panicked")
        .expect("the reader's handshake")
        .expect("not interrupted");
    assert_eq!(writer.sizes(), SIZES);

    let (records, releases) = writer.into_parts();
    let ends = Ends {
        records,
        releases,
        heap,
        reader,
    };
    run("over_the_socket", 20_000, ends);
}
