//! Flushes, writer → reader, out of band: the flush word.
//!
//! A flush must reach a reader at once, even while its record queue is full
//! of records of the stream being flushed and the writer waits for room,
//! and even while the reader's thread is stuck downstream (a paused sink
//! holding its buffer). So the writer does not queue the flush's start: it
//! stores it in a word of the control page (`OFFSET_FLUSH`), which a thread
//! of the reader sleeps on as a futex. The end of the flush comes twice: in
//! the word, and as a Flush record (kind 7) that the writer writes after
//! every record of the old stream, once there is room.
//!
//! # The word
//!
//! A u32, stored only by the writer: bits 2 to 31 count the flushes begun
//! on this channel (wrapping), bit 0 is set from a flush's start until its
//! stop, and bit 1 says whether the last stop reset the running time. A new
//! channel holds 0.
//!
//! # Invariants
//!
//! 1. The writer stores the word with a new count before anything of the
//!    flush reaches the reader, and the Flush record names that count. A
//!    reader that sees the count change therefore knows that every record
//!    up to the Flush record of that count is of the old stream.
//! 2. Flushes that follow each other before the reader looks are one flush
//!    to it: it skips to the Flush record of the newest count, past the
//!    older ones.
//! 3. No wake-up is lost: the writer stores the word and then calls
//!    `FUTEX_WAKE`; the reader calls `FUTEX_WAIT` with the value it last
//!    saw, which the kernel compares with the word under its own lock. A
//!    store before the wait makes the wait return at once, and a store
//!    after it is followed by a wake that finds the waiter queued.
//!
//! # Orderings
//!
//! The writer stores the word `SeqCst` before it writes the Flush record,
//! whose publication is itself a Release store, so a reader that sees the
//! record and then loads the word (Acquire) sees the new count. A reader
//! may see the count before the record: it then waits for the record.
//!
//! The word is in memory the peer can write, so the reader trusts nothing
//! in it: any change is a flush to skip to, and a count whose Flush record
//! never comes only stalls the stream, as a writer that sends nothing does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::memory::ChannelMemory;

const OPEN: u32 = 1;
const RESET_TIME: u32 = 2;
const COUNT_SHIFT: u32 = 2;

/// What the flush word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushState {
    /// Flushes begun on the channel, modulo 2^30.
    pub count: u32,
    /// A flush has started and not stopped yet.
    pub open: bool,
    /// The last stop reset the running time.
    pub reset_time: bool,
}

impl FlushState {
    pub fn from_word(word: u32) -> Self {
        Self {
            count: word >> COUNT_SHIFT,
            open: word & OPEN != 0,
            reset_time: word & RESET_TIME != 0,
        }
    }

    fn word(self) -> u32 {
        (self.count << COUNT_SHIFT) | if self.open { OPEN } else { 0 } | if self.reset_time { RESET_TIME } else { 0 }
    }
}

/// Either side's handle on a channel's flush word.
#[derive(Clone)]
pub struct FlushWord {
    memory: Arc<ChannelMemory>,
}

impl FlushWord {
    pub(crate) fn new(memory: Arc<ChannelMemory>) -> Self {
        Self { memory }
    }

    fn atomic(&self) -> &AtomicU32 {
        self.memory.flush_word()
    }

    /// The word as it is now. From the writer: anything.
    pub fn load(&self) -> u32 {
        self.atomic().load(Ordering::Acquire)
    }

    /// Sleeps while the word holds `seen`, until [`Self::wake`] or, if
    /// given, `timeout`. May return early (a signal, a stray wake): look at
    /// the word again.
    pub fn wait_while(&self, seen: u32, timeout: Option<std::time::Duration>) {
        self.memory.futex_wait(seen, timeout);
    }

    /// Wakes every thread in [`Self::wait_while`], in any process.
    pub fn wake(&self) {
        self.memory.futex_wake();
    }
}

/// The writer's end: counts this channel's flushes.
pub struct FlushSignal {
    word: FlushWord,
    state: FlushState,
}

impl FlushSignal {
    pub(crate) fn new(memory: Arc<ChannelMemory>) -> Self {
        Self {
            word: FlushWord::new(memory),
            state: FlushState::from_word(0),
        }
    }

    /// A flush starts: the reader is told at once. Returns its count.
    pub fn start(&mut self) -> u32 {
        self.state = FlushState {
            count: self.state.count.wrapping_add(1) & (u32::MAX >> COUNT_SHIFT),
            open: true,
            reset_time: false,
        };
        self.publish();
        self.state.count
    }

    /// The flush stops. Returns its count, for the Flush record that is to
    /// follow the old stream's records.
    pub fn stop(&mut self, reset_time: bool) -> u32 {
        self.state.open = false;
        self.state.reset_time = reset_time;
        self.publish();
        self.state.count
    }

    /// Whether a flush has started and not stopped.
    pub fn is_open(&self) -> bool {
        self.state.open
    }

    fn publish(&self) {
        self.word.atomic().store(self.state.word(), Ordering::SeqCst);
        self.word.wake();
    }
}

/// The Flush record's payload: the count, and whether the flush reset the
/// running time.
pub fn encode_flush(count: u32, reset_time: bool) -> [u8; 8] {
    let mut payload = [0; 8];
    payload[..4].copy_from_slice(&count.to_ne_bytes());
    payload[4..].copy_from_slice(&u32::from(reset_time).to_ne_bytes());
    payload
}

/// The count of a Flush record's payload; `None` if it is not one.
pub fn decode_flush(payload: &[u8]) -> Option<u32> {
    let (count, reset) = payload.split_first_chunk::<4>()?;
    let reset: [u8; 4] = reset.try_into().ok()?;
    let count = u32::from_ne_bytes(*count);
    (u32::from_ne_bytes(reset) <= 1 && count <= u32::MAX >> COUNT_SHIFT).then_some(count)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::{self, ChannelSizes};

    #[test]
    fn a_reader_asleep_on_the_word_wakes_for_each_start_and_stop() {
        let sizes = ChannelSizes {
            record_capacity: 4096,
            release_slots: 16,
            heap_size: 8192,
        };
        let (writer, _heap, reader) = ring::channel(sizes).expect("a channel");
        let (mut records, _releases) = writer.into_parts();
        let word = reader.records.flush_word();
        let mut seen = word.load();
        assert_eq!(FlushState::from_word(seen).count, 0, "a new channel has had no flush");
        let (told, heard) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            for _ in 0..2 {
                loop {
                    word.wait_while(seen, None);
                    let now = word.load();
                    if now != seen {
                        seen = now;
                        break;
                    }
                }
                told.send(FlushState::from_word(seen)).expect("the test listens");
            }
        });
        assert_eq!(records.flush_signal().start(), 1);
        let open = FlushState {
            count: 1,
            open: true,
            reset_time: false,
        };
        assert_eq!(heard.recv().expect("the sleeper saw the start"), open);
        assert_eq!(records.flush_signal().stop(true), 1);
        let stopped = FlushState {
            count: 1,
            open: false,
            reset_time: true,
        };
        assert_eq!(heard.recv().expect("the sleeper saw the stop"), stopped);
        sleeper.join().expect("the sleeper returns");
    }

    #[test]
    fn the_word_round_trips_and_counts_wrap() {
        for state in [
            FlushState {
                count: 0,
                open: false,
                reset_time: false,
            },
            FlushState {
                count: u32::MAX >> COUNT_SHIFT,
                open: true,
                reset_time: true,
            },
        ] {
            assert_eq!(FlushState::from_word(state.word()), state);
        }
        assert_eq!(decode_flush(&encode_flush(7, true)), Some(7));
        assert_eq!(decode_flush(&encode_flush(7, false)), Some(7));
        assert_eq!(decode_flush(&[0; 7]), None);
        assert_eq!(decode_flush(&[0; 9]), None);
        let mut bad_reset = encode_flush(1, false);
        bad_reset[4] = 2;
        assert_eq!(decode_flush(&bad_reset), None);
        assert_eq!(decode_flush(&u32::MAX.to_ne_bytes().repeat(2)), None);
    }
}
