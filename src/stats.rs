//! The counters behind both elements' `stats` property.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    buffers: AtomicU64,
    bytes: AtomicU64,
    bytes_copied: AtomicU64,
    buffers_zero_copy: AtomicU64,
    wakeups_sent: AtomicU64,
    wakeups_received: AtomicU64,
    times_blocked_full: AtomicU64,
    peak_held_bytes: AtomicU64,
    buffers_lost: AtomicU64,
    batch_sleeps_timed_out: AtomicU64,
    sleeps_ended_by_timer: AtomicU64,
}

impl Stats {
    /// One buffer of `len` bytes crossed the ring, copied or not.
    /// Called only from the element's streaming thread, which GStreamer's
    /// stream lock keeps to one at a time.
    pub fn buffer(&self, len: usize, copied: bool) {
        self.buffers_crossed(1, len as u64, copied);
    }

    /// `count` buffers of `bytes` bytes in all crossed the ring, copied or
    /// not. Only the streaming thread writes these four counters, so a
    /// plain load and store replaces a locked read-modify-write: on the path
    /// of every small buffer, three locked instructions were most of what
    /// the stats cost.
    pub fn buffers_crossed(&self, count: u64, bytes: u64, copied: bool) {
        let bump = |counter: &AtomicU64, by: u64| {
            counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
        };
        bump(&self.buffers, count);
        bump(&self.bytes, bytes);
        if copied {
            bump(&self.bytes_copied, bytes);
        } else {
            bump(&self.buffers_zero_copy, count);
        }
    }

    /// More wake-ups sent, by one of several rings (the writer's readers, or
    /// the reader's successive links to writers).
    pub fn add_wakeups_sent(&self, count: u64) {
        self.wakeups_sent.fetch_add(count, Ordering::Relaxed);
    }

    /// A sleep ended because the other side woke us.
    pub fn woken(&self) {
        self.wakeups_received.fetch_add(1, Ordering::Relaxed);
    }

    /// A reader's sleep that asked for a batch of records ended at its time
    /// bound: the writer stopped before the batch filled.
    pub fn batch_sleep_timed_out(&self) {
        self.batch_sleeps_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// A reader's sleep ended at its own timer: frames that came fast, due
    /// one gap after it fell asleep, read without the writer waking it.
    pub fn sleep_ended_by_timer(&self) {
        self.sleeps_ended_by_timer.fetch_add(1, Ordering::Relaxed);
    }

    /// Heap bytes held across the ring now: by the reader's leases, or on
    /// the writer's side by the reader. Only the peak is kept.
    pub fn held(&self, bytes: u64) {
        self.peak_held_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Buffers that did not reach a reader because it lagged
    /// (`when-full=drop`): on the writer's side the sum over its readers.
    pub fn lost(&self, count: u64) {
        self.buffers_lost.fetch_add(count, Ordering::Relaxed);
    }

    pub fn buffers(&self) -> u64 {
        self.buffers.load(Ordering::Relaxed)
    }

    pub fn buffers_lost(&self) -> u64 {
        self.buffers_lost.load(Ordering::Relaxed)
    }

    /// The writer found the ring full and went to sleep.
    pub fn blocked_full(&self) {
        self.times_blocked_full.fetch_add(1, Ordering::Relaxed);
    }

    /// The property's value. `times-blocked-full` only means something on
    /// the writer's side.
    pub fn to_structure(&self, name: &str, with_blocked_full: bool) -> gst::Structure {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let builder = gst::Structure::builder(name)
            .field("buffers", get(&self.buffers))
            .field("bytes", get(&self.bytes))
            .field("bytes-copied", get(&self.bytes_copied))
            .field("buffers-zero-copy", get(&self.buffers_zero_copy))
            .field("wakeups-sent", get(&self.wakeups_sent))
            .field("wakeups-received", get(&self.wakeups_received))
            .field("peak-held-bytes", get(&self.peak_held_bytes))
            .field("buffers-lost", get(&self.buffers_lost));
        if with_blocked_full {
            builder
                .field("times-blocked-full", get(&self.times_blocked_full))
                .build()
        } else {
            builder
                .field("batch-sleeps-timed-out", get(&self.batch_sleeps_timed_out))
                .field("sleeps-ended-by-timer", get(&self.sleeps_ended_by_timer))
                .build()
        }
    }
}
