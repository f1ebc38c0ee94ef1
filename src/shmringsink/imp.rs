use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use crate::address::Address;
use crate::codec::{self, VideoLayout};
use crate::ipc::{self, Connection, IpcError, Listener, Trigger, Waiter};
use crate::metas;
use crate::ring::layout::{MAX_HEAP_SIZE, MAX_RELEASE_SLOTS};
use crate::ring::{self, ChannelSizes, Notifier, Payload, Producer, RecordHeader, RecordKind, RingError, WriteGrant};
use crate::stats::Stats;
use crate::timeline::Timeline;
use crate::unlock::Unlock;

use super::heap::{Allocation, BlockMemory, Holds, LEASE_WAIT, Patience, SinkHeap};
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
/// No bound in time on how far a reader may fall behind: the queue's size
/// bounds it.
const DEFAULT_RING_TIME_US: u64 = 0;
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
/// How often a sink that has readers looks for new ones: an `accept` per
/// buffer would be a system call per buffer, which the rings avoid.
const ACCEPT_INTERVAL: Duration = Duration::from_millis(10);
/// How often rendering looks at the linked readers' sockets for a hang-up.
/// A reader killed while its queue has room tells nobody; without this look
/// its blocks would stay taken, and its slot used, until its queue or the
/// heap ran out, which with a large heap takes thousands of buffers.
const HANG_UP_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Connections kept waiting for their hello; beyond this the oldest goes.
const MAX_PENDING_READERS: usize = 8;
const DEFAULT_MAX_READERS: u32 = 8;
/// Caps, events and layouts kept for a reader that lags in `drop` mode.
/// A reader that falls this far behind on them no longer reads at all: it
/// is let go.
const MAX_BACKLOG: usize = 256;

/// What the writer does when a reader falls behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstShmRingWhenFull")]
pub enum WhenFull {
    #[default]
    #[enum_value(
        name = "Auto: drop if upstream is live (it cannot wait), block otherwise",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Block: lossless, the slowest reader paces the writer", nick = "block")]
    Block = 1,
    #[enum_value(
        name = "Drop: never wait for a reader; one that lags loses buffers and gets a DISCONT",
        nick = "drop"
    )]
    Drop = 2,
}

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<PathBuf>,
    stream: Option<String>,
    ring_size: u64,
    wait_for_connection: bool,
    perms: u32,
    max_readers: u32,
    when_full: WhenFull,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket_path: None,
            stream: None,
            ring_size: DEFAULT_RING_SIZE,
            wait_for_connection: DEFAULT_WAIT_FOR_CONNECTION,
            perms: DEFAULT_PERMS,
            max_readers: DEFAULT_MAX_READERS,
            when_full: WhenFull::default(),
        }
    }
}

/// A connected reader and the record queue it reads. Its release queue
/// lives in the heap, which any thread may free blocks into.
struct Link {
    connection: Connection,
    records: Producer,
    /// The heap the reader was handed: the sink's one heap, shared by all
    /// its readers.
    heap: Arc<SinkHeap>,
    /// The reader's holder slot in the heap's books; also its name here.
    slot: u32,
    /// Sleeps on the record queue's space fd, the socket, the unlock fd and
    /// the listener (to take in new readers).
    waiter: Waiter<4>,
    /// The video layout the reader was last told of.
    layout: VideoLayout,
    /// The next buffer this reader gets must not be a delta unit: it just
    /// joined, or it lost buffers. Raw media has no delta units, so it
    /// starts at once.
    needs_keyframe: bool,
    /// Buffers dropped for this reader (`drop` mode) that it has not yet
    /// been told of; the next buffer it gets follows a Lost record.
    lost: u64,
    /// Caps, events and layouts that did not fit while it lagged (`drop`
    /// mode), oldest first: they go before anything else it gets.
    backlog: VecDeque<(RecordHeader, Vec<u8>)>,
    /// Its wake-ups already counted in the stats.
    wakeups_counted: u64,
    /// The `timeline_epoch` whose timeline this reader was sent.
    timeline_sent: Option<u32>,
}

#[derive(Default)]
struct State {
    listener: Option<Listener>,
    /// One per connected reader, in the order they joined.
    links: Vec<Link>,
    /// When the listener was last looked at.
    last_accept: Option<Instant>,
    /// When rendering next looks for the linked readers' hang-ups.
    next_hang_up_check: Option<Instant>,
    /// Rendering failed: nothing more, EOS included, goes to a reader.
    failed: bool,
    /// Accepted connections whose hello has not arrived yet.
    pending: Vec<Connection>,
    /// Whether a lagging reader loses buffers instead of pacing the
    /// writer: `when-full`, with `auto` decided once per run.
    drop_mode: Option<bool>,
    /// The Metas record of the buffer being rendered; empty if it has none.
    metas: Vec<u8>,
}

impl State {
    fn link(&mut self, slot: u32) -> Option<&mut Link> {
        self.links.iter_mut().find(|link| link.slot == slot)
    }

    fn slots(&self) -> SlotList {
        let mut slots = SlotList::default();
        for link in &self.links {
            slots.push(link.slot);
        }
        slots
    }
}

/// Reader slots, in order, kept without allocating: render makes a few such
/// lists per buffer.
#[derive(Clone, Copy, Default)]
struct SlotList {
    slots: [u32; ring::MAX_READERS as usize],
    len: usize,
}

impl SlotList {
    fn push(&mut self, slot: u32) {
        if let Some(free) = self.slots.get_mut(self.len) {
            *free = slot;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for SlotList {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        &self.slots[..self.len]
    }
}

impl<'a> IntoIterator for &'a SlotList {
    type Item = &'a u32;
    type IntoIter = std::slice::Iter<'a, u32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for SlotList {
    type Item = u32;
    type IntoIter = std::iter::Take<std::array::IntoIter<u32, { ring::MAX_READERS as usize }>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().take(self.len)
    }
}

/// The element.
///
/// Locks, in the order they may be taken: `state`, then `settings` or
/// `heap`, then a heap's books (`heap.rs`). Only `state` is ever held while
/// calling into GStreamer (posting a message, querying a pad, waiting for
/// preroll), because no property getter takes it: the streaming thread
/// holds it while it waits. `settings` and `heap` are taken by the getters,
/// and the books by the `stats` getter through the heap, so they are held
/// only for a few instructions, never across a call into GStreamer other
/// than a debug log.
#[derive(Default)]
pub struct ShmRingSink {
    settings: Mutex<Settings>,
    /// `ring-time`, in µs: apart from `settings`, since render reads it for
    /// every buffer.
    ring_time_us: AtomicU64,
    /// Counts the base times this element was given (one per PAUSED to
    /// PLAYING), so that render, which sends each reader the timeline of the
    /// current one, need not take the object lock to read it per buffer.
    timeline_epoch: AtomicU32,
    state: Mutex<State>,
    /// The payload heap, made when it is first needed. Apart from `state`:
    /// upstream allocates from it while render holds the state lock.
    heap: Mutex<Option<Arc<SinkHeap>>>,
    /// How many readers are linked, for upstream's threads, which must not
    /// wait for the state lock that render holds while it waits, and for
    /// the `readers` property.
    linked: AtomicU32,
    /// Whether this run is in `drop` mode, for upstream's threads, which
    /// must not wait for the state lock; false until render decides.
    drop_mode_decided: AtomicBool,
    /// Written by `unlock` to interrupt a wait; separate from `state` so that
    /// it can be reached while `render` holds the state lock.
    unlock: Unlock,
    stats: Stats,
    metas: metas::Outgoing,
}

/// The video info of raw video caps. Other caps are not parsed, since the
/// parser logs an error for them.
pub(super) fn raw_video_info(caps: &gst::CapsRef) -> Option<gst_video::VideoInfo> {
    let structure = caps.structure(0)?;
    if structure.name() != "video/x-raw" {
        return None;
    }
    gst_video::VideoInfo::from_caps(caps).ok()
}

/// Why a linked reader is sent nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unlink {
    /// Its socket hung up: its process is gone, mappings and all.
    HungUp,
    /// It let go of its channel itself (EOS, NULL); buffers of its
    /// downstream may still use blocks.
    Detached,
    /// This writer lets it go while it may still run: it lagged too far,
    /// broke the protocol, or this writer stops or failed.
    Dropped,
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
enum WriteOutcome {
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
enum Inline<'a> {
    Bytes(&'a [u8]),
    /// A buffer's memories, each mapped in turn: no merged copy first.
    Buffer(&'a gst::Buffer),
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

    /// Whether a lagging reader loses buffers (`when-full`). `auto` asks
    /// upstream once per run whether it is live: a live source cannot wait
    /// for the slowest reader without losing data anyway, and should not
    /// stall the others.
    fn drop_mode(&self, state: &mut State) -> bool {
        if let Some(drop_mode) = state.drop_mode {
            return drop_mode;
        }
        let when_full = self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .when_full;
        let drop_mode = match when_full {
            WhenFull::Block => false,
            WhenFull::Drop => true,
            WhenFull::Auto => {
                let mut query = gst::query::Latency::new();
                let answered = self
                    .obj()
                    .static_pad("sink")
                    .is_some_and(|pad| pad.peer_query(&mut query));
                answered && query.result().0
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "when-full {when_full:?}: lagging readers {}",
            if drop_mode { "lose buffers" } else { "pace the writer" }
        );
        state.drop_mode = Some(drop_mode);
        self.drop_mode_decided.store(drop_mode, Ordering::Relaxed);
        drop_mode
    }

    /// The size of a new heap: `ring-size`, or sized from the caps.
    fn heap_size(&self, settings: &Settings) -> u64 {
        let page = 4096;
        let size = if settings.ring_size != 0 {
            settings.ring_size
        } else {
            let caps = self.obj().static_pad("sink").and_then(|pad| pad.current_caps());
            // Parsed only as what they name: the parsers log an error for
            // caps of another kind.
            let video = caps.as_deref().and_then(raw_video_info);
            let audio = caps
                .as_ref()
                .filter(|caps| caps.structure(0).is_some_and(|s| s.name() == "audio/x-raw"))
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
    ///
    /// Posts nothing, and so may be called from any thread: render turns a
    /// failure into an element error (after letting go of the heap lock,
    /// which the `stats` getter takes), while the allocator hands out
    /// ordinary memory instead, since a pipeline that can do without the
    /// heap must not fail because upstream asked for it.
    fn heap(&self, linked: bool) -> Result<Arc<SinkHeap>, (u64, RingError)> {
        let in_use = |heap: &Arc<SinkHeap>| linked || Arc::strong_count(heap) > 1;
        // In use: kept as it is, without looking at the caps again, which the
        // pool would otherwise do for every buffer.
        if let Some(heap) = self
            .heap
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            && in_use(heap)
        {
            return Ok(heap.clone());
        }
        // Sized from the caps, which asks the pad: not under the heap lock.
        let wanted = self.heap_size(&self.settings());
        let mut slot = self.heap.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(heap) = slot.as_ref()
            && (in_use(heap) || heap.size() >= wanted)
        {
            return Ok(heap.clone());
        }
        let heap = SinkHeap::create(wanted).map_err(|err| (wanted, err))?;
        gst::debug!(CAT, imp = self, "heap of {wanted} bytes");
        *slot = Some(heap.clone());
        Ok(heap)
    }

    /// The heap for the streaming thread, which cannot go on without it.
    fn heap_or_error(&self, linked: bool) -> Result<Arc<SinkHeap>, gst::FlowError> {
        self.heap(linked).map_err(|(wanted, err)| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::OpenWrite,
                ["Could not create a heap of {wanted} bytes: {err}. Lower ring-size, or check the memory and file-size limits of this process (ulimit -v, ulimit -f)"]
            );
            gst::FlowError::Error
        })
    }

    fn update_linked(&self, state: &State) {
        self.linked.store(state.links.len() as u32, Ordering::SeqCst);
    }

    /// Makes sure the readers that connected are linked: drops the links of
    /// readers that left, and takes in readers waiting to join (at most once
    /// per `ACCEPT_INTERVAL` while some are linked). With `wait`, sleeps
    /// until one is linked. Returns whether any is. A connection that never
    /// says hello blocks nothing: it waits in `pending` while others are
    /// served.
    fn admit_readers(&self, state: &mut State, unlock: &Notifier, wait: bool) -> Result<bool, gst::FlowError> {
        self.prune_links(state);
        let due = state.links.is_empty() || state.last_accept.is_none_or(|last| last.elapsed() >= ACCEPT_INTERVAL);
        if due {
            self.accept_readers(state, unlock)?;
        }
        while state.links.is_empty() && wait {
            let Some(listener) = state.listener.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            gst::debug!(CAT, imp = self, "waiting for a reader on {}", listener.path().display());
            let mut fds = vec![unlock.as_fd(), listener.as_fd()];
            fds.extend(state.pending.iter().map(|connection| connection.as_fd()));
            let ready = ipc::wait_readable_any(&fds).map_err(|err| self.post_ipc_error(&err))?;
            drop(fds);
            if ready[0] {
                self.resume_after_unlock()?;
            }
            self.accept_readers(state, unlock)?;
        }
        Ok(!state.links.is_empty())
    }

    /// Forgets the links of readers that detached or were dropped for
    /// breaking the release protocol.
    fn prune_links(&self, state: &mut State) {
        let now = Instant::now();
        let look_for_hang_ups = state.next_hang_up_check.is_none_or(|next| now >= next);
        if look_for_hang_ups {
            state.next_hang_up_check = Some(now + HANG_UP_CHECK_INTERVAL);
        }
        let mut index = 0;
        while let Some(link) = state.links.get(index) {
            let slot = link.slot;
            if link.heap.evicted(slot) {
                gst::info!(CAT, imp = self, "reader {slot} was dropped");
                self.unlink(state, slot, Unlink::Dropped);
            } else if link.records.peer_tampered() {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    [
                        "Dropped reader {slot} ({}): it cleared O_NONBLOCK on a shared eventfd, which could block this writer",
                        link.connection.peer_description()
                    ]
                );
                self.unlink(state, slot, Unlink::Dropped);
            } else if link.records.reader_detached() {
                gst::info!(CAT, imp = self, "reader {slot} detached");
                self.unlink(state, slot, Unlink::Detached);
            } else if look_for_hang_ups && link.connection.peer_gone() {
                gst::info!(CAT, imp = self, "reader {slot} went away");
                self.unlink(state, slot, Unlink::HungUp);
            } else {
                index += 1;
            }
        }
    }

    /// Accepts the connections waiting in the listen queue, keeping them in
    /// `pending` until they say hello, without waiting for any.
    fn accept_waiting(&self, state: &mut State) -> Result<(), gst::FlowError> {
        let listener = state.listener.as_ref().ok_or(gst::FlowError::Flushing)?;
        while let Some(connection) = listener.accept().map_err(|err| self.post_ipc_error(&err))? {
            if state.pending.len() == MAX_PENDING_READERS {
                state.pending.remove(0);
            }
            state.pending.push(connection);
        }
        Ok(())
    }

    /// Accepts waiting connections and links (or refuses) every one whose
    /// hello has arrived.
    fn accept_readers(&self, state: &mut State, unlock: &Notifier) -> Result<(), gst::FlowError> {
        state.last_accept = Some(Instant::now());
        self.accept_waiting(state)?;
        let mut index = 0;
        while index < state.pending.len() {
            match state.pending[index].recv_client_hello() {
                Ok(None) => index += 1,
                Ok(Some(version)) => {
                    let connection = state.pending.remove(index);
                    self.link_reader(state, connection, version, unlock)?;
                }
                Err(err) => {
                    gst::debug!(CAT, imp = self, "dropping a would-be reader: {err}");
                    state.pending.remove(index);
                }
            }
        }
        Ok(())
    }

    /// Hands a reader that said hello a new channel onto the heap and links
    /// it, or refuses it when `max-readers` readers are linked already.
    fn link_reader(
        &self,
        state: &mut State,
        connection: Connection,
        version: u32,
        unlock: &Notifier,
    ) -> Result<(), gst::FlowError> {
        let max_readers = self.settings().max_readers;
        if state.links.len() >= max_readers as usize {
            gst::warning!(
                CAT,
                imp = self,
                "refusing a reader: {} are linked, which is max-readers",
                state.links.len()
            );
            ipc::refuse_busy(&connection, max_readers);
            return Ok(());
        }
        let heap = self.heap_or_error(!state.links.is_empty())?;
        let Some(slot) = heap.free_slot() else {
            gst::warning!(CAT, imp = self, "every holder slot is taken by departing readers");
            ipc::refuse_busy(&connection, max_readers);
            return Ok(());
        };
        let sizes = ChannelSizes {
            record_capacity: self.record_queue_size(),
            release_slots: (heap.size() / INLINE_MAX as u64 + 1).clamp(64, MAX_RELEASE_SLOTS),
            heap_size: heap.size(),
        };
        let channel = match ipc::answer_hello(&connection, version, sizes, heap.memory(), slot) {
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
                return Ok(());
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
        gst::info!(
            CAT,
            imp = self,
            "reader {slot} connected ({}; {} linked); heap of {} bytes",
            connection.peer_description(),
            state.links.len() + 1,
            heap.size()
        );
        state.links.push(Link {
            connection,
            records,
            heap,
            slot,
            waiter,
            layout: None,
            needs_keyframe: true,
            timeline_sent: None,
            lost: 0,
            backlog: VecDeque::new(),
            wakeups_counted: 0,
        });
        self.update_linked(state);
        self.replay_sticky_events(state, slot)
    }

    /// Stops sending to the reader in `slot`. Every way a reader leaves
    /// comes here, and `why` decides what becomes of the blocks it holds:
    /// they come back at once only when its process is gone. A reader that
    /// may still run keeps them until its socket hangs up, so that no block
    /// it may still read is ever written again.
    fn unlink(&self, state: &mut State, slot: u32, why: Unlink) {
        if let Some(index) = state.links.iter().position(|link| link.slot == slot) {
            let link = state.links.remove(index);
            let holds = match why {
                Unlink::HungUp => Holds::ComeBack,
                Unlink::Detached => Holds::KeptUntilHangUp,
                Unlink::Dropped => {
                    // It sees the writer leave once it has read what it
                    // was sent, as if this writer had stopped.
                    link.connection.shut_out();
                    Holds::KeptUntilHangUp
                }
            };
            link.heap.let_go(slot, holds);
        }
        self.update_linked(state);
    }

    fn unlink_all(&self, state: &mut State) {
        for slot in state.slots() {
            self.unlink(state, slot, Unlink::Dropped);
        }
    }

    /// A new reader first gets the stream's sticky events (stream-start,
    /// caps, segment, tags) as the sink's pad holds them now, so that it can
    /// start anywhere in the stream.
    fn replay_sticky_events(&self, state: &mut State, slot: u32) -> Result<(), gst::FlowError> {
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
                self.send_copy(state, slot, &header, &payload, true)?;
            }
        }
        Ok(())
    }

    /// Writes one record into the queue of the reader in `slot`. With
    /// `wait`, sleeps while the queue is full; without, reports `Full`. If
    /// the reader goes away, the record is dropped with it.
    fn write_record(
        &self,
        state: &mut State,
        slot: u32,
        header: &RecordHeader,
        payload: Payload,
        inline: Inline<'_>,
        wait: bool,
    ) -> Result<WriteOutcome, gst::FlowError> {
        loop {
            let Some(link) = state.link(slot) else {
                return Ok(WriteOutcome::NoReader);
            };
            match link.records.grant(payload) {
                Ok(Some(mut grant)) => {
                    inline.copy_into(&mut grant);
                    grant.commit(header);
                    let sent = link.records.wakeups_sent();
                    self.stats.add_wakeups_sent(sent - link.wakeups_counted);
                    link.wakeups_counted = sent;
                    return Ok(WriteOutcome::Written);
                }
                Ok(None) if wait => self.wait_for_space(state, slot, payload.inline_len())?,
                Ok(None) => return Ok(WriteOutcome::Full),
                Err(err @ RingError::Corrupt(_)) => self.drop_offender(state, slot, &err),
                Err(err) => return Err(self.post_ring_error(&err, payload.len())),
            }
        }
    }

    /// Sends `bytes` to the reader in `slot`: inline if they are small, else
    /// in a heap block given to that reader.
    fn send_copy(
        &self,
        state: &mut State,
        slot: u32,
        header: &RecordHeader,
        bytes: &[u8],
        wait: bool,
    ) -> Result<WriteOutcome, gst::FlowError> {
        let len = bytes.len() as u64;
        let inline = Inline::Bytes(bytes);
        if bytes.len() <= INLINE_MAX {
            return self.write_record(state, slot, header, Payload::Inline { len }, inline, wait);
        }
        let Some(heap) = state.link(slot).map(|link| link.heap.clone()) else {
            return Ok(WriteOutcome::NoReader);
        };
        let unlock = self.unlock.notifier()?;
        let offset = match self.allocate_block(state, &heap, len, ring::reader(slot), &unlock)? {
            BlockFor::Block(offset) => offset,
            BlockFor::Inline => {
                return self.write_record(state, slot, header, Payload::Inline { len }, inline, wait);
            }
            // Caps and events are never lost: they wait in the backlog.
            BlockFor::Lost => return Ok(WriteOutcome::Full),
        };
        // SAFETY: the block was just allocated for this reader, which has
        // not been told of it yet, and nothing else maps it writable.
        if let Some(block) = unsafe { heap.memory().block_mut(offset, len) } {
            block.copy_from_slice(bytes);
        }
        self.send_block(state, slot, &heap, header, offset, len, wait)
    }

    /// An error, naming the `ring-size` to set, if a payload of `len` bytes
    /// can never fit in the heap.
    fn check_heap_holds(&self, heap: &SinkHeap, len: u64) -> Result<(), gst::FlowError> {
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
        Ok(())
    }

    /// A block of `len` bytes held by `holders`, waiting for readers to give
    /// blocks back if none is free (never in `drop` mode). A wait that
    /// `unlock` interrupts for a pause goes on once the sink plays again.
    fn allocate_block(
        &self,
        state: &State,
        heap: &SinkHeap,
        len: u64,
        holders: ring::Holders,
        unlock: &Notifier,
    ) -> Result<BlockFor, gst::FlowError> {
        self.check_heap_holds(heap, len)?;
        let queue = state
            .links
            .iter()
            .map(|link| link.records.capacity())
            .min()
            .unwrap_or(0);
        let fits_inline = ring::layout::record_size(len).is_some_and(|size| size <= queue);
        let drop_mode = state.drop_mode == Some(true);
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
                Ok(Allocation::Interrupted) => self.resume_after_unlock()?,
                Ok(Allocation::Exhausted) => break,
                Err(err) => return Err(self.post_ring_error(&err, len)),
            }
        }
        // Every block is held here or downstream of a reader, which may keep
        // its buffers until it gets more: waiting could wait forever. A
        // payload that fits every reader's record queue goes inline instead.
        if fits_inline {
            gst::debug!(CAT, imp = self, "no free block; {len} bytes go inline");
            return Ok(BlockFor::Inline);
        }
        // A reader that holds blocks lags, and in `drop` mode loses.
        if drop_mode && heap.bytes_held_by_readers() > 0 {
            gst::debug!(
                CAT,
                imp = self,
                "no free block; {len} bytes are lost for lagging readers"
            );
            return Ok(BlockFor::Lost);
        }
        let waited = if drop_mode { Duration::ZERO } else { LEASE_WAIT };
        gst::element_imp_error!(
            self,
            gst::ResourceError::NoSpaceLeft,
            [
                "No block of the {}-byte heap is free for a buffer of {len} bytes, and none came back within {waited:?}: upstream and the readers' downstream hold them all. Raise ring-size",
                heap.size()
            ]
        );
        Err(gst::FlowError::Error)
    }

    /// A wait of the streaming thread was interrupted by `unlock`. On a flush
    /// or a stop the render ends (`Flushing`); on PLAYING to PAUSED it keeps
    /// what it renders, waits until PLAYING again, and then goes back to its
    /// wait, as GstBaseSink's own clock waits do. Only `render` and `event`
    /// call this, which GstBaseSink calls with its preroll lock held, as
    /// `wait_preroll` requires; the state lock they hold is one no property
    /// getter takes.
    fn resume_after_unlock(&self) -> Result<(), gst::FlowError> {
        gst::debug!(
            CAT,
            imp = self,
            "unlocked while waiting; waiting for PLAYING or a flush"
        );
        self.obj().wait_preroll()?;
        gst::debug!(CAT, imp = self, "playing again; back to the wait");
        Ok(())
    }

    /// Sends a record naming a block the reader in `slot` already holds.
    /// If the record cannot be sent, the reader's hold is dropped.
    #[allow(clippy::too_many_arguments)]
    fn send_block(
        &self,
        state: &mut State,
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
            self.unlink(state, slot, Unlink::Dropped);
        }
        let written = self.write_record(
            state,
            slot,
            header,
            Payload::Block { offset, len },
            Inline::Bytes(&[]),
            wait,
        );
        if let Ok(WriteOutcome::Written) = &written
            && let Some(link) = state.link(slot)
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
    fn send_control(
        &self,
        state: &mut State,
        slot: u32,
        header: &RecordHeader,
        bytes: &[u8],
        drop_mode: bool,
    ) -> Result<(), gst::FlowError> {
        if !drop_mode {
            self.send_copy(state, slot, header, bytes, true)?;
            return Ok(());
        }
        if self.flush_backlog(state, slot, false)?
            && self.send_copy(state, slot, header, bytes, false)? != WriteOutcome::Full
        {
            return Ok(());
        }
        let Some(link) = state.link(slot) else {
            return Ok(());
        };
        link.backlog.push_back((*header, bytes.to_vec()));
        if link.backlog.len() > MAX_BACKLOG {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                ["Reader {slot} has not read for {MAX_BACKLOG} events; letting it go"]
            );
            self.unlink(state, slot, Unlink::Dropped);
        }
        Ok(())
    }

    /// Sends the backlog of the reader in `slot`, oldest first, while it
    /// fits (or, with `wait`, all of it). Returns whether it is empty now.
    fn flush_backlog(&self, state: &mut State, slot: u32, wait: bool) -> Result<bool, gst::FlowError> {
        loop {
            let Some((header, bytes)) = state.link(slot).and_then(|link| link.backlog.pop_front()) else {
                return Ok(true);
            };
            if self.send_copy(state, slot, &header, &bytes, wait)? == WriteOutcome::Full {
                if let Some(link) = state.link(slot) {
                    link.backlog.push_front((header, bytes));
                }
                return Ok(false);
            }
        }
    }

    /// The reader in `slot` does not get this buffer (`drop` mode): it is
    /// counted, the reader is told before its next buffer, and it resumes at
    /// a buffer that is not a delta unit.
    fn lose(&self, state: &mut State, slot: u32) {
        if let Some(link) = state.link(slot) {
            link.lost += 1;
            link.needs_keyframe = true;
            self.stats.lost(1);
        }
    }

    /// Before the next buffer of a reader that lost buffers: a Lost record
    /// with how many. Returns whether the buffer may follow (and then must
    /// carry DISCONT), or `None` if the record did not fit.
    fn announce_loss(&self, state: &mut State, slot: u32, wait: bool) -> Result<Option<bool>, gst::FlowError> {
        let lost = match state.link(slot) {
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
            state,
            slot,
            &header,
            Payload::Inline { len },
            Inline::Bytes(&payload),
            wait,
        )? {
            WriteOutcome::Written => {
                if let Some(link) = state.link(slot) {
                    gst::debug!(CAT, imp = self, "reader {slot} lost {lost} buffers");
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
    fn wait_for_space(&self, state: &mut State, slot: u32, inline_len: u64) -> Result<(), gst::FlowError> {
        let Some(link) = state.link(slot) else {
            return Ok(());
        };
        match link.records.prepare_wait(inline_len) {
            Ok(false) => return Ok(()),
            Ok(true) => self.stats.blocked_full(),
            Err(err @ RingError::Corrupt(_)) => {
                self.drop_offender(state, slot, &err);
                return Ok(());
            }
            Err(err) => return Err(self.post_ring_error(&err, inline_len)),
        }
        let ready = link.waiter.wait();
        link.records.finish_edge_wait();
        let ready = ready.map_err(|err| self.post_ipc_error(&err))?;
        if ready[0] {
            self.stats.woken();
        }
        if ready[2] {
            // Paused: back to the caller's loop, which tries again.
            return self.resume_after_unlock();
        }
        if ready[1] && link.connection.peer_gone() {
            gst::element_imp_warning!(self, gst::ResourceError::Write, ["Reader {slot} disconnected"]);
            self.unlink(state, slot, Unlink::HungUp);
            return Ok(());
        }
        if link.records.reader_detached() {
            gst::info!(CAT, imp = self, "reader {slot} detached while the writer waited for it");
            self.unlink(state, slot, Unlink::Detached);
            return Ok(());
        }
        if ready[3] {
            self.accept_waiting(state)?;
        }
        Ok(())
    }

    /// Drops a reader that broke the record queue: only the reader stores
    /// its read position, so a position outside the queue is its fault, and
    /// the stream goes on for the next reader instead of failing.
    fn drop_offender(&self, state: &mut State, slot: u32, err: &RingError) {
        let peer = state
            .link(slot)
            .map_or_else(|| "gone".to_owned(), |link| link.connection.peer_description());
        gst::warning!(CAT, imp = self, "dropping the reader: {err}");
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Write,
            ["Dropped reader {slot} ({peer}): {err}; the stream goes on for the others"]
        );
        self.unlink(state, slot, Unlink::Dropped);
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
        let heap = match self.heap(self.linked.load(Ordering::SeqCst) > 0) {
            Ok(heap) => heap,
            Err((wanted, err)) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "no heap of {wanted} bytes ({err}); ordinary memory for upstream"
                );
                return Ok(None);
            }
        };
        let len = size as u64;
        if !heap.can_ever_hold(len) {
            return Ok(None);
        }
        // Upstream gets ordinary memory rather than wait for a lease. In
        // `drop` mode it does not wait for a reader at all: render then drops
        // for lagging readers what no block can carry.
        let patience = if self.drop_mode_decided.load(Ordering::Relaxed) {
            Patience::None
        } else {
            Patience::Leases(Duration::ZERO)
        };
        match heap.allocate(len, ring::WRITER, interrupt, patience) {
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
            Err(err) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "no block for upstream ({err}); ordinary memory for {size} bytes"
                );
                Ok(None)
            }
        }
    }

    /// The eventfd that `unlock` writes, for the allocator's waits.
    pub(super) fn unlock_notifier(&self) -> Result<Arc<Notifier>, gst::FlowError> {
        self.unlock.notifier()
    }

    /// The block `buffer`'s one memory is, if upstream filled a block of our
    /// heap; the readers of `holders` then hold it too.
    fn block_in_place(&self, buffer: &gst::Buffer, holders: ring::Holders) -> Option<(u64, u64)> {
        if buffer.n_memory() != 1 {
            return None;
        }
        let heap = self
            .heap
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()?;
        // Blocks the readers gave back make upstream's buffers writable
        // again, so that its pool keeps them.
        heap.collect_now();
        let memory = buffer.memory(0)?;
        let (offset, len) = {
            let map = memory.map_readable().ok()?;
            (heap.memory().offset_of(map.as_ptr())?, map.len() as u64)
        };
        heap.hold_in_place(offset, len, holders, memory)
            .then_some((offset, len))
    }

    /// Writes a buffer to every linked reader that is to get it. Its
    /// payload goes into the heap once, whatever the number of readers: a
    /// block they all hold, each with its own holder bit.
    fn render_locked(
        &self,
        state: &mut State,
        unlock: &Notifier,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        layout: &VideoLayout,
        wait: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let drop_mode = self.drop_mode(state);
        let delta = buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let queue_limit = self.queue_limit(buffer, state.metas.len());
        loop {
            if !self.admit_readers(state, unlock, wait)? {
                gst::trace!(CAT, imp = self, "no reader; dropping {buffer:?}");
                return Ok(gst::FlowSuccess::Ok);
            }
            let epoch = self.timeline_epoch.load(Ordering::Relaxed);
            let mut timeline = None;
            let mut recipients = SlotList::default();
            for slot in state.slots() {
                if drop_mode && !self.flush_backlog(state, slot, false)? {
                    self.lose(state, slot);
                    continue;
                }
                let Some(link) = state.link(slot) else {
                    continue;
                };
                link.records.set_limit(queue_limit);
                if link.needs_keyframe && delta {
                    // A reader that just joined never had the frames this
                    // one depends on; one that lost buffers lost them too.
                    if link.lost > 0 {
                        self.lose(state, slot);
                    }
                    continue;
                }
                if link.timeline_sent != Some(epoch) {
                    link.timeline_sent = Some(epoch);
                    if timeline.is_none() {
                        timeline = Some(self.timeline_record());
                    }
                    if let Some(Some((timeline_header, bytes))) = &timeline {
                        self.send_control(state, slot, timeline_header, bytes, drop_mode)?;
                    }
                    let Some(link) = state.link(slot) else {
                        continue;
                    };
                    if drop_mode && !link.backlog.is_empty() {
                        self.lose(state, slot);
                        continue;
                    }
                }
                let Some(link) = state.link(slot) else {
                    continue;
                };
                if link.layout != *layout {
                    let bytes = layout.as_ref().map_or(&[][..], |bytes| &bytes[..]);
                    let layout_header = RecordHeader::untimed(RecordKind::VideoLayout, 0);
                    self.send_control(state, slot, &layout_header, bytes, drop_mode)?;
                    if let Some(link) = state.link(slot) {
                        link.layout = *layout;
                    }
                    if drop_mode && state.link(slot).is_some_and(|link| !link.backlog.is_empty()) {
                        self.lose(state, slot);
                        continue;
                    }
                }
                if state.link(slot).is_some() {
                    recipients.push(slot);
                }
            }
            let (delivered, copied) = self.deliver(state, unlock, buffer, header, recipients, drop_mode)?;
            if delivered > 0 {
                self.stats.buffer(buffer.size(), copied);
                return Ok(gst::FlowSuccess::Ok);
            }
            // Every reader left while we waited for room: the next one
            // gets this buffer.
            if !(wait && state.links.is_empty()) {
                return Ok(gst::FlowSuccess::Ok);
            }
        }
    }

    /// The bytes of records a reader's queue may hold unread: as many
    /// records like this buffer's (with its Metas record, of `metas_len`
    /// bytes, if it has one) as `ring-time` lasts, by its duration, or the
    /// whole queue.
    fn queue_limit(&self, buffer: &gst::Buffer, metas_len: usize) -> u64 {
        let ring_time = self.ring_time_us.load(Ordering::Relaxed);
        let duration = buffer.duration().map_or(0, gst::ClockTime::nseconds);
        if ring_time == 0 || duration == 0 {
            return u64::MAX;
        }
        let records = (ring_time.saturating_mul(1000) / duration).max(1);
        let record = |len: usize| {
            let inline_len = if len <= INLINE_MAX { len as u64 } else { 0 };
            ring::layout::record_size(inline_len).unwrap_or(u64::MAX)
        };
        // A buffer's Metas record waits unread while its buffer record is
        // written: a limit of one buffer's record alone would lose it.
        let metas = if metas_len > 0 { record(metas_len) } else { 0 };
        records.saturating_mul(record(buffer.size()).saturating_add(metas))
    }

    /// The record that tells a reader this pipeline's base time on
    /// CLOCK_MONOTONIC and the latency upstream, so that a live reader can
    /// map timestamps onto its own timeline (see `timeline.rs`); `None`
    /// while the pipeline has no clock.
    fn timeline_record(&self) -> Option<(RecordHeader, Vec<u8>)> {
        let obj = self.obj();
        let upstream_latency = match obj.query_latency() {
            Ok((_, true, min, _)) => min,
            _ => None,
        };
        let timeline = Timeline::of(obj.upcast_ref(), upstream_latency)?;
        gst::debug!(CAT, imp = self, "sending {timeline:?}");
        codec::encode_event(&timeline.to_event())
    }

    /// Writes `buffer` to the readers in `recipients`. Returns to how many
    /// it went, and whether its payload was copied.
    fn deliver(
        &self,
        state: &mut State,
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
            return Ok((
                self.deliver_inline(state, buffer, header, &recipients, drop_mode)?,
                true,
            ));
        }
        let Some(heap) = state.links.first().map(|link| link.heap.clone()) else {
            return Ok((0, false));
        };
        self.check_heap_holds(&heap, len)?;
        if drop_mode {
            // A reader that holds its share of the heap gets no more: the
            // others, and upstream, keep theirs. That share is what it may
            // fall behind by before it loses buffers. A reader that holds
            // nothing gets any payload the heap can hold.
            let share = heap.size() / (state.links.len() as u64 + 1);
            // What the readers gave back counts: the allocator takes their
            // releases only when it runs short.
            heap.collect_now();
            for slot in std::mem::take(&mut recipients) {
                let held = heap.bytes_held_by_slot(slot);
                if held == 0 || held + len <= share {
                    recipients.push(slot);
                } else {
                    self.lose(state, slot);
                }
            }
            if recipients.is_empty() {
                return Ok((0, false));
            }
        }
        let holders = recipients.iter().fold(0, |holders, &slot| holders | ring::reader(slot));
        let (offset, copied) = match self.block_in_place(buffer, holders) {
            Some((offset, _)) => (offset, false),
            None => match self.allocate_block(state, &heap, len, holders, unlock)? {
                BlockFor::Block(offset) => {
                    // SAFETY: the block was just allocated for these readers,
                    // none of which has been told of it yet, and nothing
                    // else maps it writable.
                    if let Some(block) = unsafe { heap.memory().block_mut(offset, len) } {
                        buffer.copy_to_slice(0, block).ok();
                    }
                    (offset, true)
                }
                BlockFor::Inline => {
                    // No block will come back: inline, a copy per reader.
                    return Ok((
                        self.deliver_inline(state, buffer, header, &recipients, drop_mode)?,
                        true,
                    ));
                }
                BlockFor::Lost => {
                    for &slot in &recipients {
                        self.lose(state, slot);
                    }
                    return Ok((0, false));
                }
            },
        };
        let mut delivered = 0;
        for (index, &slot) in recipients.iter().enumerate() {
            let sent = self.deliver_one(state, slot, header, drop_mode, |sink, state, header| {
                sink.send_block(state, slot, &heap, header, offset, len, !drop_mode)
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
        &self,
        state: &mut State,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        recipients: &[u32],
        drop_mode: bool,
    ) -> Result<usize, gst::FlowError> {
        let len = buffer.size() as u64;
        let mut delivered = 0;
        for &slot in recipients {
            let sent = self.deliver_one(state, slot, header, drop_mode, |sink, state, header| {
                sink.write_record(
                    state,
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
    fn deliver_one(
        &self,
        state: &mut State,
        slot: u32,
        header: &RecordHeader,
        drop_mode: bool,
        write: impl FnOnce(&Self, &mut State, &RecordHeader) -> Result<WriteOutcome, gst::FlowError>,
    ) -> Result<bool, gst::FlowError> {
        let discont = match self.announce_loss(state, slot, !drop_mode)? {
            Some(discont) => discont,
            None => {
                if drop_mode {
                    self.lose(state, slot);
                }
                return Ok(false);
            }
        };
        let mut header = *header;
        if discont {
            header.flags |= gst::BufferFlags::DISCONT.bits();
        }
        if !state.metas.is_empty() {
            // The flag, not the order, ties the Metas record to this
            // buffer: if the buffer does not follow, the next one lacks it.
            let metas = std::mem::take(&mut state.metas);
            let metas_header = RecordHeader::untimed(RecordKind::Metas, 0);
            let sent = self.send_copy(state, slot, &metas_header, &metas, !drop_mode);
            state.metas = metas;
            match sent? {
                WriteOutcome::Written => header.flags |= metas::METAS_PRECEDE,
                WriteOutcome::Full => {
                    self.lose(state, slot);
                    return Ok(false);
                }
                WriteOutcome::NoReader => return Ok(false),
            }
        }
        match write(self, state, &header)? {
            WriteOutcome::Written => {
                if let Some(link) = state.link(slot) {
                    link.needs_keyframe = false;
                }
                Ok(true)
            }
            WriteOutcome::Full => {
                self.lose(state, slot);
                Ok(false)
            }
            WriteOutcome::NoReader => Ok(false),
        }
    }

    /// Writes a serialized event to every linked reader, or drops it if
    /// none is linked: a reader that links later gets the sticky ones
    /// replayed.
    fn write_event(&self, event: &gst::Event) -> Result<(), gst::FlowError> {
        let Some((header, payload)) = codec::encode_event(event) else {
            return Ok(());
        };
        let unlock = self.unlock.notifier()?;
        let mut state = self.lock_state();
        if state.failed {
            return Ok(());
        }
        // EOS and the non-sticky events (gaps, custom events) wait for a
        // reader like a buffer does, so that none is lost and a stream with
        // no buffers still ends on the reader's side. Sticky events need not:
        // every new reader gets them replayed.
        let is_eos = event.type_() == gst::EventType::Eos;
        let waits = is_eos || !event.is_sticky();
        if waits && !self.admit_readers(&mut state, &unlock, self.wait_for_connection())? {
            return Ok(());
        }
        if state.links.is_empty() {
            return Ok(());
        }
        let drop_mode = self.drop_mode(&mut state);
        for slot in state.slots() {
            if is_eos {
                // The end of the stream is not dropped: every reader gets
                // what it is owed of caps and events, then EOS.
                self.flush_backlog(&mut state, slot, true)?;
                self.announce_loss(&mut state, slot, true)?;
                self.send_copy(&mut state, slot, &header, &payload, true)?;
            } else {
                self.send_control(&mut state, slot, &header, &payload, drop_mode)?;
            }
        }
        Ok(())
    }

    /// Refuses raw caps whose frames can never fit in the heap `ring-size`
    /// asks for, before any buffer comes.
    fn check_caps_fit(&self, caps: &gst::CapsRef) -> Result<(), gst::LoggableError> {
        let ring_size = self.settings().ring_size;
        if ring_size == 0 {
            return Ok(());
        }
        let Some(info) = raw_video_info(caps) else {
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
    type Interfaces = (gst::URIHandler,);
}

impl ObjectImpl for ShmRingSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the unix socket that shmringsrc connects to; this or stream is required")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream")
                    .nick("Stream name")
                    .blurb("Name of the stream, instead of socket-path: its socket is NAME in the user's stream directory, $XDG_RUNTIME_DIR/shmring (or /tmp/shmring-UID), made as needed with mode 0700. One file name: not empty, not . or .., no /")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("ring-size")
                    .nick("Ring size")
                    .blurb("Bytes of shared memory for buffer payloads (the heap), rounded up to whole pages; 0 sizes it from the caps (16 frames of raw video but at least 16 MiB, 500 ms of raw audio but at least 1 MiB, 32 MiB otherwise). Only blocks in use are touched, so a large heap costs no speed")
                    .maximum(MAX_HEAP_SIZE)
                    .default_value(DEFAULT_RING_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("ring-time")
                    .nick("Ring time")
                    .blurb("Microseconds of buffers (by their durations) a reader's queue may hold unread, e.g. 20000 for 20 ms of live audio: the most a reader can lag, and so the most latency the ring adds. When a reader is that far behind, the writer waits (when-full=block) or drops for it (drop). 0: bounded by the queue's size only")
                    .default_value(DEFAULT_RING_TIME_US)
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
                glib::ParamSpecUInt::builder("max-readers")
                    .nick("Maximum readers")
                    .blurb("Readers served at once; each gets every buffer, whose payload is written into shared memory once for all of them. A reader beyond this is refused as busy")
                    .minimum(1)
                    .maximum(ring::MAX_READERS)
                    .default_value(DEFAULT_MAX_READERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("when-full", WhenFull::default())
                    .nick("When full")
                    .blurb("What a reader that falls behind does to the writer. block: nothing is lost, the slowest reader paces the writer and so every reader. drop: the writer never waits for a reader; one whose queue or share of the heap is full loses buffers (counted in stats buffers-lost on both sides), gets a DISCONT and resumes at a keyframe. auto (default): drop if upstream is live, since a live source cannot wait anyway and a slow reader should not starve the others; block otherwise, so that files are never silently cut")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("readers")
                    .nick("Readers")
                    .blurb("Readers linked now. New readers are taken in as buffers pass")
                    .maximum(ring::MAX_READERS)
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Counters: buffers, bytes, bytes-copied, buffers-zero-copy, wakeups-sent, wakeups-received, times-blocked-full, peak-held-bytes (heap bytes held by readers at most), buffers-lost (buffers not delivered to a lagging reader in drop mode, summed over readers), held-bytes (heap bytes readers hold now: blocks sent and not yet given back)")
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
            "stream" => settings.stream = value.get().ok().flatten(),
            "ring-size" => settings.ring_size = value.get().unwrap_or(DEFAULT_RING_SIZE),
            "wait-for-connection" => settings.wait_for_connection = value.get().unwrap_or(DEFAULT_WAIT_FOR_CONNECTION),
            "perms" => settings.perms = value.get().unwrap_or(DEFAULT_PERMS),
            "max-readers" => settings.max_readers = value.get().unwrap_or(DEFAULT_MAX_READERS),
            "when-full" => settings.when_full = value.get().unwrap_or_default(),
            "ring-time" => self
                .ring_time_us
                .store(value.get().unwrap_or(DEFAULT_RING_TIME_US), Ordering::Relaxed),
            name => gst::warning!(CAT, imp = self, "no property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "socket-path" => settings.socket_path.map(|path| path.display().to_string()).to_value(),
            "stream" => settings.stream.to_value(),
            "ring-size" => settings.ring_size.to_value(),
            "wait-for-connection" => settings.wait_for_connection.to_value(),
            "perms" => settings.perms.to_value(),
            "max-readers" => settings.max_readers.to_value(),
            "when-full" => settings.when_full.to_value(),
            "ring-time" => self.ring_time_us.load(Ordering::Relaxed).to_value(),
            "readers" => self.linked.load(Ordering::SeqCst).to_value(),
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
    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        // The base time is set before the element goes to PLAYING.
        if transition == gst::StateChange::PausedToPlaying {
            self.timeline_epoch.fetch_add(1, Ordering::Relaxed);
        }
        self.parent_change_state(transition)
    }

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

impl URIHandlerImpl for ShmRingSink {
    const URI_TYPE: gst::URIType = gst::URIType::Sink;

    fn protocols() -> &'static [&'static str] {
        &[crate::address::SCHEME]
    }

    fn uri(&self) -> Option<String> {
        let settings = self.settings();
        crate::uri::uri(settings.socket_path.as_deref(), settings.stream.as_deref())
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        let (socket_path, stream) = crate::uri::properties(self.obj().upcast_ref(), uri)?;
        let mut settings = self.settings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        settings.socket_path = socket_path;
        settings.stream = stream;
        drop(settings);
        self.obj().notify("socket-path");
        self.obj().notify("stream");
        Ok(())
    }
}

impl BaseSinkImpl for ShmRingSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let path = Address::from_properties(settings.socket_path.as_deref(), settings.stream.as_deref())
            .and_then(|address| address.socket_path())
            .map_err(|err| gst::error_msg!(gst::ResourceError::Settings, ["{err}"]))?;
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
        self.unlink_all(&mut state);
        *state = State::default();
        drop(state);
        self.drop_mode_decided.store(false, Ordering::Relaxed);
        // Nothing writes this heap again (a restart makes a new one), so
        // whatever readers still read of it stays intact: their holds, and
        // the memories pinned for them, which keep the heap alive, go now.
        // Buffers still alive upstream keep their blocks, and the heap with
        // them, until they are dropped.
        let heap = self.heap.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(heap) = heap {
            heap.close();
        }
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
        let metas = self.metas.encode(self.obj().upcast_ref(), buffer);
        let mut state = self.lock_state();
        if state.failed {
            return Err(gst::FlowError::Error);
        }
        state.metas = metas;
        let rendered = self.render_locked(&mut state, &unlock, buffer, &header, &layout, wait);
        if let Err(gst::FlowError::Error) = rendered {
            // Close the connection without EOS, so that the reader reports
            // that the writer failed instead of ending as if it had finished.
            state.failed = true;
            self.unlink_all(&mut state);
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
        let info = caps.as_ref().and_then(|caps| raw_video_info(caps));
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
