use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use crate::address::Address;
use crate::codec;
use crate::ipc::Listener;
use crate::metas;
use crate::realtime::Realtime;
use crate::ring::layout::MAX_HEAP_SIZE;
use crate::ring::{self, Notifier, RecordHeader, RingError};
use crate::stats::Stats;
use crate::timeline::Timeline;
use crate::unlock::Unlock;

use super::CAT;
use super::heap::{Allocation, BlockMemory, Patience, SinkHeap};
use super::pool::{HeapAllocator, HeapBufferPool, INLINE_MAX};
use super::readers::Readers;
use super::upstream::{Upstream, UpstreamEvents};

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
const DEFAULT_MAX_READERS: u32 = 8;
const DEFAULT_WAIT_FOR_READERS: u32 = 1;

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
    perms: u32,
    max_readers: u32,
    wait_for_readers: u32,
    when_full: WhenFull,
    upstream_events: UpstreamEvents,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket_path: None,
            stream: None,
            ring_size: DEFAULT_RING_SIZE,
            perms: DEFAULT_PERMS,
            max_readers: DEFAULT_MAX_READERS,
            wait_for_readers: DEFAULT_WAIT_FOR_READERS,
            when_full: WhenFull::default(),
            upstream_events: UpstreamEvents::default(),
        }
    }
}

#[derive(Default)]
struct State {
    /// The linked readers, the connections waiting to be, and the socket
    /// they come through.
    readers: Readers,
    /// Rendering failed: nothing more, EOS included, goes to a reader.
    failed: bool,
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
/// than a debug log. The reader set (`readers.rs`) lives under `state` and
/// comes back into the element only through the methods kept for it, which
/// keep this rule.
#[derive(Default)]
pub struct ShmRingSink {
    settings: Mutex<Settings>,
    /// `ring-time`, in µs: apart from `settings`, since render reads it for
    /// every buffer.
    ring_time_us: AtomicU64,
    /// `wait-for-connection`, negated so that the default is false: apart
    /// from `settings`, since render too reads it for every buffer.
    drops_without_readers: AtomicBool,
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
    /// `realtime-priority`, and the streaming threads it raised.
    realtime: Realtime,
    unlock: Unlock,
    stats: Stats,
    metas: metas::Outgoing,
    /// The thread that serves what readers send upstream.
    upstream: Upstream,
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

    fn wait_for_connection(&self) -> bool {
        !self.drops_without_readers.load(Ordering::Relaxed)
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
        if waits && !state.readers.admit_readers(self, &unlock, self.wait_for_connection())? {
            return Ok(());
        }
        if state.readers.is_empty() {
            return Ok(());
        }
        state.readers.send_event(self, &header, &payload, is_eos)
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

/// What the reader set (`readers.rs`) asks of the element: its only ways
/// in. Each is called with the state lock held; those that take the
/// `settings` or `heap` lock let go of it before calling into GStreamer.
impl ShmRingSink {
    /// Whether a lagging reader is to lose buffers (`when-full`), decided
    /// once per run by the reader set. `auto` asks upstream whether it is
    /// live: a live source cannot wait for the slowest reader without
    /// losing data anyway, and should not stall the others.
    pub(super) fn decide_drop_mode(&self) -> bool {
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
        self.drop_mode_decided.store(drop_mode, Ordering::Relaxed);
        drop_mode
    }

    /// `wait-for-readers`: readers the first buffer waits for.
    pub(super) fn wait_for_readers(&self) -> u32 {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .wait_for_readers
    }

    /// Which events from readers reach this pipeline, read by the upstream
    /// thread per message.
    pub(super) fn upstream_events(&self) -> UpstreamEvents {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .upstream_events
    }

    /// The upstream thread, which readers are handed to and leave.
    pub(super) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub(super) fn max_readers(&self) -> u32 {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .max_readers
    }

    /// The size of a new reader's record queue, from the caps.
    pub(super) fn record_queue_size(&self) -> u64 {
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

    /// The heap for the streaming thread, which cannot go on without it.
    pub(super) fn heap_or_error(&self, linked: bool) -> Result<Arc<SinkHeap>, gst::FlowError> {
        self.heap(linked).map_err(|(wanted, err)| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::OpenWrite,
                ["Could not create a heap of {wanted} bytes: {err}. Lower ring-size, or check the memory and file-size limits of this process (ulimit -v, ulimit -f)"]
            );
            gst::FlowError::Error
        })
    }

    /// The block `buffer`'s one memory is, if upstream filled a block of our
    /// heap; the readers of `holders` then hold it too.
    pub(super) fn block_in_place(&self, buffer: &gst::Buffer, holders: ring::Holders) -> Option<(u64, u64)> {
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

    /// A wait of the streaming thread was interrupted by `unlock`. On a flush
    /// or a stop the render ends (`Flushing`); on PLAYING to PAUSED it keeps
    /// what it renders, waits until PLAYING again, and then goes back to its
    /// wait, as GstBaseSink's own clock waits do. Only `render` and `event`
    /// call this, which GstBaseSink calls with its preroll lock held, as
    /// `wait_preroll` requires; the state lock they hold is one no property
    /// getter takes.
    pub(super) fn resume_after_unlock(&self) -> Result<(), gst::FlowError> {
        gst::debug!(
            CAT,
            imp = self,
            "unlocked while waiting; waiting for PLAYING or a flush"
        );
        self.obj().wait_preroll()?;
        gst::debug!(CAT, imp = self, "playing again; back to the wait");
        Ok(())
    }

    /// The eventfd that `unlock` writes, for the allocator's waits.
    pub(super) fn unlock_notifier(&self) -> Result<Arc<Notifier>, gst::FlowError> {
        self.unlock.notifier()
    }

    /// The bytes of records a reader's queue may hold unread: as many
    /// records like this buffer's (with its Metas record, of `metas_len`
    /// bytes, if it has one) as `ring-time` lasts, by its duration, or the
    /// whole queue.
    pub(super) fn queue_limit(&self, buffer: &gst::BufferRef, metas_len: usize) -> u64 {
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

    /// Which base time this is, counted from the first: a reader whose
    /// timeline is of an earlier one is sent the current one.
    pub(super) fn timeline_epoch(&self) -> u32 {
        self.timeline_epoch.load(Ordering::Relaxed)
    }

    /// The record that tells a reader this pipeline's base time on
    /// CLOCK_MONOTONIC and the latency upstream, so that a live reader can
    /// map timestamps onto its own timeline (see `timeline.rs`); `None`
    /// while the pipeline has no clock.
    pub(super) fn timeline_record(&self) -> Option<(RecordHeader, Vec<u8>)> {
        let obj = self.obj();
        let upstream_latency = match obj.query_latency() {
            Ok((_, true, min, _)) => min,
            _ => None,
        };
        let timeline = Timeline::of(obj.upcast_ref(), upstream_latency)?;
        gst::debug!(CAT, imp = self, "sending {timeline:?}");
        codec::encode_event(&timeline.to_event())
    }

    pub(super) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Publishes how many readers are linked.
    pub(super) fn set_linked(&self, linked: u32) {
        self.linked.store(linked, Ordering::SeqCst);
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingSink {
    const NAME: &'static str = "GstShmRingSink";
    type Type = super::ShmRingSink;
    type ParentType = gst_base::BaseSink;
    type Interfaces = (gst::URIHandler,);

    fn class_init(klass: &mut Self::Class) {
        // The bindings install a `prepare` that only calls GstBaseSink's,
        // which has none; with one installed, GstBaseSink works out every
        // buffer's sync times an extra time to call it. We prepare nothing.
        // SAFETY: the class struct of a BaseSink subclass starts with
        // GstBaseSinkClass, and this runs once, in class_init, before any
        // instance exists.
        let klass = unsafe { &mut *(klass as *mut Self::Class as *mut gst_base::ffi::GstBaseSinkClass) };
        klass.prepare = None;
        klass.prepare_list = None;
    }
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
                glib::ParamSpecUInt::builder("wait-for-readers")
                    .nick("Wait for readers")
                    .blurb("Readers to wait for before the first buffer, with wait-for-connection=true: readers started before the writer then all get the stream from its first buffer. Later, as for one, the stream waits only while no reader is connected. At most max-readers")
                    .minimum(1)
                    .maximum(ring::MAX_READERS)
                    .default_value(DEFAULT_WAIT_FOR_READERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("when-full", WhenFull::default())
                    .nick("When full")
                    .blurb("What a reader that falls behind does to the writer. block: nothing is lost, the slowest reader paces the writer and so every reader. drop: the writer never waits for a reader; one whose queue or share of the heap is full loses buffers (counted in stats buffers-lost on both sides), gets a DISCONT and resumes at a keyframe. auto (default): drop if upstream is live, since a live source cannot wait anyway and a slow reader should not starve the others; block otherwise, so that files are never silently cut")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("upstream-events", UpstreamEvents::default())
                    .nick("Upstream events")
                    .blurb("Which upstream events from readers are pushed into this pipeline from the sink pad. none: no event. safe (default): navigation, force-key-unit, reconfigure and custom upstream events, so that no reader changes what the others get. all: also seeks and QoS, for a writer with one reader. Position, duration and seeking queries are always answered; a seeking query answers not seekable unless all")
                    .mutable_playing()
                    .build(),
                crate::realtime::priority_property(),
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
            "wait-for-connection" => self
                .drops_without_readers
                .store(!value.get().unwrap_or(DEFAULT_WAIT_FOR_CONNECTION), Ordering::Relaxed),
            "perms" => settings.perms = value.get().unwrap_or(DEFAULT_PERMS),
            "max-readers" => settings.max_readers = value.get().unwrap_or(DEFAULT_MAX_READERS),
            "wait-for-readers" => settings.wait_for_readers = value.get().unwrap_or(DEFAULT_WAIT_FOR_READERS),
            "when-full" => settings.when_full = value.get().unwrap_or_default(),
            "upstream-events" => settings.upstream_events = value.get().unwrap_or_default(),
            "ring-time" => self
                .ring_time_us
                .store(value.get().unwrap_or(DEFAULT_RING_TIME_US), Ordering::Relaxed),
            "realtime-priority" => self.realtime.set_priority(value.get().unwrap_or(0)),
            name => gst::warning!(CAT, imp = self, "no property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "realtime-priority" => self.realtime.priority().to_value(),
            "socket-path" => settings.socket_path.map(|path| path.display().to_string()).to_value(),
            "stream" => settings.stream.to_value(),
            "ring-size" => settings.ring_size.to_value(),
            "wait-for-connection" => self.wait_for_connection().to_value(),
            "perms" => settings.perms.to_value(),
            "max-readers" => settings.max_readers.to_value(),
            "wait-for-readers" => settings.wait_for_readers.to_value(),
            "when-full" => settings.when_full.to_value(),
            "upstream-events" => settings.upstream_events.to_value(),
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
        if settings.wait_for_readers > settings.max_readers {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "wait-for-readers={} exceeds max-readers={}: the stream would wait for readers it refuses. Lower wait-for-readers or raise max-readers",
                    settings.wait_for_readers,
                    settings.max_readers
                ]
            ));
        }
        if settings.ring_size != 0 {
            let rounded = settings.ring_size.div_ceil(4096) * 4096;
            crate::ring::check_heap_size(rounded)
                .map_err(|err| gst::error_msg!(gst::ResourceError::Settings, ["Invalid ring-size: {err}"]))?;
        }
        let listener = Listener::bind(&path, settings.perms)
            .map_err(|err| gst::error_msg!(gst::ResourceError::OpenWrite, ["{err}"]))?;
        gst::info!(CAT, imp = self, "listening on {}", path.display());
        self.unlock.start()?;
        self.upstream.start(&self.obj())?;
        self.lock_state().readers.listen(listener)?;
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.upstream.stop();
        let mut state = self.lock_state();
        state.readers.unlink_all(self);
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
        self.realtime.leave();
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        self.check_caps_fit(caps)?;
        let text = caps.to_string();
        // Asked upstream here, with no lock of ours held. Not through
        // `query_latency`: GstBaseSink asks upstream only for a sink that
        // syncs, and ours does not, so it would call every stream not
        // live. A source that cannot say yet counts as live, which only
        // costs wake-ups.
        let mut latency = gst::query::Latency::new();
        let upstream_live = !self.obj().sink_pad().peer_query(&mut latency) || latency.result().0;
        if upstream_live {
            gst::debug!(CAT, imp = self, "upstream is live: readers are woken at every record");
        } else {
            gst::debug!(
                CAT,
                imp = self,
                "upstream is not live: readers may be woken once per batch of buffers"
            );
        }
        let mut state = self.lock_state();
        state.readers.set_batch_wakes(!upstream_live);
        state.readers.announce_caps(self, text);
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.realtime.enter_for(self.obj().upcast_ref(), *CAT);
        let wait = self.wait_for_connection();
        let mut state = self.lock_state();
        if state.failed {
            return Err(gst::FlowError::Error);
        }
        if !wait && state.readers.idle() {
            // Nobody can read this buffer: dropped before any work on it.
            gst::trace!(CAT, imp = self, "no reader; dropping {buffer:?}");
            return Ok(gst::FlowSuccess::Ok);
        }
        let header = codec::buffer_header(buffer);
        // Most small buffers carry no meta at all: one look says so, where
        // the layout and the Metas record would each walk the list. Neither
        // walk posts anything, so holding the state lock is safe.
        let (layout, metas) = if buffer.iter_meta::<gst::Meta>().next().is_some() {
            (
                codec::video_layout(buffer),
                self.metas.encode(self.obj().upcast_ref(), buffer),
            )
        } else {
            (None, Vec::new())
        };
        state.readers.carry_metas(metas);
        if state.readers.render_steady(self, buffer, &header, &layout) {
            return Ok(gst::FlowSuccess::Ok);
        }
        // Only a render that may wait needs the unlock fd, and taking it
        // costs a lock and a reference count.
        let unlock = self.unlock.notifier()?;
        let rendered = state.readers.render(self, &unlock, buffer, &header, &layout, wait);
        if let Err(gst::FlowError::Error) = rendered {
            // Close the connection without EOS, so that the reader reports
            // that the writer failed instead of ending as if it had finished.
            state.failed = true;
            state.readers.unlink_all(self);
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

    /// A list of small buffers, the common case, reaches each reader with
    /// one publish and at most one wake-up; any other list goes buffer by
    /// buffer through `render`, as GstBaseSink's own `render_list` would.
    fn render_list(&self, list: &gst::BufferList) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.realtime.enter_for(self.obj().upcast_ref(), *CAT);
        {
            let mut state = self.lock_state();
            if state.failed {
                return Err(gst::FlowError::Error);
            }
            if state.readers.render_list_steady(self, list) {
                return Ok(gst::FlowSuccess::Ok);
            }
        }
        for buffer in list.iter_owned() {
            self.render(&buffer)?;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStart(_) => {
                // The parent unlocks render and waits for it to return, so
                // that no record of the old stream follows the readers'
                // news of the flush.
                let handled = self.parent_event(event);
                self.lock_state().readers.start_flush(self);
                return handled;
            }
            gst::EventView::FlushStop(stop) => {
                self.lock_state().readers.stop_flush(self, stop.resets_time());
                return self.parent_event(event);
            }
            _ => {}
        }
        if event.is_serialized() && self.write_event(&event).is_err() {
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
