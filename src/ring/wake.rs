//! Sleeping on an empty (or full) queue without losing a wake-up.
//!
//! Each queue has a consumer that may sleep until an entry arrives, and the
//! record queue also has a producer that may sleep until room appears. Each
//! sleeper owns a 64-bit *sleep sequence* in shared memory: odd while it is
//! (about to be) asleep, even while awake. To sleep, a side:
//!
//! ```text
//! S1  sleep_seq = odd               (SeqCst store)
//! S2  re-load the peer's position   (SeqCst load); if there is work: S1', don't sleep
//! S3  poll(its eventfd)
//! ```
//!
//! and the peer, after each publish:
//!
//! ```text
//! P1  position = new                (SeqCst store)
//! P2  s = sleeper's sleep_seq       (SeqCst load)
//! P3  if s is odd and not yet signalled: write the sleeper's eventfd
//! ```
//!
//! All four accesses are `SeqCst`, so they fall in one total order. If S2
//! comes before P1, then S1 comes before P2: the peer sees the odd sequence
//! and writes the eventfd, whose counter keeps the wake-up until the sleeper
//! polls. If P1 comes before S2, the sleeper sees the work and does not
//! sleep. Either way a publish made while a side sleeps wakes it. The peer
//! remembers the last sequence it signalled, so it writes the eventfd once
//! per sleep, only on the empty→non-empty (or full→non-full) transition. A
//! stale signal costs one spurious wake-up, after which the sleeper looks
//! again.
//!
//! # The writer's light publish
//!
//! P1 and P2 as above cost the writer a full barrier on every record (a
//! `SeqCst` store is an `xchg` on x86, which waits for the record's bytes to
//! leave the store buffer). The reader's sleep is rare next to the writer's
//! commits, so when both can, the barrier moves to the reader's side:
//!
//! ```text
//! writer (light)                         reader (heavy)
//! P1  position = new   (Release store)   S1  sleep_seq = odd | FENCES (SeqCst store)
//!     compiler fence                         membarrier(GLOBAL_EXPEDITED)
//! P2  s = sleep_seq    (Relaxed load)    S2  re-load the position (SeqCst load)
//! ```
//!
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` returns only after every
//! running thread of every process registered for it has executed a full
//! memory barrier (a thread that is not running passed one when it was
//! switched out). The writer's process registers when it makes a channel
//! and says so in the control page; a reader whose kernel lets it call
//! membarrier sets the `FENCES` bit in every sleep sequence it publishes.
//! The writer's barrier then falls somewhere in its program order: if
//! before P2, P2 sees S1 (stored before the reader's syscall) and the
//! writer wakes it; if after P1, S2 (after the syscall) sees P1 and the
//! reader does not sleep. That is the argument above with the two `SeqCst`
//! accesses of the writer replaced by one barrier, which is how the models
//! run it: both barriers are `fence(SeqCst)` under loom. The writer turns
//! light only after it has seen `FENCES`, so until then, and for a reader
//! that cannot fence, it keeps P1 and P2 `SeqCst`. A reader that lies about
//! `FENCES` can only lose its own wake-ups.
//!
//! `loom_tests.rs` model-checks this protocol with the real queues, both
//! sides going to sleep at once included (`scripts/loom.sh`).
//!
//! # Batched wake-ups
//!
//! A reader that keeps up with a writer producing small records as fast as
//! it can drains the queue after almost every record, and would then sleep
//! and be woken once per record: a write and a wake-up of another CPU for
//! the writer, a sleep for the reader, several times what the record itself
//! costs. A reader that sees records arrive faster than it sleeps may
//! therefore ask for a *batch*: bits 2 to 7 of its sleep sequence hold `k`,
//! and it asks to be woken only once `2^k` bytes of records wait (0: at the
//! first record, as above). The writer honours a batch only for records
//! that do not need the reader soon (small buffers of a stream that is not
//! live, see `Producer::set_batch_wakes`) and never for more than half of
//! what it lets wait unread; every other record wakes the reader at once.
//! Records of other sizes, or a limit lowered after the reader slept, can
//! still fill the queue before the batch, so a record that does not fit
//! wakes the reader too: the writer never waits for room from a reader it
//! left asleep. Because the writer may stop before the batch fills (the end
//! of a burst, a pause), a reader that asks for a batch bounds its sleep
//! with a timeout; if that expires, it goes back to batches of 0 until it
//! again sees records arrive faster than it sleeps.
//!
//! The argument above is unchanged: a batch only lets the writer *skip* a
//! wake-up it would make, and the reader's read position, which the writer
//! compares against, was published before S1 (the writer loads it after
//! P2, and a stale, smaller value only wakes the reader early). Once the
//! writer has skipped a sleep, its later loads of the sleep sequence return
//! that sleep or a later one (loads of one word by one thread), so the
//! sleep lasts until the first record that wakes: the next one that is not
//! a small buffer, the one that fills the batch, or the first that does not
//! fit. `loom_tests.rs` models all three.
//!
//! The sequence is 64 bits wide, with its count above bit 8: at one sleep
//! per microsecond (one sleep is at least a system call) it would take 2,000
//! years to come back to a value the peer remembers, so it cannot wrap into
//! a lost wake-up. `u64::MAX` is reserved for a reader that has left
//! ([`READER_DETACHED`]); the sequence skips
//! it.

use super::layout::READER_DETACHED;
use super::notifier::Notifier;
use super::sync::{AtomicU64, Ordering};

/// Set in a reader's sleep sequence when it calls the heavy barrier before
/// S2, so that the writer may publish light.
pub(crate) const FENCES: u64 = 2;
/// Where a sleep sequence keeps the batch exponent `k`, and how wide it is.
const BATCH_SHIFT: u32 = 2;
const BATCH_MASK: u64 = 0x3f;
/// The sleep count starts above the batch exponent.
const COUNT_SHIFT: u32 = 8;

/// Bytes of records a sleeper with sequence `seq` asks to be woken for: 0
/// for the first record.
pub(crate) fn batch_bytes(seq: u64) -> u64 {
    match (seq >> BATCH_SHIFT) & BATCH_MASK {
        0 => 0,
        k => 1u64.checked_shl(k as u32).unwrap_or(u64::MAX),
    }
}

/// The exponent that asks for batches of about `bytes` (rounded down to a
/// power of two; 0 for none).
pub(crate) fn batch_exponent(bytes: u64) -> u64 {
    if bytes < 2 {
        0
    } else {
        u64::from(63 - bytes.leading_zeros()).min(BATCH_MASK)
    }
}

/// One side's own sleep sequence, as that side keeps it: a count of its
/// sleeps in the bits above `FENCES`, which it keeps set or clear for good.
#[derive(Debug, Default)]
pub(crate) struct Sleeper {
    own: u64,
    fences: bool,
}

impl Sleeper {
    /// A sleeper that calls [`heavy_barrier`] before it re-checks, and says
    /// so in its sequence.
    pub(crate) fn fencing() -> Self {
        Self {
            own: FENCES,
            fences: true,
        }
    }

    pub(crate) fn fences(&self) -> bool {
        self.fences
    }

    /// S1: announces the sleep, to be woken at the first record.
    pub(crate) fn enter(&mut self, shared: &AtomicU64) {
        self.enter_batched(shared, 0);
    }

    /// S1: announces a sleep that asks to be woken once `2^exponent` bytes
    /// wait (see "Batched wake-ups" above); 0 asks for the first record.
    pub(crate) fn enter_batched(&mut self, shared: &AtomicU64, exponent: u64) {
        let tag = if self.fences { FENCES | 1 } else { 1 };
        let batch = (exponent & BATCH_MASK) << BATCH_SHIFT;
        self.own = ((self.own >> COUNT_SHIFT).wrapping_add(1) << COUNT_SHIFT) | batch | tag;
        if self.own == READER_DETACHED {
            self.own = (1 << COUNT_SHIFT) | batch | tag;
        }
        shared.store(self.own, Ordering::SeqCst);
    }

    /// Ends the sleep, or cancels it after S2 found work.
    pub(crate) fn leave(&mut self, shared: &AtomicU64) {
        self.own &= !1;
        // Relaxed: a stale odd value only costs the peer one useless wake-up.
        shared.store(self.own, Ordering::Relaxed);
    }
}

/// The waking side's memory of the last sleep it signalled.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    signalled: u64,
    sent: u64,
    /// The batched sleep whose wake position was last worked out (0: none
    /// yet), and that position.
    armed: u64,
    wake_at: u64,
}

impl Waker {
    /// P2, P3: after publishing, wakes the peer if it went to sleep. `order`
    /// is `SeqCst`, or `Relaxed` after a light publish. Returns the sequence
    /// it saw.
    #[inline]
    pub(crate) fn wake(&mut self, peer_sleep: &AtomicU64, notifier: &Notifier, order: Ordering) -> u64 {
        let seq = peer_sleep.load(order);
        if seq & 1 == 1 && seq != self.signalled && seq != READER_DETACHED {
            self.signalled = seq;
            self.sent += 1;
            notifier.notify();
        }
        seq
    }

    /// P2, P3 for a record the reader need not see soon: as [`Self::wake`],
    /// but a sleeper that asked for a batch is left asleep until `position`
    /// (ours, just published) is a batch past its read position, which
    /// `read_position` loads. `max_batch` caps the batch.
    pub(crate) fn wake_batched(
        &mut self,
        peer_sleep: &AtomicU64,
        notifier: &Notifier,
        order: Ordering,
        position: u64,
        read_position: impl FnOnce() -> u64,
        max_batch: u64,
    ) -> u64 {
        let seq = peer_sleep.load(order);
        if seq & 1 == 1 && seq != self.signalled && seq != READER_DETACHED {
            let batch = batch_bytes(seq).min(max_batch);
            if batch > 0 {
                if self.armed != seq {
                    self.armed = seq;
                    self.wake_at = read_position().saturating_add(batch);
                }
                if position < self.wake_at {
                    return seq;
                }
            }
            self.signalled = seq;
            self.sent += 1;
            notifier.notify();
        }
        seq
    }

    /// P2, P3 for the sleep that [`Self::wake_batched`] last left asleep,
    /// if it was not woken since: for a writer that may not fill the batch.
    pub(crate) fn wake_skipped(&mut self, peer_sleep: &AtomicU64, notifier: &Notifier) {
        if self.armed != 0 && self.armed != self.signalled {
            // Relaxed: the load that left the sleep unwoken returned its
            // sequence, so this one (of the same word, in the same thread)
            // returns that sequence or a later one. A later sleep's S2 saw
            // every record whose P2 did not see it, and one that a P2 saw
            // and skipped is this case again; waking a reader that sleeps
            // for nothing costs one useless wake-up.
            self.wake(peer_sleep, notifier, Ordering::Relaxed);
        }
    }

    /// Wake-ups sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}

/// The writer's half of the light publish, between P1 and P2: nothing at
/// run time, since the reader's [`heavy_barrier`] orders the two for it;
/// the compiler must still keep them in program order.
pub(crate) fn light_barrier() {
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// The reader's half, between S1 and S2. `false` if the kernel refused,
/// which [`heavy_barrier_available`] said it would not.
pub(crate) fn heavy_barrier() -> bool {
    #[cfg(not(loom))]
    return membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
    #[cfg(loom)]
    {
        loom::sync::atomic::fence(Ordering::SeqCst);
        true
    }
}

/// Registers this process for the readers' heavy barrier, once; `true` if
/// the kernel accepted, so that this process may publish light.
pub(crate) fn register_light_publisher() -> bool {
    #[cfg(not(loom))]
    {
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REGISTERED.get_or_init(|| {
            membarrier_supports(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
                && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0
        })
    }
    #[cfg(loom)]
    true
}

/// Whether this process may call [`heavy_barrier`].
pub(crate) fn heavy_barrier_available() -> bool {
    #[cfg(not(loom))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| membarrier_supports(MEMBARRIER_CMD_GLOBAL_EXPEDITED))
    }
    #[cfg(loom)]
    true
}

// The commands of membarrier(2), from <linux/membarrier.h>.
#[cfg(not(loom))]
const MEMBARRIER_CMD_QUERY: nix::libc::c_long = 0;
#[cfg(not(loom))]
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: nix::libc::c_long = 1 << 1;
#[cfg(not(loom))]
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: nix::libc::c_long = 1 << 2;

#[cfg(not(loom))]
fn membarrier_supports(command: nix::libc::c_long) -> bool {
    let supported = membarrier(MEMBARRIER_CMD_QUERY);
    supported > 0 && supported & command != 0
}

#[cfg(not(loom))]
fn membarrier(command: nix::libc::c_long) -> nix::libc::c_long {
    // SAFETY: membarrier takes no pointers; with these commands and flags 0
    // it only orders memory or registers the process, and a kernel without
    // it (or a seccomp filter) answers -1.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_membarrier,
            command,
            0 as nix::libc::c_long,
            0 as nix::libc::c_long,
        )
    }
}
