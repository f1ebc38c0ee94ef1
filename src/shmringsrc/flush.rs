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
//! the old stream's records up to the Flush record of that count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use gst::glib;
use gst::prelude::*;

use crate::ring::{FlushState, FlushWord};

use super::imp::CAT;

/// The watcher of one link's flush word; it stops when dropped.
pub(super) struct Watcher {
    word: FlushWord,
    shared: Arc<Shared>,
}

struct Shared {
    stop: AtomicBool,
    /// The count of the last flush whose FLUSH_STOP the watcher sends:
    /// the streaming thread may read its new stream.
    released: AtomicU32,
}

impl Watcher {
    /// Starts watching `word` for `element`. Whatever count the word holds
    /// now is no flush of ours: it is returned, as the flush the streaming
    /// thread has finished.
    pub(super) fn spawn(element: &super::ShmRingSrc, word: FlushWord) -> std::io::Result<(Self, u32)> {
        let seen = word.load();
        let count = FlushState::from_word(seen).count;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            released: AtomicU32::new(count),
        });
        // Not joined: the watcher may be inside `send_event`, waiting for
        // the streaming thread, which may be the one dropping the link. It
        // sees `stop` when it next wakes, and keeps only the channel's
        // mapping until then.
        std::thread::Builder::new().name("shmringsrc-flush".into()).spawn({
            let element = element.downgrade();
            let word = word.clone();
            let shared = shared.clone();
            move || watch(&element, &word, &shared, seen)
        })?;
        Ok((Self { word, shared }, count))
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
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.word.wake();
    }
}

fn watch(element: &glib::WeakRef<super::ShmRingSrc>, word: &FlushWord, shared: &Shared, mut seen: u32) {
    let mut started = FlushState::from_word(seen).count;
    let mut stopped = true;
    let mut seqnum = gst::Seqnum::next();
    loop {
        word.wait_while(seen);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let now = word.load();
        if now == seen {
            continue;
        }
        seen = now;
        let state = FlushState::from_word(now);
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
        if !state.open && !stopped {
            stopped = true;
            gst::debug!(
                CAT,
                obj = element,
                "the writer ended flush {} (reset-time {})",
                state.count,
                state.reset_time
            );
            shared.released.store(state.count, Ordering::Release);
            element.send_event(gst::event::FlushStop::builder(state.reset_time).seqnum(seqnum).build());
        }
    }
}
