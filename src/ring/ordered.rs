//! Publishing a position over records that finish out of order.
//!
//! The plain protocol in `spsc.rs` moves a position as soon as a side is
//! done with a record, in order. Two things break that order:
//!
//! - a reader that hands out ring memory without copying ([`Lease`]): the
//!   memory comes back when downstream frees it, from any thread, in any
//!   order;
//! - a writer that hands out ring memory to be filled before it is
//!   committed ([`Reservation`]): upstream commits it, or drops it unused,
//!   from any thread.
//!
//! An [`OrderedPublisher`] keeps a fixed table of such outstanding records in
//! stream order and publishes the side's shared position only over the
//! finished prefix. A writer's position then never passes a record still
//! being filled, and a reader's never passes memory still in use, so the
//! other side never sees or reuses a record too early. It allocates nothing
//! after creation and takes no lock.
//!
//! # Invariants
//!
//! - `published ≤ start of the oldest unfinished record ≤ cursor`, where
//!   `cursor` is the end of the last record this side took on. Records
//!   taken on and finished at once (copied, or written in place) need no
//!   table entry: they are done once the cursor moves past them.
//! - Entries are appended only by the side's own thread, at `tail`. Only the
//!   holder of the `advancing` token pops them at `head` and stores the
//!   shared position, so the position never moves backwards.
//! - The owner appends an entry (Release on `tail`) before it moves `cursor`
//!   past that record (SeqCst). The advancer loads `cursor` before `tail`, so
//!   whenever it sees the new cursor it also sees the entry that must hold
//!   the position back.
//! - Each entry's state word packs the entry's sequence number with its
//!   state, so finishing a stale entry (one whose slot was reused) fails its
//!   compare-and-swap instead of finishing the new one.
//!
//! # No finish is forgotten
//!
//! A thread that finishes an entry (or moves the cursor) stores that, then
//! tries to take the token, all `SeqCst`. The token holder gives the token
//! back (`SeqCst`) and then checks for work again. In the single total order
//! of these operations either the finisher's swap finds the token free and
//! it advances itself, or the holder's re-check sees the finished entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::layout::{RECORD_HEADER_SIZE, RecordHeader, RecordKind};
use super::memory::RingMemory;
use super::notifier::Notifier;

/// Most records out at once; beyond this a side copies.
pub const MAX_OUTSTANDING: usize = 1024;

const PENDING: u64 = 0;
const CLAIMED: u64 = 1;
const FINISHED: u64 = 2;

fn state_word(seq: u64, state: u64) -> u64 {
    (seq << 2) | state
}

struct Entry {
    start: AtomicU64,
    size: AtomicU64,
    /// Where a reservation's payload starts (position, not offset).
    payload_at: AtomicU64,
    /// `state_word(seq, state)`.
    state: AtomicU64,
    /// The record's memory is still in use after it finished (a writer's
    /// buffer that upstream still holds), so its space may not be reused.
    held: AtomicBool,
}

/// Which shared position a publisher moves, and whom it wakes.
pub(crate) struct Side {
    /// The control-page offset of the position this side publishes.
    pub position: usize,
    /// The control-page offset of the other side's sleep sequence.
    pub peer_sleep: usize,
    /// The eventfd the other side sleeps on.
    pub notifier: Notifier,
    /// The control-page offset of this side's own sleep sequence, and the
    /// eventfd it sleeps on: a held record's space coming free wakes it.
    pub own_sleep: usize,
    pub own_notifier: Notifier,
}

pub struct OrderedPublisher {
    memory: Arc<RingMemory>,
    capacity: u64,
    side: Side,
    entries: Box<[Entry]>,
    tail: AtomicU64,
    head: AtomicU64,
    cursor: AtomicU64,
    published: AtomicU64,
    /// Start of the oldest record whose space is still held; nothing at or
    /// after it may be reused.
    floor: AtomicU64,
    advancing: AtomicBool,
    peer_woken: AtomicU32,
    own_woken: AtomicU32,
    wakeups_sent: AtomicU64,
}

impl OrderedPublisher {
    pub(crate) fn new(memory: Arc<RingMemory>, capacity: u64, side: Side) -> Self {
        let entries = (0..MAX_OUTSTANDING)
            .map(|_| Entry {
                start: AtomicU64::new(0),
                size: AtomicU64::new(0),
                payload_at: AtomicU64::new(0),
                state: AtomicU64::new(state_word(0, FINISHED)),
                held: AtomicBool::new(false),
            })
            .collect();
        Self {
            memory,
            capacity,
            side,
            entries,
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            published: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            advancing: AtomicBool::new(false),
            peer_woken: AtomicU32::new(0),
            own_woken: AtomicU32::new(0),
            wakeups_sent: AtomicU64::new(0),
        }
    }

    /// Takes over publishing from a side that so far published in order
    /// itself, at `position`, having last woken the peer's sleep `peer_woken`.
    pub(crate) fn take_over(&self, position: u64, peer_woken: u32) {
        self.cursor.store(position, Ordering::SeqCst);
        self.published.store(position, Ordering::SeqCst);
        self.floor.store(position, Ordering::SeqCst);
        self.peer_woken.store(peer_woken, Ordering::Relaxed);
    }

    pub(crate) fn memory(&self) -> &RingMemory {
        &self.memory
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.side.notifier
    }

    pub(crate) fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The position last published.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Start of the oldest record whose space is still held.
    pub(crate) fn floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }

    /// The eventfd this side sleeps on.
    pub(crate) fn own_notifier(&self) -> &Notifier {
        &self.side.own_notifier
    }

    /// Whether a record of `size` bytes at `start` may stay outstanding: the
    /// table has room and outstanding records would not span more than half
    /// the ring, so the other side always keeps room to move.
    pub(crate) fn can_hold(&self, start: u64, size: u64) -> bool {
        let outstanding = self.tail.load(Ordering::Relaxed) - self.head.load(Ordering::Acquire);
        let span = start + size - self.floor.load(Ordering::Acquire);
        outstanding < MAX_OUTSTANDING as u64 && span <= self.capacity / 2
    }

    /// Owner's thread: records an outstanding record of `size` bytes at
    /// `start`, before the cursor moves past it. Returns its ticket.
    pub(crate) fn push(&self, start: u64, size: u64, payload_at: u64, held: bool) -> Ticket {
        let seq = self.tail.load(Ordering::Relaxed);
        let slot = (seq % MAX_OUTSTANDING as u64) as usize;
        let entry = &self.entries[slot];
        entry.start.store(start, Ordering::Relaxed);
        entry.size.store(size, Ordering::Relaxed);
        entry.payload_at.store(payload_at, Ordering::Relaxed);
        entry.state.store(state_word(seq, PENDING), Ordering::Relaxed);
        entry.held.store(held, Ordering::Relaxed);
        self.tail.store(seq + 1, Ordering::Release);
        Ticket { slot, seq }
    }

    /// Owner's thread: everything before `cursor` is finished except the
    /// outstanding records.
    pub(crate) fn move_cursor(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::SeqCst);
        self.advance();
    }

    /// Any thread: claims an outstanding record so that only the caller
    /// finishes it. Fails if it was already claimed or its slot reused.
    pub(crate) fn claim(&self, ticket: Ticket) -> bool {
        self.entries[ticket.slot]
            .state
            .compare_exchange(
                state_word(ticket.seq, PENDING),
                state_word(ticket.seq, CLAIMED),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Any thread: the memory of a held record is no longer in use, so its
    /// space may be reused once it has finished. The entry cannot have been
    /// reused meanwhile: a held entry is never popped.
    pub(crate) fn release_hold(&self, ticket: Ticket) {
        self.entries[ticket.slot].held.store(false, Ordering::SeqCst);
        self.advance();
    }

    /// Owner's thread: the outstanding records still pending, with their
    /// start and size, oldest first.
    pub(crate) fn pending(&self) -> impl Iterator<Item = (Ticket, u64, u64)> + '_ {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        (head..tail).filter_map(move |seq| {
            let slot = (seq % MAX_OUTSTANDING as u64) as usize;
            let entry = &self.entries[slot];
            (entry.state.load(Ordering::Acquire) == state_word(seq, PENDING)).then(|| {
                (
                    Ticket { slot, seq },
                    entry.start.load(Ordering::Relaxed),
                    entry.size.load(Ordering::Relaxed),
                )
            })
        })
    }

    /// Any thread: finishes a claimed record and publishes what that allows.
    pub(crate) fn finish(&self, ticket: Ticket) {
        self.entries[ticket.slot]
            .state
            .store(state_word(ticket.seq, FINISHED), Ordering::SeqCst);
        self.advance();
    }

    /// Finds the pending reservation whose payload starts at data offset
    /// `payload_offset` (in either mapping) and holds `payload_len` bytes.
    pub(crate) fn find_pending(&self, payload_offset: u64, payload_len: u64) -> Option<Found> {
        let tail = self.tail.load(Ordering::Acquire);
        let mut seq = self.head.load(Ordering::Acquire);
        let mut oldest = true;
        while seq < tail {
            let slot = (seq % MAX_OUTSTANDING as u64) as usize;
            let entry = &self.entries[slot];
            let start = entry.start.load(Ordering::Relaxed);
            let size = entry.size.load(Ordering::Relaxed);
            let payload_at = entry.payload_at.load(Ordering::Relaxed);
            let pending = entry.state.load(Ordering::Acquire) == state_word(seq, PENDING);
            if pending
                && payload_at % self.capacity == payload_offset % self.capacity
                && super::layout::record_size(payload_len) == Some(start + size - payload_at + RECORD_HEADER_SIZE)
            {
                return Some(Found {
                    ticket: Ticket { slot, seq },
                    oldest,
                    start,
                    size,
                    payload_at,
                });
            }
            oldest &= !pending;
            seq += 1;
        }
        None
    }

    /// Whether any record is still outstanding.
    pub(crate) fn has_pending(&self) -> bool {
        let tail = self.tail.load(Ordering::Acquire);
        let mut seq = self.head.load(Ordering::Acquire);
        while seq < tail {
            let entry = &self.entries[(seq % MAX_OUTSTANDING as u64) as usize];
            if entry.state.load(Ordering::Acquire) == state_word(seq, PENDING) {
                return true;
            }
            seq += 1;
        }
        false
    }

    fn advance(&self) {
        loop {
            if self.advancing.swap(true, Ordering::SeqCst) {
                return;
            }
            self.publish();
            self.advancing.store(false, Ordering::SeqCst);
            let scan = self.scan();
            if scan.published <= self.published.load(Ordering::Relaxed)
                && scan.floor <= self.floor.load(Ordering::Relaxed)
            {
                return;
            }
        }
    }

    /// Walks the table from `head`: how far entries can be popped (finished
    /// and not held), the position that may be published (the start of the
    /// oldest unfinished entry, or the cursor) and the floor (the start of the
    /// oldest entry not yet popped, or the cursor).
    fn scan(&self) -> Scan {
        // The cursor before the tail: see the invariants above.
        let cursor = self.cursor.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        let mut seq = self.head.load(Ordering::Relaxed);
        let mut scan = Scan {
            head: tail,
            published: cursor,
            floor: cursor,
        };
        let mut unfinished_found = false;
        let mut held_found = false;
        while seq < tail && !(unfinished_found && held_found) {
            let entry = &self.entries[(seq % MAX_OUTSTANDING as u64) as usize];
            let finished = entry.state.load(Ordering::SeqCst) == state_word(seq, FINISHED);
            let held = entry.held.load(Ordering::SeqCst);
            if !finished && !unfinished_found {
                unfinished_found = true;
                scan.published = entry.start.load(Ordering::Relaxed);
            }
            if (!finished || held) && !held_found {
                held_found = true;
                scan.head = seq;
                scan.floor = entry.start.load(Ordering::Relaxed);
            }
            seq += 1;
        }
        scan
    }

    /// Token holder only: pops finished entries, stores the new position and
    /// floor, and wakes whichever side sleeps on them.
    fn publish(&self) {
        let scan = self.scan();
        self.head.store(scan.head, Ordering::Release);
        if scan.published > self.published.load(Ordering::Relaxed) {
            self.published.store(scan.published, Ordering::Release);
            self.memory
                .control_u64(self.side.position)
                .store(scan.published, Ordering::SeqCst);
            if wake(
                &self.memory,
                self.side.peer_sleep,
                &self.peer_woken,
                &self.side.notifier,
            ) {
                self.wakeups_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if scan.floor > self.floor.load(Ordering::Relaxed) {
            self.floor.store(scan.floor, Ordering::SeqCst);
            wake(
                &self.memory,
                self.side.own_sleep,
                &self.own_woken,
                &self.side.own_notifier,
            );
        }
    }
}

/// What [`OrderedPublisher::scan`] found.
struct Scan {
    head: u64,
    published: u64,
    floor: u64,
}

/// Writes `notifier` if the side whose sleep sequence is at control offset
/// `sleep` sleeps and has not been woken for that sleep yet.
fn wake(memory: &RingMemory, sleep: usize, woken: &AtomicU32, notifier: &Notifier) -> bool {
    let seq = memory.control_u32(sleep).load(Ordering::SeqCst);
    if seq & 1 == 1 && seq != woken.load(Ordering::Relaxed) {
        woken.store(seq, Ordering::Relaxed);
        notifier.notify();
        true
    } else {
        false
    }
}

/// Names one outstanding record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    slot: usize,
    seq: u64,
}

/// A pending reservation, as [`OrderedPublisher::find_pending`] found it.
pub(crate) struct Found {
    pub ticket: Ticket,
    /// No reservation before it is still pending.
    pub oldest: bool,
    pub start: u64,
    pub size: u64,
    pub payload_at: u64,
}

/// A record's payload kept in the ring until this is dropped, by a reader
/// that hands it on without copying. It can move to any thread; dropping it
/// gives the space back once every older lease is gone too.
pub struct Lease {
    publisher: Arc<OrderedPublisher>,
    ticket: Ticket,
    offset: u64,
    len: u64,
}

impl Lease {
    pub(crate) fn new(publisher: Arc<OrderedPublisher>, ticket: Ticket, offset: u64, len: u64) -> Self {
        Self {
            publisher,
            ticket,
            offset,
            len,
        }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        // The consumer checked this range against the ring before leasing.
        self.publisher.memory().data(self.offset, self.len).unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.publisher.claim(self.ticket) {
            self.publisher.finish(self.ticket);
        }
    }
}

/// Room for a record, reserved by a writer to be filled in place and
/// committed later with [`Producer::commit_reserved`](super::Producer::commit_reserved).
/// In front of the record it keeps a preamble: room for the records (events)
/// that arrive between the reservation and the commit and belong before it.
/// Dropping it uncommitted turns the whole reservation into padding that the
/// reader skips, so an unused reservation never wedges the ring.
pub struct Reservation {
    publisher: Arc<OrderedPublisher>,
    ticket: Ticket,
    start: u64,
    size: u64,
    payload_at: u64,
    payload_len: u64,
}

impl Reservation {
    pub(crate) fn new(
        publisher: Arc<OrderedPublisher>,
        ticket: Ticket,
        found: (u64, u64, u64),
        payload_len: u64,
    ) -> Self {
        let (start, size, payload_at) = found;
        Self {
            publisher,
            ticket,
            start,
            size,
            payload_at,
            payload_len,
        }
    }

    fn payload_offset(&self) -> u64 {
        self.payload_at % self.publisher.capacity()
    }
}

impl AsMut<[u8]> for Reservation {
    fn as_mut(&mut self) -> &mut [u8] {
        let offset = self.payload_offset();
        // SAFETY: this range was free when reserved, and its entry stays
        // held until this reservation drops: the writer never grants or
        // reserves over it before then (the floor), whether it was committed,
        // padded or neither. `&mut self` makes this the only slice handed out
        // from here. Once committed, the reader may read it concurrently;
        // upstream does not write a buffer it has pushed, and if it did, the
        // reader would see other media bytes, never our memory unsafety.
        unsafe { self.publisher.memory().data_mut(offset, self.payload_len) }.unwrap_or_default()
    }
}

impl AsRef<[u8]> for Reservation {
    fn as_ref(&self) -> &[u8] {
        self.publisher
            .memory()
            .data(self.payload_offset(), self.payload_len)
            .unwrap_or_default()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        pad_outstanding(&self.publisher, self.ticket, self.start, self.size);
        self.publisher.release_hold(self.ticket);
    }
}

/// Turns an outstanding writer's reservation, preamble and all, into one
/// padding record and finishes it, if nobody has finished it yet.
pub(crate) fn pad_outstanding(publisher: &OrderedPublisher, ticket: Ticket, start: u64, size: u64) {
    if publisher.claim(ticket) {
        let padding = RecordHeader::untimed(RecordKind::Padding, 0);
        write_header(
            publisher.memory(),
            start % publisher.capacity(),
            size - RECORD_HEADER_SIZE,
            &padding,
        );
        publisher.finish(ticket);
    }
}

/// Writes a record header at data offset `offset`.
pub(crate) fn write_header(memory: &RingMemory, offset: u64, payload_len: u64, header: &RecordHeader) {
    let raw = header.encode(payload_len);
    // SAFETY: only the writer calls this, for a record it granted or
    // reserved and has not published yet, so the reader does not read these
    // bytes and no other slice into them is alive.
    if let Some(slot) = unsafe { memory.data_mut(offset, RECORD_HEADER_SIZE) } {
        slot.copy_from_slice(&raw);
    }
}

/// Writes a whole record (header and payload) at data offset `offset`.
pub(crate) fn write_record(memory: &RingMemory, offset: u64, header: &RecordHeader, payload: &[u8]) {
    write_header(memory, offset, payload.len() as u64, header);
    // SAFETY: as in `write_header`; the caller checked that the record fits
    // in the space it owns.
    if let Some(slot) = unsafe { memory.data_mut(offset + RECORD_HEADER_SIZE, payload.len() as u64) } {
        slot.copy_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::ring::layout::{OFFSET_READER_SLOT0, OFFSET_WRITE_POS, RECORD_ALIGN, SLOT_READ_POS, record_size};
    use crate::ring::spsc::tests::{receive, send};
    use crate::ring::spsc::{CommitOutcome, Consumer, Producer, ReadRecord, channel};

    const READ_POS: usize = OFFSET_READER_SLOT0 + SLOT_READ_POS;

    /// The read position the consumer has published, as the producer sees it.
    fn read_position(producer: &Producer) -> u64 {
        producer.memory_for_tests().control_u64(READ_POS).load(Ordering::SeqCst)
    }

    fn write_position(producer: &Producer) -> u64 {
        producer
            .memory_for_tests()
            .control_u64(OFFSET_WRITE_POS)
            .load(Ordering::SeqCst)
    }

    fn size_of(payload_len: usize) -> u64 {
        record_size(payload_len as u64).unwrap()
    }

    fn byte(id: u32, index: usize) -> u8 {
        (index as u32).wrapping_mul(31).wrapping_add(id.wrapping_mul(7)) as u8 ^ (index >> 8) as u8
    }

    /// Payload bytes that differ from record to record, so a record that is
    /// overwritten or swapped with another shows.
    fn pattern(id: u32, len: usize) -> Vec<u8> {
        (0..len).map(|index| byte(id, index)).collect()
    }

    fn has_pattern(id: u32, bytes: &[u8]) -> bool {
        bytes.iter().enumerate().all(|(index, &value)| value == byte(id, index))
    }

    fn buffer(id: u32) -> RecordHeader {
        RecordHeader {
            pts: u64::from(id) * 40,
            duration: 40,
            offset: u64::from(id),
            offset_end: u64::from(id) + 1,
            ..RecordHeader::untimed(RecordKind::Buffer, id)
        }
    }

    fn event(flags: u32) -> RecordHeader {
        RecordHeader::untimed(RecordKind::Event, flags)
    }

    /// Takes a padding record and returns the bytes it spans.
    fn skip_padding(consumer: &mut Consumer) -> u64 {
        let record = consumer.peek().unwrap().expect("a padding record");
        assert_eq!(*record.header(), RecordHeader::untimed(RecordKind::Padding, 0));
        let size = size_of(record.payload().len());
        record.release();
        size
    }

    fn lease(consumer: &mut Consumer) -> Lease {
        let record = consumer.peek().unwrap().expect("a record to lease");
        match record.into_lease() {
            Ok(lease) => lease,
            Err(_) => panic!("leasing was refused"),
        }
    }

    fn commit(
        producer: &mut Producer,
        reservation: &Reservation,
        preamble: &[(RecordHeader, &[u8])],
        header: &RecordHeader,
    ) -> CommitOutcome {
        let payload = reservation.as_ref();
        producer.commit_reserved(payload.as_ptr(), payload.len(), preamble, header)
    }

    fn reserve(producer: &mut Producer, payload: &[u8], preamble: usize) -> Reservation {
        let mut reservation = producer
            .reserve(payload.len(), preamble)
            .unwrap()
            .expect("room for the reservation");
        reservation.as_mut().copy_from_slice(payload);
        reservation
    }

    fn wait_for_data(consumer: &mut Consumer) {
        if consumer.prepare_wait().unwrap() {
            crate::ipc::wait_readable([consumer.data_fd()]).unwrap();
            consumer.finish_wait();
        }
    }

    fn wait_for_space(producer: &mut Producer, payload_len: usize) {
        if producer.prepare_wait(payload_len).unwrap() {
            crate::ipc::wait_readable([producer.space_fd()]).unwrap();
            producer.finish_wait();
        }
    }

    /// Like [`send`], sleeping until the record fits.
    fn send_waiting(producer: &mut Producer, header: &RecordHeader, payload: &[u8]) {
        loop {
            if let Some(mut grant) = producer.grant(payload.len()).unwrap() {
                grant.payload().copy_from_slice(payload);
                grant.commit(header);
                return;
            }
            wait_for_space(producer, payload.len());
        }
    }

    /// The threaded tests sleep without a timeout, as the elements do, so a
    /// lost wake-up would hang them: this aborts the whole test binary
    /// instead, unless the returned sender is dropped first.
    fn watchdog(test: &'static str) -> mpsc::Sender<()> {
        let (disarm, armed) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(Duration::from_secs(120)) {
                eprintln!("{test}: no progress for 120 s (a lost wake-up, or a thread panicked); aborting");
                std::process::abort();
            }
        });
        disarm
    }

    /// SplitMix64 with a fixed seed: runs differ only in thread timing.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % bound
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for last in (1..items.len()).rev() {
                items.swap(last, self.below(last as u64 + 1) as usize);
            }
        }
    }

    #[test]
    fn read_position_advances_only_over_the_released_prefix() {
        const CAPACITY: u64 = 1 << 16;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let lens = [100, 300, 0, 1000, 64];
        for (id, &len) in lens.iter().enumerate() {
            send(&mut producer, &pattern(id as u32, len), &buffer(id as u32));
        }
        let sizes = lens.map(size_of);
        let total: u64 = sizes.iter().sum();

        let first = lease(&mut consumer);
        let second = lease(&mut consumer);
        // The third is copied and released at once, between leases.
        assert_eq!(receive(&mut consumer), Some((buffer(2), Vec::new())));
        let fourth = lease(&mut consumer);
        let fifth = lease(&mut consumer);
        assert!(consumer.peek().unwrap().is_none());
        for (id, held) in [(0, &first), (1, &second), (3, &fourth), (4, &fifth)] {
            assert_eq!(held.as_ref(), pattern(id, lens[id as usize]));
        }
        assert_eq!(read_position(&producer), 0);

        drop(second);
        assert_eq!(read_position(&producer), 0, "the first lease still holds the ring");
        drop(first);
        let prefix = sizes[0] + sizes[1] + sizes[2];
        assert_eq!(read_position(&producer), prefix, "up to the fourth, still leased");
        drop(fifth);
        assert_eq!(read_position(&producer), prefix);

        // The producer may now fill the ring right up to the leased fourth
        // record, wrapping over the space the first three gave back, and no
        // further: the lease's bytes stay intact.
        let filler = [0xee; 64];
        while producer.grant(filler.len()).unwrap().is_some() {
            send(&mut producer, &filler, &RecordHeader::untimed(RecordKind::Caps, 0));
        }
        let written = write_position(&producer);
        assert!(written > CAPACITY);
        assert!(written <= prefix + CAPACITY && written + size_of(filler.len()) > prefix + CAPACITY);
        assert_eq!(fourth.as_ref(), pattern(3, lens[3]));

        drop(fourth);
        assert_eq!(read_position(&producer), total);
    }

    #[test]
    fn leasing_stops_at_half_the_ring_and_resumes_once_leases_drop() {
        const CAPACITY: u64 = 4096;
        const LEN: usize = 384;
        let size = size_of(LEN);
        assert_eq!(size, CAPACITY / 8);
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let mut next = 0u32;
        for round in 0..2 {
            let start = read_position(&producer);
            for _ in 0..6 {
                send(&mut producer, &pattern(next, LEN), &buffer(next));
                next += 1;
            }
            // Four leases span exactly half the ring.
            let leases: Vec<Lease> = (0..4).map(|_| lease(&mut consumer)).collect();
            // The fifth would span more: it comes back to be copied, and so
            // does the sixth, although the fifth took no lease.
            for refused in [next - 2, next - 1] {
                let record = consumer.peek().unwrap().unwrap();
                let Err(record) = record.into_lease() else {
                    panic!("round {round}: a lease past half the ring was granted");
                };
                assert_eq!(*record.header(), buffer(refused));
                assert!(has_pattern(refused, record.payload()));
                record.release();
            }
            assert_eq!(read_position(&producer), start);
            for (index, held) in leases.into_iter().enumerate().rev() {
                assert_eq!(held.as_ref(), pattern(next - 6 + index as u32, LEN));
                drop(held);
                let expected = if index == 0 { start + 6 * size } else { start };
                assert_eq!(read_position(&producer), expected);
            }
            assert_eq!(read_position(&producer), write_position(&producer));
        }
    }

    #[test]
    fn leasing_stops_at_max_outstanding() {
        // Large enough that MAX_OUTSTANDING empty records span far less
        // than half of it.
        const CAPACITY: u64 = 1 << 19;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let mut next = 0u32;
        let mut send_empty = |producer: &mut Producer| {
            send(producer, &[], &event(next));
            next += 1;
        };
        let refused = |consumer: &mut Consumer| {
            let record = consumer.peek().unwrap().unwrap();
            match record.into_lease() {
                Ok(_) => panic!("more than MAX_OUTSTANDING leases"),
                Err(record) => record.release(),
            }
        };
        let mut leases = Vec::new();
        for _ in 0..MAX_OUTSTANDING {
            send_empty(&mut producer);
            leases.push(lease(&mut consumer));
        }
        send_empty(&mut producer);
        refused(&mut consumer);
        // Dropping the newest frees no table entry: entries leave it only
        // from the oldest end.
        drop(leases.pop());
        send_empty(&mut producer);
        refused(&mut consumer);
        drop(leases.remove(0));
        send_empty(&mut producer);
        leases.push(lease(&mut consumer));
        assert_eq!(read_position(&producer), RECORD_HEADER_SIZE);
        drop(leases);
        assert_eq!(read_position(&producer), write_position(&producer));
        assert_eq!(read_position(&producer), u64::from(next) * RECORD_HEADER_SIZE);
    }

    #[test]
    fn leases_dropped_in_batches_on_another_thread() {
        const CAPACITY: u64 = 1 << 16;
        const RECORDS: u32 = 20_000;
        let _watchdog = watchdog("leases_dropped_in_batches_on_another_thread");
        let len = |id: u32| (id as usize * 389) % 5000;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        // The producer moves to its thread: read the position through the memfd.
        let memfd = File::from(producer.fds().memfd.try_clone_to_owned().unwrap());
        let published_read = || {
            let mut raw = [0; 8];
            memfd.read_exact_at(&mut raw, READ_POS as u64).unwrap();
            u64::from_ne_bytes(raw)
        };

        let writer = thread::spawn(move || {
            for id in 0..RECORDS {
                send_waiting(&mut producer, &buffer(id), &pattern(id, len(id)));
            }
            producer
        });
        let (to_dropper, batches) = mpsc::channel::<Vec<(u32, Lease)>>();
        let (dropped, batches_dropped) = mpsc::channel();
        let dropper = thread::spawn(move || {
            for batch in batches {
                // Newest first: every drop but the last leaves an older lease
                // holding the read position back.
                for (id, held) in batch.into_iter().rev() {
                    assert!(
                        has_pattern(id, held.as_ref()) && held.as_ref().len() == len(id),
                        "lease {id} changed"
                    );
                }
                dropped.send(()).unwrap();
            }
        });

        let check = |record: &ReadRecord<'_>, id: u32| {
            assert_eq!(*record.header(), buffer(id));
            assert!(has_pattern(id, record.payload()) && record.payload().len() == len(id));
        };
        let mut rng = Rng(1);
        let (mut leased, mut refused) = (0, 0);
        let mut consumed = 0;
        let mut id = 0;
        while id < RECORDS {
            let wanted = 1 + rng.below(16) as usize;
            let mut batch = Vec::new();
            while batch.len() < wanted && id < RECORDS {
                let Some(record) = consumer.peek().unwrap() else {
                    if !batch.is_empty() {
                        break;
                    }
                    wait_for_data(&mut consumer);
                    continue;
                };
                check(&record, id);
                match record.into_lease() {
                    Ok(held) => {
                        batch.push((id, held));
                        leased += 1;
                    }
                    Err(record) => {
                        record.release();
                        refused += 1;
                    }
                }
                consumed += size_of(len(id));
                id += 1;
            }
            to_dropper.send(batch).unwrap();
            // Copy a few more while the batch is dropped, so that both
            // threads move the read position at once.
            for _ in 0..rng.below(4) {
                let Some(record) = consumer.peek().unwrap().filter(|_| id < RECORDS) else {
                    break;
                };
                check(&record, id);
                record.release();
                consumed += size_of(len(id));
                id += 1;
            }
            batches_dropped.recv().unwrap();
            // Every lease is back and this thread is idle: nothing may hold
            // the position back any more.
            assert_eq!(published_read(), consumed, "a release was not published, record {id}");
        }
        drop(to_dropper);
        dropper.join().unwrap();
        let producer = writer.join().unwrap();
        assert!(leased > 0 && refused > 0, "{leased} leased, {refused} refused");
        assert!(consumer.peek().unwrap().is_none());
        let total: u64 = (0..RECORDS).map(|id| size_of(len(id))).sum();
        assert_eq!(write_position(&producer), total);
        assert_eq!(read_position(&producer), total);
    }

    #[test]
    fn commit_in_place_writes_preamble_records_then_padding_then_the_buffer() {
        const CAPACITY: u64 = 1 << 16;
        const PREAMBLE: usize = 512;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let (a_bytes, b_bytes) = (pattern(1, 1000), pattern(2, 300));
        let a = reserve(&mut producer, &a_bytes, PREAMBLE);
        let b = reserve(&mut producer, &b_bytes, PREAMBLE);
        assert_eq!(a.as_ref().as_ptr() as u64 % RECORD_ALIGN, 0);
        let a_size = PREAMBLE as u64 + size_of(a_bytes.len());
        let b_size = PREAMBLE as u64 + size_of(b_bytes.len());
        assert!(producer.has_pending());
        assert_eq!(write_position(&producer), 0);
        assert!(consumer.peek().unwrap().is_none());

        let a_header = RecordHeader {
            flags: 0x40,
            dts: 900,
            meta_kind: 1,
            meta: std::array::from_fn(|index| index as u8),
            ..buffer(1)
        };
        let caps = RecordHeader::untimed(RecordKind::Caps, 0);
        let tag = event(0x1234);
        // 192 + 192 bytes of the 512: a 128-byte padding record fills the rest.
        let preamble: [(RecordHeader, &[u8]); 2] = [(caps, b"video/x-raw"), (tag, &[9; 10])];
        assert!(matches!(
            commit(&mut producer, &a, &preamble, &a_header),
            CommitOutcome::Committed
        ));
        assert!(producer.has_pending(), "the second reservation");
        assert_eq!(write_position(&producer), a_size);
        assert_eq!(receive(&mut consumer), Some((caps, b"video/x-raw".to_vec())));
        assert_eq!(receive(&mut consumer), Some((tag, vec![9; 10])));
        assert_eq!(skip_padding(&mut consumer), RECORD_HEADER_SIZE);
        assert_eq!(receive(&mut consumer), Some((a_header, a_bytes)));
        // The pending second reservation holds back everything after it.
        assert!(consumer.peek().unwrap().is_none());
        // Dropping a committed reservation changes nothing.
        drop(a);
        assert_eq!(write_position(&producer), a_size);
        assert!(consumer.peek().unwrap().is_none());

        assert!(matches!(
            commit(&mut producer, &b, &[], &buffer(2)),
            CommitOutcome::Committed
        ));
        assert!(!producer.has_pending());
        assert_eq!(skip_padding(&mut consumer), PREAMBLE as u64);
        assert_eq!(receive(&mut consumer), Some((buffer(2), b_bytes)));
        assert!(consumer.peek().unwrap().is_none());
        drop(b);
        assert_eq!(write_position(&producer), a_size + b_size);
        assert_eq!(read_position(&producer), a_size + b_size);
    }

    #[test]
    fn commits_out_of_order_are_copied_in_render_order() {
        const CAPACITY: u64 = 1 << 16;
        const PREAMBLE: usize = 256;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let a = reserve(&mut producer, &pattern(1, 500), PREAMBLE);
        let b = reserve(&mut producer, &pattern(2, 200), PREAMBLE);

        // The second is rendered first: committing it in place would put it
        // behind the first, still pending.
        let CommitOutcome::OutOfOrder(stale) = commit(&mut producer, &b, &[], &buffer(2)) else {
            panic!("committed in place behind a pending reservation");
        };
        send(&mut producer, b.as_ref(), &buffer(2));
        drop(stale);
        assert!(
            consumer.peek().unwrap().is_none(),
            "the first reservation holds the copy back"
        );
        assert!(producer.has_pending());

        // The first is no longer pending behind anything, but the copy of the
        // second now sits after it and must stay ahead of it.
        let CommitOutcome::OutOfOrder(stale) = commit(&mut producer, &a, &[], &buffer(1)) else {
            panic!("committed in place before a record granted after it");
        };
        send(&mut producer, a.as_ref(), &buffer(1));
        drop(stale);
        assert!(!producer.has_pending());

        assert_eq!(skip_padding(&mut consumer), PREAMBLE as u64 + size_of(500));
        assert_eq!(skip_padding(&mut consumer), PREAMBLE as u64 + size_of(200));
        assert_eq!(receive(&mut consumer), Some((buffer(2), pattern(2, 200))));
        assert_eq!(receive(&mut consumer), Some((buffer(1), pattern(1, 500))));
        drop((a, b));
        assert!(consumer.peek().unwrap().is_none());
        assert_eq!(read_position(&producer), write_position(&producer));
    }

    #[test]
    fn dropped_reservation_becomes_one_padding_record() {
        const CAPACITY: u64 = 1 << 16;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        send(&mut producer, b"before", &event(1));
        let mut unused = producer.reserve(700, 100).unwrap().unwrap();
        unused.as_mut()[..10].fill(0xaa);
        send(&mut producer, b"behind it", &event(2));
        assert!(receive(&mut consumer).is_some());
        assert!(consumer.peek().unwrap().is_none());
        drop(unused);
        assert!(!producer.has_pending());
        // The preamble rounds up to 128 bytes.
        assert_eq!(skip_padding(&mut consumer), 128 + size_of(700));
        assert_eq!(receive(&mut consumer), Some((event(2), b"behind it".to_vec())));

        let next = reserve(&mut producer, &pattern(3, 50), 0);
        assert!(matches!(
            commit(&mut producer, &next, &[], &buffer(3)),
            CommitOutcome::Committed
        ));
        assert_eq!(receive(&mut consumer), Some((buffer(3), pattern(3, 50))));
        assert!(consumer.peek().unwrap().is_none());
    }

    #[test]
    fn preamble_that_does_not_fit_is_out_of_order() {
        const CAPACITY: u64 = 1 << 16;
        const PREAMBLE: usize = 256;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let size = PREAMBLE as u64 + size_of(100);
        // 192 bytes would leave 64, too little for a padding record; 384
        // bytes do not fit at all; 256 bytes fill it exactly.
        for (id, event_len, fits) in [(1, 64, false), (2, 128, true), (3, 200, false)] {
            let reservation = reserve(&mut producer, &pattern(id, 100), PREAMBLE);
            let payload = vec![id as u8; event_len];
            let preamble = [(event(id), payload.as_slice())];
            match commit(&mut producer, &reservation, &preamble, &buffer(id)) {
                CommitOutcome::Committed => assert!(fits, "{event_len}-byte preamble committed"),
                CommitOutcome::OutOfOrder(stale) => {
                    assert!(!fits, "{event_len}-byte preamble refused");
                    send(&mut producer, &payload, &event(id));
                    send(&mut producer, reservation.as_ref(), &buffer(id));
                    drop(stale);
                    assert_eq!(skip_padding(&mut consumer), size);
                }
                CommitOutcome::NotReserved => panic!("a pending reservation was not found"),
            }
            assert_eq!(receive(&mut consumer), Some((event(id), payload)));
            assert_eq!(receive(&mut consumer), Some((buffer(id), pattern(id, 100))));
            assert!(consumer.peek().unwrap().is_none());
        }
    }

    #[test]
    fn reservations_stop_at_half_the_ring_and_resume_once_released() {
        const CAPACITY: u64 = 4096;
        const LEN: usize = 384;
        assert_eq!(size_of(LEN), CAPACITY / 8);
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        assert!(matches!(
            producer.reserve(CAPACITY as usize, 0),
            Err(crate::ring::RingError::TooLarge { .. })
        ));
        let mut reservations: Vec<Reservation> =
            (0..4).map(|id| reserve(&mut producer, &pattern(id, LEN), 0)).collect();
        assert!(producer.reserve(LEN, 0).unwrap().is_none());
        assert!(producer.reserve(0, 0).unwrap().is_none());

        let first = reservations.remove(0);
        assert!(matches!(
            commit(&mut producer, &first, &[], &buffer(0)),
            CommitOutcome::Committed
        ));
        // Committed, but its buffer is still held: its space is not free.
        assert!(producer.reserve(LEN, 0).unwrap().is_none());
        drop(first);
        reservations.push(reserve(&mut producer, &pattern(4, LEN), 0));
        assert!(producer.reserve(LEN, 0).unwrap().is_none());
        for (id, reservation) in (1..).zip(&reservations) {
            assert!(matches!(
                commit(&mut producer, reservation, &[], &buffer(id)),
                CommitOutcome::Committed
            ));
        }
        assert!(!producer.has_pending());
        for id in 0..5 {
            assert_eq!(receive(&mut consumer), Some((buffer(id), pattern(id, LEN))));
        }
        assert!(consumer.peek().unwrap().is_none());
    }

    /// Writes a record of `len` bytes of `byte` if it fits now.
    fn write(producer: &mut Producer, byte: u8, len: usize) -> bool {
        match producer.grant(len).unwrap() {
            Some(mut grant) => {
                grant.payload().fill(byte);
                grant.commit(&RecordHeader::untimed(RecordKind::Buffer, 0));
                true
            }
            None => false,
        }
    }

    #[test]
    fn a_committed_reservation_keeps_its_space_until_it_drops() {
        const CAPACITY: u64 = 4096;
        const LEN: usize = 384;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let held = reserve(&mut producer, &pattern(0, LEN), 0);
        assert!(matches!(
            commit(&mut producer, &held, &[], &buffer(0)),
            CommitOutcome::Committed
        ));
        assert_eq!(receive(&mut consumer), Some((buffer(0), pattern(0, LEN))));
        // The reader is done with it, but upstream still holds the buffer:
        // grants fill the rest of the ring and must stop short of it.
        let mut granted = 0;
        while write(&mut producer, 9, LEN) {
            granted += 1;
        }
        assert_eq!(granted, (CAPACITY / size_of(LEN)) as usize - 1);
        while consumer.peek().unwrap().is_some() {
            consumer.peek().unwrap().unwrap().release();
        }
        assert!(
            !write(&mut producer, 9, LEN),
            "the held buffer's space must stay untouched"
        );
        assert_eq!(held.as_ref(), &pattern(0, LEN)[..]);
        drop(held);
        assert!(write(&mut producer, 9, LEN), "dropping the buffer frees its space");
    }

    #[test]
    fn commit_of_anything_but_a_pending_payload_is_not_reserved() {
        const CAPACITY: u64 = 1 << 16;
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let a = reserve(&mut producer, &pattern(1, 100), 0);
        let not_reserved = |outcome| matches!(outcome, CommitOutcome::NotReserved);

        let foreign = pattern(1, 100);
        assert!(not_reserved(producer.commit_reserved(
            foreign.as_ptr(),
            100,
            &[],
            &buffer(1)
        )));
        let inside = a.as_ref()[64..].as_ptr();
        assert!(not_reserved(producer.commit_reserved(inside, 36, &[], &buffer(1))));
        assert!(not_reserved(producer.commit_reserved(
            a.as_ref().as_ptr(),
            1000,
            &[],
            &buffer(1)
        )));
        assert!(matches!(
            commit(&mut producer, &a, &[], &buffer(1)),
            CommitOutcome::Committed
        ));
        assert!(not_reserved(commit(&mut producer, &a, &[], &buffer(1))));

        // A reservation given up after an out-of-order commit is gone too.
        let b = reserve(&mut producer, &pattern(2, 100), 0);
        let c = reserve(&mut producer, &pattern(3, 100), 0);
        let CommitOutcome::OutOfOrder(stale) = commit(&mut producer, &c, &[], &buffer(3)) else {
            panic!("committed in place behind a pending reservation");
        };
        drop(stale);
        assert!(not_reserved(commit(&mut producer, &c, &[], &buffer(3))));
        assert!(matches!(
            commit(&mut producer, &b, &[], &buffer(2)),
            CommitOutcome::Committed
        ));
        assert!(!producer.has_pending());
        assert_eq!(receive(&mut consumer), Some((buffer(1), pattern(1, 100))));
        assert_eq!(receive(&mut consumer), Some((buffer(2), pattern(2, 100))));
        assert_eq!(skip_padding(&mut consumer), size_of(100));
        assert!(consumer.peek().unwrap().is_none());
    }

    /// What the filler thread gives back for a reservation.
    enum Filled {
        Ready(u32, Reservation),
        Dropped,
    }

    #[test]
    fn reservations_filled_on_another_thread_and_committed_in_any_order() {
        const CAPACITY: u64 = 1 << 16;
        const PREAMBLE: usize = 256;
        const BUFFERS: u32 = 5000;
        const END: u32 = u32::MAX;
        let _watchdog = watchdog("reservations_filled_on_another_thread_and_committed_in_any_order");
        let len = |id: u32| (id as usize * 389 + 11) % 4000;
        // A preamble event that fills the preamble exactly, one that leaves
        // room for padding, none, and one too large that forces a copy.
        let event_len = |id: u32| match id {
            _ if id % 11 == 5 => Some(200),
            _ if id.is_multiple_of(3) => Some(100),
            _ if id % 3 == 1 => Some(0),
            _ => None,
        };
        let event_payload = move |id: u32| vec![id as u8; event_len(id).unwrap_or(0)];
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();

        let reader = thread::spawn(move || {
            let mut received = Vec::new();
            let mut preamble_event = None;
            loop {
                let Some(record) = consumer.peek().unwrap() else {
                    wait_for_data(&mut consumer);
                    continue;
                };
                let header = *record.header();
                match header.kind {
                    RecordKind::Padding => {}
                    RecordKind::Event if header.flags == END => {
                        record.release();
                        break;
                    }
                    RecordKind::Event => {
                        assert_eq!(preamble_event, None, "two events before one buffer");
                        assert_eq!(record.payload(), event_payload(header.flags));
                        preamble_event = Some(header.flags);
                    }
                    RecordKind::Buffer => {
                        let id = header.flags;
                        assert_eq!(header, buffer(id));
                        assert!(has_pattern(id, record.payload()) && record.payload().len() == len(id));
                        if let Some(event) = preamble_event.take() {
                            assert_eq!(event, id, "an event arrived before the wrong buffer");
                        }
                        received.push((id, event_len(id).is_some()));
                    }
                    RecordKind::Caps => panic!("unexpected caps"),
                }
                record.release();
            }
            received
        });
        let (to_filler, to_fill) = mpsc::channel::<(u32, Reservation)>();
        let (filled_tx, filled) = mpsc::channel::<Filled>();
        let filler = thread::spawn(move || {
            for (id, mut reservation) in to_fill {
                if id % 7 == 6 {
                    // Upstream gave the buffer up: the ring gets padding,
                    // published from this thread.
                    drop(reservation);
                    filled_tx.send(Filled::Dropped).unwrap();
                } else {
                    reservation.as_mut().copy_from_slice(&pattern(id, len(id)));
                    filled_tx.send(Filled::Ready(id, reservation)).unwrap();
                }
            }
        });

        let mut rng = Rng(7);
        let mut expected = Vec::new();
        let (mut in_place, mut copied) = (0, 0);
        let mut next = 0;
        while next < BUFFERS {
            // Reserve a few, let the filler fill them while we go on
            // reserving, then commit them in a random order.
            let wanted = 1 + rng.below(5);
            let mut out = 0;
            while out < wanted && next < BUFFERS {
                match producer.reserve(len(next), PREAMBLE).unwrap() {
                    Some(reservation) => {
                        to_filler.send((next, reservation)).unwrap();
                        next += 1;
                        out += 1;
                    }
                    None if out > 0 => break,
                    None => wait_for_space(&mut producer, len(next) + PREAMBLE),
                }
            }
            let mut batch: Vec<Filled> = (0..out).map(|_| filled.recv().unwrap()).collect();
            rng.shuffle(&mut batch);
            for filled in batch {
                let Filled::Ready(id, reservation) = filled else {
                    continue;
                };
                let payload = event_payload(id);
                let preamble = [(event(id), payload.as_slice())];
                let preamble = if event_len(id).is_some() { &preamble[..] } else { &[] };
                match commit(&mut producer, &reservation, preamble, &buffer(id)) {
                    CommitOutcome::Committed => in_place += 1,
                    CommitOutcome::OutOfOrder(stale) => {
                        for (header, bytes) in preamble {
                            send_waiting(&mut producer, header, bytes);
                        }
                        send_waiting(&mut producer, &buffer(id), reservation.as_ref());
                        drop(stale);
                        copied += 1;
                    }
                    CommitOutcome::NotReserved => panic!("reservation {id} was not found"),
                }
                expected.push((id, event_len(id).is_some()));
            }
        }
        drop(to_filler);
        filler.join().unwrap();
        assert!(!producer.has_pending());
        send_waiting(&mut producer, &event(END), &[]);
        let received = reader.join().unwrap();

        if let Some(at) = (0..expected.len()).find(|&at| received.get(at) != Some(&expected[at])) {
            panic!(
                "buffer {at} of {}: received {:?}, committed {:?}",
                expected.len(),
                &received[at..received.len().min(at + 8)],
                &expected[at..expected.len().min(at + 8)]
            );
        }
        assert_eq!(received.len(), expected.len());
        assert_eq!(expected.len(), (0..BUFFERS).filter(|id| id % 7 != 6).count());
        assert!(in_place > 250 && copied > 250, "{in_place} in place, {copied} copied");
        assert_eq!(read_position(&producer), write_position(&producer));
    }
}
