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
    write: u64,
    read_cached: u64,
    sleep: SleepState,
    data_ready: Notifier,
    space_ready: Notifier,
    wakeups_sent: u64,
}

/// The reading end of a ring.
pub struct Consumer {
    memory: Arc<RingMemory>,
    capacity: u64,
    read: u64,
    write_cached: u64,
    sleep: SleepState,
    data_ready: Notifier,
    space_ready: Notifier,
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
        Ok(Self {
            memory,
            capacity,
            write: 0,
            read_cached: 0,
            sleep: SleepState::default(),
            data_ready: Notifier::new()?,
            space_ready: Notifier::new()?,
            wakeups_sent: 0,
        })
    }

    /// What a consumer in another process needs to attach.
    pub fn fds(&self) -> RingFds<'_> {
        RingFds {
            memfd: self.memory.memfd(),
            data_ready: self.data_ready.as_fd(),
            space_ready: self.space_ready.as_fd(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent
    }

    /// Readable when the consumer has made room after [`Self::prepare_wait`].
    pub fn space_fd(&self) -> BorrowedFd<'_> {
        self.space_ready.as_fd()
    }

    /// Room for a record with `payload_len` bytes of payload. `Ok(None)`
    /// means the ring is too full right now; `TooLarge` that it never fits.
    pub fn grant(&mut self, payload_len: usize) -> Result<Option<WriteGrant<'_>>, RingError> {
        let payload_len = payload_len as u64;
        let size = self.check_fits(payload_len)?;
        if self.free() < size {
            self.reload_read(Ordering::Acquire)?;
            if self.free() < size {
                return Ok(None);
            }
        }
        Ok(Some(WriteGrant { producer: self, payload_len }))
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
        self.space_ready.drain();
        self.sleep.leave(self.memory.control_u32(OFFSET_WRITER_SLEEP));
    }

    fn check_fits(&self, payload_len: u64) -> Result<u64, RingError> {
        match record_size(payload_len) {
            Some(size) if size <= self.capacity => Ok(size),
            _ => Err(RingError::TooLarge { payload_len, capacity: self.capacity }),
        }
    }

    fn free(&self) -> u64 {
        self.capacity - (self.write - self.read_cached)
    }

    fn reload_read(&mut self, order: Ordering) -> Result<(), RingError> {
        let read = self.memory.control_u64(READ_POS).load(order);
        if read < self.read_cached || read > self.write || read % RECORD_ALIGN != 0 {
            return Err(RingError::Corrupt("the reader's position moved outside the ring"));
        }
        self.read_cached = read;
        Ok(())
    }

}

impl WriteGrant<'_> {
    /// The payload area, `payload_len` bytes, contiguous even across the wrap.
    pub fn payload(&mut self) -> &mut [u8] {
        let producer = &*self.producer;
        let offset = producer.write % producer.capacity + RECORD_HEADER_SIZE;
        // SAFETY: `grant` checked that the whole record fits in the free part
        // of the ring, which the consumer never reads, and `&mut self` makes
        // this the only slice into it. The range is within `2 * capacity`
        // because offset < capacity and the record is at most capacity.
        unsafe { producer.memory.data_mut(offset, self.payload_len) }.unwrap_or_default()
    }

    /// Publishes the record and wakes the consumer if it sleeps.
    pub fn commit(self, header: &RecordHeader) {
        let producer = self.producer;
        let offset = producer.write % producer.capacity;
        let Some(size) = record_size(self.payload_len) else { return };
        let mut raw = [0u8; RECORD_HEADER_SIZE as usize];
        raw[0..4].copy_from_slice(&(header.kind as u32).to_ne_bytes());
        raw[4..8].copy_from_slice(&header.flags.to_ne_bytes());
        let words = [
            self.payload_len,
            header.pts,
            header.dts,
            header.duration,
            header.offset,
            header.offset_end,
        ];
        for (chunk, word) in raw[8..56].chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        // SAFETY: as in `payload`: the header's 64 bytes are in the granted
        // free space, and no other slice into them exists.
        if let Some(slot) = unsafe { producer.memory.data_mut(offset, RECORD_HEADER_SIZE) } {
            slot.copy_from_slice(&raw);
        }
        producer.write += size;
        producer
            .memory
            .control_u64(OFFSET_WRITE_POS)
            .store(producer.write, Ordering::SeqCst);
        let peer_sleep = producer.memory.control_u32(READER_SLEEP);
        if producer.sleep.wake_peer(peer_sleep, &producer.data_ready) {
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
        let mut consumer = Self {
            memory,
            capacity,
            read,
            write_cached: read,
            sleep: SleepState::default(),
            data_ready,
            space_ready,
            wakeups_sent: 0,
        };
        if read % RECORD_ALIGN != 0 {
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
        self.wakeups_sent
    }

    /// Readable when the producer has committed after [`Self::prepare_wait`].
    pub fn data_fd(&self) -> BorrowedFd<'_> {
        self.data_ready.as_fd()
    }

    /// The oldest unreleased record, or `None` if the ring is empty.
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
        let raw: [u8; RECORD_HEADER_SIZE as usize] = self
            .memory
            .data(offset, RECORD_HEADER_SIZE)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(corrupt("a record header lies outside the ring"))?;
        let word = |index: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&raw[index * 8..index * 8 + 8]);
            u64::from_ne_bytes(bytes)
        };
        let kind = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let kind = RecordKind::from_u32(kind).ok_or(corrupt("a record has an unknown kind"))?;
        let payload_len = word(1);
        match record_size(payload_len) {
            Some(size) if size <= available => {}
            _ => return Err(corrupt("a record claims more bytes than were written")),
        }
        let header = RecordHeader {
            kind,
            flags: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
            pts: word(2),
            dts: word(3),
            duration: word(4),
            offset: word(5),
            offset_end: word(6),
        };
        Ok(Some(ReadRecord { consumer: self, header, payload_len }))
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
        self.data_ready.drain();
        self.sleep.leave(self.memory.control_u32(READER_SLEEP));
    }

    fn reload_write(&mut self, order: Ordering) -> Result<(), RingError> {
        let write = self.memory.control_u64(OFFSET_WRITE_POS).load(order);
        if write < self.write_cached || write - self.read > self.capacity || write % RECORD_ALIGN != 0 {
            return Err(RingError::Corrupt("the writer's position moved outside the ring"));
        }
        self.write_cached = write;
        Ok(())
    }


    fn release(&mut self, size: u64) {
        self.read += size;
        self.memory
            .control_u64(READ_POS)
            .store(self.read, Ordering::SeqCst);
        let peer_sleep = self.memory.control_u32(OFFSET_WRITER_SLEEP);
        if self.sleep.wake_peer(peer_sleep, &self.space_ready) {
            self.wakeups_sent += 1;
        }
    }
}

impl ReadRecord<'_> {
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// The payload, contiguous even across the wrap.
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
}

/// Both ends of a new ring in one process: for tests, benchmarks and
/// applications that pass the consumer's fds on by other means.
pub fn channel(capacity: u64) -> Result<(Producer, Consumer), RingError> {
    let producer = Producer::create(capacity)?;
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|err| RingError::io("duplicating a ring fd", err));
    let fds = producer.fds();
    let consumer = Consumer::attach(dup(fds.memfd)?, dup(fds.data_ready)?, dup(fds.space_ready)?, capacity)?;
    Ok((producer, consumer))
}
