//! Flushes, to every linked reader (see `ring/flush.rs` for the wire).
//!
//! A FLUSH_START reaches each reader at once through its channel's flush
//! word: the streaming thread is unlocked by then, so nothing of the old
//! stream is written after it. The FLUSH_STOP is told the same way, with
//! its reset-time, and owes the reader a Flush record, which marks where
//! the old stream's records end. That record is written before the next
//! record of the new stream, from render or a serialized event, where
//! waiting for room is allowed (GstBaseSink calls the sink's FLUSH_STOP
//! without its preroll lock, which a wait interrupted by a pause needs).
//! The reader skips everything before the record, so the stream's sticky
//! events (stream-start, caps, tags) follow it again, and the timeline is
//! sent again before the next buffer.
//!
//! Invariants:
//!
//! 1. A reader is told of a flush's stop only if it was told of its start,
//!    so one that links after the start (it cannot: readers are taken in
//!    only as buffers and events pass, and none pass while the sink
//!    flushes) never gets half a flush.
//! 2. A reader that is let go while a flush is open is told of its stop
//!    first, so that its pipeline does not stay flushing: it then reads
//!    what is left and sees the writer leave.
//! 3. Several flushes before the next record owe one Flush record, of the
//!    newest count: the reader skips to that one.

use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::codec;
use crate::ring::flush::encode_flush;
use crate::ring::{RecordHeader, RecordKind};
use crate::shmringsink::CAT;
use crate::shmringsink::imp::ShmRingSink;

use super::Readers;

impl Readers {
    /// The sink got FLUSH_START, and its render has returned.
    pub(in crate::shmringsink) fn start_flush(&mut self, sink: &ShmRingSink) {
        for link in &mut self.links {
            let count = link.records.flush_signal().start();
            gst::debug!(CAT, imp = sink, "reader {}: flush {count} starts", link.slot);
        }
    }

    /// The sink got FLUSH_STOP.
    pub(in crate::shmringsink) fn stop_flush(&mut self, sink: &ShmRingSink, reset_time: bool) {
        for link in &mut self.links {
            let signal = link.records.flush_signal();
            if signal.is_open() {
                let count = signal.stop(reset_time);
                gst::debug!(CAT, imp = sink, "reader {}: flush {count} stops", link.slot);
                link.flush_owed = Some((count, reset_time));
                link.timeline_sent = None;
            }
        }
    }

    /// Before anything else of the new stream: the Flush record each reader
    /// is owed, then the sticky events as the pad holds them now.
    pub(super) fn send_owed_flushes(&mut self, sink: &ShmRingSink, drop_mode: bool) -> Result<(), gst::FlowError> {
        if self.links.iter().all(|link| link.flush_owed.is_none()) {
            return Ok(());
        }
        let sticky = sticky_records(sink);
        for slot in self.slots() {
            let Some((count, reset_time)) = self.link(slot).and_then(|link| link.flush_owed.take()) else {
                continue;
            };
            let header = RecordHeader::untimed(RecordKind::Flush, 0);
            self.send_control(sink, slot, &header, &encode_flush(count, reset_time), drop_mode)?;
            for (header, payload) in &sticky {
                self.send_control(sink, slot, header, payload, drop_mode)?;
            }
        }
        Ok(())
    }
}

/// The stream's sticky events as the sink's pad holds them (a segment only
/// once the new one arrived), as records. EOS is not among them: a stream
/// that ended is not replayed as ended.
pub(super) fn sticky_records(sink: &ShmRingSink) -> Vec<(RecordHeader, Vec<u8>)> {
    let Some(pad) = sink.obj().static_pad("sink") else {
        return Vec::new();
    };
    let mut records = Vec::new();
    pad.sticky_events_foreach(|event| {
        if event.type_() != gst::EventType::Eos
            && let Some(record) = codec::encode_event(event)
        {
            records.push(record);
        }
        std::ops::ControlFlow::Continue(gst::EventForeachAction::Keep)
    });
    records
}
