use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use crate::address::Address;
use crate::codec::{self, Decoded, FdBufferRef, VideoLayout};
use crate::ipc::messages::Message;
use crate::ipc::{self, Connection, IpcError, Trigger, Waiter};
use crate::metas;
use crate::realtime::Realtime;
use crate::ring::{self, Consumer, HeapMemory, Notifier, Payload, ReaderChannel, RecordKind, ReleaseProducer};
use crate::stats::Stats;
use crate::timeline::Timeline;
use crate::unlock::Unlock;

use super::OnDisconnect;
use super::copies::CopyPool;
use super::fds::{self, FdTable};
use super::flush::Watcher;
use super::pacer::Pacer;
use super::upstream::{self, Outgoing, QUERY_TIMEOUT, SEEK_TIMEOUT, WriterControl};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsrc",
        gst::DebugColorFlags::empty(),
        Some("Shared-memory ring source"),
    )
});

const DEFAULT_IS_LIVE: bool = false;
/// Rounds an empty queue is watched before the reader sleeps: a few
/// microseconds, about the gap between small buffers of a busy writer.
const SPINS_BEFORE_SLEEP: u32 = 256;
/// A reader that read this many buffer records between two sleeps asks the
/// writer for a batch at its next sleep (see `ring::wake`).
const BATCH_AFTER_RECORDS: u32 = 4;
/// The batch it asks for (or a quarter of the queue, if less): at 272 bytes
/// a record of 64 stereo S16 samples, about 60 records per wake-up.
const WAKE_BATCH_BYTES: u64 = 16 * 1024;
/// How long a sleep that asked for a batch lasts at most: the delay a
/// record of a stream that is not live can take when its writer stops
/// before the batch fills.
const BATCH_SLEEP_LIMIT: Duration = Duration::from_millis(2);
/// A sleep shorter than this says that buffers in heap blocks come fast
/// enough to be worth a batch at the next sleep.
const BRIEF_SLEEP: Duration = Duration::from_micros(500);
const DEFAULT_ALWAYS_COPY: bool = false;
/// Longest wait for an fd that a record names before it arrives: an honest
/// writer sends it first, so this only bounds a broken one.
const FD_ANNOUNCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Busy waiting is opt-in. Measured in bench/RESULTS.md ("Small buffers"):
/// at live rates (750 buffers/s) the spin finds nothing and costs the
/// reader about 9 µs a buffer; it pays only for a writer flat out (100,000+
/// buffers/s), whose wake-ups of a reader that sleeps cost more than it.
const DEFAULT_BUSY_WAIT: bool = false;
/// Lists are opt-in: a pad probe for buffers (`GST_PAD_PROBE_TYPE_BUFFER`)
/// does not see the buffers of a list, and many applications watch a
/// source's pad with one.
const DEFAULT_BUFFER_LISTS: bool = false;
/// The most buffers pushed as one list. Only records already in the queue
/// join a list, so this bounds how long downstream waits for the first of
/// them while a writer faster than this reader keeps the queue full.
const MAX_BATCH: usize = 64;
/// A writer that ends cleanly sends EOS, so a closed socket without one is
/// a failure, reported as one, as shmsrc does; `eos` and `wait` are asked for.
const DEFAULT_ON_DISCONNECT: OnDisconnect = OnDisconnect::Error;

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<PathBuf>,
    stream: Option<String>,
    is_live: bool,
    always_copy: bool,
    on_disconnect: OnDisconnect,
    busy_wait: bool,
    buffer_lists: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            socket_path: None,
            stream: None,
            is_live: DEFAULT_IS_LIVE,
            always_copy: DEFAULT_ALWAYS_COPY,
            on_disconnect: DEFAULT_ON_DISCONNECT,
            busy_wait: DEFAULT_BUSY_WAIT,
            buffer_lists: DEFAULT_BUFFER_LISTS,
        }
    }
}

/// The reader's release queue, shared with every lease: a buffer may be
/// freed on any thread.
pub(super) struct Releases {
    producer: Mutex<ReleaseProducer>,
    /// Heap bytes that leases hold now.
    leased: AtomicU64,
    /// The control socket: it stays open while any lease lives, so that
    /// the writer, which takes a hang-up as "every block is back", never
    /// reuses a block a buffer downstream still shows.
    connection: Connection,
}

impl Releases {
    pub(super) fn give_back(&self, offset: u64) {
        let mut producer = self.producer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = producer.push(offset) {
            gst::warning!(CAT, "could not give block {offset} back to the writer: {err}");
        }
    }
}

/// A heap block handed downstream as read-only memory. Dropping the last
/// buffer that wraps it gives the block back to the writer.
struct Lease {
    heap: Arc<HeapMemory>,
    releases: Arc<Releases>,
    offset: u64,
    len: u64,
}

impl Lease {
    /// A read-only GstMemory over the block, which owns the lease. The writer
    /// can store into the block at any time, so no Rust reference to it is
    /// ever formed: GStreamer gets its address through the C API, and its C
    /// code reading the bytes is outside Rust's rules. `None` (and the block
    /// goes back) if the block is not inside the heap, which `peek` checked.
    fn into_memory(self) -> Option<gst::Memory> {
        let data = self.heap.block_pointer(self.offset, self.len)?;
        let len = usize::try_from(self.len).ok()?;
        let lease = Box::into_raw(Box::new(self));
        // SAFETY: `data..data + len` lies inside the heap's mapping (checked
        // by `block_pointer`), which the lease keeps mapped until GStreamer
        // hands it to `free_lease`, once, when this memory and every memory
        // shared from it are gone. READONLY makes GStreamer refuse to map it
        // writable (and the pages are PROT_READ besides), so the pointer's
        // mutability is never used. The lease is Send (two Arcs of Sync
        // types and integers), as `free_lease` may run on any thread.
        let memory = unsafe {
            gst::ffi::gst_memory_new_wrapped(
                gst::ffi::GST_MEMORY_FLAG_READONLY,
                data.as_ptr().cast(),
                len,
                0,
                len,
                lease.cast(),
                Some(free_lease),
            )
        };
        if memory.is_null() {
            // SAFETY: GStreamer refused the memory and so never calls
            // `free_lease`: the box is still ours alone.
            drop(unsafe { Box::from_raw(lease) });
            return None;
        }
        // SAFETY: a new GstMemory with one reference, which we take.
        Some(unsafe { gst::Memory::from_glib_full(memory) })
    }
}

/// The notify of a lease's GstMemory: gives the block back.
unsafe extern "C" fn free_lease(lease: glib::ffi::gpointer) {
    // SAFETY: `lease` is the box `Lease::into_memory` leaked for the memory
    // being freed, and GStreamer calls the notify once.
    drop(unsafe { Box::from_raw(lease.cast::<Lease>()) });
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.releases.leased.fetch_sub(self.len, Ordering::Relaxed);
        self.releases.give_back(self.offset);
    }
}

/// The writer we read from.
struct Link {
    /// Its socket: when `socket-path` or `stream` names another, the link
    /// is dropped for one to that.
    path: PathBuf,
    records: Consumer,
    releases: Arc<Releases>,
    heap: Arc<HeapMemory>,
    /// The writer closed its socket; what is left in the ring is all there is.
    writer_gone: bool,
    /// Whether buffers may be handed out as heap memory: not with
    /// `always-copy`, and only for raw audio and video. Parsers and decoders
    /// read compressed data more than once, and the writer could change it
    /// in between; raw media is only ever read as samples.
    lease: bool,
    /// The memory layout of the buffers that follow.
    layout: VideoLayout,
    /// The metas of the next buffer, and the caps they are checked against.
    metas: metas::Incoming,
    /// For raw video caps: the caps, and the layout their frames have
    /// without a GstVideoMeta.
    video: Option<(gst::Caps, gst_video::VideoInfo)>,
    /// Whether downstream reads GstVideoMeta, asked once per caps and per
    /// reconfiguration; `None` until asked.
    video_meta: Option<bool>,
    /// Sleeps on the ring's data fd, the socket, the unlock fd, the
    /// pacer's timer and the re-point fd.
    waiter: Waiter<5>,
    /// Wakes the reader just before a steady stream's next record.
    pacer: Pacer,
    /// Buffers for copies, of the size of the last copy.
    copies: CopyPool,
    /// The writer's base time on CLOCK_MONOTONIC, from its timeline event.
    timeline: Option<Timeline>,
    /// The writer's last segment, held back until the next buffer, which
    /// tells whether its timestamps can be mapped (live) or must be rebased
    /// (not live, reading a live writer).
    segment: Option<gst::Segment>,
    segment_pending: bool,
    /// Not live, reading a live writer: the writer's running time of the
    /// first timestamp, and our running time it was moved to; see `rebase`.
    origin: Option<(gst::ClockTime, gst::ClockTime)>,
    /// `busy-wait`, read once per link.
    busy_wait: bool,
    /// Buffer records read since the last wake-up: when records arrive
    /// faster than we sleep, the next sleep asks for a batch.
    read_since_wake: u32,
    /// The read position when the reader last woke, and the length of the
    /// last buffer it read from a heap block (0 for an inline one): what
    /// it sizes the batch it asks for from.
    read_at_wake: u64,
    last_block_len: u64,
    /// Whether the last sleep ended within `BRIEF_SLEEP`.
    slept_briefly: bool,
    /// Whether the last sleep ended at our frame timer (see `pacer`), not
    /// at the writer's wake-up.
    woken_by_timer: bool,
    /// Whether buffers waiting together go downstream as one list: for raw
    /// audio only, a stream of samples whose buffer boundaries mean
    /// nothing. Elsewhere a list can change what a sink does (multifilesink
    /// writes a whole list into one file).
    batch: bool,
    /// Whether this source is live (`is-live`, which cannot change while it
    /// runs), read once rather than under the object lock per buffer.
    live: bool,
    /// The writer dropped buffers for us: the next buffer is a DISCONT.
    discont: bool,
    /// This link's wake-ups of the writer already added to the stats,
    /// which count over every link of the run.
    wakeups_counted: u64,
    /// Sends the writer's flushes downstream (see `flush.rs`).
    watcher: Watcher,
    /// The count of the last flush whose Flush record was read: while the
    /// writer's flush word names another, its records are the old stream's.
    flush_done: u32,
    /// The fds the writer announced, for fd buffer records.
    fds: FdTable,
    /// The writer's caps when they announce DMABuf memory, and whether the
    /// caps set downstream do: they do only while the buffers are DMABuf
    /// memory, so they are settled at each buffer.
    dmabuf_caps: Option<(gst::Caps, Option<bool>)>,
    /// Reading a record failed after others had joined a list: the next
    /// read returns this, once the list went downstream.
    failed: Option<gst::FlowError>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// The next buffer starts a new stream from a writer that came back.
    discont: bool,
}

#[derive(Default)]
pub struct ShmRingSrc {
    settings: Mutex<Settings>,
    /// Where the writer's socket is, as `start` found it from `socket-path`
    /// or `stream`, or as they were set since, while running. `None` while
    /// stopped.
    socket_path: Mutex<Option<PathBuf>>,
    /// Wakes the streaming thread when `socket_path` changes while it runs,
    /// as `unlock` does for a flush: an eventfd with the same lifetime.
    repoint: Unlock,
    state: Mutex<State>,
    /// The caps last read from the ring, answered to caps queries. Kept apart
    /// from `state` because setting caps queries us back.
    caps: Mutex<Option<gst::Caps>>,
    /// `realtime-priority`, and the streaming threads it raised.
    realtime: Realtime,
    unlock: Unlock,
    stats: Stats,
    /// The stream-start and segment pushed last in the writer's name; see
    /// `constructed`.
    pushed: Mutex<Pushed>,
    /// Set when downstream may have changed (`negotiate`), so that whether
    /// it reads GstVideoMeta is asked again.
    reconfigured: AtomicBool,
    /// Whether the "timestamps not mapped" warning was logged.
    unmapped_warned: AtomicBool,
    /// The latency upstream of the writer, from its timeline, for the
    /// latency query. Apart from `state`, which `create` holds while it
    /// waits.
    writer_latency: Mutex<Option<gst::ClockTime>>,
    /// The upstream channel to the writer of the current link, for the
    /// threads that send events and ask queries. Apart from `state`, which
    /// `create` holds while it waits.
    writer_control: Mutex<Option<Arc<WriterControl>>>,
}

/// The writer's stream-start, and the segment pushed for it (the writer's
/// own, or one of ours onto which its timestamps are mapped): what
/// downstream must have in place of GstBaseSrc's own.
#[derive(Default)]
struct Pushed {
    stream_start: Option<gst::Event>,
    segment: Option<gst::Event>,
}

impl Pushed {
    fn slot(&mut self, kind: gst::EventType) -> Option<&mut Option<gst::Event>> {
        match kind {
            gst::EventType::StreamStart => Some(&mut self.stream_start),
            gst::EventType::Segment => Some(&mut self.segment),
            _ => None,
        }
    }
}

/// Whether two stream-starts, or two segments, say the same.
fn same_sticky(a: &gst::Event, b: &gst::Event) -> bool {
    match (a.view(), b.view()) {
        (gst::EventView::StreamStart(a), gst::EventView::StreamStart(b)) => {
            a.stream_id() == b.stream_id() && a.group_id() == b.group_id()
        }
        (gst::EventView::Segment(a), gst::EventView::Segment(b)) => a.segment() == b.segment(),
        _ => false,
    }
}

/// What goes downstream in place of a stream-start or segment.
enum Replace {
    Keep,
    Drop,
    With(gst::Event),
}

/// What one record turned into.
enum Step {
    Buffer(gst::Buffer),
    Continue,
}

/// Why reading from a link stopped.
enum Read {
    Buffer(gst::Buffer),
    /// The writer closed its socket without EOS, and its ring is drained.
    WriterGone,
    /// `socket-path` or `stream` may have changed.
    Repointed,
}

/// What came of waiting for a writer.
enum Connect {
    Linked(Box<Link>),
    /// `socket-path` or `stream` may have changed.
    Repointed,
}

impl ShmRingSrc {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn lock_socket_path(&self) -> MutexGuard<'_, Option<PathBuf>> {
        self.socket_path.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `path` is still where the writer to read from is.
    fn points_at(&self, path: &Path) -> bool {
        self.lock_socket_path().as_deref() == Some(path)
    }

    /// While running: takes in a new `socket-path` or `stream`, and wakes
    /// the streaming thread to switch to it. A pair that does not name one
    /// socket (both set, say, between setting one and clearing the other)
    /// changes nothing yet.
    fn repoint(&self) {
        let settings = self.settings();
        let address = Address::from_properties(settings.socket_path.as_deref(), settings.stream.as_deref())
            .and_then(|address| address.socket_path());
        let mut current = self.lock_socket_path();
        let Some(current) = current.as_mut() else {
            return;
        };
        match address {
            Ok(path) if path != *current => {
                gst::info!(
                    CAT,
                    imp = self,
                    "re-pointed from {} to {}",
                    current.display(),
                    path.display()
                );
                *current = path;
                self.repoint.unlock();
            }
            Ok(_) => {}
            Err(err) => gst::debug!(CAT, imp = self, "not re-pointing yet: {err}"),
        }
    }

    fn connect(&self, unlock: &Notifier, repoint: &Notifier) -> Result<Connect, gst::FlowError> {
        let settings = self.settings();
        let Some(path) = self.lock_socket_path().clone() else {
            return Err(gst::FlowError::Flushing);
        };
        gst::debug!(CAT, imp = self, "waiting for a shmringsink at {}", path.display());
        let (connection, channel) = loop {
            match ipc::connect_reader(&path, &[unlock.as_fd(), repoint.as_fd()]) {
                Ok(Some(connected)) => break connected,
                Ok(None) => {
                    // A flush wins over a new address.
                    return match ipc::readable_now(unlock.as_fd()) {
                        Ok(false) => Ok(Connect::Repointed),
                        Ok(true) | Err(_) => Err(gst::FlowError::Flushing),
                    };
                }
                // A writer that dies during the handshake is one more
                // disconnect.
                Err(ipc::IpcError::PeerGone) if settings.on_disconnect == OnDisconnect::Wait => {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "the writer went away during the handshake; waiting again"
                    );
                }
                Err(err) => {
                    gst::element_imp_error!(self, gst::ResourceError::OpenRead, ["{err}"]);
                    return Err(gst::FlowError::Error);
                }
            }
        };
        let ReaderChannel {
            records,
            releases,
            heap,
        } = channel;
        let pacer = Pacer::new().map_err(|err| {
            gst::element_imp_error!(self, gst::ResourceError::Failed, ["Could not create a timer: {err}"]);
            gst::FlowError::Error
        })?;
        let fds = [
            (records.data_fd(), Trigger::Edge),
            (connection.as_fd(), Trigger::HangUp),
            (unlock.as_fd(), Trigger::Level),
            (pacer.fd(), Trigger::Edge),
            (repoint.as_fd(), Trigger::Level),
        ];
        let waiter = Waiter::new(fds).map_err(|err| {
            gst::element_imp_error!(self, gst::ResourceError::Failed, ["{err}"]);
            gst::FlowError::Error
        })?;
        let control = WriterControl::new(&connection).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                ["Could not open the channel to the writer ({err}); the process may be out of file descriptors"]
            );
            gst::FlowError::Error
        })?;
        self.set_writer_control(Some(Arc::new(control)));
        let releases = Arc::new(Releases {
            producer: Mutex::new(releases),
            leased: AtomicU64::new(0),
            connection,
        });
        let writer_gone = {
            let releases = releases.clone();
            Box::new(move || releases.connection.peer_gone())
        };
        let (watcher, flush_done) = Watcher::spawn(&self.obj(), records.flush_word(), writer_gone).map_err(|err| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                ["Could not start the thread that watches the writer's flushes: {err}"]
            );
            gst::FlowError::Error
        })?;
        gst::info!(
            CAT,
            imp = self,
            "connected to {} (writer {}); record queue of {} bytes, heap of {} bytes",
            path.display(),
            releases.connection.peer_description(),
            records.capacity(),
            heap.size()
        );
        Ok(Connect::Linked(Box::new(Link {
            path,
            records,
            releases,
            heap,
            writer_gone: false,
            lease: false,
            layout: None,
            metas: metas::Incoming::default(),
            video: None,
            video_meta: None,
            waiter,
            pacer,
            copies: CopyPool::default(),
            timeline: None,
            segment: None,
            segment_pending: false,
            origin: None,
            live: self.obj().is_live(),
            busy_wait: self.settings().busy_wait,
            read_since_wake: 0,
            read_at_wake: 0,
            last_block_len: 0,
            slept_briefly: false,
            woken_by_timer: false,
            batch: false,
            discont: false,
            wakeups_counted: 0,
            watcher,
            flush_done,
            fds: FdTable::default(),
            dmabuf_caps: None,
            failed: None,
        })))
    }

    /// Pushes the writer's segment as it is, whatever its format: GstBaseSrc
    /// only takes segments in its own format, which may not change while
    /// running, and its own segment is then held back.
    fn forward_writer_segment(&self, segment: &gst::Segment) {
        gst::debug!(CAT, imp = self, "forwarding {segment:?}");
        self.forward(gst::event::Segment::new(segment));
    }

    /// Live: turns the buffer's timestamps, running times of the writer's
    /// pipeline, into running times of ours (see `timeline.rs`), in a
    /// segment of our own, so that sinks in every process that reads the
    /// writer play each buffer at the same instant. Without the writer's
    /// timeline, or with a segment not in time, the writer's segment and
    /// timestamps go on as they are.
    fn onto_our_timeline(&self, link: &mut Link, buffer: &mut gst::BufferRef) {
        let element = self.obj();
        let segment = link
            .segment
            .as_ref()
            .and_then(|segment| segment.downcast_ref::<gst::ClockTime>());
        let running = element.clock().is_some() && element.base_time().is_some();
        let (Some(timeline), Some(segment), true) = (link.timeline, segment, running) else {
            if std::mem::take(&mut link.segment_pending) {
                if !self.unmapped_warned.swap(true, Ordering::Relaxed) {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "the writer sent no timeline (its pipeline has no clock yet, or its segment is not in time): timestamps stay in the writer's running time"
                    );
                }
                if let Some(segment) = link.segment.clone() {
                    self.forward_writer_segment(&segment);
                }
            }
            return;
        };
        if std::mem::take(&mut link.segment_pending) {
            let ours = gst::FormattedSegment::<gst::ClockTime>::new();
            gst::debug!(CAT, imp = self, "mapping the writer's timestamps onto our timeline");
            self.forward(gst::event::Segment::new(&ours));
        }
        let element = element.upcast_ref::<gst::Element>();
        let map = |time: Option<gst::ClockTime>| {
            let running = segment.to_running_time(time?)?;
            // An instant before our pipeline started is its start.
            Some(timeline.map(running, element).unwrap_or(gst::ClockTime::ZERO))
        };
        let (pts, dts) = (map(buffer.pts()), map(buffer.dts()));
        buffer.set_pts(pts);
        buffer.set_dts(dts);
    }

    /// Not live: a live writer's timestamps are running times of a pipeline
    /// that may have run for hours, which a syncing sink here would wait
    /// for. They move, in a segment of our own, so that the first buffer is
    /// due now in our pipeline (0 while it prerolls) plus the writer's
    /// upstream latency, the slack a live pipeline would give it, and the
    /// rest keep their spacing. The writer's timeline says whether its
    /// upstream is live: it names an upstream latency only then. A writer
    /// whose upstream is not live (a file) keeps its segment and timestamps.
    fn rebase(&self, link: &mut Link, buffer: &mut gst::BufferRef) {
        let segment = link
            .segment
            .as_ref()
            .and_then(|segment| segment.downcast_ref::<gst::ClockTime>());
        let latency = link.timeline.and_then(|timeline| timeline.upstream_latency);
        let (Some(segment), Some(latency)) = (segment, latency) else {
            if std::mem::take(&mut link.segment_pending)
                && let Some(segment) = link.segment.clone()
            {
                self.forward_writer_segment(&segment);
            }
            return;
        };
        let running = |time: Option<gst::ClockTime>| segment.to_running_time(time?);
        let (pts, dts) = (running(buffer.pts()), running(buffer.dts()));
        if link.origin.is_none()
            && let Some(first) = pts.into_iter().chain(dts).min()
        {
            let now = self.obj().current_running_time().unwrap_or(gst::ClockTime::ZERO);
            gst::debug!(
                CAT,
                imp = self,
                "the writer is live: its running time {first} is our {}",
                now + latency
            );
            link.origin = Some((first, now + latency));
        }
        if std::mem::take(&mut link.segment_pending) {
            self.forward(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
        }
        let Some((first, start)) = link.origin else {
            return;
        };
        let map = |running: Option<gst::ClockTime>| running.map(|running| start + running.saturating_sub(first));
        buffer.set_pts(map(pts));
        buffer.set_dts(map(dts));
    }

    /// The writer (`when-full=drop`) dropped `lost` buffers meant for us:
    /// counted, and posted as a QoS message with the totals so far.
    fn report_lost(&self, lost: u64) {
        self.stats.lost(lost);
        let total = self.stats.buffers_lost();
        gst::warning!(
            CAT,
            imp = self,
            "the writer dropped {lost} buffers for this reader ({total} so far): it reads slower than the writer writes"
        );
        let processed = self.stats.buffers();
        let message = gst::message::Qos::builder(self.obj().is_live())
            .stats(
                gst::format::Buffers::from_u64(processed),
                gst::format::Buffers::from_u64(total),
            )
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(message);
    }

    fn decode_error(&self, err: impl std::fmt::Display) -> gst::FlowError {
        gst::element_imp_error!(self, gst::StreamError::Decode, ["{err}"]);
        gst::FlowError::Error
    }

    /// An error for an fd the writer announced or named, which it should
    /// not have.
    fn fd_error(&self, reason: String) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Decode,
            ["The writer sent fd-backed memory this reader cannot use: {reason}. The writer is broken or hostile"]
        );
        gst::FlowError::Error
    }

    /// Sets `caps` on the source pad, and answers caps queries with them.
    fn announce_caps(&self, caps: &gst::Caps) -> Result<(), gst::FlowError> {
        *self.caps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(caps.clone());
        if self.obj().set_caps(caps).is_err() {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["Downstream refused the writer's caps {caps}"]
            );
            return Err(gst::FlowError::NotNegotiated);
        }
        Ok(())
    }

    /// Under caps that announce DMABuf memory, announces them as they are
    /// only while the buffers are DMABuf memory: a buffer the writer had to
    /// copy (or that this reader copied) is system memory, which a DMABuf
    /// importer downstream would fail on, so the feature goes for it.
    fn settle_dmabuf_caps(&self, link: &mut Link, buffer: &gst::Buffer) -> Result<(), gst::FlowError> {
        let Some((caps, announced)) = &mut link.dmabuf_caps else {
            return Ok(());
        };
        let dmabuf = buffer.n_memory() == 1 && buffer.peek_memory(0).is_memory_type::<gst_allocators::DmaBufMemory>();
        if *announced == Some(dmabuf) {
            return Ok(());
        }
        *announced = Some(dmabuf);
        let caps = if dmabuf {
            caps.clone()
        } else {
            fds::without_dmabuf(caps)
        };
        gst::debug!(CAT, imp = self, "announcing {caps} for the buffers that follow");
        self.announce_caps(&caps)
    }

    /// Takes every message waiting on the control socket, and the fd
    /// announcements among them. Returns whether the writer hung up.
    fn receive_messages(&self, link: &mut Link) -> Result<bool, gst::FlowError> {
        let Some(control) = self.writer_control() else {
            return Ok(true);
        };
        let gone = match control.receive() {
            Ok(()) => false,
            Err(upstream::AskError::Closed(IpcError::PeerGone)) => true,
            Err(err) => {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["The writer's control socket: {err}"]);
                return Err(gst::FlowError::Error);
            }
        };
        for (announcement, fds) in control.take_announcements() {
            link.fds
                .announce(announcement, fds)
                .map_err(|reason| self.fd_error(reason))?;
        }
        Ok(gone)
    }

    /// Receives until the fd `id` is announced. The writer announces an fd
    /// before it publishes the first record naming it, so it is on the
    /// socket already; the wait only bounds a broken writer.
    fn await_fd(&self, link: &mut Link, id: u64) -> Result<(), gst::FlowError> {
        let deadline = Instant::now() + FD_ANNOUNCE_WAIT;
        loop {
            let gone = self.receive_messages(link)?;
            if link.fds.knows(id) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if gone || left.is_zero() {
                return Err(self.fd_error(format!("it named fd {id} without announcing it")));
            }
            let unlock = self.unlock.notifier()?;
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
            let ready = ipc::wait_readable_for(
                &[link.releases.connection.as_fd(), unlock.as_fd()],
                nix::poll::PollTimeout::from(millis),
            )
            .map_err(|err| {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["{err}"]);
                gst::FlowError::Error
            })?;
            if ready[1] {
                return Err(gst::FlowError::Flushing);
            }
        }
    }

    /// Pushes one of the writer's events downstream, past the probe that
    /// holds back GstBaseSrc's own.
    ///
    /// A stream-start or segment equal to the one downstream has (a new
    /// writer's, after a switch or a reconnection, that says the same) is
    /// not pushed again: downstream goes on as one stream.
    fn forward(&self, event: gst::Event) {
        {
            let mut pushed = self.lock_pushed();
            if let Some(slot) = pushed.slot(event.type_()) {
                if slot.as_ref().is_some_and(|last| same_sticky(last, &event)) {
                    gst::debug!(CAT, imp = self, "not pushing {event:?} again");
                    return;
                }
                *slot = Some(event.clone());
            }
        }
        self.obj().src_pad().push_event(event);
    }

    fn lock_pushed(&self) -> MutexGuard<'_, Pushed> {
        self.pushed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the probe of `constructed` lets through in place of `event`, a
    /// stream-start or segment on its way downstream: the writer's own pass,
    /// also when GStreamer sends them again to a downstream linked later.
    /// GstBaseSrc's, made up without the writer, give way to the writer's
    /// where downstream lacks it, and are dropped where it has it.
    fn in_place_of(&self, event: &gst::EventRef) -> Replace {
        let Some(ours) = self.lock_pushed().slot(event.type_()).and_then(|slot| slot.clone()) else {
            // Before the writer's first: GstBaseSrc's stream-start would
            // name a made-up stream, and its segment is all there is yet.
            return if event.type_() == gst::EventType::StreamStart {
                Replace::Drop
            } else {
                Replace::Keep
            };
        };
        if ours.seqnum() == event.seqnum() {
            return Replace::Keep;
        }
        // GstBaseSrc pushes its segment after ours, so the pad stores its
        // segment, not ours, for a downstream linked later.
        let mut downstream_has_ours = false;
        if let Some(peer) = self.obj().src_pad().peer() {
            peer.sticky_events_foreach(|sticky| {
                downstream_has_ours |= sticky.type_() == ours.type_() && sticky.seqnum() == ours.seqnum();
                std::ops::ControlFlow::Continue(gst::EventForeachAction::Keep)
            });
        }
        if downstream_has_ours {
            Replace::Drop
        } else {
            Replace::With(ours)
        }
    }

    /// A buffer for a block the writer sent: the block itself, read-only,
    /// while leases hold less than half the heap; past that a copy, and the
    /// block goes straight back, so the writer always has half the heap.
    /// `None` if the block does not lie inside the heap.
    fn block_buffer(
        &self,
        (heap, releases, copies): (&Arc<HeapMemory>, &Arc<Releases>, &mut CopyPool),
        lease: bool,
        offset: u64,
        len: u64,
    ) -> Option<(gst::Buffer, bool)> {
        let half = heap.size() / 2;
        let leased = releases.leased.load(Ordering::Relaxed);
        if lease && leased + len <= half {
            let now = releases.leased.fetch_add(len, Ordering::Relaxed) + len;
            self.stats.held(now);
            let lease = Lease {
                heap: heap.clone(),
                releases: releases.clone(),
                offset,
                len,
            };
            let mut buffer = gst::Buffer::new();
            buffer.get_mut()?.append_memory(lease.into_memory()?);
            return Some((buffer, false));
        }
        let buffer = usize::try_from(len)
            .ok()
            .and_then(|len| copies.copy(len, |dest| heap.read_block(offset, dest)));
        releases.give_back(offset);
        Some((buffer?, true))
    }

    /// A copy of `buffer` in the default layout of the caps, if the writer's
    /// layout (a GstVideoMeta with other strides or plane offsets) is not
    /// that one and downstream does not read GstVideoMeta: filesink, or an
    /// application reading raw bytes, would misread the frame. `None` when
    /// the buffer can go as it is.
    fn unpadded(&self, link: &mut Link, buffer: &gst::Buffer) -> Option<Result<gst::Buffer, gst::FlowError>> {
        let (caps, info) = link.video.as_ref()?;
        let meta = buffer.meta::<gst_video::VideoMeta>()?;
        let planes = info.n_planes() as usize;
        let default = meta.format() == info.format()
            && meta.width() == info.width()
            && meta.height() == info.height()
            && meta.offset().get(..planes) == info.offset().get(..planes)
            && meta.stride().get(..planes) == info.stride().get(..planes);
        if default {
            return None;
        }
        if self.reconfigured.swap(false, Ordering::Relaxed) {
            link.video_meta = None;
        }
        let takes_meta = *link.video_meta.get_or_insert_with(|| {
            let mut query = gst::query::Allocation::new(Some(caps), false);
            let takes = self.obj().src_pad().peer_query(&mut query)
                && query.find_allocation_meta::<gst_video::VideoMeta>().is_some();
            gst::debug!(
                CAT,
                imp = self,
                "downstream {} GstVideoMeta for {caps}",
                if takes { "reads" } else { "does not read" }
            );
            takes
        });
        if takes_meta {
            return None;
        }
        let mut unpadded = link.copies.buffer(info.size());
        let copied = match (
            gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info),
            unpadded.get_mut(),
        ) {
            (Ok(frame), Some(out)) => gst_video::VideoFrameRef::from_buffer_ref_writable(out, info)
                .and_then(|mut out| frame.copy(&mut out))
                .is_ok(),
            _ => false,
        };
        if !copied {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                [
                    "Could not copy a frame of the writer's layout (offsets {:?}, strides {:?}) into the default layout of {caps}, which downstream needs: it does not read GstVideoMeta",
                    meta.offset(),
                    meta.stride()
                ]
            );
            return Some(Err(gst::FlowError::Error));
        }
        Some(Ok(unpadded))
    }

    /// The buffer of a buffer or fd buffer record, with the record's
    /// metadata, layout, metas and timing applied.
    fn finish_buffer(
        &self,
        link: &mut Link,
        header: &crate::ring::RecordHeader,
        mut buffer: gst::Buffer,
        copied: bool,
    ) -> Result<Option<Step>, gst::FlowError> {
        self.settle_dmabuf_caps(link, &buffer)?;
        codec::apply_buffer_header(header, &link.layout, buffer.make_mut()).map_err(|err| self.decode_error(err))?;
        let (mut buffer, copied) = match self.unpadded(link, &buffer) {
            Some(unpadded) => {
                let mut unpadded = unpadded?;
                codec::apply_buffer_header(header, &None, unpadded.make_mut()).map_err(|err| self.decode_error(err))?;
                (unpadded, true)
            }
            None => (buffer, copied),
        };
        // One writability check for all that follows: each costs a call.
        let writable = buffer.make_mut();
        link.metas
            .apply(header, writable)
            .map_err(|err| self.decode_error(err))?;
        self.stats.buffer(writable.size(), copied);
        if link.live {
            self.onto_our_timeline(link, writable);
        } else {
            self.rebase(link, writable);
        }
        if std::mem::take(&mut link.discont) {
            writable.set_flags(gst::BufferFlags::DISCONT);
        }
        Ok(Some(Step::Buffer(buffer)))
    }

    /// Takes the record at the read position, if any, and acts on it.
    fn next_record(&self, link: &mut Link) -> Result<Option<Step>, gst::FlowError> {
        let begun = link.watcher.begun();
        if begun != link.flush_done {
            return self.skip_flushed(link, begun);
        }
        let record = match link.records.peek() {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.decode_error(err)),
        };
        let header = *record.header();
        let payload = record.payload();
        if header.kind == RecordKind::Flush {
            // Left in the queue. The flush word was loaded before the
            // record: it may name this flush by now.
            if link.watcher.begun() != link.flush_done {
                return Ok(Some(Step::Continue));
            }
            return Err(self.decode_error(
                "the writer sent an unreadable flush record (for a flush its flush word never began); the writer is broken",
            ));
        }
        if header.kind == RecordKind::Buffer {
            let taken = match payload {
                Payload::Inline { len } => {
                    link.last_block_len = 0;
                    link.copies
                        .copy(len as usize, |dest| record.read_inline(dest))
                        .map(|buffer| (buffer, true))
                }
                // The record is passed only once the block is leased or
                // given back, so that the writer, watching the read
                // position, never sees the block in neither state.
                Payload::Block { offset, len } => {
                    link.last_block_len = len;
                    self.block_buffer((&link.heap, &link.releases, &mut link.copies), link.lease, offset, len)
                }
            };
            record.release();
            let Some((buffer, copied)) = taken else {
                return Err(self.decode_error(
                    "The writer sent a buffer record whose payload lies outside the shared memory; the writer is broken",
                ));
            };
            return self.finish_buffer(link, &header, buffer, copied);
        }
        if header.kind == RecordKind::FdBuffer {
            let bytes = match payload {
                Payload::Inline { .. } => record.inline_to_vec(),
                Payload::Block { .. } => Vec::new(),
            };
            record.release();
            if let Payload::Block { offset, .. } = payload {
                link.releases.give_back(offset);
            }
            let fd_ref = FdBufferRef::decode(&bytes).map_err(|err| self.decode_error(err))?;
            self.await_fd(link, fd_ref.fd_id)?;
            let (memory, keep) = link
                .fds
                .memory(&fd_ref, &link.releases)
                .map_err(|reason| self.fd_error(reason))?;
            let Some((buffer, copied)) = fds::buffer_of(memory, keep && link.lease) else {
                return Err(self.fd_error("could not make a buffer of an fd's memory".into()));
            };
            return self.finish_buffer(link, &header, buffer, copied);
        }
        // Parse a private copy: the writer could change shared bytes between
        // the UTF-8 check and the parse.
        if payload.len() > codec::MAX_CONTROL_PAYLOAD as u64 {
            return Err(self.decode_error(format!(
                "The writer sent a {:?} record of {} bytes; caps and events are at most {} bytes",
                header.kind,
                payload.len(),
                codec::MAX_CONTROL_PAYLOAD
            )));
        }
        let bytes = match payload {
            Payload::Inline { .. } => {
                let bytes = record.inline_to_vec();
                record.release();
                bytes
            }
            Payload::Block { offset, len } => {
                record.release();
                let bytes = link.heap.block_to_vec(offset, len).unwrap_or_default();
                link.releases.give_back(offset);
                bytes
            }
        };
        if header.kind == RecordKind::VideoLayout {
            link.layout = codec::decode_video_layout(&bytes).map_err(|err| self.decode_error(err))?;
            return Ok(Some(Step::Continue));
        }
        if header.kind == RecordKind::Metas {
            link.metas.hold(bytes);
            return Ok(Some(Step::Continue));
        }
        if header.kind == RecordKind::FdForget {
            let id = codec::decode_fd_forget(&bytes).map_err(|err| self.decode_error(err))?;
            // An fd whose buffer records were all lost may still wait on
            // the socket: it was sent before this record.
            if !link.fds.knows(id) {
                self.receive_messages(link)?;
            }
            link.fds.forget(id);
            return Ok(Some(Step::Continue));
        }
        if header.kind == RecordKind::Lost {
            let lost = codec::decode_lost(&bytes).map_err(|err| self.decode_error(err))?;
            link.discont = true;
            self.report_lost(lost);
            return Ok(Some(Step::Continue));
        }
        let decoded = codec::decode(&header, &bytes).map_err(|err| self.decode_error(err))?;
        match decoded {
            Decoded::Caps(caps) => {
                gst::debug!(CAT, imp = self, "caps from the writer: {caps}");
                let raw = caps
                    .structure(0)
                    .is_some_and(|s| matches!(s.name().as_str(), "video/x-raw" | "audio/x-raw"));
                link.lease = raw
                    && !self
                        .settings
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .always_copy;
                link.video = caps
                    .structure(0)
                    .is_some_and(|s| s.name() == "video/x-raw")
                    .then(|| gst_video::VideoInfo::from_caps(&caps).ok())
                    .flatten()
                    .map(|info| (caps.clone(), info));
                link.video_meta = None;
                link.batch =
                    self.settings().buffer_lists && caps.structure(0).is_some_and(|s| s.name() == "audio/x-raw");
                link.metas.set_caps(&caps);
                if fds::announces_dmabuf(&caps) {
                    // Settled at the next buffer, by its memory.
                    link.dmabuf_caps = Some((caps, None));
                } else {
                    link.dmabuf_caps = None;
                    self.announce_caps(&caps)?;
                }
            }
            Decoded::Segment(segment) => {
                // The next buffer decides: onto our timeline, rebased, or in
                // the writer's segment as it is.
                link.segment = Some(segment);
                link.segment_pending = true;
            }
            Decoded::Eos => {
                gst::debug!(CAT, imp = self, "end of stream from the writer");
                if std::mem::take(&mut link.segment_pending)
                    && let Some(segment) = link.segment.clone()
                {
                    self.forward_writer_segment(&segment);
                }
                return Err(gst::FlowError::Eos);
            }
            Decoded::Event(event) => {
                if let Some(timeline) = Timeline::from_event(&event) {
                    gst::debug!(CAT, imp = self, "the writer's timeline: {timeline:?}");
                    if link.timeline.is_some_and(|known| known != timeline) {
                        // The writer's pipeline paused, or started again:
                        // its running time no longer keeps pace with our
                        // clock. Rebase again from its next buffer.
                        link.origin = None;
                    }
                    link.timeline = Some(timeline);
                    *self
                        .writer_latency
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = timeline.upstream_latency;
                    return Ok(Some(Step::Continue));
                }
                gst::debug!(CAT, imp = self, "forwarding {event:?}");
                self.forward(event);
            }
            Decoded::Unsupported(event_type) => {
                gst::debug!(CAT, imp = self, "skipping event type {event_type}");
            }
        }
        Ok(Some(Step::Continue))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingSrc {
    const NAME: &'static str = "GstShmRingSrc";
    type Type = super::ShmRingSrc;
    type ParentType = gst_base::PushSrc;
    type Interfaces = (gst::URIHandler,);

    fn class_init(klass: &mut Self::Class) {
        // The bindings install a `get_times` that only calls GstBaseSrc's,
        // which has none, once per buffer; the buffers' own timestamps are
        // what GstBaseSrc syncs on without it.
        // SAFETY: the class struct of a PushSrc subclass starts with
        // GstBaseSrcClass, and this runs once, in class_init, before any
        // instance exists.
        let klass = unsafe { &mut *(klass as *mut Self::Class as *mut gst_base::ffi::GstBaseSrcClass) };
        klass.get_times = None;
    }
}

impl ObjectImpl for ShmRingSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the unix socket of the shmringsink to read from; this or stream is required. The source waits for it to appear. Set while playing, the source switches to that writer: new caps and segment if they differ, DISCONT on its first buffer")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("stream")
                    .nick("Stream name")
                    .blurb("Name of the shmringsink's stream to read, instead of socket-path: its socket is NAME in the user's stream directory, $XDG_RUNTIME_DIR/shmring (or /tmp/shmring-UID), made as needed with mode 0700. One file name: not empty, not . or .., no /. Set while playing, the source switches to that stream, as for socket-path")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("is-live")
                    .nick("Is live")
                    .blurb("Act as a live source, on the writer's timeline: every live reader plays a buffer at the same instant. Not live, a live writer's buffers are moved so that the first one read is due at once")
                    .default_value(DEFAULT_IS_LIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("always-copy")
                    .nick("Always copy")
                    .blurb("Copy every buffer out of the ring instead of handing out shared memory. Not needed for downstreams that keep buffers: past half the heap the source copies by itself")
                    .default_value(DEFAULT_ALWAYS_COPY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("busy-wait")
                    .nick("Busy wait")
                    .blurb("Watch an empty queue for a few microseconds before sleeping, and wake just before a steady stream's next buffer is due, so that the writer rarely has to wake this reader: spends this reader's CPU to save the writer's. Off: sleep at once")
                    .default_value(DEFAULT_BUSY_WAIT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("buffer-lists")
                    .nick("Buffer lists")
                    .blurb("Push the raw audio buffers already waiting in the queue as one buffer list, so that downstream takes its locks once for them all (never waiting to fill one). Off by default: a pad probe for buffers does not see the buffers of a list; one for lists (GST_PAD_PROBE_TYPE_BUFFER_LIST) does")
                    .default_value(DEFAULT_BUFFER_LISTS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("on-disconnect", DEFAULT_ON_DISCONNECT)
                    .nick("On disconnect")
                    .blurb("What to do when the writer goes away without EOS (crashed, killed, stopped without -e): eos ends the stream with a warning, error fails the pipeline, wait keeps it running and resumes with a DISCONT buffer when a writer appears again at socket-path")
                    .mutable_ready()
                    .build(),
                crate::realtime::priority_property(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Counters over the whole run, reconnections included: buffers, bytes, bytes-copied, buffers-zero-copy, wakeups-sent, wakeups-received, peak-held-bytes (heap bytes held downstream at most), buffers-lost (buffers the writer dropped for this reader under when-full=drop), batch-sleeps-timed-out (sleeps that asked a writer of a stream that is not live for a batch of buffers and ended at their 2 ms bound), sleeps-ended-by-timer (sleeps between frames in heap blocks that came fast, ended by the reader's own timer one frame's gap later instead of by the writer)")
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
                drop(settings);
                self.repoint();
            }
            "stream" => {
                settings.stream = value.get().ok().flatten();
                drop(settings);
                self.repoint();
            }
            "is-live" => {
                settings.is_live = value.get().unwrap_or(DEFAULT_IS_LIVE);
                drop(settings);
                self.obj().set_live(self.settings().is_live);
            }
            "always-copy" => settings.always_copy = value.get().unwrap_or(DEFAULT_ALWAYS_COPY),
            "on-disconnect" => settings.on_disconnect = value.get().unwrap_or(DEFAULT_ON_DISCONNECT),
            "busy-wait" => settings.busy_wait = value.get().unwrap_or(DEFAULT_BUSY_WAIT),
            "buffer-lists" => settings.buffer_lists = value.get().unwrap_or(DEFAULT_BUFFER_LISTS),
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
            "is-live" => settings.is_live.to_value(),
            "always-copy" => settings.always_copy.to_value(),
            "on-disconnect" => settings.on_disconnect.to_value(),
            "busy-wait" => settings.busy_wait.to_value(),
            "buffer-lists" => settings.buffer_lists.to_value(),
            "stats" => self
                .stats
                .to_structure("application/x-shmringsrc-stats", false)
                .to_value(),
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_format(gst::Format::Time);
        obj.set_live(DEFAULT_IS_LIVE);
        // GstBaseSrc sends a stream-start of its own, with a made-up stream
        // id, before the first `create`, and a segment of its own before the
        // first buffer. The writer's come through the ring, and downstream
        // must see those (see `in_place_of`), also when GStreamer replays the
        // pad's sticky events to a downstream linked while we run.
        let element = obj.downgrade();
        obj.src_pad()
            .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                let Some(element) = element.upgrade() else {
                    return gst::PadProbeReturn::Ok;
                };
                let Some(event) = info.event() else {
                    return gst::PadProbeReturn::Ok;
                };
                if !matches!(event.type_(), gst::EventType::StreamStart | gst::EventType::Segment) {
                    return gst::PadProbeReturn::Ok;
                }
                match element.imp().in_place_of(event) {
                    Replace::Keep => gst::PadProbeReturn::Ok,
                    Replace::With(ours) => {
                        info.data = Some(gst::PadProbeData::Event(ours));
                        gst::PadProbeReturn::Ok
                    }
                    Replace::Drop => {
                        // Taking the event and returning Handled frees it
                        // once; Drop would leave GStreamer unreffing a
                        // cleared pointer.
                        drop(info.take_event());
                        gst::PadProbeReturn::Handled
                    }
                }
            });
    }
}

impl GstObjectImpl for ShmRingSrc {}

impl ElementImpl for ShmRingSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Shared-memory ring source",
                "Source/Network",
                "Reads a stream, with its caps, timestamps and events, from a shmringsink in another process",
                "gst-shmring developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let template = gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &gst::Caps::new_any(),
            );
            vec![template.expect("an ANY src template is valid")]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl URIHandlerImpl for ShmRingSrc {
    const URI_TYPE: gst::URIType = gst::URIType::Src;

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
        self.repoint();
        self.obj().notify("socket-path");
        self.obj().notify("stream");
        Ok(())
    }
}

impl BaseSrcImpl for ShmRingSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let path = Address::from_properties(settings.socket_path.as_deref(), settings.stream.as_deref())
            .and_then(|address| address.socket_path())
            .map_err(|err| gst::error_msg!(gst::ResourceError::Settings, ["{err}"]))?;
        ipc::socket_directory(&path).map_err(|err| gst::error_msg!(gst::ResourceError::NotFound, ["{err}"]))?;
        self.unlock.start()?;
        self.repoint.start()?;
        *self.lock_socket_path() = Some(path);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.set_writer_control(None);
        *self.lock_state() = State::default();
        *self.caps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        *self.lock_pushed() = Pushed::default();
        self.unmapped_warned.store(false, Ordering::Relaxed);
        *self
            .writer_latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        *self.lock_socket_path() = None;
        self.repoint.stop();
        self.unlock.stop();
        self.realtime.leave();
        Ok(())
    }

    fn event(&self, event: &gst::Event) -> bool {
        match upstream::outgoing(event) {
            Some(Outgoing::Event(message)) => {
                let sent = self.send_upstream(&message);
                if let gst::EventView::Reconfigure(_) = event.view() {
                    return BaseSrcImplExt::parent_event(self, event);
                }
                sent
            }
            Some(Outgoing::Seek(seek)) => {
                let make = |id| Message::Seek(ipc::messages::Seek { id, ..seek });
                self.ask_writer(make, SEEK_TIMEOUT).is_some_and(|answer| answer.handled)
            }
            None => BaseSrcImplExt::parent_event(self, event),
        }
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let Some((kind, format)) = upstream::question(query) {
            let make = |id| Message::Query {
                id,
                query: kind,
                format: format.into_glib() as u32,
            };
            if let Some(answer) = self.ask_writer(make, QUERY_TIMEOUT)
                && upstream::fill(query, &answer, format)
            {
                return true;
            }
            return BaseSrcImplExt::parent_query(self, query);
        }
        if let gst::QueryViewMut::Latency(latency) = query.view_mut()
            && self.obj().is_live()
        {
            // Buffers are pushed as soon as they are read, so what the
            // reader adds is scheduling noise: the writer's upstream latency
            // is the stream's. How much the ring may hold has no fixed
            // bound in time, so no maximum is claimed.
            let writer = *self
                .writer_latency
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            latency.set(true, writer.unwrap_or(gst::ClockTime::ZERO), gst::ClockTime::NONE);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let caps = self
            .caps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let caps = caps.unwrap_or_else(gst::Caps::new_any);
        Some(match filter {
            Some(filter) => filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        self.reconfigured.store(true, Ordering::Relaxed);
        // The caps come from the writer, in stream order, in `create`.
        let caps = self
            .caps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(caps) = caps {
            self.obj()
                .set_caps(&caps)
                .map_err(|_| gst::loggable_error!(CAT, "downstream refused {caps}"))?;
        }
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

    fn create(
        &self,
        _offset: u64,
        _buffer: Option<&mut gst::BufferRef>,
        _length: u32,
    ) -> Result<CreateSuccess, gst::FlowError> {
        // Offsets and lengths are for pull mode, which a stream from
        // another process cannot offer; GstPushSrc ignores them too.
        self.produce()
    }
}

// GstPushSrc's `create` only calls the subclass's, and the bindings put a
// trampoline on each side of it: `BaseSrcImpl::create` above answers
// GstBaseSrc directly, about 400 instructions a buffer sooner.
impl PushSrcImpl for ShmRingSrc {}

impl ShmRingSrc {
    /// The next buffer, or list of buffers, for GstBaseSrc to push: read from
    /// the writer, connecting (or reconnecting) first as needed.
    fn produce(&self) -> Result<CreateSuccess, gst::FlowError> {
        self.realtime.enter_for(self.obj().upcast_ref(), *CAT);
        let unlock = self.unlock.notifier()?;
        let repoint = self.repoint.notifier()?;
        let mut state = self.lock_state();
        loop {
            // Compared on every call, not only when the re-point fd wakes a
            // sleep: a reader that never runs dry never sleeps.
            if state.link.as_ref().is_some_and(|link| !self.points_at(&link.path)) {
                // Leases downstream keep the old heap mapped, and the old
                // socket open, until they are dropped; every buffer already
                // pushed is whole.
                gst::info!(CAT, imp = self, "leaving the writer for the new socket-path or stream");
                state.link = None;
                self.set_writer_control(None);
                state.discont = true;
            }
            if state.link.is_none() {
                match self.connect(&unlock, &repoint)? {
                    Connect::Linked(link) => state.link = Some(*link),
                    Connect::Repointed => {
                        repoint.drain();
                        continue;
                    }
                }
                if state.discont {
                    gst::info!(CAT, imp = self, "linked to a writer; resuming with a DISCONT");
                }
            }
            let Some(link) = state.link.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            match self.read(link)? {
                Read::Buffer(mut buffer) => {
                    if std::mem::take(&mut state.discont) {
                        buffer.make_mut().set_flags(gst::BufferFlags::DISCONT);
                    }
                    return match state.link.as_mut() {
                        Some(link) => self.batch(link, buffer),
                        None => Ok(CreateSuccess::NewBuffer(buffer)),
                    };
                }
                Read::Repointed => {
                    repoint.drain();
                    continue;
                }
                Read::WriterGone => {}
            }
            let on_disconnect = self.settings().on_disconnect;
            let cause = "The shmringsink went away without sending EOS: the writer process stopped, crashed or was killed, or it let this reader go (it fell too far behind in when-full=drop, or the writer failed)";
            match on_disconnect {
                OnDisconnect::Error => {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        [
                            "{cause}. Set on-disconnect=wait to keep running until a writer comes back, or eos to end the stream"
                        ]
                    );
                    return Err(gst::FlowError::Error);
                }
                OnDisconnect::Eos => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        [
                            "{cause}; ending the stream. Set on-disconnect=wait to keep running until a writer comes back"
                        ]
                    );
                    return Err(gst::FlowError::Eos);
                }
                OnDisconnect::Wait => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ["{cause}; waiting for a writer to come back (on-disconnect=wait)"]
                    );
                    // Leases downstream keep the old heap mapped, and the old
                    // socket open, until they are dropped.
                    state.link = None;
                    self.set_writer_control(None);
                    state.discont = true;
                }
            }
        }
    }
}

impl ShmRingSrc {
    /// Takes a record while the writer's flush word names a flush `begun`
    /// whose Flush record has not been read: the records before that one
    /// are the old stream's, and are discarded (blocks go back at once).
    /// Video layouts still apply: the writer sends one only when it
    /// changes. Nothing is taken before the watcher has sent the flush's
    /// FLUSH_START and is sending its FLUSH_STOP, nor while GstBaseSrc is
    /// flushing: the `Flushing` returned stops this thread until the
    /// FLUSH_STOP starts it again, so that nothing of the new stream is
    /// pushed into a flushing pad.
    fn skip_flushed(&self, link: &mut Link, begun: u32) -> Result<Option<Step>, gst::FlowError> {
        let unlock = self.unlock.notifier()?;
        if !link.watcher.released(begun) {
            link.watcher.nudge();
            return Err(gst::FlowError::Flushing);
        }
        if ipc::readable_now(unlock.as_fd()).unwrap_or(true) {
            return Err(gst::FlowError::Flushing);
        }
        let record = match link.records.peek() {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.decode_error(err)),
        };
        let header = *record.header();
        let payload = record.payload();
        let kept = matches!(header.kind, RecordKind::Flush | RecordKind::VideoLayout);
        if kept && payload.len() > codec::MAX_CONTROL_PAYLOAD as u64 {
            return Err(self.decode_error(format!(
                "the writer sent an unreadable {:?} record ({} bytes); the writer is broken",
                header.kind,
                payload.len()
            )));
        }
        let bytes = match payload {
            Payload::Inline { .. } => {
                let bytes = if kept { record.inline_to_vec() } else { Vec::new() };
                record.release();
                bytes
            }
            Payload::Block { offset, len } => {
                record.release();
                let bytes = if kept {
                    link.heap.block_to_vec(offset, len).unwrap_or_default()
                } else {
                    Vec::new()
                };
                link.releases.give_back(offset);
                bytes
            }
        };
        match header.kind {
            RecordKind::VideoLayout => {
                link.layout = codec::decode_video_layout(&bytes).map_err(|err| self.decode_error(err))?;
            }
            RecordKind::Flush => {
                let count = ring::flush::decode_flush(&bytes).ok_or_else(|| {
                    self.decode_error(format!(
                        "the writer sent an unreadable flush record (a payload of {} bytes, not a count and a reset-time flag); the writer is broken",
                        bytes.len()
                    ))
                })?;
                if count == begun {
                    gst::debug!(CAT, imp = self, "the old stream ends at flush {count}");
                    link.flush_done = begun;
                    // FLUSH_STOP took the segment from downstream: the next
                    // goes again even if it says the same, and the rebase
                    // starts again on a reset running time.
                    self.lock_pushed().segment = None;
                    link.segment_pending = link.segment.is_some();
                    link.origin = None;
                }
            }
            _ => {}
        }
        Ok(Some(Step::Continue))
    }

    fn writer_control(&self) -> Option<Arc<WriterControl>> {
        self.writer_control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_writer_control(&self, control: Option<Arc<WriterControl>>) {
        *self
            .writer_control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = control;
    }

    /// Sends an upstream event to the writer. Returns whether it went.
    fn send_upstream(&self, message: &Message) -> bool {
        let Some(control) = self.writer_control() else {
            gst::debug!(CAT, imp = self, "no writer; {message:?} stays here");
            return false;
        };
        match control.send(message) {
            Ok(true) => true,
            Ok(false) => {
                gst::debug!(CAT, imp = self, "the writer does not read; {message:?} dropped");
                false
            }
            Err(err) => {
                gst::debug!(CAT, imp = self, "{message:?} not sent: {err}");
                false
            }
        }
    }

    /// Asks the writer's pipeline, waiting up to `timeout` for its answer.
    fn ask_writer(
        &self,
        make: impl FnOnce(u32) -> Message,
        timeout: std::time::Duration,
    ) -> Option<ipc::messages::Answer> {
        let control = self.writer_control()?;
        match control.ask(make, timeout) {
            Ok(answer) => Some(answer),
            Err(err @ upstream::AskError::Protocol(_)) => {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["{err}"]);
                None
            }
            Err(err) => {
                gst::debug!(CAT, imp = self, "no answer from the writer: {err}");
                None
            }
        }
    }

    /// `first`, and the buffers whose records follow it in the queue
    /// already, pushed as one list so that downstream takes its locks once
    /// for them all. Never waits for a record: a list ends at the first
    /// that is not there yet, or that is not a buffer, which then goes
    /// downstream in order after the list (a caps or event record, or the
    /// metas or layout of a later buffer).
    fn batch(&self, link: &mut Link, first: gst::Buffer) -> Result<CreateSuccess, gst::FlowError> {
        if !link.batch || !next_is_buffer(link) || self.obj().num_buffers() != -1 {
            // `num-buffers` counts what create returns: lists would
            // stretch it.
            return Ok(CreateSuccess::NewBuffer(first));
        }
        let mut list = gst::BufferList::new_sized(MAX_BATCH);
        let buffers = list.get_mut().ok_or(gst::FlowError::Error)?;
        buffers.add(first);
        while buffers.len() < MAX_BATCH && next_is_buffer(link) {
            match self.next_record(link) {
                Ok(Some(Step::Buffer(buffer))) => {
                    link.read_since_wake = link.read_since_wake.saturating_add(1);
                    buffers.add(buffer);
                }
                Ok(_) => break,
                // What was read goes downstream first, the failure next.
                Err(err) => {
                    link.failed = Some(err);
                    break;
                }
            }
        }
        Ok(CreateSuccess::NewBufferList(list))
    }

    /// Bytes of records to ask the writer to wait for before it wakes us:
    /// about 60 small buffers, or, for buffers in heap blocks, a quarter of
    /// the frames the heap holds, so that the writer seldom runs out of
    /// blocks while we sleep (then it waits for our sleep's bound, 2 ms).
    fn batch_bytes(&self, link: &Link) -> u64 {
        let most = (link.records.capacity() / 4).min(WAKE_BATCH_BYTES);
        if link.last_block_len == 0 {
            return most;
        }
        let per_buffer =
            link.records.position().saturating_sub(link.read_at_wake) / u64::from(link.read_since_wake.max(1));
        let frames = link.heap.size() / link.last_block_len.saturating_mul(4).max(1);
        per_buffer.saturating_mul(frames).min(most)
    }

    /// Reads records until one is a buffer, or the writer is gone and its
    /// ring drained. Sleeps in between, on the ring, the socket and `unlock`.
    fn read(&self, link: &mut Link) -> Result<Read, gst::FlowError> {
        if let Some(err) = link.failed.take() {
            return Err(err);
        }
        loop {
            let sent = link.records.wakeups_sent();
            if sent != link.wakeups_counted {
                self.stats.add_wakeups_sent(sent - link.wakeups_counted);
                link.wakeups_counted = sent;
            }
            match self.next_record(link)? {
                Some(Step::Buffer(buffer)) => {
                    link.read_since_wake = link.read_since_wake.saturating_add(1);
                    return Ok(Read::Buffer(buffer));
                }
                Some(Step::Continue) => continue,
                None => {}
            }
            if link.writer_gone {
                return Ok(Read::WriterGone);
            }
            if link.busy_wait {
                let arrived = link
                    .records
                    .spin_for_data(SPINS_BEFORE_SLEEP)
                    .map_err(|err| self.decode_error(err))?;
                if arrived {
                    link.pacer.arrived(Instant::now());
                    continue;
                }
            }
            let timed = link.busy_wait && link.pacer.arm(Instant::now());
            // Records came faster than we sleep: ask the writer to wake us
            // for a batch of them rather than for each (it does only while
            // its stream is not live), and bound the sleep, since the batch
            // may never fill. Without the busy wait only: a reader that
            // spins before it sleeps keeps up record by record.
            // Our frame timer woke us before the frame came: still ask for
            // the batch, so that the writer need not wake us for that frame,
            // but let this sleep end at the batch or its bound.
            let timer_came_early = link.woken_by_timer && link.read_since_wake == 0;
            let fast = link.read_since_wake >= BATCH_AFTER_RECORDS
                || (link.last_block_len > 0 && (timer_came_early || link.slept_briefly && link.read_since_wake > 0));
            let batch = if !link.busy_wait && fast {
                self.batch_bytes(link)
            } else {
                0
            };
            let sleep = link
                .records
                .prepare_wait_batched(batch)
                .map_err(|err| self.decode_error(err))?;
            if !sleep {
                if timed {
                    link.pacer.disarm();
                }
                continue;
            }
            let slept_at = Instant::now();
            // Frames that come fast: our own timer wakes us one frame's gap
            // from now, so that the writer seldom has to (see `pacer`).
            let frame_timed = !link.busy_wait && {
                let frames = batch > 0 && link.last_block_len > 0 && !timer_came_early;
                link.pacer
                    .arm_for_next_frame(slept_at, link.read_since_wake, frames, BRIEF_SLEEP)
            };
            link.read_since_wake = 0;
            link.read_at_wake = link.records.position();
            let ready = link.waiter.wait_at_most((batch > 0).then_some(BATCH_SLEEP_LIMIT));
            link.records.finish_edge_wait();
            link.slept_briefly = slept_at.elapsed() < BRIEF_SLEEP;
            let ready = ready.map_err(|err| {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["{err}"]);
                gst::FlowError::Error
            })?;
            link.woken_by_timer = frame_timed && ready[3] && !ready[0];
            if ready[3] {
                link.pacer.fired();
            }
            if link.woken_by_timer {
                self.stats.sleep_ended_by_timer();
            }
            if ready[0] {
                self.stats.woken();
                if link.busy_wait {
                    link.pacer.arrived(Instant::now());
                }
                if timed && !ready[3] {
                    link.pacer.disarm();
                }
            } else if timed && ready[3] {
                // Awake just before the record is due: watch for it
                // without sleeping, so that the writer need not wake us.
                let deadline = Instant::now() + link.pacer.window();
                while Instant::now() < deadline {
                    let arrived = link
                        .records
                        .spin_for_data(SPINS_BEFORE_SLEEP / 4)
                        .map_err(|err| self.decode_error(err))?;
                    if arrived {
                        link.pacer.arrived(Instant::now());
                        break;
                    }
                }
            }
            if batch > 0 && !ready.contains(&true) {
                // The batch did not fill: the writer paused, or its burst
                // ended. Records one at a time again, until they come fast.
                self.stats.batch_sleep_timed_out();
                link.read_since_wake = 0;
                continue;
            }
            if ready[2] {
                return Err(gst::FlowError::Flushing);
            }
            if ready[4] {
                return Ok(Read::Repointed);
            }
            if link.records.peer_tampered() {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Read,
                    [
                        "The writer ({}) cleared O_NONBLOCK on a shared eventfd, which could block this reader; it is broken or hostile",
                        link.releases.connection.peer_description()
                    ]
                );
                return Err(gst::FlowError::Error);
            }
            // The writer's records may still be in the ring; drain them
            // before reporting that it is gone.
            if ready[1] {
                link.writer_gone = true;
            }
        }
    }
}

/// Whether the record at the read position is there and is a buffer whose
/// bytes are inline. A buffer in a heap block does not join a list: read
/// early, its block would become a lease held downstream, which the writer
/// waits for only briefly, instead of a block on its way back, which it
/// waits for as long as it takes; and at more than 4 KiB a buffer's own
/// cost downstream is small beside its bytes.
fn next_is_buffer(link: &mut Link) -> bool {
    matches!(link.records.peek(), Ok(Some(record))
        if record.header().kind == RecordKind::Buffer && matches!(record.payload(), Payload::Inline { .. }))
}
