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
//! `loom_tests.rs` model-checks this protocol with the real queues, both
//! sides going to sleep at once included (`scripts/loom.sh`).
//!
//! The sequence is 64 bits wide: at one sleep per nanosecond it would take
//! 292 years to come back to a value the peer remembers, so it cannot wrap
//! into a lost wake-up. `u64::MAX` is reserved for a reader that has left
//! ([`READER_DETACHED`](super::layout::READER_DETACHED)); the sequence skips
//! it.

use super::layout::READER_DETACHED;
use super::notifier::Notifier;
use super::sync::{AtomicU64, Ordering};

/// One side's own sleep sequence, as that side keeps it.
#[derive(Debug, Default)]
pub(crate) struct Sleeper {
    own: u64,
}

impl Sleeper {
    /// S1: announces the sleep.
    pub(crate) fn enter(&mut self, shared: &AtomicU64) {
        self.own = self.own.wrapping_add(1) | 1;
        if self.own == READER_DETACHED {
            self.own = 1;
        }
        shared.store(self.own, Ordering::SeqCst);
    }

    /// Ends the sleep, or cancels it after S2 found work.
    pub(crate) fn leave(&mut self, shared: &AtomicU64) {
        self.own = self.own.wrapping_add(1);
        // Relaxed: a stale odd value only costs the peer one useless wake-up.
        shared.store(self.own, Ordering::Relaxed);
    }
}

/// The waking side's memory of the last sleep it signalled.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    signalled: u64,
    sent: u64,
}

impl Waker {
    /// P2, P3: after publishing, wakes the peer if it went to sleep.
    pub(crate) fn wake(&mut self, peer_sleep: &AtomicU64, notifier: &Notifier) {
        let seq = peer_sleep.load(Ordering::SeqCst);
        if seq & 1 == 1 && seq != self.signalled && seq != READER_DETACHED {
            self.signalled = seq;
            self.sent += 1;
            notifier.notify();
        }
    }

    /// Wake-ups sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}
