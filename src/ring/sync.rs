//! The atomics of the shared memory, as the ring's code names them.
//!
//! A normal build re-exports the standard atomics: this module adds no code
//! and no cost. A build with `--cfg loom` (see `scripts/loom.sh`) swaps in
//! the [loom](https://docs.rs/loom) model checker's, so that the unmodified
//! `Producer`, `Consumer`, `ReleaseProducer`, `ReleaseConsumer`, `Sleeper`
//! and `Waker` run under it (the models are in `loom_tests.rs`). Under loom
//! this module also holds the model's stand-ins for what loom cannot see:
//!
//! - [`ModelChannel`]: the shared words of a channel (control page lines and
//!   release slots) as loom atomics, and race-checked cells shadowing the
//!   record queue's bytes, which stay in the real double mapping;
//! - [`ModelBytes`]: the shadow cells, one per 64-byte line, also used by
//!   the models for heap blocks;
//! - [`ModelEvent`]: an eventfd's counter, polled level- or edge-triggered.
//!
//! Loom treats a `SeqCst` load or store as `AcqRel` (its README, and loom
//! issue 180), which allows the store-buffering outcome that the wake-up
//! protocol of [`wake`](super::wake) relies on `SeqCst` to rule out, so it
//! would report lost wake-ups that cannot happen. Loom does implement
//! `fence(SeqCst)`, so here a `SeqCst` access also gets a `SeqCst` fence,
//! as hardware implements it: either before it ([`SeqCstFence::Leading`],
//! the convention Power uses) or after it ([`SeqCstFence::Trailing`], as
//! x86's `xchg` store), chosen per thread with [`set_seq_cst_fence`]. Both
//! forbid store buffering between a `SeqCst` store and a later `SeqCst`
//! load. Each also hides one kind of weakening: a leading fence orders a
//! store that was weakened before the `SeqCst` load after it, a trailing one
//! a load weakened after a `SeqCst` store. The models therefore run under
//! both. Every other ordering is passed to loom as the code wrote it.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use model::*;

#[cfg(loom)]
mod model {
    use std::cell::Cell;

    use loom::cell::UnsafeCell;
    use loom::sync::atomic::fence;
    use loom::sync::{Condvar, Mutex};
    pub(crate) use std::sync::atomic::Ordering;

    use crate::ring::layout::{CONTROL_SIZE, RECORD_ALIGN};
    use crate::ring::memory::ChannelSizes;

    /// Where a `SeqCst` access gets its fence (see the module docs).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum SeqCstFence {
        Leading,
        Trailing,
    }

    thread_local! {
        // Loom runs a model's threads as coroutines on the thread that
        // called it, so a model sees the setting of its test's thread.
        static SEQ_CST_FENCE: Cell<SeqCstFence> = const { Cell::new(SeqCstFence::Leading) };
    }

    /// Chooses where the models run on this thread fence `SeqCst` accesses.
    #[cfg(test)]
    pub(crate) fn set_seq_cst_fence(fence: SeqCstFence) {
        SEQ_CST_FENCE.set(fence);
    }

    fn fence_if(order: Ordering, at: SeqCstFence) {
        if order == Ordering::SeqCst && SEQ_CST_FENCE.get() == at {
            fence(Ordering::SeqCst);
        }
    }

    /// A loom atomic whose `SeqCst` accesses are fenced (see the module
    /// docs). The ring only loads and stores its shared words.
    #[derive(Debug)]
    pub(crate) struct AtomicU64(loom::sync::atomic::AtomicU64);

    impl AtomicU64 {
        pub(crate) fn new(value: u64) -> Self {
            Self(loom::sync::atomic::AtomicU64::new(value))
        }

        pub(crate) fn load(&self, order: Ordering) -> u64 {
            fence_if(order, SeqCstFence::Leading);
            let value = self.0.load(order);
            fence_if(order, SeqCstFence::Trailing);
            value
        }

        pub(crate) fn store(&self, value: u64, order: Ordering) {
            fence_if(order, SeqCstFence::Leading);
            self.0.store(value, order);
            fence_if(order, SeqCstFence::Trailing);
        }
    }

    /// Bytes that loom checks for data races: one cell per 64-byte line of
    /// a region whose offsets wrap at `lines * 64`, as the record queue's
    /// double mapping does. A read or write of a range touches every line
    /// it covers; loom panics if two threads touch a line, one of them
    /// writing, with no happens-before between them.
    #[derive(Debug)]
    pub(crate) struct ModelBytes(Vec<UnsafeCell<()>>);

    // SAFETY: the cells hold `()`, and every access to them goes through
    // loom's `with`/`with_mut`, which is exactly what loom checks.
    unsafe impl Sync for ModelBytes {}

    impl ModelBytes {
        pub(crate) fn new(len: u64) -> Self {
            Self((0..len.div_ceil(RECORD_ALIGN)).map(|_| UnsafeCell::new(())).collect())
        }

        pub(crate) fn read(&self, offset: u64, len: u64) {
            for line in self.lines(offset, len) {
                line.with(|_| ());
            }
        }

        pub(crate) fn write(&self, offset: u64, len: u64) {
            for line in self.lines(offset, len) {
                line.with_mut(|_| ());
            }
        }

        fn lines(&self, offset: u64, len: u64) -> impl Iterator<Item = &UnsafeCell<()>> {
            let count = self.0.len() as u64;
            let first = offset / RECORD_ALIGN;
            let end = (offset + len).div_ceil(RECORD_ALIGN);
            (first..end).map(move |line| &self.0[(line % count) as usize])
        }
    }

    /// What loom sees of a channel's shared memory.
    #[derive(Debug)]
    pub(crate) struct ModelChannel {
        /// One word per 128-byte line of the control page: every shared
        /// word starts a line of its own (see `layout`).
        control: Vec<AtomicU64>,
        release_slots: Vec<AtomicU64>,
        pub(crate) records: ModelBytes,
    }

    impl ModelChannel {
        const LINE: usize = 128;

        pub(crate) fn new(sizes: ChannelSizes) -> Self {
            Self {
                control: (0..CONTROL_SIZE / Self::LINE).map(|_| AtomicU64::new(0)).collect(),
                release_slots: (0..sizes.release_slots).map(|_| AtomicU64::new(0)).collect(),
                records: ModelBytes::new(sizes.record_capacity),
            }
        }

        pub(crate) fn control(&self, offset: usize) -> &AtomicU64 {
            assert!(
                offset.is_multiple_of(Self::LINE),
                "the model has shared words only at the start of a line"
            );
            &self.control[offset / Self::LINE]
        }

        /// Slot `index`, already reduced modulo the number of slots.
        pub(crate) fn release_slot(&self, index: u64) -> &AtomicU64 {
            &self.release_slots[index as usize]
        }
    }

    #[derive(Debug, Default)]
    struct EventState {
        /// The eventfd's counter: readable while non-zero.
        counter: u64,
        /// An edge not yet reported to an edge-triggered (`EPOLLET`) waiter:
        /// every write makes one, and a wait takes it.
        edge: bool,
    }

    /// An eventfd's counter as the model sees it. The lock stands for the
    /// kernel's: a write happens before the wait it ends.
    #[derive(Debug, Default)]
    pub(crate) struct ModelEvent {
        state: Mutex<EventState>,
        changed: Condvar,
    }

    impl ModelEvent {
        /// `write(fd, 1)`.
        pub(crate) fn notify(&self) {
            let mut state = self.state.lock().unwrap();
            state.counter += 1;
            state.edge = true;
            self.changed.notify_all();
        }

        /// `read(fd)`: resets the counter.
        pub(crate) fn drain(&self) {
            self.state.lock().unwrap().counter = 0;
        }

        /// `poll` until readable (level-triggered): returns at once if the
        /// counter is non-zero.
        #[cfg(test)]
        pub(crate) fn wait_readable(&self) {
            let mut state = self.state.lock().unwrap();
            while state.counter == 0 {
                state = self.changed.wait(state).unwrap();
            }
        }

        /// `epoll_wait` on an `EPOLLET` registration: returns once there was
        /// a write since the last such wait returned.
        #[cfg(test)]
        pub(crate) fn wait_edge(&self) {
            let mut state = self.state.lock().unwrap();
            while !state.edge {
                state = self.changed.wait(state).unwrap();
            }
            state.edge = false;
        }
    }
}
