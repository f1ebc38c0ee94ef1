//! Records handed out past the read position and released in any order.
//!
//! A reader that wraps ring memory in a buffer (no copy) cannot give the
//! space back when it moves on: downstream decides when the memory is
//! freed, from any thread and in any order. The [`ReleaseTracker`] keeps a
//! fixed table of leases in stream order and publishes the read position
//! only over the released prefix, so the writer never reuses memory that a
//! lease still points into.
//!
//! # Invariants
//!
//! - `published ≤ start of the oldest unreleased lease ≤ cursor`, where
//!   `cursor` is the end of the last record the reader took. Records between
//!   leases were copied or consumed in place and are free once the reader
//!   moves its cursor past them.
//! - Lease entries are appended only by the reader thread, at `tail`. Only
//!   the holder of the `advancing` token pops them at `head`, and only the
//!   holder stores the shared read position, so it never moves backwards.
//! - The reader appends an entry (and bumps `tail`, Release) before it moves
//!   `cursor` past the record (Release). The advancer loads `cursor` before
//!   `tail` (both Acquire), so whenever it sees the new cursor it also sees
//!   the lease that must hold the read position back.
//!
//! # No release is forgotten
//!
//! A thread that releases a lease (or moves the cursor) stores that fact,
//! then tries to take the token (both `SeqCst`). A token holder, after
//! giving the token back (`SeqCst`), checks again for work (`SeqCst`). In the
//! single total order either the releaser's swap finds the token free and it
//! advances itself, or the holder's re-check sees the release.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::layout::{OFFSET_READER_SLOT0, OFFSET_WRITER_SLEEP, SLOT_READ_POS};
use super::memory::RingMemory;
use super::notifier::Notifier;

/// Most leases out at once; beyond this the reader copies.
pub const MAX_LEASES: usize = 1024;

struct LeaseEntry {
    start: AtomicU64,
    released: AtomicBool,
}

pub(crate) struct ReleaseTracker {
    memory: Arc<RingMemory>,
    capacity: u64,
    space_ready: Notifier,
    entries: Box<[LeaseEntry]>,
    /// Entries appended so far (reader thread only).
    tail: AtomicU64,
    /// Entries popped so far (token holder only).
    head: AtomicU64,
    /// End of the last record the reader took.
    cursor: AtomicU64,
    /// The read position last stored in shared memory (token holder only).
    published: AtomicU64,
    advancing: AtomicBool,
    /// The writer's last odd sleep sequence we woke (token holder only).
    writer_woken: AtomicU32,
    wakeups_sent: AtomicU64,
}

impl ReleaseTracker {
    pub(crate) fn new(memory: Arc<RingMemory>, capacity: u64, space_ready: Notifier, read: u64) -> Self {
        let entries = (0..MAX_LEASES)
            .map(|_| LeaseEntry {
                start: AtomicU64::new(0),
                released: AtomicBool::new(true),
            })
            .collect();
        Self {
            memory,
            capacity,
            space_ready,
            entries,
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            cursor: AtomicU64::new(read),
            published: AtomicU64::new(read),
            advancing: AtomicBool::new(false),
            writer_woken: AtomicU32::new(0),
            wakeups_sent: AtomicU64::new(0),
        }
    }

    /// Switches the reader from in-order release to leases, taking over its
    /// published position and its record of the writer's last wake-up.
    pub(crate) fn start(&self, read: u64, writer_woken: u32) {
        self.cursor.store(read, Ordering::SeqCst);
        self.published.store(read, Ordering::SeqCst);
        self.writer_woken.store(writer_woken, Ordering::Relaxed);
    }

    pub(crate) fn memory(&self) -> &RingMemory {
        &self.memory
    }

    pub(crate) fn space_ready(&self) -> &Notifier {
        &self.space_ready
    }

    pub(crate) fn wakeups_sent(&self) -> u64 {
        self.wakeups_sent.load(Ordering::Relaxed)
    }

    /// Whether the reader may lease a record of `size` bytes at `start`
    /// rather than copy it: the table has room and leases would not pin
    /// more than half the ring.
    pub(crate) fn can_lease(&self, start: u64, size: u64) -> bool {
        let outstanding = self.tail.load(Ordering::Relaxed) - self.head.load(Ordering::Acquire);
        let pinned = start + size - self.published.load(Ordering::Acquire);
        outstanding < MAX_LEASES as u64 && pinned <= self.capacity / 2
    }

    /// Reader thread: records a lease of the record at `start`, before the
    /// cursor moves past it. Returns its slot.
    pub(crate) fn push_lease(&self, start: u64) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let slot = (tail % MAX_LEASES as u64) as usize;
        let entry = &self.entries[slot];
        entry.start.store(start, Ordering::Relaxed);
        entry.released.store(false, Ordering::Relaxed);
        self.tail.store(tail + 1, Ordering::Release);
        slot
    }

    /// Reader thread: the reader is done with everything before `cursor`
    /// except its leases.
    pub(crate) fn move_cursor(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::SeqCst);
        self.advance();
    }

    /// Any thread: a lease was dropped.
    pub(crate) fn release(&self, slot: usize) {
        self.entries[slot].released.store(true, Ordering::SeqCst);
        self.advance();
    }

    fn advance(&self) {
        loop {
            if self.advancing.swap(true, Ordering::SeqCst) {
                return;
            }
            self.publish();
            self.advancing.store(false, Ordering::SeqCst);
            if !self.has_work() {
                return;
            }
        }
    }

    /// How many leases are released in order from `head`, and the read
    /// position that allows: the start of the oldest unreleased lease, or
    /// the cursor when there is none.
    fn released_prefix(&self) -> (u64, u64) {
        // The cursor before the tail: see the invariants above.
        let cursor = self.cursor.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        let mut head = self.head.load(Ordering::Relaxed);
        while head < tail {
            let entry = &self.entries[(head % MAX_LEASES as u64) as usize];
            if !entry.released.load(Ordering::SeqCst) {
                return (head, entry.start.load(Ordering::Relaxed));
            }
            head += 1;
        }
        (head, cursor)
    }

    fn has_work(&self) -> bool {
        self.released_prefix().1 > self.published.load(Ordering::Relaxed)
    }

    /// Token holder only: pops released leases and stores the new read
    /// position, waking the writer if it sleeps on a full ring.
    fn publish(&self) {
        let (head, target) = self.released_prefix();
        self.head.store(head, Ordering::Release);
        if target <= self.published.load(Ordering::Relaxed) {
            return;
        }
        self.published.store(target, Ordering::Release);
        self.memory
            .control_u64(OFFSET_READER_SLOT0 + SLOT_READ_POS)
            .store(target, Ordering::SeqCst);
        let seq = self.memory.control_u32(OFFSET_WRITER_SLEEP).load(Ordering::SeqCst);
        if seq & 1 == 1 && seq != self.writer_woken.load(Ordering::Relaxed) {
            self.writer_woken.store(seq, Ordering::Relaxed);
            self.space_ready.notify();
            self.wakeups_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A record's payload, kept in the ring until this is dropped. It can be
/// sent to any thread; dropping it gives the space back to the writer once
/// every older lease is gone too.
pub struct Lease {
    tracker: Arc<ReleaseTracker>,
    slot: usize,
    offset: u64,
    len: u64,
}

impl Lease {
    pub(crate) fn new(tracker: Arc<ReleaseTracker>, slot: usize, offset: u64, len: u64) -> Self {
        Self {
            tracker,
            slot,
            offset,
            len,
        }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        // The consumer checked this range against the ring before leasing.
        self.tracker.memory().data(self.offset, self.len).unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.tracker.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::ring::layout::{OFFSET_READER_SLOT0, SLOT_READ_POS};
    use crate::ring::{RecordHeader, RecordKind, channel};

    fn write(producer: &mut crate::ring::Producer, byte: u8, len: usize) -> bool {
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
    fn read_position_advances_only_over_the_released_prefix() {
        let (mut producer, mut consumer) = channel(1 << 16).unwrap();
        for byte in 1..=3 {
            assert!(write(&mut producer, byte, 100));
        }
        let mut leases = Vec::new();
        for _ in 0..3 {
            let record = consumer.peek().unwrap().unwrap();
            leases.push(record.into_lease().ok().unwrap());
        }
        assert_eq!(
            leases.iter().map(|lease| lease.as_ref()[0]).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let shared_read = || consumer_read(&producer);
        let third = leases.pop().unwrap();
        let second = leases.pop().unwrap();
        let first = leases.pop().unwrap();
        drop(second);
        assert_eq!(shared_read(), 0, "a later release must not free an earlier lease");
        drop(first);
        assert_eq!(shared_read(), 2 * 192, "the first two records are free");
        assert_eq!(third.as_ref(), &[3u8; 100][..]);
        drop(third);
        assert_eq!(shared_read(), 3 * 192);
    }

    fn consumer_read(producer: &crate::ring::Producer) -> u64 {
        producer
            .memory_for_tests()
            .control_u64(OFFSET_READER_SLOT0 + SLOT_READ_POS)
            .load(Ordering::SeqCst)
    }

    #[test]
    fn leases_stop_at_half_the_ring_and_the_reader_copies() {
        let (mut producer, mut consumer) = channel(1 << 16).unwrap();
        while write(&mut producer, 7, 4000) {}
        let mut leases = Vec::new();
        let mut refused = 0;
        while let Some(record) = consumer.peek().unwrap() {
            match record.into_lease() {
                Ok(lease) => leases.push(lease),
                Err(record) => {
                    refused += 1;
                    record.release();
                }
            }
        }
        let pinned: usize = leases.iter().map(|lease| lease.as_ref().len()).sum();
        assert!(pinned <= 1 << 15, "leases pin {pinned} bytes, more than half the ring");
        assert!(refused > 0, "a full ring of leases must be refused past half");
        drop(leases);
        assert!(write(&mut producer, 8, 4000), "all space is free again");
    }

    #[test]
    fn out_of_order_releases_on_other_threads_lose_nothing() {
        let (mut producer, mut consumer) = channel(1 << 16).unwrap();
        const RECORDS: u32 = 20_000;
        let writer = std::thread::spawn(move || {
            for seq in 0..RECORDS {
                let len = 16 + (seq as usize * 37) % 3000;
                loop {
                    if let Some(mut grant) = producer.grant(len).unwrap() {
                        grant.payload().fill(seq as u8);
                        let mut header = RecordHeader::untimed(RecordKind::Buffer, 0);
                        header.offset = u64::from(seq);
                        grant.commit(&header);
                        break;
                    }
                    if producer.prepare_wait(len).unwrap() {
                        let fd = producer.space_fd();
                        crate::ipc::wait_readable([fd]).unwrap();
                        producer.finish_wait();
                    }
                }
            }
        });
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<crate::ring::Lease>>();
        // Downstream: holds batches and frees them newest first.
        let releaser = std::thread::spawn(move || {
            for mut batch in receiver {
                while batch.pop().is_some() {}
            }
        });
        let mut seq = 0;
        let mut batch = Vec::new();
        while seq < RECORDS {
            let Some(record) = consumer.peek().unwrap() else {
                if !batch.is_empty() {
                    sender.send(std::mem::take(&mut batch)).unwrap();
                }
                if consumer.prepare_wait().unwrap() {
                    crate::ipc::wait_readable([consumer.data_fd()]).unwrap();
                    consumer.finish_wait();
                }
                continue;
            };
            assert_eq!(record.header().offset, u64::from(seq));
            assert!(record.payload().iter().all(|&byte| byte == seq as u8));
            match record.into_lease() {
                Ok(lease) => batch.push(lease),
                Err(record) => record.release(),
            }
            if batch.len() == 5 {
                sender.send(std::mem::take(&mut batch)).unwrap();
            }
            seq += 1;
        }
        drop(batch);
        drop(sender);
        writer.join().unwrap();
        releaser.join().unwrap();
    }
}
