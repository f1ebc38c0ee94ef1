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
}

/// Which shared position a publisher moves, and whom it wakes.
pub(crate) struct Side {
    /// The control-page offset of the position this side publishes.
    pub position: usize,
    /// The control-page offset of the other side's sleep sequence.
    pub peer_sleep: usize,
    /// The eventfd the other side sleeps on.
    pub notifier: Notifier,
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
    advancing: AtomicBool,
    peer_woken: AtomicU32,
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
            advancing: AtomicBool::new(false),
            peer_woken: AtomicU32::new(0),
            wakeups_sent: AtomicU64::new(0),
        }
    }

    /// Takes over publishing from a side that so far published in order
    /// itself, at `position`, having last woken the peer's sleep `peer_woken`.
    pub(crate) fn take_over(&self, position: u64, peer_woken: u32) {
        self.cursor.store(position, Ordering::SeqCst);
        self.published.store(position, Ordering::SeqCst);
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

    /// Whether a record of `size` bytes at `start` may stay outstanding: the
    /// table has room and outstanding records would not span more than half
    /// the ring, so the other side always keeps room to move.
    pub(crate) fn can_hold(&self, start: u64, size: u64) -> bool {
        let outstanding = self.tail.load(Ordering::Relaxed) - self.head.load(Ordering::Acquire);
        let span = start + size - self.published.load(Ordering::Acquire);
        outstanding < MAX_OUTSTANDING as u64 && span <= self.capacity / 2
    }

    /// Owner's thread: records an outstanding record of `size` bytes at
    /// `start`, before the cursor moves past it. Returns its ticket.
    pub(crate) fn push(&self, start: u64, size: u64, payload_at: u64) -> Ticket {
        let seq = self.tail.load(Ordering::Relaxed);
        let slot = (seq % MAX_OUTSTANDING as u64) as usize;
        let entry = &self.entries[slot];
        entry.start.store(start, Ordering::Relaxed);
        entry.size.store(size, Ordering::Relaxed);
        entry.payload_at.store(payload_at, Ordering::Relaxed);
        entry.state.store(state_word(seq, PENDING), Ordering::Relaxed);
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
            if self.finished_prefix().1 <= self.published.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// The number of entries finished in order from `head`, and the position
    /// that allows: the start of the oldest unfinished entry, or the cursor.
    fn finished_prefix(&self) -> (u64, u64) {
        // The cursor before the tail: see the invariants above.
        let cursor = self.cursor.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        let mut head = self.head.load(Ordering::Relaxed);
        while head < tail {
            let entry = &self.entries[(head % MAX_OUTSTANDING as u64) as usize];
            if entry.state.load(Ordering::SeqCst) != state_word(head, FINISHED) {
                return (head, entry.start.load(Ordering::Relaxed));
            }
            head += 1;
        }
        (head, cursor)
    }

    /// Token holder only: pops finished entries, stores the new position and
    /// wakes the peer if it sleeps.
    fn publish(&self) {
        let (head, target) = self.finished_prefix();
        self.head.store(head, Ordering::Release);
        if target <= self.published.load(Ordering::Relaxed) {
            return;
        }
        self.published.store(target, Ordering::Release);
        self.memory
            .control_u64(self.side.position)
            .store(target, Ordering::SeqCst);
        let seq = self.memory.control_u32(self.side.peer_sleep).load(Ordering::SeqCst);
        if seq & 1 == 1 && seq != self.peer_woken.load(Ordering::Relaxed) {
            self.peer_woken.store(seq, Ordering::Relaxed);
            self.side.notifier.notify();
            self.wakeups_sent.fetch_add(1, Ordering::Relaxed);
        }
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
        // SAFETY: this range was free when reserved and stays owned by this
        // reservation until it is finished: the writer's position, and so
        // the reader, does not pass it before then, and no other grant or
        // reservation overlaps it. `&mut self` makes this the only slice
        // handed out from here. Once the record is committed nothing writes
        // here any more: the buffer wrapping it has been rendered.
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
