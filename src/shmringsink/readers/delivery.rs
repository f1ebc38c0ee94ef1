//! What the linked readers are sent: a buffer to each reader that is to
//! get it, caps, events, layouts and timelines, each written into the
//! reader's record queue, with its payload inline or in a heap block; and,
//! in `drop` mode, the backlog and the loss accounting of a reader that
//! lags.
//!
//! Invariants:
//!
//! 1. A buffer's payload goes into the heap once, in a block held by the
//!    holder bit of each reader it is sent to. A reader's bit is set before
//!    the record naming the block is published, and cleared again if that
//!    record is not sent, or if a write fails or is unlocked before it
//!    reaches that reader.
//! 2. A reader's records go in stream order. In `drop` mode, caps, events
//!    and layouts that do not fit wait in its backlog, at most
//!    `MAX_BACKLOG` of them (a reader further behind is let go), and go
//!    before anything else; it gets no buffer while its backlog is not
//!    empty. EOS waits instead: it goes after the backlog and the Lost
//!    record.
//! 3. `needs_keyframe` is set when a reader joins and whenever it loses a
//!    buffer, and cleared when a buffer is written to it: while it is set,
//!    the reader gets no delta unit, and the first delta unit it skips
//!    asks upstream for a keyframe (once until it gets one). Lost buffers
//!    are counted, and
//!    announced by a Lost record before the reader's next buffer, which
//!    then carries DISCONT.
//! 4. In `block` mode every write waits for room in a reader's queue; in
//!    `drop` mode only EOS and the sticky events replayed to a joining
//!    reader do. A wait ends when the reader reads or leaves, or when the
//!    sink is unlocked: a flush ends the render, a pause waits for PLAYING
//!    and goes on.

use std::time::Duration;

use gst::subclass::prelude::*;

use crate::codec::{self, VideoLayout};
use crate::metas;
use crate::ring::{self, Notifier, Payload, RecordHeader, RecordKind, RingError, WriteGrant};
use crate::shmringsink::CAT;
use crate::shmringsink::heap::{Allocation, LEASE_WAIT, Patience, SinkHeap};
use crate::shmringsink::imp::ShmRingSink;
use crate::shmringsink::pool::INLINE_MAX;

use super::{Readers, SlotList, Unlink, post_ipc_error, post_ring_error};

/// Caps, events and layouts kept for a reader that lags in `drop` mode.
/// A reader that falls this far behind on them no longer reads at all: it
/// is let go.
const MAX_BACKLOG: usize = 256;

impl Readers {
    /// A new reader first gets the stream's sticky events (stream-start,
    /// caps, segment, tags) as the sink's pad holds them now, so that it can
    /// start anywhere in the stream.
    pub(super) fn replay_sticky_events(&mut self, sink: &ShmRingSink, slot: u32) -> Result<(), gst::FlowError> {
        for (header, payload) in super::flush::sticky_records(sink) {
            self.send_copy(sink, slot, &header, &payload, true)?;
        }
        Ok(())
    }

    /// Writes a serialized event to every linked reader.
    pub(in crate::shmringsink) fn send_event(
        &mut self,
        sink: &ShmRingSink,
        header: &RecordHeader,
        payload: &[u8],
        is_eos: bool,
    ) -> Result<(), gst::FlowError> {
        let drop_mode = self.drop_mode(sink);
        self.send_owed_flushes(sink, drop_mode)?;
        for slot in self.slots() {
            if is_eos {
                // The end of the stream is not dropped: every reader gets
                // what it is owed of caps and events, then EOS.
                self.flush_backlog(sink, slot, true)?;
                self.announce_loss(sink, slot, true)?;
                self.send_copy(sink, slot, header, payload, true)?;
            } else {
                self.send_control(sink, slot, header, payload, drop_mode)?;
            }
        }
        Ok(())
    }

    /// The Metas record (see `metas.rs`) of the buffer `render` gets next;
    /// empty if it carries none.
    pub(in crate::shmringsink) fn carry_metas(&mut self, metas: Vec<u8>) {
        self.metas = metas;
    }

    /// Writes a buffer to every linked reader that is to get it. Its
    /// payload goes into the heap once, whatever the number of readers: a
    /// block they all hold, each with its own holder bit.
    pub(in crate::shmringsink) fn render(
        &mut self,
        sink: &ShmRingSink,
        unlock: &Notifier,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        layout: &VideoLayout,
        wait: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let queue_limit = sink.queue_limit(buffer, self.metas.len());
        let drop_mode = self.drop_mode(sink);
        let delta = buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        self.send_owed_flushes(sink, drop_mode)?;
        loop {
            if !self.admit_readers(sink, unlock, wait)? {
                gst::trace!(CAT, imp = sink, "no reader; dropping {buffer:?}");
                return Ok(gst::FlowSuccess::Ok);
            }
            let epoch = sink.timeline_epoch();
            let mut timeline = None;
            let mut recipients = SlotList::default();
            for slot in self.slots() {
                if drop_mode && !self.flush_backlog(sink, slot, false)? {
                    self.lose(sink, slot);
                    continue;
                }
                let Some(link) = self.link(slot) else {
                    continue;
                };
                link.records.set_limit(queue_limit);
                if link.needs_keyframe && delta {
                    // A reader that just joined never had the frames this
                    // one depends on; one that lost buffers lost them too.
                    // A live encoder upstream makes a keyframe at once when
                    // asked, rather than at the end of its GOP.
                    if !std::mem::replace(&mut link.key_unit_asked, true) {
                        sink.upstream().request_key_unit();
                    }
                    if link.lost > 0 {
                        self.lose(sink, slot);
                    }
                    continue;
                }
                if link.timeline_sent != Some(epoch) {
                    link.timeline_sent = Some(epoch);
                    if timeline.is_none() {
                        timeline = Some(sink.timeline_record());
                    }
                    if let Some(Some((timeline_header, bytes))) = &timeline {
                        self.send_control(sink, slot, timeline_header, bytes, drop_mode)?;
                    }
                    let Some(link) = self.link(slot) else {
                        continue;
                    };
                    if drop_mode && !link.backlog.is_empty() {
                        self.lose(sink, slot);
                        continue;
                    }
                }
                let Some(link) = self.link(slot) else {
                    continue;
                };
                if link.layout != *layout {
                    let bytes = layout.as_ref().map_or(&[][..], |bytes| &bytes[..]);
                    let layout_header = RecordHeader::untimed(RecordKind::VideoLayout, 0);
                    self.send_control(sink, slot, &layout_header, bytes, drop_mode)?;
                    if let Some(link) = self.link(slot) {
                        link.layout = *layout;
                    }
                    if drop_mode && self.link(slot).is_some_and(|link| !link.backlog.is_empty()) {
                        self.lose(sink, slot);
                        continue;
                    }
                }
                if self.link(slot).is_some() {
                    recipients.push(slot);
                }
            }
            let (by_fd, recipients) = self.deliver_fds(sink, buffer, header, recipients, drop_mode)?;
            let (copied_to, copied) = self.deliver(sink, unlock, buffer, header, recipients, drop_mode)?;
            let delivered = by_fd + copied_to;
            if delivered > 0 {
                sink.stats().buffer(buffer.size(), copied);
                return Ok(gst::FlowSuccess::Ok);
            }
            // Every reader left while we waited for room: the next one
            // gets this buffer.
            if !(wait && self.links.is_empty()) {
                return Ok(gst::FlowSuccess::Ok);
            }
        }
    }

    /// The common case of [`Self::render`] in one pass over the readers: a
    /// small buffer without metas, in memory that does not cross by its fd,
    /// to readers that are all linked, owed nothing (no flush, timeline,
    /// layout, backlog or loss to tell first, no keyframe to wait for),
    /// with room in every queue, and nothing new on any socket. Returns
    /// `false`, having written nothing, when any of that does not hold:
    /// then call `render`, which decides. What it writes is what `render`
    /// would: one inline buffer record per reader. It never waits, so it
    /// needs no unlock fd.
    pub(in crate::shmringsink) fn render_steady(
        &mut self,
        sink: &ShmRingSink,
        buffer: &gst::BufferRef,
        header: &RecordHeader,
        layout: &VideoLayout,
    ) -> bool {
        let len = buffer.size();
        !self.links.is_empty()
            && self.metas.is_empty()
            && is_steady_buffer(&mut self.fd_check, buffer, len)
            && self.readers_steady(sink, layout)
            && self.write_steady(
                sink,
                || std::iter::once((buffer, *header, len)),
                sink.queue_limit(buffer, 0),
            )
    }

    /// [`Self::render_steady`] for a whole list of buffers without metas
    /// or a video layout: each reader gets them all, published with one
    /// store and at most one wake-up. `false`, having written nothing, when
    /// any buffer or reader is not in the common case; the list then goes
    /// buffer by buffer through `render`.
    pub(in crate::shmringsink) fn render_list_steady(&mut self, sink: &ShmRingSink, list: &gst::BufferListRef) -> bool {
        let fd_check = &mut self.fd_check;
        let steady = |buffer: &gst::BufferRef| {
            is_steady_buffer(fd_check, buffer, buffer.size()) && buffer.iter_meta::<gst::Meta>().next().is_none()
        };
        if !list.iter().all(steady) {
            return false;
        }
        let Some(first) = list.get(0) else {
            return true;
        };
        let queue_limit = sink.queue_limit(first, 0);
        let records = || {
            list.iter()
                .map(|buffer| (buffer, codec::buffer_header(buffer), buffer.size()))
        };
        self.readers_steady(sink, &None) && self.write_steady(sink, records, queue_limit)
    }

    /// Whether every reader is linked, still attached and owed nothing
    /// before its next buffer, whose layout is `layout`, and no socket has
    /// news.
    fn readers_steady(&self, sink: &ShmRingSink, layout: &VideoLayout) -> bool {
        let epoch = sink.timeline_epoch();
        self.readers_gathered
            && !self.links.is_empty()
            && !self.attention_pending()
            && !self.fd_deaths_pending()
            && self.links.iter().all(|link| {
                link.timeline_sent == Some(epoch)
                    && link.layout == *layout
                    && !link.needs_keyframe
                    && link.lost == 0
                    && link.backlog.is_empty()
                    && link.flush_owed.is_none()
                    // A reader that let go says so in shared memory before
                    // its socket's hang-up reaches the watch: the general
                    // path then unlinks it and serves the next reader.
                    && !link.records.reader_detached()
            })
    }

    /// Writes `records` (small buffers, their headers and their sizes) to
    /// every reader, if all of them fit every queue now; else writes
    /// nothing and returns `false`.
    fn write_steady<'b, I>(&mut self, sink: &ShmRingSink, records: impl Fn() -> I, queue_limit: u64) -> bool
    where
        I: Iterator<Item = (&'b gst::BufferRef, RecordHeader, usize)>,
    {
        let (mut count, mut payload_bytes) = (0u64, 0u64);
        let bytes = records().try_fold(0u64, |sum, (_, _, len)| {
            count += 1;
            payload_bytes += len as u64;
            ring::layout::record_size(len as u64).and_then(|size| sum.checked_add(size))
        });
        let Some(bytes) = bytes else {
            return false;
        };
        for link in &mut self.links {
            link.records.set_limit(queue_limit);
            if !matches!(link.records.has_room_for(bytes), Ok(true)) {
                return false;
            }
        }
        for link in &mut self.links {
            for (buffer, header, len) in records() {
                // Room for them all was checked just above, and only this
                // thread writes.
                let payload = Payload::Inline { len: len as u64 };
                if let Ok(Some(mut grant)) = link.records.grant(payload) {
                    Inline::Buffer(buffer).copy_into(&mut grant);
                    grant.stage(&header);
                }
            }
        }
        // Every reader's records are in place before the first is shown, so
        // that the wake-ups of several readers follow one another with no
        // copying in between.
        for link in &mut self.links {
            link.records.publish();
            let sent = link.records.wakeups_sent();
            if sent != link.wakeups_counted {
                sink.stats().add_wakeups_sent(sent - link.wakeups_counted);
                link.wakeups_counted = sent;
            }
        }
        sink.stats().buffers_crossed(count, payload_bytes, true);
        true
    }

    /// Writes `buffer` to the readers in `recipients`. Returns to how many
    /// it went, and whether its payload was copied.
    fn deliver(
        &mut self,
        sink: &ShmRingSink,
        unlock: &Notifier,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        mut recipients: SlotList,
        drop_mode: bool,
    ) -> Result<(usize, bool), gst::FlowError> {
        if recipients.is_empty() {
            return Ok((0, false));
        }
        let size = buffer.size();
        let len = size as u64;
        if size <= INLINE_MAX {
            return Ok((self.deliver_inline(sink, buffer, header, &recipients, drop_mode)?, true));
        }
        let Some(heap) = self.links.first().map(|link| link.heap.clone()) else {
            return Ok((0, false));
        };
        check_heap_holds(sink, &heap, len)?;
        if drop_mode {
            // A reader that holds its share of the heap gets no more: the
            // others, and upstream, keep theirs. That share is what it may
            // fall behind by before it loses buffers. A reader that holds
            // nothing gets any payload the heap can hold.
            let share = heap.size() / (self.links.len() as u64 + 1);
            // What the readers gave back counts: the allocator takes their
            // releases only when it runs short.
            heap.collect_now();
            for slot in std::mem::take(&mut recipients) {
                let held = heap.bytes_held_by_slot(slot);
                if held == 0 || held + len <= share {
                    recipients.push(slot);
                } else {
                    self.lose(sink, slot);
                }
            }
            if recipients.is_empty() {
                return Ok((0, false));
            }
        }
        let holders = recipients.iter().fold(0, |holders, &slot| holders | ring::reader(slot));
        let (offset, copied) = match sink.block_in_place(buffer, holders) {
            Some((offset, _)) => (offset, false),
            None => match self.allocate_block(sink, &heap, len, holders, unlock)? {
                BlockFor::Block(offset) => {
                    // SAFETY: the block was just allocated for these readers,
                    // none of which has been told of it yet, and nothing
                    // else maps it writable.
                    if let Some(block) = unsafe { heap.memory().block_mut(offset, len) } {
                        copy_buffer(buffer, block);
                    }
                    (offset, true)
                }
                BlockFor::Inline => {
                    // No block will come back: inline, a copy per reader.
                    return Ok((self.deliver_inline(sink, buffer, header, &recipients, drop_mode)?, true));
                }
                BlockFor::Lost => {
                    for &slot in &recipients {
                        self.lose(sink, slot);
                    }
                    return Ok((0, false));
                }
            },
        };
        let mut delivered = 0;
        for (index, &slot) in recipients.iter().enumerate() {
            let sent = self.deliver_one(sink, slot, header, drop_mode, |readers, sink, header| {
                readers.send_block(sink, slot, &heap, header, offset, len, !drop_mode)
            });
            match sent {
                Ok(sent) => {
                    delivered += usize::from(sent);
                    // Not sent: the hold of a reader still linked goes.
                    if !sent && heap.holds_for(offset, slot) {
                        heap.release(offset, ring::reader(slot));
                    }
                }
                Err(err) => {
                    // Unlocked or failed: the readers not reached yet let
                    // go of the block they will never hear of.
                    for &later in &recipients[index..] {
                        if heap.holds_for(offset, later) {
                            heap.release(offset, ring::reader(later));
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok((delivered, copied))
    }

    /// Writes `buffer` into the record queue of each reader in `recipients`,
    /// a copy each. Returns to how many it went.
    fn deliver_inline(
        &mut self,
        sink: &ShmRingSink,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        recipients: &[u32],
        drop_mode: bool,
    ) -> Result<usize, gst::FlowError> {
        let len = buffer.size() as u64;
        let mut delivered = 0;
        for &slot in recipients {
            let sent = self.deliver_one(sink, slot, header, drop_mode, |readers, sink, header| {
                readers.write_record(
                    sink,
                    slot,
                    header,
                    Payload::Inline { len },
                    Inline::Buffer(buffer),
                    !drop_mode,
                )
            })?;
            delivered += usize::from(sent);
        }
        Ok(delivered)
    }

    /// Writes one buffer record to the reader in `slot` with `write`, after
    /// a Lost record if it lost buffers (then the buffer carries DISCONT)
    /// and its Metas record if it has metas. Returns whether the buffer
    /// went; in `drop` mode one that does not fit is lost.
    pub(super) fn deliver_one(
        &mut self,
        sink: &ShmRingSink,
        slot: u32,
        header: &RecordHeader,
        drop_mode: bool,
        write: impl FnOnce(&mut Self, &ShmRingSink, &RecordHeader) -> Result<WriteOutcome, gst::FlowError>,
    ) -> Result<bool, gst::FlowError> {
        let discont = match self.announce_loss(sink, slot, !drop_mode)? {
            Some(discont) => discont,
            None => {
                if drop_mode {
                    self.lose(sink, slot);
                }
                return Ok(false);
            }
        };
        let mut header = *header;
        if discont {
            header.flags |= gst::BufferFlags::DISCONT.bits();
        }
        if !self.metas.is_empty() {
            // The flag, not the order, ties the Metas record to this
            // buffer: if the buffer does not follow, the next one lacks it.
            let metas = std::mem::take(&mut self.metas);
            let metas_header = RecordHeader::untimed(RecordKind::Metas, 0);
            let sent = self.send_copy(sink, slot, &metas_header, &metas, !drop_mode);
            self.metas = metas;
            match sent? {
                WriteOutcome::Written => header.flags |= metas::METAS_PRECEDE,
                WriteOutcome::Full => {
                    self.lose(sink, slot);
                    return Ok(false);
                }
                WriteOutcome::NoReader => return Ok(false),
            }
        }
        match write(self, sink, &header)? {
            WriteOutcome::Written => {
                if let Some(link) = self.link(slot) {
                    link.needs_keyframe = false;
                    link.key_unit_asked = false;
                }
                Ok(true)
            }
            WriteOutcome::Full => {
                self.lose(sink, slot);
                Ok(false)
            }
            WriteOutcome::NoReader => Ok(false),
        }
    }

    /// Writes one record into the queue of the reader in `slot`. With
    /// `wait`, sleeps while the queue is full; without, reports `Full`. If
    /// the reader goes away, the record is dropped with it.
    pub(super) fn write_record(
        &mut self,
        sink: &ShmRingSink,
        slot: u32,
        header: &RecordHeader,
        payload: Payload,
        inline: Inline<'_>,
        wait: bool,
    ) -> Result<WriteOutcome, gst::FlowError> {
        loop {
            let Some(link) = self.link(slot) else {
                return Ok(WriteOutcome::NoReader);
            };
            match link.records.grant(payload) {
                Ok(Some(mut grant)) => {
                    inline.copy_into(&mut grant);
                    grant.commit(header);
                    let sent = link.records.wakeups_sent();
                    sink.stats().add_wakeups_sent(sent - link.wakeups_counted);
                    link.wakeups_counted = sent;
                    return Ok(WriteOutcome::Written);
                }
                Ok(None) if wait => self.wait_for_space(sink, slot, payload.inline_len())?,
                Ok(None) => return Ok(WriteOutcome::Full),
                Err(err @ RingError::Corrupt(_)) => self.drop_offender(sink, slot, &err),
                Err(err) => return Err(post_ring_error(sink, &err, payload.len())),
            }
        }
    }

    /// Sends `bytes` to the reader in `slot`: inline if they are small, else
    /// in a heap block given to that reader.
    fn send_copy(
        &mut self,
        sink: &ShmRingSink,
        slot: u32,
        header: &RecordHeader,
        bytes: &[u8],
        wait: bool,
    ) -> Result<WriteOutcome, gst::FlowError> {
        let len = bytes.len() as u64;
        let inline = Inline::Bytes(bytes);
        if bytes.len() <= INLINE_MAX {
            return self.write_record(sink, slot, header, Payload::Inline { len }, inline, wait);
        }
        let Some(heap) = self.link(slot).map(|link| link.heap.clone()) else {
            return Ok(WriteOutcome::NoReader);
        };
        let unlock = sink.unlock_notifier()?;
        let offset = match self.allocate_block(sink, &heap, len, ring::reader(slot), &unlock)? {
            BlockFor::Block(offset) => offset,
            BlockFor::Inline => {
                return self.write_record(sink, slot, header, Payload::Inline { len }, inline, wait);
            }
            // Caps and events are never lost: they wait in the backlog.
            BlockFor::Lost => return Ok(WriteOutcome::Full),
        };
        // SAFETY: the block was just allocated for this reader, which has
        // not been told of it yet, and nothing else maps it writable.
        if let Some(block) = unsafe { heap.memory().block_mut(offset, len) } {
            ring::copy_slice(block, bytes);
        }
        self.send_block(sink, slot, &heap, header, offset, len, wait)
    }

    /// A block of `len` bytes held by `holders`, waiting for readers to give
    /// blocks back if none is free (never in `drop` mode). A wait that
    /// `unlock` interrupts for a pause goes on once the sink plays again.
    fn allocate_block(
        &self,
        sink: &ShmRingSink,
        heap: &SinkHeap,
        len: u64,
        holders: ring::Holders,
        unlock: &Notifier,
    ) -> Result<BlockFor, gst::FlowError> {
        check_heap_holds(sink, heap, len)?;
        let queue = self.links.iter().map(|link| link.records.capacity()).min().unwrap_or(0);
        let fits_inline = ring::layout::record_size(len).is_some_and(|size| size <= queue);
        let drop_mode = self.drop_mode == Some(true);
        // A payload that fits every reader's record queue goes there rather
        // than wait for readers' downstreams to let go of blocks.
        let patience = match (drop_mode, fits_inline) {
            (true, _) => Patience::None,
            (false, true) => Patience::Leases(Duration::ZERO),
            (false, false) => Patience::Leases(LEASE_WAIT),
        };
        loop {
            match heap.allocate(len, holders, unlock, patience) {
                Ok(Allocation::Block(offset)) => return Ok(BlockFor::Block(offset)),
                Ok(Allocation::Interrupted) => sink.resume_after_unlock()?,
                Ok(Allocation::Exhausted) => break,
                Err(err) => return Err(post_ring_error(sink, &err, len)),
            }
        }
        // Every block is held here or downstream of a reader, which may keep
        // its buffers until it gets more: waiting could wait forever. A
        // payload that fits every reader's record queue goes inline instead.
        if fits_inline {
            gst::debug!(CAT, imp = sink, "no free block; {len} bytes go inline");
            return Ok(BlockFor::Inline);
        }
        // A reader that holds blocks lags, and in `drop` mode loses.
        if drop_mode && heap.bytes_held_by_readers() > 0 {
            gst::debug!(
                CAT,
                imp = sink,
                "no free block; {len} bytes are lost for lagging readers"
            );
            return Ok(BlockFor::Lost);
        }
        let waited = if drop_mode { Duration::ZERO } else { LEASE_WAIT };
        gst::element_imp_error!(
            sink,
            gst::ResourceError::NoSpaceLeft,
            [
                "No block of the {}-byte heap is free for a buffer of {len} bytes, and none came back within {waited:?}: upstream and the readers' downstream hold them all. Raise ring-size",
                heap.size()
            ]
        );
        Err(gst::FlowError::Error)
    }

    /// Sends a record naming a block the reader in `slot` already holds.
    /// If the record cannot be sent, the reader's hold is dropped.
    #[allow(clippy::too_many_arguments)]
    fn send_block(
        &mut self,
        sink: &ShmRingSink,
        slot: u32,
        heap: &SinkHeap,
        header: &RecordHeader,
        offset: u64,
        len: u64,
        wait: bool,
    ) -> Result<WriteOutcome, gst::FlowError> {
        // A reader shut out while we waited for the block is sent nothing
        // more; its hold on this block goes below.
        if heap.evicted(slot) {
            self.unlink(sink, slot, Unlink::Dropped);
        }
        let written = self.write_record(
            sink,
            slot,
            header,
            Payload::Block { offset, len },
            Inline::Bytes(&[]),
            wait,
        );
        if let Ok(WriteOutcome::Written) = &written
            && let Some(link) = self.link(slot)
        {
            heap.sent(slot, link.records.position());
            return written;
        }
        // Not sent, or the reader left: its hold goes. A reader that left
        // had its holds dropped with its link.
        if heap.holds_for(offset, slot) {
            heap.release(offset, ring::reader(slot));
        }
        written
    }

    /// Sends a caps, event or layout record to the reader in `slot`, in
    /// order with its others. In `drop` mode it never waits: a record that
    /// does not fit is kept in the reader's backlog, and a reader whose
    /// backlog overflows is let go.
    pub(super) fn send_control(
        &mut self,
        sink: &ShmRingSink,
        slot: u32,
        header: &RecordHeader,
        bytes: &[u8],
        drop_mode: bool,
    ) -> Result<(), gst::FlowError> {
        if !drop_mode {
            self.send_copy(sink, slot, header, bytes, true)?;
            return Ok(());
        }
        if self.flush_backlog(sink, slot, false)?
            && self.send_copy(sink, slot, header, bytes, false)? != WriteOutcome::Full
        {
            return Ok(());
        }
        let Some(link) = self.link(slot) else {
            return Ok(());
        };
        link.backlog.push_back((*header, bytes.to_vec()));
        if link.backlog.len() > MAX_BACKLOG {
            gst::element_imp_warning!(
                sink,
                gst::ResourceError::Write,
                ["Reader {slot} has not read for {MAX_BACKLOG} events; letting it go"]
            );
            self.unlink(sink, slot, Unlink::Dropped);
        }
        Ok(())
    }

    /// Sends the backlog of the reader in `slot`, oldest first, while it
    /// fits (or, with `wait`, all of it). Returns whether it is empty now.
    fn flush_backlog(&mut self, sink: &ShmRingSink, slot: u32, wait: bool) -> Result<bool, gst::FlowError> {
        loop {
            let Some((header, bytes)) = self.link(slot).and_then(|link| link.backlog.pop_front()) else {
                return Ok(true);
            };
            if self.send_copy(sink, slot, &header, &bytes, wait)? == WriteOutcome::Full {
                if let Some(link) = self.link(slot) {
                    link.backlog.push_front((header, bytes));
                }
                return Ok(false);
            }
        }
    }

    /// The reader in `slot` does not get this buffer (`drop` mode): it is
    /// counted, the reader is told before its next buffer, and it resumes at
    /// a buffer that is not a delta unit.
    fn lose(&mut self, sink: &ShmRingSink, slot: u32) {
        if let Some(link) = self.link(slot) {
            link.lost += 1;
            link.needs_keyframe = true;
            sink.stats().lost(1);
        }
    }

    /// Before the next buffer of a reader that lost buffers: a Lost record
    /// with how many. Returns whether the buffer may follow (and then must
    /// carry DISCONT), or `None` if the record did not fit.
    fn announce_loss(&mut self, sink: &ShmRingSink, slot: u32, wait: bool) -> Result<Option<bool>, gst::FlowError> {
        let lost = match self.link(slot) {
            Some(link) => link.lost,
            None => return Ok(None),
        };
        if lost == 0 {
            return Ok(Some(false));
        }
        let payload = codec::encode_lost(lost);
        let header = RecordHeader::untimed(RecordKind::Lost, 0);
        let len = payload.len() as u64;
        match self.write_record(
            sink,
            slot,
            &header,
            Payload::Inline { len },
            Inline::Bytes(&payload),
            wait,
        )? {
            WriteOutcome::Written => {
                if let Some(link) = self.link(slot) {
                    gst::debug!(CAT, imp = sink, "reader {slot} lost {lost} buffers");
                    link.lost = 0;
                }
                Ok(Some(true))
            }
            WriteOutcome::NoReader | WriteOutcome::Full => Ok(None),
        }
    }

    /// Sleeps until a record with `inline_len` bytes of inline payload fits
    /// the queue of the reader in `slot`, that reader leaves (its link is
    /// dropped), or the sink is unlocked. Readers that connect meanwhile
    /// are accepted, to be linked at the next buffer.
    fn wait_for_space(&mut self, sink: &ShmRingSink, slot: u32, inline_len: u64) -> Result<(), gst::FlowError> {
        let Some(link) = self.link(slot) else {
            return Ok(());
        };
        match link.records.prepare_wait(inline_len) {
            Ok(false) => return Ok(()),
            Ok(true) => sink.stats().blocked_full(),
            Err(err @ RingError::Corrupt(_)) => {
                self.drop_offender(sink, slot, &err);
                return Ok(());
            }
            Err(err) => return Err(post_ring_error(sink, &err, inline_len)),
        }
        let ready = link.waiter.wait();
        link.records.finish_edge_wait();
        let ready = ready.map_err(|err| post_ipc_error(sink, &err))?;
        if ready[0] {
            sink.stats().woken();
        }
        if ready[2] {
            // Paused: back to the caller's loop, which tries again.
            return sink.resume_after_unlock();
        }
        if ready[1] {
            gst::element_imp_warning!(sink, gst::ResourceError::Write, ["Reader {slot} disconnected"]);
            self.unlink(sink, slot, Unlink::HungUp);
            return Ok(());
        }
        if link.records.reader_detached() {
            gst::info!(CAT, imp = sink, "reader {slot} detached while the writer waited for it");
            self.unlink(sink, slot, Unlink::Detached);
            return Ok(());
        }
        if ready[3] {
            self.accept_waiting(sink)?;
        }
        Ok(())
    }
}

/// A buffer that travels inline and not by its fd.
fn is_steady_buffer(fd_check: &mut super::fds::FdCheck, buffer: &gst::BufferRef, len: usize) -> bool {
    len <= INLINE_MAX && !fd_check.may_cross_by_fd(buffer)
}

/// Copies a buffer's memories, each mapped in turn, into `block` (as long
/// as the buffer) through [`ring::copy_slice`], which steers around a slow
/// path of `memcpy` that `gst_buffer_extract` would take.
fn copy_buffer(buffer: &gst::BufferRef, block: &mut [u8]) {
    let mut at = 0;
    for memory in buffer.iter_memories() {
        let Ok(map) = memory.map_readable() else {
            return;
        };
        let Some(dest) = block.get_mut(at..at + map.len()) else {
            return;
        };
        ring::copy_slice(dest, &map);
        at += map.len();
    }
}

/// An error, naming the `ring-size` to set, if a payload of `len` bytes
/// can never fit in the heap.
fn check_heap_holds(sink: &ShmRingSink, heap: &SinkHeap, len: u64) -> Result<(), gst::FlowError> {
    if !heap.can_ever_hold(len) {
        gst::element_imp_error!(
            sink,
            gst::ResourceError::NoSpaceLeft,
            [
                "A buffer of {len} bytes does not fit in the heap of {} bytes; raise ring-size to at least {}",
                heap.size(),
                len.next_multiple_of(4096)
            ]
        );
        return Err(gst::FlowError::Error);
    }
    Ok(())
}

/// Where a payload that needs a block goes.
enum BlockFor {
    Block(u64),
    /// No block will come back in time, and the payload fits every
    /// reader's record queue: it travels there.
    Inline,
    /// `drop` mode, no block free, and readers hold some: the lagging
    /// readers lose the buffer.
    Lost,
}

/// What became of a record meant for one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteOutcome {
    Written,
    /// The reader is gone (or there is none): the record is dropped.
    NoReader,
    /// The reader's queue is full and the write was not to wait.
    Full,
}

/// Where a record's inline payload comes from. The record queue is memory a
/// hostile reader can write, so the payload is copied into it from private
/// bytes rather than written through a slice of it.
#[derive(Clone, Copy)]
pub(super) enum Inline<'a> {
    Bytes(&'a [u8]),
    /// A buffer's memories, each mapped in turn: no merged copy first.
    Buffer(&'a gst::BufferRef),
}

impl Inline<'_> {
    fn copy_into(self, grant: &mut WriteGrant<'_>) {
        match self {
            Inline::Bytes(bytes) => {
                grant.write_inline(0, bytes);
            }
            Inline::Buffer(buffer) => {
                let mut at = 0;
                for memory in buffer.iter_memories() {
                    let Ok(map) = memory.map_readable() else {
                        return;
                    };
                    if !grant.write_inline(at, &map) {
                        return;
                    }
                    at += map.len() as u64;
                }
            }
        }
    }
}
