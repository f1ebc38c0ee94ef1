use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use crate::codec::{self, VideoLayout};
use crate::ipc::{self, Connection, IpcError, Listener, Trigger, Waiter};
use crate::ring::layout::{MAX_HEAP_SIZE, MAX_RELEASE_SLOTS};
use crate::ring::{self, ChannelSizes, Notifier, Payload, Producer, RecordHeader, RecordKind, RingError};
use crate::stats::Stats;
use crate::unlock::Unlock;

use super::heap::{Allocation, BlockMemory, LEASE_WAIT, SinkHeap};
use super::pool::{HeapAllocator, HeapBufferPool, INLINE_MAX};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsink",
        gst::DebugColorFlags::empty(),
        Some("Shared-memory ring sink"),
    )
});

const DEFAULT_RING_SIZE: u64 = 0;
const DEFAULT_WAIT_FOR_CONNECTION: bool = true;
const DEFAULT_PERMS: u32 = 0o600;
/// Automatic heap sizes. The heap hands out its most recently freed block
/// first, so only the blocks in flight are ever touched and its size costs
/// no speed: it is sized for readers and upstream elements that keep many
/// buffers. Raw video gets this many frames, and at least `AUTO_VIDEO_MIN`.
const AUTO_VIDEO_FRAMES: u64 = 16;
const AUTO_VIDEO_MIN: u64 = 16 << 20;
/// Raw audio gets 1/this of a second, and at least `AUTO_AUDIO_MIN`. Small
/// audio buffers travel inline in the record queue and need no heap.
const AUTO_AUDIO_FRACTION: u64 = 2;
const AUTO_AUDIO_MIN: u64 = 1 << 20;
const AUTO_OTHER_SIZE: u64 = 32 << 20;
/// The record queue: headers, events and inline payloads. Small, so that
/// it stays in the cache while it cycles.
const RECORD_QUEUE_SIZE: u64 = 256 << 10;
/// Raw audio travels inline, so its record queue is what a writer running
/// ahead of its reader can fill: kept short, for latency, as an audio
/// device's buffer is.
const AUDIO_RECORD_QUEUE_SIZE: u64 = 64 << 10;
/// How often, in buffers, a linked sink turns away readers that connected
/// meanwhile. This version serves one reader; the others get a clear "busy"
/// instead of waiting forever, for one accept() per this many buffers.
const REFUSAL_INTERVAL: u32 = 256;
/// Connections kept waiting for their hello; beyond this the oldest goes.
const MAX_PENDING_READERS: usize = 8;
/// How often rendering looks at the linked reader's socket for a hang-up.
/// A reader killed while the ring has room tells nobody; without this look
/// its blocks would stay taken, and new readers be turned away as "busy",
/// until the heap or the record queue ran out, which with a large heap
/// takes thousands of buffers.
const HANG_UP_CHECK_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<PathBuf>,
    ring_size: u64,
    wait_for_connection: bool,
    perms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket_path: None,
            ring_size: DEFAULT_RING_SIZE,
            wait_for_connection: DEFAULT_WAIT_FOR_CONNECTION,
            perms: DEFAULT_PERMS,
        }
    }
}

/// A connected reader and the record queue it reads. Its release queue
/// lives in the heap, which any thread may free blocks into.
struct Link {
    connection: Connection,
    records: Producer,
    /// The heap the reader was handed.
    heap: Arc<SinkHeap>,
    slot: u32,
    /// Sleeps on the record queue's space fd, the socket, the unlock fd and
    /// the listener (to turn away extra readers).
    waiter: Waiter<4>,
    /// The video layout the reader was last told of.
    layout: VideoLayout,
}

#[derive(Default)]
struct State {
    listener: Option<Listener>,
    link: Option<Link>,
    /// Buffers rendered since extra readers were last turned away.
    renders_since_refusal: u32,
    /// Rendering failed: nothing more, EOS included, goes to a reader.
    failed: bool,
    /// Accepted connections whose hello has not arrived yet.
    pending: Vec<Connection>,
    /// When rendering next looks for the linked reader's hang-up.
    next_hang_up_check: Option<Instant>,
}

#[derive(Default)]
pub struct ShmRingSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// The payload heap, made when it is first needed. Apart from `state`:
    /// upstream allocates from it while render holds the state lock.
    heap: Mutex<Option<Arc<SinkHeap>>>,
    /// Whether a reader is linked, for upstream's threads, which must not
    /// wait for the state lock that render holds while it waits.
    linked: AtomicBool,
    /// Written by `unlock` to interrupt a wait; separate from `state` so that
    /// it can be reached while `render` holds the state lock.
    unlock: Unlock,
    stats: Stats,
}

/// Why a write did not happen.
enum WriteOutcome {
    Written,
    /// No reader, and `wait-for-connection` is off: the record is dropped.
    NoReader,
}

impl ShmRingSink {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Read on every buffer, so without cloning the settings.
    fn wait_for_connection(&self) -> bool {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .wait_for_connection
    }

    /// The size of a new heap: `ring-size`, or sized from the caps.
    fn heap_size(&self, settings: &Settings) -> u64 {
        let page = 4096;
        let size = if settings.ring_size != 0 {
            settings.ring_size
        } else {
            let caps = self.obj().static_pad("sink").and_then(|pad| pad.current_caps());
            let video = caps
                .as_ref()
                .and_then(|caps| gst_video::VideoInfo::from_caps(caps).ok());
            let audio = caps
                .as_ref()
                .and_then(|caps| gst_audio::AudioInfo::from_caps(caps).ok());
            match (video, audio) {
                (Some(info), _) => (info.size() as u64 * AUTO_VIDEO_FRAMES).max(AUTO_VIDEO_MIN),
                (None, Some(info)) => {
                    let bytes_per_second = u64::from(info.rate()) * u64::from(info.bpf());
                    (bytes_per_second / AUTO_AUDIO_FRACTION).max(AUTO_AUDIO_MIN)
                }
                _ => AUTO_OTHER_SIZE,
            }
        };
        size.div_ceil(page).saturating_mul(page).min(MAX_HEAP_SIZE)
    }

    /// The size of a new reader's record queue, from the caps.
    fn record_queue_size(&self) -> u64 {
        let caps = self.obj().static_pad("sink").and_then(|pad| pad.current_caps());
        let audio = caps
            .as_ref()
            .and_then(|caps| caps.structure(0))
            .is_some_and(|structure| structure.name() == "audio/x-raw");
        if audio {
            AUDIO_RECORD_QUEUE_SIZE
        } else {
            RECORD_QUEUE_SIZE
        }
    }

    /// The heap, made now if there is none yet. A heap made for earlier,
    /// smaller caps is replaced while nothing uses it: no reader is linked
    /// and no block is out.
    fn heap(&self, linked: bool) -> Result<Arc<SinkHeap>, gst::FlowError> {
        let mut slot = self.heap.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // In use: kept as it is, without looking at the caps again, which the
        // pool would otherwise do for every buffer.
        if let Some(heap) = slot.as_ref()
            && (linked || Arc::strong_count(heap) > 1)
        {
            return Ok(heap.clone());
        }
        let wanted = self.heap_size(&self.settings());
        if let Some(heap) = slot.as_ref()
            && heap.size() >= wanted
        {
            return Ok(heap.clone());
        }
        let heap = SinkHeap::create(wanted).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::OpenWrite,
                ["Could not create a heap of {wanted} bytes: {err}"]
            );
            gst::FlowError::Error
        })?;
        gst::debug!(CAT, imp = self, "heap of {wanted} bytes");
        *slot = Some(heap.clone());
        Ok(heap)
    }

    /// Makes sure a reader is linked. Accepts waiting readers and links the
    /// first that says hello; with `wait`, sleeps until one does. Returns
    /// whether one is linked. A connection that never says hello blocks
    /// nothing: it waits in `pending` while others are served.
    fn ensure_link(&self, state: &mut State, unlock: &Notifier, wait: bool) -> Result<bool, gst::FlowError> {
        if let Some(link) = &state.link {
            if link.heap.evicted(link.slot) {
                gst::info!(CAT, imp = self, "the reader was dropped; waiting for a new one");
                self.drop_link(state);
            } else if link.records.reader_detached() {
                gst::info!(CAT, imp = self, "the reader detached; waiting for a new one");
                self.depart_link(state);
            } else if self.linked_reader_hung_up(state) {
                gst::info!(CAT, imp = self, "the reader went away; waiting for a new one");
                self.drop_link(state);
            } else {
                return Ok(true);
            }
        }
        loop {
            let listener = state.listener.as_ref().ok_or(gst::FlowError::Flushing)?;
            while let Some(connection) = listener.accept().map_err(|err| self.post_ipc_error(&err))? {
                if state.pending.len() == MAX_PENDING_READERS {
                    state.pending.remove(0);
                }
                state.pending.push(connection);
            }
            let mut index = 0;
            while index < state.pending.len() {
                match state.pending[index].recv_client_hello() {
                    Ok(None) => index += 1,
                    Ok(Some(version)) => {
                        let connection = state.pending.remove(index);
                        if self.link_reader(state, connection, version, unlock)? {
                            return Ok(true);
                        }
                    }
                    Err(err) => {
                        gst::debug!(CAT, imp = self, "dropping a would-be reader: {err}");
                        state.pending.remove(index);
                    }
                }
            }
            if !wait {
                return Ok(false);
            }
            let Some(listener) = state.listener.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            gst::debug!(CAT, imp = self, "waiting for a reader on {}", listener.path().display());
            let mut fds = vec![unlock.as_fd(), listener.as_fd()];
            fds.extend(state.pending.iter().map(|connection| connection.as_fd()));
            let ready = ipc::wait_readable_any(&fds).map_err(|err| self.post_ipc_error(&err))?;
            if ready[0] {
                return Err(gst::FlowError::Flushing);
            }
        }
    }

    /// Hands a reader that said hello a new channel onto the heap, and makes
    /// it the link. Returns `false` if the reader was refused.
    fn link_reader(
        &self,
        state: &mut State,
        connection: Connection,
        version: u32,
        unlock: &Notifier,
    ) -> Result<bool, gst::FlowError> {
        let heap = self.heap(false)?;
        let Some(slot) = heap.free_slot() else {
            gst::warning!(CAT, imp = self, "every holder slot is taken by departing readers");
            ipc::refuse_busy(&connection);
            return Ok(false);
        };
        let sizes = ChannelSizes {
            record_capacity: self.record_queue_size(),
            release_slots: (heap.size() / INLINE_MAX as u64 + 1).clamp(64, MAX_RELEASE_SLOTS),
            heap_size: heap.size(),
        };
        let channel = match ipc::answer_hello(&connection, version, sizes, heap.memory()) {
            Ok(channel) => channel,
            Err(IpcError::Ring(err)) => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::OpenWrite,
                    ["Could not create the channel: {err}"]
                );
                return Err(gst::FlowError::Error);
            }
            Err(err) => {
                gst::element_imp_warning!(self, gst::ResourceError::Read, ["Refused a reader: {err}"]);
                return Ok(false);
            }
        };
        let (records, releases) = channel.into_parts();
        let Some(listener) = state.listener.as_ref() else {
            return Err(gst::FlowError::Flushing);
        };
        let fds = [
            (records.space_fd(), Trigger::Edge),
            (connection.as_fd(), Trigger::Level),
            (unlock.as_fd(), Trigger::Level),
            (listener.as_fd(), Trigger::Level),
        ];
        let waiter = Waiter::new(fds).map_err(|err| self.post_ipc_error(&err))?;
        heap.add_reader(slot, releases, records.progress(), connection.as_fd())
            .map_err(|err| self.post_ring_error(&err, 0))?;
        gst::info!(CAT, imp = self, "reader connected; heap of {} bytes", heap.size());
        let heap = heap.clone();
        self.linked.store(true, Ordering::SeqCst);
        state.link = Some(Link {
            connection,
            records,
            heap,
            slot,
            waiter,
            layout: None,
        });
        for extra in std::mem::take(&mut state.pending) {
            ipc::refuse_busy(&extra);
        }
        self.replay_sticky_events(state)?;
        Ok(state.link.is_some())
    }

    /// Stops sending to a reader that let go of its channel; the blocks
    /// its downstream still uses come back as it lets go of them.
    fn depart_link(&self, state: &mut State) {
        if let Some(link) = state.link.take() {
            self.linked.store(false, Ordering::SeqCst);
            link.heap.depart_reader(link.slot);
        }
    }

    /// Forgets the linked reader and takes back every block it held: its
    /// process is gone, or this sink stops or failed.
    fn drop_link(&self, state: &mut State) {
        if let Some(link) = state.link.take()
            && let Some(heap) = self
                .heap
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
        {
            heap.remove_reader(link.slot);
        }
    }

    /// Whether the linked reader's socket hung up: its process is gone.
    /// Looks at most once per `HANG_UP_CHECK_INTERVAL`, for the cost of a
    /// system call; clearing `next_hang_up_check` makes it look now.
    fn linked_reader_hung_up(&self, state: &mut State) -> bool {
        let Some(link) = state.link.as_ref() else {
            return false;
        };
        let now = Instant::now();
        if state.next_hang_up_check.is_some_and(|next| now < next) {
            return false;
        }
        state.next_hang_up_check = Some(now + HANG_UP_CHECK_INTERVAL);
        link.connection.peer_gone()
    }

    /// Answers "busy" to every reader waiting in the listen queue, unless
    /// the linked reader is gone: the first of them is then the next one.
    fn refuse_extra_readers(&self, state: &mut State) {
        state.renders_since_refusal = 0;
        state.next_hang_up_check = None;
        if self.linked_reader_hung_up(state) {
            gst::info!(CAT, imp = self, "the reader went away; serving the next one");
            self.drop_link(state);
            return;
        }
        let Some(listener) = state.listener.as_ref() else {
            return;
        };
        while let Ok(Some(connection)) = listener.accept() {
            gst::warning!(CAT, imp = self, "refusing a second reader: this sink already has one");
            ipc::refuse_busy(&connection);
        }
    }

    /// A new reader first gets the stream's sticky events (stream-start,
    /// caps, segment, tags), so that it can start anywhere in the stream.
    fn replay_sticky_events(&self, state: &mut State) -> Result<(), gst::FlowError> {
        let Some(pad) = self.obj().static_pad("sink") else {
            return Ok(());
        };
        let mut events = Vec::new();
        pad.sticky_events_foreach(|event| {
            if event.type_() != gst::EventType::Eos {
                events.push(event.clone());
            }
            std::ops::ControlFlow::Continue(gst::EventForeachAction::Keep)
        });
        for event in events {
            if let Some((header, payload)) = codec::encode_event(&event) {
                self.send_copy(state, &header, payload.len(), |dest| dest.copy_from_slice(&payload))?;
            }
        }
        Ok(())
    }

    /// Writes one record into the linked reader's queue, sleeping while the
    /// queue is full. If the reader goes away, the record is dropped with it.
    fn write_record(
        &self,
        state: &mut State,
        header: &RecordHeader,
        payload: Payload,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<WriteOutcome, gst::FlowError> {
        loop {
            let Some(link) = state.link.as_mut() else {
                return Ok(WriteOutcome::NoReader);
            };
            match link.records.grant(payload) {
                Ok(Some(mut grant)) => {
                    fill(grant.payload());
                    grant.commit(header);
                    self.stats.set_wakeups_sent(link.records.wakeups_sent());
                    return Ok(WriteOutcome::Written);
                }
                Ok(None) => self.wait_for_space(state, payload.inline_len())?,
                Err(err) => return Err(self.post_ring_error(&err, payload.len())),
            }
        }
    }

    /// Sends `len` bytes that `fill` writes: inline if they are small, else
    /// in a heap block given to the reader.
    fn send_copy(
        &self,
        state: &mut State,
        header: &RecordHeader,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<WriteOutcome, gst::FlowError> {
        if len <= INLINE_MAX {
            return self.write_record(state, header, Payload::Inline { len: len as u64 }, fill);
        }
        let Some((slot, heap)) = state.link.as_ref().map(|link| (link.slot, link.heap.clone())) else {
            return Ok(WriteOutcome::NoReader);
        };
        let len = len as u64;
        if !heap.can_ever_hold(len) {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                [
                    "A buffer of {len} bytes does not fit in the heap of {} bytes; raise ring-size to at least {}",
                    heap.size(),
                    len.next_multiple_of(4096)
                ]
            );
            return Err(gst::FlowError::Error);
        }
        let unlock = self.unlock.notifier()?;
        let queue = state.link.as_ref().map_or(0, |link| link.records.capacity());
        let fits_inline = ring::layout::record_size(len).is_some_and(|size| size <= queue);
        // A payload that fits in the record queue goes there rather than
        // wait for the reader's downstream to let go of blocks.
        let lease_wait = if fits_inline { Duration::ZERO } else { LEASE_WAIT };
        let offset = match heap.allocate(len, ring::reader(slot), &unlock, lease_wait) {
            Ok(Allocation::Block(offset)) => offset,
            Ok(Allocation::Interrupted) => return Err(gst::FlowError::Flushing),
            Ok(Allocation::Exhausted) => {
                // Every block is held here or downstream of the reader, which
                // may keep its buffers until it gets more: waiting longer
                // could wait forever.
                if fits_inline {
                    gst::debug!(CAT, imp = self, "no free block; {len} bytes go inline");
                    return self.write_record(state, header, Payload::Inline { len }, fill);
                }
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    [
                        "No block of the {}-byte heap is free for a buffer of {len} bytes, and none came back within {:?}: upstream and the reader's downstream hold them all. Raise ring-size",
                        heap.size(),
                        LEASE_WAIT
                    ]
                );
                return Err(gst::FlowError::Error);
            }
            Err(err) => return Err(self.post_ring_error(&err, len)),
        };
        // SAFETY: the block was just allocated for this reader, which has
        // not been told of it yet, and nothing else maps it.
        if let Some(block) = unsafe { heap.memory().block_mut(offset, len) } {
            fill(block);
        }
        self.send_block(state, &heap, header, offset, len)
    }

    /// Sends a record naming a block the linked reader already holds. If
    /// the record cannot be sent, the reader's hold is dropped.
    fn send_block(
        &self,
        state: &mut State,
        heap: &SinkHeap,
        header: &RecordHeader,
        offset: u64,
        len: u64,
    ) -> Result<WriteOutcome, gst::FlowError> {
        let slot = state.link.as_ref().map(|link| link.slot);
        let written = self.write_record(state, header, Payload::Block { offset, len }, |_| {});
        // A reader that left had its holds dropped with its link.
        if let (Some(slot), Ok(WriteOutcome::Written)) = (slot, &written)
            && let Some(link) = state.link.as_ref().filter(|link| link.slot == slot)
        {
            heap.sent(slot, link.records.position());
            return written;
        }
        if let Some(slot) = slot
            && heap.holds_for(offset, slot)
        {
            heap.release(offset, ring::reader(slot));
        }
        written
    }

    /// Sleeps until a record with `inline_len` bytes of inline payload fits,
    /// the reader leaves (the link is dropped), or the sink is unlocked.
    fn wait_for_space(&self, state: &mut State, inline_len: u64) -> Result<(), gst::FlowError> {
        let Some(link) = state.link.as_mut() else {
            return Ok(());
        };
        match link.records.prepare_wait(inline_len) {
            Ok(false) => return Ok(()),
            Ok(true) => self.stats.blocked_full(),
            Err(err) => return Err(self.post_ring_error(&err, inline_len)),
        }
        let ready = link.waiter.wait();
        link.records.finish_edge_wait();
        let ready = ready.map_err(|err| self.post_ipc_error(&err))?;
        if ready[0] {
            self.stats.woken();
        }
        if ready[2] {
            return Err(gst::FlowError::Flushing);
        }
        if ready[1] && link.connection.peer_gone() {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                ["The reader disconnected; waiting for a new one"]
            );
            // A reader waiting in the listen queue is the next one, not
            // one to turn away.
            self.drop_link(state);
        } else if ready[3] {
            self.refuse_extra_readers(state);
        }
        Ok(())
    }

    fn post_ring_error(&self, err: &RingError, len: u64) -> gst::FlowError {
        match err {
            RingError::TooLarge { capacity, .. } => gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                ["A record of {len} bytes does not fit in the record queue of {capacity} bytes"]
            ),
            _ => gst::element_imp_error!(self, gst::ResourceError::Write, ["{err}"]),
        }
        gst::FlowError::Error
    }

    fn post_ipc_error(&self, err: &IpcError) -> gst::FlowError {
        gst::element_imp_error!(self, gst::ResourceError::OpenWrite, ["{err}"]);
        gst::FlowError::Error
    }

    /// A block of `size` bytes for upstream to fill, for the pool and the
    /// allocator; `None` when no block can be had without waiting for this
    /// process itself to let go of one. Waits interruptibly while a reader
    /// holds blocks that it will give back.
    pub(super) fn block_for_upstream(
        &self,
        size: usize,
        interrupt: &Notifier,
    ) -> Result<Option<BlockMemory>, gst::FlowError> {
        let heap = self.heap(self.linked.load(Ordering::SeqCst))?;
        let len = size as u64;
        if !heap.can_ever_hold(len) {
            return Ok(None);
        }
        // Upstream gets ordinary memory rather than wait for a lease.
        match heap.allocate(len, ring::WRITER, interrupt, Duration::ZERO) {
            Ok(Allocation::Block(offset)) => {
                gst::trace!(CAT, imp = self, "block {offset} for upstream");
                Ok(Some(BlockMemory::new(heap, offset, len)))
            }
            Ok(Allocation::Exhausted) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "every block is held in this process; ordinary memory for {size} bytes"
                );
                Ok(None)
            }
            Ok(Allocation::Interrupted) => Err(gst::FlowError::Flushing),
            Err(err) => Err(self.post_ring_error(&err, len)),
        }
    }

    /// The eventfd that `unlock` writes, for the allocator's waits.
    pub(super) fn unlock_notifier(&self) -> Result<Arc<Notifier>, gst::FlowError> {
        self.unlock.notifier()
    }

    /// The block `buffer`'s one memory is, if upstream filled a block of our
    /// heap; the linked reader then holds it too.
    fn block_in_place(&self, state: &State, buffer: &gst::Buffer) -> Option<(u64, u64)> {
        let slot = state.link.as_ref()?.slot;
        if buffer.n_memory() != 1 {
            return None;
        }
        let heap = self
            .heap
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()?;
        // Blocks the reader gave back make upstream's buffers writable again,
        // so that its pool keeps them.
        heap.collect_now();
        let memory = buffer.memory(0)?;
        let (offset, len) = {
            let map = memory.map_readable().ok()?;
            (heap.memory().offset_of(map.as_ptr())?, map.len() as u64)
        };
        heap.hold_in_place(offset, len, slot, memory).then_some((offset, len))
    }

    fn render_locked(
        &self,
        state: &mut State,
        unlock: &Notifier,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        layout: &VideoLayout,
        wait: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        state.renders_since_refusal += 1;
        if state.renders_since_refusal >= REFUSAL_INTERVAL && state.link.is_some() {
            self.refuse_extra_readers(state);
        }
        let size = buffer.size();
        loop {
            if !self.ensure_link(state, unlock, wait)? {
                gst::trace!(CAT, imp = self, "no reader; dropping {buffer:?}");
                return Ok(gst::FlowSuccess::Ok);
            }
            if state.link.as_ref().is_some_and(|link| &link.layout != layout) {
                let layout_bytes = layout.as_ref().map_or(&[][..], |bytes| &bytes[..]);
                let layout_header = RecordHeader::untimed(RecordKind::VideoLayout, 0);
                let sent = self.write_record(
                    state,
                    &layout_header,
                    Payload::Inline {
                        len: layout_bytes.len() as u64,
                    },
                    |dest| dest.copy_from_slice(layout_bytes),
                )?;
                if let (WriteOutcome::Written, Some(link)) = (sent, state.link.as_mut()) {
                    link.layout = *layout;
                }
                continue;
            }
            let in_place = if size > INLINE_MAX {
                self.block_in_place(state, buffer)
            } else {
                None
            };
            gst::trace!(CAT, imp = self, "{buffer:?} in place: {in_place:?}");
            let (outcome, copied) = match in_place {
                Some((offset, len)) => {
                    let heap = state
                        .link
                        .as_ref()
                        .map(|link| link.heap.clone())
                        .ok_or(gst::FlowError::Flushing)?;
                    (self.send_block(state, &heap, header, offset, len)?, false)
                }
                None => {
                    let outcome = self.send_copy(state, header, size, |dest| {
                        buffer.copy_to_slice(0, dest).ok();
                    })?;
                    (outcome, true)
                }
            };
            match outcome {
                WriteOutcome::Written => {
                    self.stats.buffer(size, copied);
                    return Ok(gst::FlowSuccess::Ok);
                }
                // The reader left while we waited for room: the next one
                // gets this buffer.
                WriteOutcome::NoReader if wait => continue,
                WriteOutcome::NoReader => return Ok(gst::FlowSuccess::Ok),
            }
        }
    }

    /// Writes a serialized event, or drops it if no reader is linked: a reader
    /// that links later gets the sticky ones replayed.
    fn write_event(&self, event: &gst::Event) -> Result<(), gst::FlowError> {
        let Some((header, payload)) = codec::encode_event(event) else {
            return Ok(());
        };
        let unlock = self.unlock.notifier()?;
        let mut state = self.lock_state();
        if state.failed {
            return Ok(());
        }
        // EOS waits for a reader like a buffer does, so that a stream with
        // no buffers still ends on the reader's side.
        let is_eos = event.type_() == gst::EventType::Eos;
        if is_eos && !self.ensure_link(&mut state, &unlock, self.wait_for_connection())? {
            return Ok(());
        }
        if state.link.is_none() {
            return Ok(());
        }
        self.send_copy(&mut state, &header, payload.len(), |dest| {
            dest.copy_from_slice(&payload)
        })?;
        Ok(())
    }

    /// Refuses raw caps whose frames can never fit in the heap `ring-size`
    /// asks for, before any buffer comes.
    fn check_caps_fit(&self, caps: &gst::CapsRef) -> Result<(), gst::LoggableError> {
        let ring_size = self.settings().ring_size;
        if ring_size == 0 {
            return Ok(());
        }
        let Ok(info) = gst_video::VideoInfo::from_caps(caps) else {
            return Ok(());
        };
        let frame = info.size() as u64;
        let heap = ring_size.next_multiple_of(4096);
        if frame > heap {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                [
                    "Frames of {frame} bytes ({}x{} {}) do not fit in ring-size {ring_size}; raise ring-size to at least {}",
                    info.width(),
                    info.height(),
                    info.format(),
                    frame.next_multiple_of(4096)
                ]
            );
            return Err(gst::loggable_error!(
                CAT,
                "frames of {frame} bytes do not fit in ring-size {ring_size}"
            ));
        }
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingSink {
    const NAME: &'static str = "GstShmRingSink";
    type Type = super::ShmRingSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for ShmRingSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the unix socket that shmringsrc connects to (required)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("ring-size")
                    .nick("Ring size")
                    .blurb("Bytes of shared memory for buffer payloads (the heap), rounded up to whole pages; 0 sizes it from the caps (16 frames of raw video but at least 16 MiB, 500 ms of raw audio but at least 1 MiB, 32 MiB otherwise). Only blocks in use are touched, so a large heap costs no speed")
                    .maximum(MAX_HEAP_SIZE)
                    .default_value(DEFAULT_RING_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-connection")
                    .nick("Wait for connection")
                    .blurb("Block the stream until a reader connects; if false, data is dropped while no reader is connected")
                    .default_value(DEFAULT_WAIT_FOR_CONNECTION)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("perms")
                    .nick("Permissions")
                    .blurb("File mode of the socket, which decides who may connect (default 0600, owner only)")
                    .maximum(0o777)
                    .default_value(DEFAULT_PERMS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Counters: buffers, bytes, bytes-copied, buffers-zero-copy, wakeups-sent, wakeups-received, times-blocked-full, peak-held-bytes (heap bytes held by the reader at most), held-bytes (heap bytes readers hold now: blocks sent and not yet given back)")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match pspec.name() {
            "socket-path" => {
                settings.socket_path = value.get::<Option<String>>().ok().flatten().map(PathBuf::from);
            }
            "ring-size" => settings.ring_size = value.get().unwrap_or(DEFAULT_RING_SIZE),
            "wait-for-connection" => settings.wait_for_connection = value.get().unwrap_or(DEFAULT_WAIT_FOR_CONNECTION),
            "perms" => settings.perms = value.get().unwrap_or(DEFAULT_PERMS),
            name => gst::warning!(CAT, imp = self, "no property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "socket-path" => settings.socket_path.map(|path| path.display().to_string()).to_value(),
            "ring-size" => settings.ring_size.to_value(),
            "wait-for-connection" => settings.wait_for_connection.to_value(),
            "perms" => settings.perms.to_value(),
            "stats" => {
                let mut stats = self.stats.to_structure("application/x-shmringsink-stats", true);
                let held = self
                    .heap
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .as_ref()
                    .map_or(0, |heap| heap.bytes_held_by_readers());
                stats.set("held-bytes", held);
                stats.to_value()
            }
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Pacing belongs to the reader's sinks; the writer should hand
        // buffers over as soon as they are made.
        self.obj().set_sync(false);
        // A last sample kept here would pin a heap block for nothing.
        self.obj().set_enable_last_sample(false);
    }
}

impl GstObjectImpl for ShmRingSink {}

impl ElementImpl for ShmRingSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Shared-memory ring sink",
                "Sink/Network",
                "Writes any stream into a sealed shared-memory ring read by shmringsrc in another process",
                "gst-shmring developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let template = gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &gst::Caps::new_any(),
            );
            vec![template.expect("an ANY sink template is valid")]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for ShmRingSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let Some(path) = settings.socket_path.clone() else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["socket-path is not set; set it to the unix socket readers connect to, e.g. socket-path=/tmp/cam"]
            ));
        };
        if settings.ring_size != 0 {
            let rounded = settings.ring_size.div_ceil(4096) * 4096;
            crate::ring::check_heap_size(rounded)
                .map_err(|err| gst::error_msg!(gst::ResourceError::Settings, ["Invalid ring-size: {err}"]))?;
        }
        let listener = Listener::bind(&path, settings.perms)
            .map_err(|err| gst::error_msg!(gst::ResourceError::OpenWrite, ["{err}"]))?;
        gst::info!(CAT, imp = self, "listening on {}", path.display());
        self.unlock.start()?;
        self.lock_state().listener = Some(listener);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let mut state = self.lock_state();
        self.drop_link(&mut state);
        *state = State::default();
        drop(state);
        // Buffers still alive upstream keep their blocks, and the heap with
        // them, until they are dropped.
        *self.heap.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.unlock.stop();
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        self.check_caps_fit(caps)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let unlock = self.unlock.notifier()?;
        let wait = self.wait_for_connection();
        let header = codec::buffer_header(buffer);
        let layout = codec::video_layout(buffer);
        let mut state = self.lock_state();
        if state.failed {
            return Err(gst::FlowError::Error);
        }
        let rendered = self.render_locked(&mut state, &unlock, buffer, &header, &layout, wait);
        if let Err(gst::FlowError::Error) = rendered {
            // Close the connection without EOS, so that the reader reports
            // that the writer failed instead of ending as if it had finished.
            state.failed = true;
            self.drop_link(&mut state);
        }
        if buffer.size() > INLINE_MAX
            && let Some(heap) = self
                .heap
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
        {
            self.stats.held(heap.bytes_held_by_readers());
        }
        rendered
    }

    fn event(&self, event: gst::Event) -> bool {
        let crosses = event.is_serialized() && event.type_() != gst::EventType::FlushStop;
        if crosses && self.write_event(&event).is_err() {
            return false;
        }
        self.parent_event(event)
    }

    fn propose_allocation(&self, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        // Any caps: an allocator whose memory is a block of the heap, so
        // that a buffer upstream fills crosses without a copy.
        let allocator = HeapAllocator::new(&self.obj());
        query.add_allocation_param(Some(&allocator), gst::AllocationParams::default());
        // Raw video also gets a pool of such buffers, with its video meta.
        let (caps, need_pool) = query.get_owned();
        let info = caps
            .as_ref()
            .and_then(|caps| gst_video::VideoInfo::from_caps(caps).ok());
        if let (Some(caps), Some(info), true) = (caps, info, need_pool) {
            let pool = HeapBufferPool::new(&self.obj());
            let mut config = pool.config();
            let size = info.size() as u32;
            config.set_params(Some(&caps), size, 0, 0);
            config.set_allocator(Some(&allocator), None);
            pool.set_config(config)
                .map_err(|err| gst::loggable_error!(CAT, "could not configure the heap pool: {err}"))?;
            query.add_allocation_pool(Some(&pool), size, 0, 0);
        }
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.unlock.unlock();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.unlock.unlock_stop();
        Ok(())
    }
}
