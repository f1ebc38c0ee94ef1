//! The record queue: headers, events and small payloads, writer → reader,
//! in stream order.
//!
//! # Invariants
//!
//! Two shared positions count bytes since the start of the stream: `write`
//! (stored only by the producer) and `read` (stored only by the consumer).
//! At every moment, as each side sees them:
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
//! 4. A record never owns heap memory through its place in the queue: a
//!    record that names a heap block hands the reader a reference that it
//!    gives back through the release queue, in any order. The read position
//!    therefore passes every record as soon as it is taken, and nothing a
//!    reader keeps can hold the queue up.
//!
//! The peer is untrusted. Every position loaded from shared memory is
//! checked against invariant 1 and against the last value seen, and every
//! record header is copied out of shared memory once, then checked, before
//! its payload is touched: an inline payload must lie within the written
//! part of the queue, and a block within the heap. A violation is a
//! `RingError::Corrupt`, never a panic or an out-of-bounds access.
//!
//! # Orderings
//!
//! Publishing a position is a `SeqCst` store: it is a Release store (the
//! record's bytes, or the reader's last use of them, happen before the other
//! side sees the new position) and it takes part in the wake-up handshake of
//! [`wake`]; once the reader has said that it fences with
//! membarrier before it sleeps, the writer's publish is a Release store
//! with no barrier at all (the light publish of `wake`). Reloading the
//! other side's position is an
//! `Acquire` load, paired with that Release. Each write therefore costs two
//! atomic operations, the store and the load of the peer's sleep sequence,
//! plus a reload only at empty or full. A read costs less: the reader
//! publishes its position once per 1/`PUBLISH_FRACTION` of the queue and before it
//! sleeps, since the writer looks at it only when its view says full; a
//! writer asleep on a full queue is woken by the next publish, which comes
//! at the latest when the reader has drained the queue. No lock, allocation
//! or syscall happens while the queue is neither empty nor full.
//!
//! The writer's own position may run ahead of the shared one: records it
//! *staged* ([`WriteGrant::stage`]) sit past the published `write`, in
//! the producer's free part, until one [`Producer::publish`] shows them all
//! with one store and at most one wake-up. Invariant 1 holds for the shared
//! position; the writer publishes before it sleeps for room, since only
//! records the reader can see can ever make room.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::RingError;
use super::flush::{FlushSignal, FlushWord};
use super::layout::*;
use super::memory::ChannelMemory;
use super::notifier::Notifier;
use super::sync::Ordering;
use super::wake::{self, FENCES, Sleeper, Waker};

/// The reader publishes its position after 1/this of the queue's capacity
/// has been read, and before it sleeps: the writer needs it only when its
/// own view says full, and a publish is the one costly operation of a read.
const PUBLISH_FRACTION: u64 = 64;

/// The writing end of a record queue.
pub struct Producer {
    memory: Arc<ChannelMemory>,
    capacity: u64,
    /// How many bytes of records may be unread at once: the capacity, or
    /// less (see [`Producer::set_limit`]).
    limit: u64,
    write: u64,
    /// `write % capacity`, kept up as `write` grows, so that a record's
    /// place costs no division.
    write_at: u64,
    /// The write position the reader was last shown: records past it are
    /// staged (see [`WriteGrant::stage`]).
    published: u64,
    /// Whether a staged record must wake a sleeping reader at once.
    staged_urgent: bool,
    read_cached: u64,
    /// Whether this process took the readers' heavy barrier (see
    /// [`wake`]), read once when the channel was made.
    may_publish_light: bool,
    /// Whether the reader said it fences, so that commits publish light.
    light: bool,
    /// Whether buffer records may wait for the batch a sleeping
    /// reader asks for (see [`Producer::set_batch_wakes`]).
    batch_wakes: bool,
    sleeper: Sleeper,
    waker: Waker,
    /// The reader's eventfd: written when it sleeps on an empty queue.
    data_ready: Notifier,
    /// Ours: written by the reader when we sleep on a full queue.
    space_ready: Notifier,
    /// The flushes of this channel, told out of band (see `flush.rs`).
    flush: FlushSignal,
}

/// Room for one record, handed out by [`Producer::grant`]. Fill the inline
/// payload, then [`commit`](WriteGrant::commit). Dropping it writes nothing.
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    payload: Payload,
    /// The room `grant` checked: the record with the largest trailer.
    room: u64,
}

/// How far a reader has read, as it says: for heuristics only, since the
/// reader may write anything there.
pub struct ReadProgress {
    memory: Arc<ChannelMemory>,
}

impl ReadProgress {
    /// The reader's record read position, unchecked.
    pub fn read_position(&self) -> u64 {
        self.memory.control_u64(OFFSET_RECORD_READ).load(Ordering::Acquire)
    }
}

/// The reading end of a record queue.
pub struct Consumer {
    memory: Arc<ChannelMemory>,
    capacity: u64,
    heap_size: u64,
    read: u64,
    /// `read % capacity`, kept up as `read` grows.
    read_at: u64,
    /// The read position as the writer last saw it: `read` is published
    /// every 1/`PUBLISH_FRACTION` of the capacity and before every sleep.
    published: u64,
    write_cached: u64,
    sleeper: Sleeper,
    waker: Waker,
    /// Ours: written by the writer when we sleep on an empty queue.
    data_ready: Notifier,
    /// The writer's eventfd: written when it sleeps on a full queue.
    space_ready: Notifier,
}

/// The record at the read position, handed out by [`Consumer::peek`]. It
/// stays in the queue until [`release`](ReadRecord::release).
pub struct ReadRecord<'a> {
    consumer: &'a mut Consumer,
    header: RecordHeader,
    payload: Payload,
    /// Bytes the record takes in the queue.
    size: u64,
}

impl Producer {
    pub(crate) fn new(memory: Arc<ChannelMemory>, data_ready: Notifier, space_ready: Notifier) -> Self {
        let capacity = memory.sizes().record_capacity;
        let may_publish_light = memory.control_u64(OFFSET_WRITER_LIGHT).load(Ordering::Acquire) == 1;
        Self {
            memory: memory.clone(),
            capacity,
            limit: capacity,
            write: 0,
            write_at: 0,
            published: 0,
            staged_urgent: false,
            read_cached: 0,
            may_publish_light,
            light: false,
            batch_wakes: false,
            sleeper: Sleeper::default(),
            waker: Waker::default(),
            data_ready,
            space_ready,
            flush: FlushSignal::new(memory),
        }
    }

    pub(crate) fn data_ready(&self) -> &Notifier {
        &self.data_ready
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.waker.sent()
    }

    /// Whether the peer cleared O_NONBLOCK on one of this queue's eventfds
    /// (see [`Notifier`]): a peer that does is broken or hostile.
    pub fn peer_tampered(&self) -> bool {
        self.data_ready.tampered() || self.space_ready.tampered()
    }

    /// Whether the reader has let go of the channel (dropped its
    /// `Consumer`). One load of a word the reader rarely writes.
    pub fn reader_detached(&self) -> bool {
        self.memory.control_u64(OFFSET_READER_SLEEP).load(Ordering::Acquire) == READER_DETACHED
    }

    /// The write position: where the next record will start.
    pub fn position(&self) -> u64 {
        self.write
    }

    /// The flush word of this channel, which only the writer stores.
    pub fn flush_signal(&mut self) -> &mut FlushSignal {
        &mut self.flush
    }

    /// Whether commits publish light (see [`wake`]).
    #[cfg(any(test, loom))]
    pub(crate) fn publishes_light(&self) -> bool {
        self.light
    }

    /// A handle that tells, from any thread, how far the reader has read.
    pub fn progress(&self) -> ReadProgress {
        ReadProgress {
            memory: self.memory.clone(),
        }
    }

    /// Readable when the consumer has made room after [`Self::prepare_wait`].
    pub fn space_fd(&self) -> BorrowedFd<'_> {
        self.space_ready.as_fd()
    }

    /// Room for a record whose payload is `payload`: its inline bytes are
    /// written through the grant. `Ok(None)` means the queue is too full
    /// right now; `TooLarge` that the record never fits.
    #[inline]
    pub fn grant(&mut self, payload: Payload) -> Result<Option<WriteGrant<'_>>, RingError> {
        let size = self.check_fits(payload.inline_len())?;
        if self.free() < size {
            self.reload_read(Ordering::Acquire)?;
            if self.free() < size {
                // A reader we left asleep for a batch may need this record
                // to fill it, and it cannot come until the reader reads:
                // records of other sizes, or a limit lowered since the
                // reader slept, can fill the queue before the batch.
                let peer_sleep = self.memory.control_u64(OFFSET_READER_SLEEP);
                self.waker.wake_skipped(peer_sleep, &self.data_ready);
                return Ok(None);
            }
        }
        Ok(Some(WriteGrant {
            producer: self,
            payload,
            room: size,
        }))
    }

    /// Whether `bytes` of records (each counted at its [`record_size`])
    /// fit now, one after the other, within the limit: then `grant` gives
    /// room for each in turn. Stricter than `grant` for an empty queue,
    /// where one record larger than the limit still fits.
    pub fn has_room_for(&mut self, bytes: u64) -> Result<bool, RingError> {
        let fits = |producer: &Self| (producer.write - producer.read_cached).saturating_add(bytes) <= producer.limit;
        if !fits(self) {
            self.reload_read(Ordering::Acquire)?;
        }
        Ok(fits(self))
    }

    /// Shows the reader the records staged since the last publish, with one
    /// store of the write position, and wakes it if it sleeps (at most
    /// once). Nothing to do if none are staged.
    #[inline]
    pub fn publish(&mut self) {
        if self.published == self.write {
            return;
        }
        self.published = self.write;
        let memory = &*self.memory;
        let position = memory.control_u64(OFFSET_RECORD_WRITE);
        let peer_sleep = memory.control_u64(OFFSET_READER_SLEEP);
        let order = if self.light {
            position.store(self.write, Ordering::Release);
            wake::light_barrier();
            Ordering::Relaxed
        } else {
            position.store(self.write, Ordering::SeqCst);
            Ordering::SeqCst
        };
        let urgent = std::mem::take(&mut self.staged_urgent);
        let seen = if self.batch_wakes && !urgent {
            // Half of what may wait unread, so that records of one size
            // fill a batch before the queue; a record that does not fit
            // wakes the reader anyway (see `grant`).
            let max_batch = self.limit / 2;
            let read_position = || memory.control_u64(OFFSET_RECORD_READ).load(Ordering::Acquire);
            let (write, notifier) = (self.write, &self.data_ready);
            self.waker
                .wake_batched(peer_sleep, notifier, order, write, read_position, max_batch)
        } else {
            self.waker.wake(peer_sleep, &self.data_ready, order)
        };
        self.light |= self.may_publish_light && seen & FENCES != 0 && seen != READER_DETACHED;
    }

    /// Announces that the producer will sleep until a record with
    /// `inline_len` bytes of inline payload fits. Returns `false` if it
    /// already fits (do not sleep); otherwise poll [`Self::space_fd`] and
    /// then call [`Self::finish_wait`].
    pub fn prepare_wait(&mut self, inline_len: u64) -> Result<bool, RingError> {
        let size = self.check_fits(inline_len)?;
        // The reader can make room only from records it can see.
        self.publish();
        self.sleeper.enter(self.memory.control_u64(OFFSET_WRITER_RECORD_SLEEP));
        self.reload_read(Ordering::SeqCst)?;
        if self.free() >= size {
            self.sleeper.leave(self.memory.control_u64(OFFSET_WRITER_RECORD_SLEEP));
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends a sleep begun with [`Self::prepare_wait`] returning `true`.
    pub fn finish_wait(&mut self) {
        self.space_ready.drain();
        self.finish_edge_wait();
    }

    /// Ends a sleep on [`Self::space_fd`] watched edge-triggered (epoll's
    /// `EPOLLET`), where the eventfd's counter need not be drained: every
    /// wake-up is a new write, and so a new edge.
    pub fn finish_edge_wait(&mut self) {
        self.sleeper.leave(self.memory.control_u64(OFFSET_WRITER_RECORD_SLEEP));
    }

    fn check_fits(&self, inline_len: u64) -> Result<u64, RingError> {
        match record_size(inline_len) {
            Some(size) if size <= self.capacity => Ok(size),
            _ => Err(RingError::TooLarge {
                payload_len: inline_len,
                capacity: self.capacity,
            }),
        }
    }

    /// Lets at most `bytes` of records wait unread (at least one record
    /// always fits an empty queue), for a writer that bounds how far it may
    /// run ahead of the reader in time rather than in bytes. Nothing but
    /// this side's arithmetic changes: the reader does not know.
    pub fn set_limit(&mut self, bytes: u64) {
        self.limit = bytes.min(self.capacity);
    }

    /// Lets a reader that sleeps asking for a batch of records (see
    /// [`wake`]'s "Batched wake-ups") sleep on while buffer records arrive
    /// (inline ones with their metas, and ones naming heap blocks), until
    /// the batch is full. Only for a stream
    /// whose reader need not see each buffer at once: one that is not live.
    /// Every other record still wakes a sleeping reader at once. Off by
    /// default.
    pub fn set_batch_wakes(&mut self, batch: bool) {
        self.batch_wakes = batch;
    }

    fn free(&self) -> u64 {
        let unread = self.write - self.read_cached;
        if unread == 0 {
            self.capacity
        } else {
            self.limit.saturating_sub(unread)
        }
    }

    fn reload_read(&mut self, order: Ordering) -> Result<(), RingError> {
        let read = self.memory.control_u64(OFFSET_RECORD_READ).load(order);
        if read < self.read_cached || read > self.write || !read.is_multiple_of(RECORD_ALIGN) {
            return Err(RingError::Corrupt("the reader's position moved outside the queue"));
        }
        self.read_cached = read;
        Ok(())
    }
}

impl<'a> WriteGrant<'a> {
    /// Copies `bytes` into the inline payload from byte `at`, contiguous
    /// even across the wrap. `false`, with nothing written, if they do not
    /// lie inside the payload. The payload lives in memory a hostile reader
    /// can write, so it is only ever written, never read back.
    #[inline]
    pub fn write_inline(&mut self, at: u64, bytes: &[u8]) -> bool {
        let inline_len = self.payload.inline_len();
        if at.checked_add(bytes.len() as u64).is_none_or(|end| end > inline_len) {
            return false;
        }
        let producer = &*self.producer;
        let offset = producer.write_at + RECORD_BASE_SIZE + at;
        // SAFETY: `grant` checked that the whole record fits in the free part
        // of the queue, which the consumer never reads, and `&mut self` makes
        // this grant's producer the only writer. The range is within
        // `2 * capacity` because the record starts below capacity and is at
        // most capacity long; `write_records` checks that again.
        unsafe { producer.memory.write_records(offset, bytes) }.is_some()
    }

    /// Publishes the record and wakes the consumer if it sleeps.
    #[inline]
    pub fn commit(self, header: &RecordHeader) {
        self.stage(header).publish();
    }

    /// Writes the record's header, so that the record follows the ones
    /// before it, but does not show it to the reader yet: the next
    /// [`Producer::publish`] (or `commit`) shows all that were staged at
    /// once. A writer that stages keeps room for what it stages: it must
    /// publish before it waits for room.
    #[inline]
    pub fn stage(self, header: &RecordHeader) -> &'a mut Producer {
        let producer = self.producer;
        // SAFETY: as in `write_inline`: `grant` made room for the record
        // with the largest trailer, all in the free part of the queue, and
        // the grant is exclusive.
        let Some(mut words) = (unsafe { producer.memory.record_words_mut(producer.write_at, self.room) }) else {
            return producer;
        };
        let Some(encoded) = header.encode(self.payload) else {
            return producer;
        };
        if !words.put_header(&encoded) {
            return producer;
        }
        let size = encoded.size;
        producer.write += size;
        producer.write_at = wrap(producer.write_at + size, producer.capacity);
        // Buffers of a stream that is not live, small ones with their metas
        // or ones in heap blocks, may wait for the batch a sleeping reader
        // asked for; anything else wakes it.
        let batchable = match self.payload {
            Payload::Inline { .. } => matches!(header.kind, RecordKind::Buffer | RecordKind::Metas),
            Payload::Block { .. } => header.kind == RecordKind::Buffer,
        };
        producer.staged_urgent |= !batchable;
        producer
    }
}

impl Consumer {
    /// `fencing`: whether this reader offers to call membarrier before it
    /// sleeps, so that the writer may publish light. Worth it only for a
    /// reader that rarely sleeps: each sleep then costs a barrier on every
    /// CPU, which for a reader that drains the queue and sleeps between
    /// most records (small buffers, no busy waiting) costs far more than
    /// the writer's SeqCst stores it saves.
    pub(crate) fn new(
        memory: Arc<ChannelMemory>,
        data_ready: Notifier,
        space_ready: Notifier,
        fencing: bool,
    ) -> Result<Self, RingError> {
        let sizes = memory.sizes();
        // Every channel is new, and the read position is the reader's own:
        // whatever the writer left in it is ignored.
        memory.control_u64(OFFSET_RECORD_READ).store(0, Ordering::Release);
        let writer_light = memory.control_u64(OFFSET_WRITER_LIGHT).load(Ordering::Acquire) == 1;
        let sleeper = if fencing && writer_light && wake::heavy_barrier_available() {
            Sleeper::fencing()
        } else {
            Sleeper::default()
        };
        let mut consumer = Self {
            memory,
            capacity: sizes.record_capacity,
            heap_size: sizes.heap_size,
            read: 0,
            read_at: 0,
            published: 0,
            write_cached: 0,
            sleeper,
            waker: Waker::default(),
            data_ready,
            space_ready,
        };
        // Says whether we fence before our first sleep, so that a writer
        // may publish light from then on.
        consumer.sleeper.leave(consumer.memory.control_u64(OFFSET_READER_SLEEP));
        consumer.reload_write(Ordering::Acquire)?;
        Ok(consumer)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.waker.sent()
    }

    /// Whether the peer cleared O_NONBLOCK on one of this queue's eventfds
    /// (see [`Notifier`]): a peer that does is broken or hostile.
    pub fn peer_tampered(&self) -> bool {
        self.data_ready.tampered() || self.space_ready.tampered()
    }

    /// The writer's flush word, for a thread that sleeps on it.
    pub fn flush_word(&self) -> FlushWord {
        FlushWord::new(self.memory.clone())
    }

    /// The read position: where the next record starts.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Readable when the producer has committed after [`Self::prepare_wait`].
    pub fn data_fd(&self) -> BorrowedFd<'_> {
        self.data_ready.as_fd()
    }

    /// The oldest record not yet taken, or `None` if the queue is empty.
    #[inline]
    pub fn peek(&mut self) -> Result<Option<ReadRecord<'_>>, RingError> {
        if self.write_cached - self.read < RECORD_BASE_SIZE {
            self.reload_write(Ordering::Acquire)?;
            if self.write_cached == self.read {
                return Ok(None);
            }
        }
        let available = self.write_cached - self.read;
        let corrupt = RingError::Corrupt;
        // Everything written, bounds-checked once: `reload_write` keeps it
        // within one capacity, so from below the capacity it lies inside
        // the double mapping. Only the length word can lie past it, when
        // fewer than 16 bytes were written, and then it reads as 0 and the
        // record's 16 bytes fail the size check below.
        let words = self
            .memory
            .record_words(self.read_at, available)
            .ok_or_else(|| corrupt("a record lies outside the queue"))?;
        let [first, len] = words.get_array(0);
        let base = RecordHeader::decode_base(first, len)
            .ok_or_else(|| corrupt("a record has an unknown kind or reserved bits set"))?;
        // The length is the peer's: compared with what was written before
        // any sum, so that the sums below stay far from overflowing (the
        // queue is at most `MAX_RECORD_CAPACITY`).
        let inline_len = base.inline_len();
        if inline_len > available {
            return Err(corrupt("a record claims more bytes than were written"));
        }
        let trailer_at = padded_inline_len(inline_len) + RECORD_BASE_SIZE;
        let size = trailer_at + base.trailer_len();
        if size > available {
            return Err(corrupt("a record claims more bytes than were written"));
        }
        // `size <= available` puts the present trailer words inside
        // `words`; any others read past the record are ignored.
        let trailer = words.get_array((trailer_at / RECORD_ALIGN) as usize);
        let (header, payload) = base.finish(&trailer);
        if let Payload::Block { offset, len } = payload {
            let inside = offset.checked_add(len).is_some_and(|end| end <= self.heap_size);
            if !inside || !offset.is_multiple_of(BLOCK_ALIGN) {
                return Err(corrupt("a record names a block outside the heap"));
            }
        }
        Ok(Some(ReadRecord {
            consumer: self,
            header,
            payload,
            size,
        }))
    }

    /// Watches the write position for up to `spins` rounds, with no syscall,
    /// and returns whether a record arrived. A reader that keeps up with a
    /// busy writer finds its next record a microsecond or two away, while a
    /// sleep and the wake-up it needs cost the writer several: spinning
    /// first saves that for a bounded amount of CPU.
    pub fn spin_for_data(&mut self, spins: u32) -> Result<bool, RingError> {
        self.publish();
        for _ in 0..spins {
            self.reload_write(Ordering::Acquire)?;
            if self.write_cached != self.read {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        Ok(false)
    }

    /// Announces that the consumer will sleep until a record arrives. Returns
    /// `false` if one already has (do not sleep); otherwise poll
    /// [`Self::data_fd`] and then call [`Self::finish_wait`].
    pub fn prepare_wait(&mut self) -> Result<bool, RingError> {
        self.prepare_wait_batched(0)
    }

    /// As [`Self::prepare_wait`], but asks the writer to wake us only once
    /// about `batch` bytes of records wait (a power of two at most `batch`;
    /// 0 or 1: at the first record). A writer that batches wake-ups (see
    /// [`Producer::set_batch_wakes`]) may then leave records unseen while
    /// we sleep, so the poll of [`Self::data_fd`] must have a timeout.
    pub fn prepare_wait_batched(&mut self, batch: u64) -> Result<bool, RingError> {
        // The writer may be waiting for the room we made; and a batch
        // counts from the position published here.
        self.publish();
        let sleep = self.memory.control_u64(OFFSET_READER_SLEEP);
        self.sleeper.enter_batched(sleep, wake::batch_exponent(batch));
        if self.sleeper.fences() && !wake::heavy_barrier() {
            // A kernel that offered the barrier refused it: a sleep now
            // could miss a light publish, so the caller looks again.
            self.sleeper.leave(sleep);
            return Ok(false);
        }
        self.reload_write(Ordering::SeqCst)?;
        if self.write_cached != self.read {
            self.sleeper.leave(self.memory.control_u64(OFFSET_READER_SLEEP));
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends a sleep begun with [`Self::prepare_wait`] returning `true`.
    pub fn finish_wait(&mut self) {
        self.data_ready.drain();
        self.finish_edge_wait();
    }

    /// Ends a sleep on [`Self::data_fd`] watched edge-triggered.
    pub fn finish_edge_wait(&mut self) {
        self.sleeper.leave(self.memory.control_u64(OFFSET_READER_SLEEP));
    }

    fn reload_write(&mut self, order: Ordering) -> Result<(), RingError> {
        let write = self.memory.control_u64(OFFSET_RECORD_WRITE).load(order);
        if write < self.write_cached || write - self.read > self.capacity || !write.is_multiple_of(RECORD_ALIGN) {
            return Err(RingError::Corrupt("the writer's position moved outside the queue"));
        }
        self.write_cached = write;
        Ok(())
    }

    #[inline]
    fn release(&mut self, size: u64) {
        self.read += size;
        self.read_at = wrap(self.read_at + size, self.capacity);
        if self.read - self.published >= self.capacity / PUBLISH_FRACTION {
            self.publish();
        }
    }

    /// Publishes the read position, and wakes the writer if it sleeps on a
    /// full queue.
    fn publish(&mut self) {
        if self.published == self.read {
            return;
        }
        self.published = self.read;
        self.memory
            .control_u64(OFFSET_RECORD_READ)
            .store(self.read, Ordering::SeqCst);
        let peer_sleep = self.memory.control_u64(OFFSET_WRITER_RECORD_SLEEP);
        self.waker.wake(peer_sleep, &self.space_ready, Ordering::SeqCst);
    }
}

/// `at` brought back below `capacity`, for a place in the queue that has
/// moved on by one record (at most `capacity` bytes) from below it.
fn wrap(at: u64, capacity: u64) -> u64 {
    if at >= capacity { at - capacity } else { at }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Tells the writer that nothing will read this channel any more, so
        // it stops writing into it before it notices the closed socket.
        self.memory
            .control_u64(OFFSET_READER_SLEEP)
            .store(READER_DETACHED, Ordering::Release);
    }
}

impl ReadRecord<'_> {
    #[inline]
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Where the payload is: inline, or in a heap block that `peek` checked
    /// lies inside the heap.
    #[inline]
    pub fn payload(&self) -> Payload {
        self.payload
    }

    /// Copies the inline payload (empty for a block record), contiguous
    /// even across the wrap, into `dest`, which must be as long. `false`,
    /// with nothing copied, if it is not. A hostile writer can change the
    /// payload at any time: check the copy, never the queue.
    #[must_use]
    #[inline]
    pub fn read_inline(&self, dest: &mut [u8]) -> bool {
        if dest.len() as u64 != self.payload.inline_len() {
            return false;
        }
        let consumer = &*self.consumer;
        let offset = consumer.read_at + RECORD_BASE_SIZE;
        // `peek` checked that the record lies within the written part of the
        // queue, so this range is in bounds and the copy cannot fail.
        consumer.memory.read_records(offset, dest).is_some()
    }

    /// A private copy of the inline payload (empty for a block record).
    pub fn inline_to_vec(&self) -> Vec<u8> {
        let mut copy = vec![0; self.payload.inline_len() as usize];
        if !self.read_inline(&mut copy) {
            copy.clear();
        }
        copy
    }

    /// Frees the record's place in the queue for the producer. A block it
    /// names is not freed by this: see the release queue.
    #[inline]
    pub fn release(self) {
        self.consumer.release(self.size);
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
