//! The writer's flushes, pushed downstream of the reader.
//!
//! The writer tells a flush through its channel's flush word (see
//! `ring/flush.rs`): a new count when the flush starts, the open bit
//! cleared, with reset-time, when it stops; and a Flush record after every
//! record of the old stream. The streaming thread cannot be the one to push
//! FLUSH_START: it may be stuck downstream, in a paused sink or a full
//! queue, which only a FLUSH_START from another thread frees. So a thread
//! per link, the watcher, sleeps on the word and sends FLUSH_START and
//! FLUSH_STOP through `gst_element_send_event`, as an application flushing
//! the source from outside would: GstBaseSrc then pushes them downstream,
//! unlocks and stops its streaming thread at the start, and restarts it
//! after the stop.
//!
//! The streaming thread, for its part, reads nothing of a flush's new
//! stream before the watcher has let it: while the word names a flush it
//! has not finished, it returns `Flushing` (and GstBaseSrc stops it) until
//! the watcher has sent that flush's FLUSH_START and releases the count,
//! just before its FLUSH_STOP restarts the thread; from then on it skips
//! the old stream's records up to the Flush record of that count. A word
//! that changed without a wake (a broken writer) is looked at again when
//! the streaming thread finds it changed and wakes the watcher itself.
//!
//! A writer that dies while a flush is open never stops it, and the
//! streaming thread, stopped by GstBaseSrc, would never see it go. So
//! while a flush is open the watcher also looks at the writer's socket
//! every `HANG_UP_CHECK_INTERVAL`, and ends the flush itself (without
//! reset-time) when the writer is gone: the streaming thread then drains
//! the ring and reports the writer's exit as always.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;

use crate::ring::{FlushState, FlushWord};

use super::imp::CAT;

/// How often the watcher looks for the writer's hang-up while a flush is
/// open, and only then.
const HANG_UP_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Whether the writer's socket has hung up.
pub(super) type WriterGone = Box<dyn Fn() -> bool + Send>;

/// The watcher's `phase`: asleep on the word (or about to be), at work on
/// a change (sending an event), or told to stop while asleep.
const ASLEEP: u8 = 0;
const AT_WORK: u8 = 1;
const STOPPING: u8 = 2;

/// The watcher of one link's flush word; it stops when dropped.
pub(super) struct Watcher {
    word: FlushWord,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    /// `ASLEEP`, `AT_WORK` or `STOPPING`: whether dropping the watcher may
    /// wait for its thread to end (see `Drop`).
    phase: AtomicU8,
    /// The count of the last flush whose FLUSH_STOP the watcher sends:
    /// the streaming thread may read its new stream.
    released: AtomicU32,
}

impl Watcher {
    /// Starts watching `word` for `element`. Whatever count the word holds
    /// now is no flush of ours: it is returned, as the flush the streaming
    /// thread has finished.
    pub(super) fn spawn(
        element: &super::ShmRingSrc,
        word: FlushWord,
        writer_gone: WriterGone,
    ) -> std::io::Result<(Self, u32)> {
        let seen = word.load();
        let count = FlushState::from_word(seen).count;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            phase: AtomicU8::new(ASLEEP),
            released: AtomicU32::new(count),
        });
        let thread = std::thread::Builder::new().name("shmringsrc-flush".into()).spawn({
            let element = element.downgrade();
            let word = word.clone();
            let shared = shared.clone();
            move || watch(&element, &word, &shared, seen, &*writer_gone)
        })?;
        let watcher = Self {
            word,
            shared,
            thread: Some(thread),
        };
        Ok((watcher, count))
    }

    /// The count of the newest flush the writer began, as its word says.
    pub(super) fn begun(&self) -> u32 {
        FlushState::from_word(self.word.load()).count
    }

    /// Whether the watcher has sent FLUSH_START for the flush of `count`
    /// and is sending its FLUSH_STOP, so that what follows its Flush record
    /// may be read.
    pub(super) fn released(&self, count: u32) -> bool {
        self.shared.released.load(Ordering::Acquire) == count
    }

    /// Wakes the watcher to look at the word: the streaming thread saw it
    /// change, and a broken writer may not have woken the watcher.
    pub(super) fn nudge(&self) {
        self.word.wake();
    }
}

impl Drop for Watcher {
    /// Stops the thread. One asleep on the word is woken until it has
    /// ended, and joined, so that the channel it maps is gone when the link
    /// is. One at work is not waited for: it may be inside `send_event`,
    /// waiting for the streaming thread, which may be the one dropping the
    /// link; it sees `stop` before it sleeps again, and keeps the channel
    /// mapped until then.
    ///
    /// A wake that comes before the thread is in `FUTEX_WAIT` finds no
    /// one, and the word does not change, so the wake is repeated until the
    /// thread has ended. It cannot sleep past `stop` for good either: it
    /// publishes `ASLEEP` before it looks at `stop` (both SeqCst), so
    /// either it sees `stop`, or this sees it asleep and wakes it.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let asleep = self
            .shared
            .phase
            .compare_exchange(ASLEEP, STOPPING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        let Some(thread) = self.thread.take() else {
            return;
        };
        if !asleep {
            return;
        }
        while !thread.is_finished() {
            self.word.wake();
            std::thread::yield_now();
        }
        let _ = thread.join();
    }
}

fn watch(
    element: &glib::WeakRef<super::ShmRingSrc>,
    word: &FlushWord,
    shared: &Shared,
    mut seen: u32,
    writer_gone: &dyn Fn() -> bool,
) {
    let mut started = FlushState::from_word(seen).count;
    let mut stopped = true;
    let mut seqnum = gst::Seqnum::next();
    loop {
        shared.phase.store(ASLEEP, Ordering::SeqCst);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        word.wait_while(seen, (!stopped).then_some(HANG_UP_CHECK_INTERVAL));
        // Dropping the watcher claimed it while asleep: it ends now.
        if shared
            .phase
            .compare_exchange(ASLEEP, AT_WORK, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let now = word.load();
        let state = FlushState::from_word(now);
        let gone = now == seen && !stopped && writer_gone();
        if now == seen && !gone {
            continue;
        }
        seen = now;
        let Some(element) = element.upgrade() else {
            return;
        };
        if state.count != started {
            started = state.count;
            stopped = false;
            seqnum = gst::Seqnum::next();
            gst::debug!(CAT, obj = element, "the writer began flush {}", state.count);
            element.send_event(gst::event::FlushStart::builder().seqnum(seqnum).build());
        }
        if (!state.open || gone) && !stopped {
            stopped = true;
            let reset_time = state.reset_time && !gone;
            if gone {
                gst::debug!(CAT, obj = element, "the writer went away during flush {started}");
            } else {
                gst::debug!(
                    CAT,
                    obj = element,
                    "the writer ended flush {started} (reset-time {reset_time})"
                );
            }
            shared.released.store(started, Ordering::Release);
            element.send_event(gst::event::FlushStop::builder(reset_time).seqnum(seqnum).build());
        }
    }
}
