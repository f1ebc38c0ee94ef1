//! The release queue: heap blocks a reader no longer uses, reader → writer,
//! in whatever order the reader's downstream let go of them.
//!
//! # Invariants
//!
//! Two shared positions count entries since the channel was made: `write`
//! (stored only by the reader) and `read` (stored only by the writer).
//!
//! 1. `read <= write <= read + slots`; entry `n` lives in slot `n % slots`.
//! 2. An entry is the heap offset of one block the writer sent this reader.
//!    The writer sends a block to a reader at most once before that reader
//!    releases it, and the queue has a slot for every block the heap can
//!    hold at once, so an honest writer never finds it full. A full queue
//!    therefore means a writer that stopped taking releases (or sent one
//!    block twice); the reader then drops the release, which leaks only that
//!    writer's own memory.
//! 3. The writer trusts nothing it pops: it frees a block only if its own
//!    books say this reader holds it (see [`heap`](super::heap)).
//!
//! # Orderings
//!
//! The reader stores the entry (Relaxed), then publishes `write` with a
//! `SeqCst` store that releases the entry, then loads the writer's release
//! sleep sequence: the wake-up protocol of [`wake`](super::wake), on the
//! release eventfd. The writer loads `write` with Acquire before reading
//! entries, and publishes `read` with a Release store so that the reader may
//! reuse the slots. The reader reloads `read` only when its cached view says
//! full, which invariant 2 makes rare. Both sides touch only atomics.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::RingError;
use super::layout::*;
use super::memory::ChannelMemory;
use super::notifier::Notifier;
use super::sync::Ordering;
use super::wake::{Sleeper, Waker};

/// The reader's end: pushes released block offsets.
pub struct ReleaseProducer {
    memory: Arc<ChannelMemory>,
    slots: u64,
    write: u64,
    read_cached: u64,
    waker: Waker,
    /// The writer's eventfd: written when it sleeps waiting for a block.
    release_ready: Notifier,
}

/// The writer's end: takes released block offsets.
pub struct ReleaseConsumer {
    memory: Arc<ChannelMemory>,
    slots: u64,
    read: u64,
    write_cached: u64,
    sleeper: Sleeper,
    /// Ours: written by the reader when we sleep waiting for a block.
    release_ready: Notifier,
}

impl ReleaseProducer {
    pub(crate) fn new(memory: Arc<ChannelMemory>, release_ready: Notifier) -> Self {
        let slots = memory.sizes().release_slots;
        // Every channel is new, and these positions are the reader's own:
        // whatever the writer left in them is ignored.
        memory.control_u64(OFFSET_RELEASE_WRITE).store(0, Ordering::Release);
        Self {
            memory,
            slots,
            write: 0,
            read_cached: 0,
            waker: Waker::default(),
            release_ready,
        }
    }

    /// Gives block `offset` back to the writer, waking it if it waits for
    /// one. Fails only if the writer broke invariant 2.
    pub fn push(&mut self, offset: u64) -> Result<(), RingError> {
        if self.write - self.read_cached >= self.slots {
            let read = self.memory.control_u64(OFFSET_RELEASE_READ).load(Ordering::Acquire);
            if read < self.read_cached || read > self.write {
                return Err(RingError::Corrupt(
                    "the writer's release position moved outside the queue",
                ));
            }
            self.read_cached = read;
            if self.write - read >= self.slots {
                return Err(RingError::Corrupt("the writer stopped taking released blocks back"));
            }
        }
        self.memory.release_slot(self.write).store(offset, Ordering::Relaxed);
        self.write += 1;
        self.memory
            .control_u64(OFFSET_RELEASE_WRITE)
            .store(self.write, Ordering::SeqCst);
        let writer_sleep = self.memory.control_u64(OFFSET_WRITER_RELEASE_SLEEP);
        self.waker.wake(writer_sleep, &self.release_ready, Ordering::SeqCst);
        Ok(())
    }

    /// Wake-ups this side has sent so far.
    pub fn wakeups_sent(&self) -> u64 {
        self.waker.sent()
    }

    /// Whether the peer cleared O_NONBLOCK on the release eventfd (see
    /// [`Notifier`]).
    pub fn peer_tampered(&self) -> bool {
        self.release_ready.tampered()
    }
}

impl ReleaseConsumer {
    pub(crate) fn new(memory: Arc<ChannelMemory>, release_ready: Notifier) -> Self {
        let slots = memory.sizes().release_slots;
        Self {
            memory,
            slots,
            read: 0,
            write_cached: 0,
            sleeper: Sleeper::default(),
            release_ready,
        }
    }

    /// Readable when the reader has released a block after
    /// [`Self::prepare_wait`].
    pub fn release_fd(&self) -> BorrowedFd<'_> {
        self.release_ready.as_fd()
    }

    /// Whether the peer cleared O_NONBLOCK on the release eventfd (see
    /// [`Notifier`]).
    pub fn peer_tampered(&self) -> bool {
        self.release_ready.tampered()
    }

    /// Hands every released offset to `take`, oldest first, and frees their
    /// slots. Returns how many there were. One Acquire load when there are
    /// none.
    pub fn take_all(&mut self, mut take: impl FnMut(u64)) -> Result<usize, RingError> {
        self.reload_write(Ordering::Acquire)?;
        let count = self.write_cached - self.read;
        if count == 0 {
            return Ok(0);
        }
        for index in self.read..self.write_cached {
            take(self.memory.release_slot(index).load(Ordering::Relaxed));
        }
        self.read = self.write_cached;
        self.memory
            .control_u64(OFFSET_RELEASE_READ)
            .store(self.read, Ordering::Release);
        Ok(count as usize)
    }

    /// Announces that the writer will sleep until a block comes back.
    /// Returns `false` if one already has (take it, do not sleep); otherwise
    /// poll [`Self::release_fd`] and then call [`Self::finish_wait`].
    pub fn prepare_wait(&mut self) -> Result<bool, RingError> {
        self.sleeper.enter(self.memory.control_u64(OFFSET_WRITER_RELEASE_SLEEP));
        self.reload_write(Ordering::SeqCst)?;
        if self.write_cached != self.read {
            self.finish_edge_wait();
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends a sleep begun with [`Self::prepare_wait`] returning `true`.
    pub fn finish_wait(&mut self) {
        self.release_ready.drain();
        self.finish_edge_wait();
    }

    /// Ends a sleep on [`Self::release_fd`] watched edge-triggered.
    pub fn finish_edge_wait(&mut self) {
        self.sleeper.leave(self.memory.control_u64(OFFSET_WRITER_RELEASE_SLEEP));
    }

    fn reload_write(&mut self, order: Ordering) -> Result<(), RingError> {
        let write = self.memory.control_u64(OFFSET_RELEASE_WRITE).load(order);
        if write < self.write_cached || write - self.read > self.slots {
            return Err(RingError::Corrupt(
                "the reader's release position moved outside the queue",
            ));
        }
        self.write_cached = write;
        Ok(())
    }
}

impl AsFd for ReleaseConsumer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.release_fd()
    }
}

#[cfg(test)]
#[path = "releases_tests.rs"]
mod tests;
