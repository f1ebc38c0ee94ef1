//! The single-producer, single-consumer ring protocol.
//!
//! # Invariants
//!
//! Two shared positions count bytes since the start of the stream:
//! `write` (stored only by the producer) and `read` (stored only by the
//! consumer). At every moment, as each side sees them:
//!
//! 1. `read <= write <= read + capacity`. The bytes in `read..write` are
//!    committed records the consumer may read; the bytes in
//!    `write..read + capacity` are free and belong to the producer.
//! 2. Both positions only grow, and always by whole records, so both stay
//!    multiples of `RECORD_ALIGN` and a record header always sits at `read`.
//! 3. A side reads the other's position only to learn about more data (or
//!    more room), so a stale cached copy is always safe: it only
//!    under-reports. That is why each side caches the other's position and
//!    reloads it only when the cached view says empty (or full).
//!
//! The peer is untrusted. Every position loaded from shared memory is checked
//! against invariant 1 and against the last value seen, and every record
//! header is copied out of shared memory once, then checked, before its
//! payload is touched. A violation is a `RingError::Corrupt`, never a panic or
//! an out-of-bounds access.
//!
//! # Orderings
//!
//! Publishing a position is a `SeqCst` store: it is a Release store (the
//! record's bytes, or the reader's last use of them, happen before the other
//! side sees the new position) and it takes part in the wake-up handshake
//! below. Reloading the other side's position is an `Acquire` load, paired
//! with that Release. Each read or write therefore costs two atomic
//! operations, the store and the load of the peer's sleep sequence, plus a
//! reload only at empty or full. No lock, allocation or syscall happens while
//! the ring is neither empty nor full.
//!
//! # Wake-ups, and why none is lost
//!
//! Each side has a sleep sequence in shared memory, written only by itself:
//! odd while it is (about to be) asleep, even while awake. To sleep, the
//! consumer:
//!
//! ```text
//! C1  sleep_seq = odd              (SeqCst store)
//! C2  w = write                    (SeqCst load); if w != read: don't sleep
//! C3  poll(data eventfd)
//! ```
//!
//! and the producer, after each commit:
//!
//! ```text
//! P1  write = new                  (SeqCst store)
//! P2  s = reader's sleep_seq       (SeqCst load)
//! P3  if s is odd and not yet signalled: write the data eventfd
//! ```
//!
//! All four accesses are `SeqCst`, so they fall in one total order. If C2
//! comes before P1, then C1 comes before P2, and the producer sees the odd
//! sequence and writes the eventfd, whose counter keeps the wake-up until
//! the consumer polls. If P1 comes before C2, the consumer sees the new
//! record and does not sleep. Either way a commit made while the consumer
//! sleeps wakes it. The producer remembers the last sequence it signalled,
//! so it writes the eventfd once per sleep, and only when the consumer
//! really found the ring empty: the empty→non-empty transition. The same
//! argument, with the roles swapped, covers the producer sleeping on a full
//! ring and the consumer's release. A stale signal only causes one spurious
//! wake-up, after which the sleeper checks the ring again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::RingError;
use super::layout::*;
use super::memory::RingMemory;
use super::notifier::Notifier;
use super::ordered::{Lease, OrderedPublisher, Reservation, Side, Ticket, pad_outstanding, write_header, write_record};

/// Version 1 has one reader, in slot 0.
const READ_POS: usize = OFFSET_READER_SLOT0 + SLOT_READ_POS;
const READER_SLEEP: usize = OFFSET_READER_SLOT0 + SLOT_READER_SLEEP;

/// One side's sleep sequence, as kept by that side.
#[derive(Debug, Default)]
struct SleepState {
    /// Our own sequence: odd while asleep.
    own: u32,
    /// The peer's last odd sequence we sent a wake-up for.
    peer_woken: u32,
}

impl SleepState {
    fn enter(&mut self, shared: &AtomicU32) {
        self.own = self.own.wrapping_add(1) | 1;
        if self.own == READER_DETACHED {
            self.own = 1;
        }
        shared.store(self.own, Ordering::SeqCst);
    }

    fn leave(&mut self, shared: &AtomicU32) {
        self.own = self.own.wrapping_add(1);
        // Relaxed: a stale odd value only costs the peer one useless wake-up.
        shared.store(self.own, Ordering::Relaxed);
    }

    /// After publishing a position: wakes the peer if it went to sleep.
    fn wake_peer(&mut self, peer_sleep: &AtomicU32, notifier: &Notifier) -> bool {
        let seq = peer_sleep.load(Ordering::SeqCst);
        if seq & 1 == 1 && seq != self.peer_woken {
            self.peer_woken = seq;
            notifier.notify();
            true
        } else {
            false
        }
    }
}

/// The writing end of a ring.
pub struct Producer {
    memory: Arc<RingMemory>,
    capacity: u64,
    /// End of the last record granted or reserved.
    write: u64,
    read_cached: u64,
    sleep: SleepState,
    /// Publishes the write position once reservations are in use; until
    /// then the producer publishes it itself, in order. It also owns the
    /// eventfds: the reader's (data ready) and ours (space ready).
    publisher: Arc<OrderedPublisher>,
    reserving: bool,
    /// Start of the last granted record: a reservation older than it can no
    /// longer be committed in place.
    last_grant: Option<u64>,
    wakeups_sent: u64,
}

/// What [`Producer::commit_reserved`] did.
pub enum CommitOutcome {
    /// The record is committed where it was reserved: nothing was copied.
    Committed,
    /// The pointer is not the payload of a pending reservation of this ring.
    NotReserved,
    /// Committing in place would break stream order: copy instead.
    OutOfOrder(StaleReservation),
}

/// A reservation that can no longer be committed in place. Dropping it
/// turns it into padding; do that after writing its copy.
pub struct StaleReservation {
    publisher: Arc<OrderedPublisher>,
    found: (Ticket, u64, u64),
}

impl Drop for StaleReservation {
    fn drop(&mut self) {
        let (ticket, start, size) = self.found;
        pad_outstanding(&self.publisher, ticket, start, size);
    }
}

/// Whether `records` fit in `room` bytes of preamble and leave either
/// nothing or room for the padding record that fills the rest.
fn preamble_fits(records: &[(RecordHeader, &[u8])], room: u64) -> bool {
    let used: u64 = records
        .iter()
        .map(|(_, bytes)| record_size(bytes.len() as u64).unwrap_or(u64::MAX))
        .sum();
    used == room || used.saturating_add(RECORD_HEADER_SIZE) <= room
}

/// The reading end of a ring.
pub struct Consumer {
    memory: Arc<RingMemory>,
    capacity: u64,
    /// Start of the next record to take.
    read: u64,
    write_cached: u64,
    sleep: SleepState,
    /// Publishes the read position once records are leased; until then the
    /// consumer publishes it itself, in order. It also owns the eventfds:
    /// the writer's (space ready) and ours (data ready).
    publisher: Arc<OrderedPublisher>,
    leasing: bool,
    wakeups_sent: u64,
}

/// Room for one record, handed out by [`Producer::grant`]. Fill the payload,
/// then [`commit`](WriteGrant::commit). Dropping it writes nothing.
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    payload_len: u64,
}

/// The record at the read position, handed out by [`Consumer::peek`]. It
/// stays in the ring until [`release`](ReadRecord::release).
pub struct ReadRecord<'a> {
    consumer: &'a mut Consumer,
    header: RecordHeader,
    payload_len: u64,
}

/// The fds a reader needs, in the order the handshake sends them.
pub struct RingFds<'a> {
    pub memfd: BorrowedFd<'a>,
    pub data_ready: BorrowedFd<'a>,
    pub space_ready: BorrowedFd<'a>,
}

impl Producer {
    /// Creates a ring with `capacity` bytes of data area.
    pub fn create(capacity: u64) -> Result<Self, RingError> {
        let memory = Arc::new(RingMemory::create(capacity)?);
        let side = Side {
            position: OFFSET_WRITE_POS,
            peer_sleep: READER_SLEEP,
            notifier: Notifier::new()?,
            own_sleep: OFFSET_WRITER_SLEEP,
            own_notifier: Notifier::new()?,
        };
        let publisher = Arc::new(OrderedPublisher::new(memory.clone(), capacity, side));
        Ok(Self {
            memory,
            capacity,
            write: 0,
            read_cached: 0,
            sleep: SleepState::default(),
            publisher,
            reserving: false,
            last_grant: None,
            wakeups_sent: 0,
        })
    }

    /// What a consumer in another process needs to attach.
    pub fn fds(&self) -> RingFds<'_> {
        RingFds {
            memfd: self.memory.memfd(),
            data_ready: self.publisher.notifier().as_fd(),
            space_ready: self.publisher.own_notifier().as_fd(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent + self.publisher.wakeups_sent()
    }

    #[cfg(test)]
    pub(crate) fn memory_for_tests(&self) -> &RingMemory {
        &self.memory
    }

    /// Whether the reader has let go of the ring (dropped its `Consumer`).
    /// One load of a word the reader rarely writes.
    pub fn reader_detached(&self) -> bool {
        self.memory.control_u32(READER_SLEEP).load(Ordering::Acquire) == READER_DETACHED
    }

    /// Readable when the consumer has made room after [`Self::prepare_wait`].
    pub fn space_fd(&self) -> BorrowedFd<'_> {
        self.publisher.own_notifier().as_fd()
    }

    /// Room for a record with `payload_len` bytes of payload. `Ok(None)`
    /// means the ring is too full right now; `TooLarge` that it never fits.
    pub fn grant(&mut self, payload_len: usize) -> Result<Option<WriteGrant<'_>>, RingError> {
        let payload_len = payload_len as u64;
        if !self.make_room(payload_len)? {
            return Ok(None);
        }
        Ok(Some(WriteGrant {
            producer: self,
            payload_len,
        }))
    }

    /// Reserves room for a record that is filled in place and committed
    /// later with [`Producer::commit_reserved`], with `preamble` bytes in
    /// front of it for records that must come first. `Ok(None)` means no
    /// room now, or that outstanding reservations already span half the
    /// ring.
    pub fn reserve(&mut self, payload_len: usize, preamble: usize) -> Result<Option<Reservation>, RingError> {
        let payload_len = payload_len as u64;
        let preamble = (preamble as u64).next_multiple_of(RECORD_ALIGN);
        let size = record_size(payload_len)
            .and_then(|record| record.checked_add(preamble))
            .filter(|&size| size <= self.capacity)
            .ok_or(RingError::TooLarge {
                payload_len,
                capacity: self.capacity,
            })?;
        if !self.reserving {
            self.publisher.take_over(self.write, self.sleep.peer_woken);
            self.reserving = true;
        }
        if !self.publisher.can_hold(self.write, size) {
            return Ok(None);
        }
        if self.free() < size {
            self.reload_read(Ordering::Acquire)?;
            if self.free() < size {
                return Ok(None);
            }
        }
        let start = self.write;
        let payload_at = start + preamble + RECORD_HEADER_SIZE;
        let ticket = self.publisher.push(start, size, payload_at, true);
        self.write += size;
        self.publisher.move_cursor(self.write);
        Ok(Some(Reservation::new(
            self.publisher.clone(),
            ticket,
            (start, size, payload_at),
            payload_len,
        )))
    }

    /// Turns every reservation still waiting for its commit into padding, so
    /// that the records after it can be published now. Its buffer stays
    /// valid, and its space unused, until upstream drops it; committing it
    /// later fails, and the caller copies it instead. The writer does this
    /// before it sleeps on a full ring, since the thread that would commit
    /// the reservation may be the one waiting.
    pub fn pad_pending(&mut self) {
        let pending: Vec<_> = self.publisher.pending().collect();
        for (ticket, start, size) in pending {
            pad_outstanding(&self.publisher, ticket, start, size);
        }
    }

    /// Whether any reservation is still pending, or committed with its buffer
    /// still held, so that its space is not free yet.
    pub fn has_outstanding(&self) -> bool {
        self.reserving && self.publisher.floor() < self.write
    }

    /// Whether a reservation is still waiting for its commit.
    pub fn has_pending(&self) -> bool {
        self.reserving && self.publisher.has_pending()
    }

    /// Commits, in place, the reservation whose payload is the
    /// `payload_len` bytes at `payload` (a pointer from the buffer that
    /// wraps it), with `preamble` records written in front of it.
    ///
    /// That keeps stream order only if nothing written since belongs after
    /// it: no older reservation may still be pending, and no record may have
    /// been granted after it was reserved. Otherwise, or if the preamble
    /// records do not fit, the reservation is [`CommitOutcome::OutOfOrder`]:
    /// the caller writes the records and a copy of the payload with
    /// [`Producer::grant`], then drops the [`StaleReservation`].
    pub fn commit_reserved(
        &mut self,
        payload: *const u8,
        payload_len: usize,
        preamble: &[(RecordHeader, &[u8])],
        header: &RecordHeader,
    ) -> CommitOutcome {
        let Some(offset) = self.memory.data_offset_of(payload) else {
            return CommitOutcome::NotReserved;
        };
        let Some(found) = self.publisher.find_pending(offset, payload_len as u64) else {
            return CommitOutcome::NotReserved;
        };
        let stale = StaleReservation {
            publisher: self.publisher.clone(),
            found: (found.ticket, found.start, found.size),
        };
        let granted_after = self.last_grant.is_some_and(|grant| grant >= found.start);
        let room = found.payload_at - RECORD_HEADER_SIZE - found.start;
        if !found.oldest || granted_after || !preamble_fits(preamble, room) {
            return CommitOutcome::OutOfOrder(stale);
        }
        if !self.publisher.claim(found.ticket) {
            return CommitOutcome::NotReserved;
        }
        std::mem::forget(stale);
        let mut at = found.start;
        for (record, bytes) in preamble {
            write_record(&self.memory, at % self.capacity, record, bytes);
            at += record_size(bytes.len() as u64).unwrap_or(0);
        }
        let left = found.payload_at - RECORD_HEADER_SIZE - at;
        if left > 0 {
            let padding = RecordHeader::untimed(RecordKind::Padding, 0);
            write_header(&self.memory, at % self.capacity, left - RECORD_HEADER_SIZE, &padding);
        }
        write_header(
            &self.memory,
            (found.payload_at - RECORD_HEADER_SIZE) % self.capacity,
            payload_len as u64,
            header,
        );
        self.publisher.finish(found.ticket);
        CommitOutcome::Committed
    }

    /// Announces that the producer will sleep until a record of
    /// `payload_len` bytes fits. Returns `false` if it already fits (do not
    /// sleep); otherwise poll [`Self::space_fd`] and then call
    /// [`Self::finish_wait`].
    pub fn prepare_wait(&mut self, payload_len: usize) -> Result<bool, RingError> {
        let size = self.check_fits(payload_len as u64)?;
        self.sleep.enter(self.memory.control_u32(OFFSET_WRITER_SLEEP));
        self.reload_read(Ordering::SeqCst)?;
        if self.free() >= size {
            self.sleep.leave(self.memory.control_u32(OFFSET_WRITER_SLEEP));
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends a sleep begun with [`Self::prepare_wait`] returning `true`.
    pub fn finish_wait(&mut self) {
        self.publisher.own_notifier().drain();
        self.finish_edge_wait();
    }

    /// Ends a sleep on [`Self::space_fd`] watched edge-triggered (epoll's
    /// `EPOLLET`), where the eventfd's counter need not be drained: every
    /// wake-up is a new write, and so a new edge.
    pub fn finish_edge_wait(&mut self) {
        self.sleep.leave(self.memory.control_u32(OFFSET_WRITER_SLEEP));
    }

    /// Whether a record with `payload_len` bytes of payload fits now,
    /// reloading the reader's position only if the cached one says full.
    fn make_room(&mut self, payload_len: u64) -> Result<bool, RingError> {
        let size = self.check_fits(payload_len)?;
        if self.free() < size {
            self.reload_read(Ordering::Acquire)?;
        }
        Ok(self.free() >= size)
    }

    fn check_fits(&self, payload_len: u64) -> Result<u64, RingError> {
        match record_size(payload_len) {
            Some(size) if size <= self.capacity => Ok(size),
            _ => Err(RingError::TooLarge {
                payload_len,
                capacity: self.capacity,
            }),
        }
    }

    /// Room left: everything from the reader's position on is in use, and
    /// with reservations also everything from the oldest one whose buffer
    /// upstream still holds.
    fn free(&self) -> u64 {
        let oldest_in_use = if self.reserving {
            self.read_cached.min(self.publisher.floor())
        } else {
            self.read_cached
        };
        self.capacity - (self.write - oldest_in_use)
    }

    fn reload_read(&mut self, order: Ordering) -> Result<(), RingError> {
        let read = self.memory.control_u64(READ_POS).load(order);
        // The reader cannot be past what we published; with reservations
        // outstanding that is less than `write`.
        let published = if self.reserving {
            self.publisher.published()
        } else {
            self.write
        };
        if read < self.read_cached || read > published || !read.is_multiple_of(RECORD_ALIGN) {
            return Err(RingError::Corrupt("the reader's position moved outside the ring"));
        }
        self.read_cached = read;
        Ok(())
    }
}

impl WriteGrant<'_> {
    /// The payload area, `payload_len` bytes, contiguous even across the wrap.
    /// Write it; do not read it back, since a hostile reader can change it.
    pub fn payload(&mut self) -> &mut [u8] {
        let producer = &*self.producer;
        let offset = producer.write % producer.capacity + RECORD_HEADER_SIZE;
        // SAFETY: `grant` checked that the whole record fits in the free part
        // of the ring, which the consumer never reads, and `&mut self` makes
        // this the only slice into it. The range is within `2 * capacity`
        // because offset < capacity and the record is at most capacity.
        unsafe { producer.memory.data_mut(offset, self.payload_len) }.unwrap_or_default()
    }

    /// Publishes the record (after any outstanding reservations before it)
    /// and wakes the consumer if it sleeps.
    pub fn commit(self, header: &RecordHeader) {
        let producer = self.producer;
        let Some(size) = record_size(self.payload_len) else {
            return;
        };
        write_header(
            &producer.memory,
            producer.write % producer.capacity,
            self.payload_len,
            header,
        );
        producer.last_grant = Some(producer.write);
        producer.write += size;
        if producer.reserving {
            producer.publisher.move_cursor(producer.write);
            return;
        }
        producer
            .memory
            .control_u64(OFFSET_WRITE_POS)
            .store(producer.write, Ordering::SeqCst);
        let peer_sleep = producer.memory.control_u32(READER_SLEEP);
        if producer.sleep.wake_peer(peer_sleep, producer.publisher.notifier()) {
            producer.wakeups_sent += 1;
        }
    }
}

impl Consumer {
    /// Attaches to a ring from the fds a producer sent, checking each one.
    pub fn attach(memfd: OwnedFd, data_ready: OwnedFd, space_ready: OwnedFd, capacity: u64) -> Result<Self, RingError> {
        let memory = Arc::new(RingMemory::open(memfd, capacity)?);
        let data_ready = Notifier::from_peer(data_ready, "data-ready")?;
        let space_ready = Notifier::from_peer(space_ready, "space-ready")?;
        let read = memory.control_u64(READ_POS).load(Ordering::Acquire);
        let side = Side {
            position: READ_POS,
            peer_sleep: OFFSET_WRITER_SLEEP,
            notifier: space_ready,
            own_sleep: READER_SLEEP,
            own_notifier: data_ready,
        };
        let publisher = Arc::new(OrderedPublisher::new(memory.clone(), capacity, side));
        let mut consumer = Self {
            memory,
            capacity,
            read,
            write_cached: read,
            sleep: SleepState::default(),
            publisher,
            leasing: false,
            wakeups_sent: 0,
        };
        if !read.is_multiple_of(RECORD_ALIGN) {
            return Err(RingError::Corrupt("the ring's read position is not record-aligned"));
        }
        consumer.reload_write(Ordering::Acquire)?;
        Ok(consumer)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent + self.publisher.wakeups_sent()
    }

    /// Readable when the producer has committed after [`Self::prepare_wait`].
    pub fn data_fd(&self) -> BorrowedFd<'_> {
        self.publisher.own_notifier().as_fd()
    }

    /// The oldest record not yet taken, or `None` if the ring is empty.
    pub fn peek(&mut self) -> Result<Option<ReadRecord<'_>>, RingError> {
        if self.write_cached - self.read < RECORD_HEADER_SIZE {
            self.reload_write(Ordering::Acquire)?;
            if self.write_cached == self.read {
                return Ok(None);
            }
        }
        let available = self.write_cached - self.read;
        let offset = self.read % self.capacity;
        let corrupt = RingError::Corrupt;
        let raw = self
            .memory
            .copy_header(offset)
            .ok_or(corrupt("a record header lies outside the ring"))?;
        let (header, payload_len) = RecordHeader::decode(&raw).ok_or(corrupt("a record has an unknown kind"))?;
        match record_size(payload_len) {
            Some(size) if size <= available => {}
            _ => return Err(corrupt("a record claims more bytes than were written")),
        }
        Ok(Some(ReadRecord {
            consumer: self,
            header,
            payload_len,
        }))
    }

    /// Announces that the consumer will sleep until a record arrives. Returns
    /// `false` if one already has (do not sleep); otherwise poll
    /// [`Self::data_fd`] and then call [`Self::finish_wait`].
    pub fn prepare_wait(&mut self) -> Result<bool, RingError> {
        self.sleep.enter(self.memory.control_u32(READER_SLEEP));
        self.reload_write(Ordering::SeqCst)?;
        if self.write_cached != self.read {
            self.sleep.leave(self.memory.control_u32(READER_SLEEP));
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends a sleep begun with [`Self::prepare_wait`] returning `true`.
    pub fn finish_wait(&mut self) {
        self.publisher.own_notifier().drain();
        self.finish_edge_wait();
    }

    /// Ends a sleep on [`Self::data_fd`] watched edge-triggered (epoll's
    /// `EPOLLET`), where the eventfd's counter need not be drained: every
    /// wake-up is a new write, and so a new edge.
    pub fn finish_edge_wait(&mut self) {
        self.sleep.leave(self.memory.control_u32(READER_SLEEP));
    }

    fn reload_write(&mut self, order: Ordering) -> Result<(), RingError> {
        let write = self.memory.control_u64(OFFSET_WRITE_POS).load(order);
        if write < self.write_cached || write - self.read > self.capacity || !write.is_multiple_of(RECORD_ALIGN) {
            return Err(RingError::Corrupt("the writer's position moved outside the ring"));
        }
        self.write_cached = write;
        Ok(())
    }

    fn release(&mut self, size: u64) {
        self.read += size;
        if self.leasing {
            self.publisher.move_cursor(self.read);
            return;
        }
        self.memory.control_u64(READ_POS).store(self.read, Ordering::SeqCst);
        let peer_sleep = self.memory.control_u32(OFFSET_WRITER_SLEEP);
        if self.sleep.wake_peer(peer_sleep, self.publisher.notifier()) {
            self.wakeups_sent += 1;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Tells the writer that nothing will read this ring any more, so it
        // stops writing into it before it notices the closed socket.
        self.memory
            .control_u32(READER_SLEEP)
            .store(READER_DETACHED, Ordering::Release);
    }
}

impl ReadRecord<'_> {
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// The payload, contiguous even across the wrap. A hostile writer can
    /// change these bytes at any time: copy them before checking or parsing
    /// them.
    pub fn payload(&self) -> &[u8] {
        let consumer = &*self.consumer;
        let offset = consumer.read % consumer.capacity + RECORD_HEADER_SIZE;
        // `peek` checked that the record lies within the written part of the
        // ring, so this range is in bounds and the lookup cannot fail.
        consumer.memory.data(offset, self.payload_len).unwrap_or_default()
    }

    /// Frees the record's space for the producer.
    pub fn release(self) {
        let size = record_size(self.payload_len).unwrap_or(0);
        self.consumer.release(size);
    }

    /// Moves past the record but keeps its payload in the ring until the
    /// returned [`Lease`] is dropped, on any thread. Gives the record back
    /// (to copy, then release) when leases already span half the ring or
    /// [`MAX_OUTSTANDING`](super::ordered::MAX_OUTSTANDING) are out.
    // The record comes back by value: boxing it would allocate per record on
    // the read path, to save a copy of its 136 bytes.
    #[allow(clippy::result_large_err)]
    pub fn into_lease(self) -> Result<Lease, Self> {
        let consumer = &mut *self.consumer;
        let size = record_size(self.payload_len).unwrap_or(0);
        if !consumer.leasing {
            consumer.publisher.take_over(consumer.read, consumer.sleep.peer_woken);
            consumer.leasing = true;
        }
        if !consumer.publisher.can_hold(consumer.read, size) {
            return Err(self);
        }
        let start = consumer.read;
        let ticket = consumer.publisher.push(start, size, start + RECORD_HEADER_SIZE, false);
        let offset = start % consumer.capacity + RECORD_HEADER_SIZE;
        let lease = Lease::new(consumer.publisher.clone(), ticket, offset, self.payload_len);
        consumer.read += size;
        consumer.publisher.move_cursor(consumer.read);
        Ok(lease)
    }
}

/// Both ends of a new ring in one process: for tests, benchmarks and
/// applications that pass the consumer's fds on by other means.
pub fn channel(capacity: u64) -> Result<(Producer, Consumer), RingError> {
    let producer = Producer::create(capacity)?;
    let dup = |fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map_err(|err| RingError::io("duplicating a ring fd", err))
    };
    let fds = producer.fds();
    let consumer = Consumer::attach(dup(fds.memfd)?, dup(fds.data_ready)?, dup(fds.space_ready)?, capacity)?;
    Ok((producer, consumer))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::*;

    const CAPACITY: u64 = 4096;

    /// A second handle on the ring's memfd: the hostile peer, able to write
    /// any byte of the shared memory.
    fn peer(producer: &Producer) -> File {
        File::from(producer.fds().memfd.try_clone_to_owned().unwrap())
    }

    fn put_u32(file: &File, at: u64, value: u32) {
        file.write_all_at(&value.to_ne_bytes(), at).unwrap();
    }

    fn put_u64(file: &File, at: u64, value: u64) {
        file.write_all_at(&value.to_ne_bytes(), at).unwrap();
    }

    /// Memfd offset of the byte at stream position `position`.
    fn data_at(position: u64) -> u64 {
        CONTROL_SIZE as u64 + position % CAPACITY
    }

    fn caps() -> RecordHeader {
        RecordHeader::untimed(RecordKind::Caps, 0)
    }

    pub(crate) fn send(producer: &mut Producer, payload: &[u8], header: &RecordHeader) {
        let mut grant = producer.grant(payload.len()).unwrap().expect("room for the record");
        grant.payload().copy_from_slice(payload);
        grant.commit(header);
    }

    /// Takes the oldest record out of the ring.
    pub(crate) fn receive(consumer: &mut Consumer) -> Option<(RecordHeader, Vec<u8>)> {
        let record = consumer.peek().unwrap()?;
        let taken = (*record.header(), record.payload().to_vec());
        record.release();
        Some(taken)
    }

    fn assert_corrupt(result: Result<Option<ReadRecord<'_>>, RingError>) {
        match result {
            Err(RingError::Corrupt(_)) => {}
            Err(other) => panic!("expected RingError::Corrupt, got {other:?}"),
            Ok(Some(_)) => panic!("a corrupt record was accepted"),
            Ok(None) => panic!("a corrupt ring was read as empty"),
        }
    }

    fn attach(memfd: BorrowedFd<'_>, data: BorrowedFd<'_>, space: BorrowedFd<'_>) -> Result<Consumer, RingError> {
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
        Consumer::attach(dup(memfd), dup(data), dup(space), CAPACITY)
    }

    fn attach_error(memfd: BorrowedFd<'_>, data: BorrowedFd<'_>, space: BorrowedFd<'_>) -> RingError {
        match attach(memfd, data, space) {
            Ok(_) => panic!("a bad ring was attached"),
            Err(err) => err,
        }
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn every_record_kind_round_trips() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let buffer = RecordHeader {
            kind: RecordKind::Buffer,
            flags: 0x4040,
            pts: 1_000_000_000,
            dts: 960_000_000,
            duration: 40_000_000,
            offset: 25,
            offset_end: 26,
            meta_kind: 7,
            meta: std::array::from_fn(|index| index as u8),
        };
        let sent = [
            (buffer, b"frame bytes".to_vec()),
            (caps(), b"video/x-raw, format=I420, width=64, height=48".to_vec()),
            (RecordHeader::untimed(RecordKind::Event, 0x8000_1c06), vec![0xff; 7]),
        ];
        for (header, payload) in &sent {
            send(&mut producer, payload, header);
        }
        for expected in sent {
            assert_eq!(receive(&mut consumer), Some(expected));
        }
        assert_eq!(receive(&mut consumer), None);
    }

    #[test]
    fn payload_is_64_byte_aligned() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        for len in [0, 1, 63, 64, 65, 200] {
            let mut grant = producer.grant(len).unwrap().unwrap();
            assert_eq!(grant.payload().as_ptr() as usize % RECORD_ALIGN as usize, 0);
            grant.commit(&caps());
            let record = consumer.peek().unwrap().unwrap();
            assert_eq!(record.payload().as_ptr() as usize % RECORD_ALIGN as usize, 0);
            record.release();
        }
    }

    #[test]
    fn zero_length_records_take_one_header_each() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let slots = CAPACITY / RECORD_HEADER_SIZE;
        for flags in 0..slots as u32 {
            send(&mut producer, &[], &RecordHeader::untimed(RecordKind::Event, flags));
        }
        assert!(producer.grant(0).unwrap().is_none());
        for flags in 0..slots as u32 {
            let (header, payload) = receive(&mut consumer).unwrap();
            assert_eq!(header, RecordHeader::untimed(RecordKind::Event, flags));
            assert!(payload.is_empty());
        }
        assert_eq!(receive(&mut consumer), None);
    }

    #[test]
    fn grant_needs_room_and_peek_needs_data() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        assert!(consumer.peek().unwrap().is_none());
        // 1000 bytes of payload take a header and 1024 bytes: three fit, a
        // fourth does not.
        let payload = [7u8; 1000];
        for _ in 0..3 {
            send(&mut producer, &payload, &caps());
        }
        assert!(producer.grant(1000).unwrap().is_none());
        // The bytes left hold exactly one header and the largest payload
        // below; one byte more pads to another 64.
        let largest = CAPACITY - 3 * record_size(1000).unwrap() - RECORD_HEADER_SIZE;
        assert!(producer.grant(largest as usize).unwrap().is_some());
        assert!(producer.grant(largest as usize + 1).unwrap().is_none());
        // The dropped grant above wrote nothing.
        for _ in 0..3 {
            assert_eq!(receive(&mut consumer).unwrap().1, payload);
        }
        assert!(consumer.peek().unwrap().is_none());
        assert!(producer.grant(1000).unwrap().is_some());
    }

    #[test]
    fn peek_without_release_keeps_the_record() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        send(&mut producer, b"first", &caps());
        send(&mut producer, b"second", &caps());
        for _ in 0..2 {
            assert_eq!(consumer.peek().unwrap().unwrap().payload(), b"first");
        }
        assert_eq!(receive(&mut consumer).unwrap().1, b"first");
        assert_eq!(receive(&mut consumer).unwrap().1, b"second");
    }

    #[test]
    fn largest_record_fills_the_ring_and_larger_is_too_large() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let max = max_payload(CAPACITY) as usize;
        let payload: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
        send(&mut producer, &payload, &caps());
        assert!(producer.grant(0).unwrap().is_none());
        let too_large = producer.grant(max + 1);
        assert!(
            matches!(too_large, Err(RingError::TooLarge { payload_len, capacity: CAPACITY }) if payload_len == max as u64 + 1)
        );
        // Rejected before any arithmetic on the length can overflow.
        assert!(matches!(producer.grant(usize::MAX), Err(RingError::TooLarge { .. })));
        assert!(matches!(
            producer.prepare_wait(max + 1),
            Err(RingError::TooLarge { .. })
        ));
        assert_eq!(receive(&mut consumer).unwrap().1, payload);
        assert!(producer.grant(max).unwrap().is_some());
    }

    #[test]
    fn record_across_the_end_comes_out_contiguous() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        // A first record that ends one header before 4032 puts the next
        // payload at 4032, so it runs past the end of the area at 4096.
        let payload_start = CAPACITY - 64;
        let first = payload_start - 2 * RECORD_HEADER_SIZE;
        send(&mut producer, &vec![0; first as usize], &caps());
        receive(&mut consumer).unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        let header = RecordHeader {
            pts: 5,
            ..RecordHeader::untimed(RecordKind::Buffer, 1)
        };
        send(&mut producer, &payload, &header);

        // The payload really is split: its tail sits at the start of the area.
        let memfd = peer(&producer);
        let mut tail = vec![0; 1000 - 64];
        memfd.read_exact_at(&mut tail, data_at(0)).unwrap();
        assert_eq!(tail, payload[64..]);
        let mut head = [0; 64];
        memfd.read_exact_at(&mut head, data_at(payload_start)).unwrap();
        assert_eq!(head, payload[..64]);

        assert_eq!(receive(&mut consumer), Some((header, payload)));
    }

    #[test]
    fn records_of_varied_sizes_survive_many_wraps() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        let mut in_flight = VecDeque::new();
        let mut sequence = 0u32;
        while sequence < 2000 {
            // Sizes that put record boundaries at every 64-byte offset.
            let len = (sequence as usize * 389) % 1500;
            let payload: Vec<u8> = (0..len).map(|i| (i as u32 ^ sequence) as u8).collect();
            let header = RecordHeader {
                pts: u64::from(sequence),
                ..RecordHeader::untimed(RecordKind::Buffer, sequence)
            };
            match producer.grant(len).unwrap() {
                Some(mut grant) => {
                    grant.payload().copy_from_slice(&payload);
                    grant.commit(&header);
                    in_flight.push_back((header, payload));
                    sequence += 1;
                }
                None => {
                    assert!(!in_flight.is_empty(), "an empty ring refused {len} bytes");
                    while let Some(expected) = in_flight.pop_front() {
                        assert_eq!(receive(&mut consumer), Some(expected));
                    }
                    assert_eq!(receive(&mut consumer), None);
                }
            }
        }
        while let Some(expected) = in_flight.pop_front() {
            assert_eq!(receive(&mut consumer), Some(expected));
        }
        assert!(producer.write > 100 * CAPACITY);
    }

    #[test]
    fn commit_wakes_a_sleeping_consumer_once() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        assert!(consumer.prepare_wait().unwrap());
        assert!(!readable(consumer.data_fd()));
        send(&mut producer, b"a", &caps());
        assert!(readable(consumer.data_fd()));
        send(&mut producer, b"b", &caps());
        assert_eq!(producer.wakeups_sent(), 1);
        consumer.finish_wait();
        assert!(!readable(consumer.data_fd()));

        // With data waiting, the consumer does not sleep, and an awake
        // consumer gets no wake-up.
        assert!(!consumer.prepare_wait().unwrap());
        send(&mut producer, b"c", &caps());
        assert_eq!(producer.wakeups_sent(), 1);
        for expected in [b"a", b"b", b"c"] {
            assert_eq!(receive(&mut consumer).unwrap().1, expected);
        }
        assert_eq!(consumer.wakeups_sent(), 0);

        // A second sleep gets its own wake-up.
        assert!(consumer.prepare_wait().unwrap());
        send(&mut producer, b"d", &caps());
        assert_eq!(producer.wakeups_sent(), 2);
        assert!(readable(consumer.data_fd()));
    }

    #[test]
    fn release_wakes_a_producer_waiting_for_room() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        for _ in 0..3 {
            send(&mut producer, &[1; 1000], &caps());
        }
        assert!(producer.grant(1000).unwrap().is_none());
        assert!(producer.prepare_wait(1000).unwrap());
        assert!(!readable(producer.space_fd()));
        receive(&mut consumer).unwrap();
        assert!(readable(producer.space_fd()));
        receive(&mut consumer).unwrap();
        assert_eq!(consumer.wakeups_sent(), 1);
        producer.finish_wait();
        assert!(!readable(producer.space_fd()));
        assert!(!producer.prepare_wait(1000).unwrap());
        assert!(producer.grant(1000).unwrap().is_some());
        assert_eq!(producer.wakeups_sent(), 0);
    }

    #[test]
    fn unknown_record_kind_is_corrupt() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        send(&mut producer, b"x", &caps());
        let memfd = peer(&producer);
        for kind in [0, RecordKind::Padding as u32 + 1, u32::MAX] {
            put_u32(&memfd, data_at(0), kind);
            assert_corrupt(consumer.peek());
        }
        put_u32(&memfd, data_at(0), RecordKind::Caps as u32);
        assert_eq!(receive(&mut consumer), Some((caps(), b"x".to_vec())));
    }

    #[test]
    fn payload_longer_than_what_was_written_is_corrupt() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        // A header and 64 bytes of payload written; the header's length
        // field is at +8, and 65 bytes would need another 64.
        send(&mut producer, &[3; 10], &caps());
        let memfd = peer(&producer);
        for len in [65, max_payload(CAPACITY), CAPACITY, u64::MAX - 62, u64::MAX] {
            put_u64(&memfd, data_at(0) + 8, len);
            assert_corrupt(consumer.peek());
        }
        put_u64(&memfd, data_at(0) + 8, 10);
        assert_eq!(receive(&mut consumer).unwrap().1, [3; 10]);
    }

    #[test]
    fn write_position_moved_backwards_or_past_the_ring_is_corrupt() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        send(&mut producer, b"a", &caps());
        send(&mut producer, b"b", &caps());
        receive(&mut consumer).unwrap();
        receive(&mut consumer).unwrap();
        let memfd = peer(&producer);
        let write_pos = OFFSET_WRITE_POS as u64;
        let write = 2 * record_size(1).unwrap();
        for bad in [64, 0, write + CAPACITY + 64, write + 32, u64::MAX] {
            put_u64(&memfd, write_pos, bad);
            assert_corrupt(consumer.peek());
            assert!(
                matches!(consumer.prepare_wait(), Err(RingError::Corrupt(_))),
                "write position {bad}"
            );
        }
        // The consumer's own view survived the attempts.
        put_u64(&memfd, write_pos, write);
        assert!(consumer.peek().unwrap().is_none());
        send(&mut producer, b"c", &caps());
        assert_eq!(receive(&mut consumer).unwrap().1, b"c");
    }

    #[test]
    fn read_position_outside_the_ring_is_corrupt() {
        let (mut producer, mut consumer) = channel(CAPACITY).unwrap();
        for _ in 0..3 {
            send(&mut producer, &[0; 1000], &caps());
        }
        receive(&mut consumer).unwrap();
        // This grant reloads the read position, one record in; the free space
        // is then too little for a 2000-byte grant, which must look at the
        // position again.
        let size = record_size(1000).unwrap();
        assert!(producer.grant(1000).unwrap().is_some());
        assert!(CAPACITY - 2 * size < record_size(2000).unwrap());
        let memfd = peer(&producer);
        let read_pos = READ_POS as u64;
        let write = 3 * size;
        for bad in [0, write + 64, size + 32, u64::MAX] {
            put_u64(&memfd, read_pos, bad);
            assert!(
                matches!(producer.grant(2000), Err(RingError::Corrupt(_))),
                "read position {bad}"
            );
            assert!(
                matches!(producer.prepare_wait(2000), Err(RingError::Corrupt(_))),
                "read position {bad}"
            );
        }
        put_u64(&memfd, read_pos, write);
        assert!(producer.grant(2000).unwrap().is_some());
    }

    #[test]
    fn attach_rejects_positions_outside_the_ring() {
        let (producer, _consumer) = channel(CAPACITY).unwrap();
        let fds = producer.fds();
        let memfd = peer(&producer);
        put_u64(&memfd, READ_POS as u64, 32);
        assert!(matches!(
            attach_error(fds.memfd, fds.data_ready, fds.space_ready),
            RingError::Corrupt(_)
        ));
        put_u64(&memfd, READ_POS as u64, 0);
        for bad in [CAPACITY + 64, 32] {
            put_u64(&memfd, OFFSET_WRITE_POS as u64, bad);
            assert!(matches!(
                attach_error(fds.memfd, fds.data_ready, fds.space_ready),
                RingError::Corrupt(_)
            ));
        }
        put_u64(&memfd, OFFSET_WRITE_POS as u64, 0);
        assert!(attach(fds.memfd, fds.data_ready, fds.space_ready).is_ok());
    }

    #[test]
    fn attach_rejects_fds_of_the_wrong_kind() {
        let (producer, _consumer) = channel(CAPACITY).unwrap();
        let fds = producer.fds();
        let (pipe, _pipe_writer) = nix::unistd::pipe().unwrap();
        let pipe = pipe.as_fd();
        let invalid = |err: RingError, what: &str| match err {
            RingError::Invalid(message) => assert!(message.contains(what), "{message}"),
            other => panic!("expected RingError::Invalid, got {other:?}"),
        };
        invalid(attach_error(pipe, fds.data_ready, fds.space_ready), "not a memfd");
        invalid(attach_error(fds.memfd, pipe, fds.space_ready), "not an eventfd");
        invalid(attach_error(fds.memfd, fds.data_ready, pipe), "not an eventfd");
        invalid(attach_error(fds.memfd, fds.memfd, fds.space_ready), "not an eventfd");
        invalid(attach_error(fds.memfd, fds.data_ready, fds.memfd), "not an eventfd");
    }
}
