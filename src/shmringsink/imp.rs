use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use crate::codec;
use crate::ipc::{self, Connection, IpcError, Listener, Trigger, Waiter};
use crate::ring::layout::MAX_CAPACITY;
use crate::ring::{CommitOutcome, Notifier, Producer, RecordHeader, Reservation, RingError, check_capacity};
use crate::stats::Stats;
use crate::unlock::Unlock;

use super::pool::RingBufferPool;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsink",
        gst::DebugColorFlags::empty(),
        Some("Shared-memory ring sink"),
    )
});

const DEFAULT_RING_SIZE: u64 = 0;
const DEFAULT_WAIT_FOR_CONNECTION: bool = true;
const DEFAULT_PERMS: u32 = 0o600;
/// Automatic ring sizes: raw video gets this many frames, so the writer can
/// run ahead of the reader by a few frames while the ring stays small enough
/// for the last-level cache at 1080p.
const AUTO_VIDEO_FRAMES: u64 = 4;
const AUTO_VIDEO_MIN: u64 = 1 << 20;
/// Raw audio gets 1/this of a second, with a floor: enough to ride out a
/// slow reader, small enough that a writer running ahead adds little
/// latency.
const AUTO_AUDIO_FRACTION: u64 = 5;
const AUTO_AUDIO_MIN: u64 = 64 << 10;
const AUTO_OTHER_SIZE: u64 = 8 << 20;
/// Room in front of each pool buffer for the events that arrive between
/// its allocation and its rendering (a segment, at the start of a stream).
const POOL_PREAMBLE: usize = 4096;
/// How often, in buffers, a linked sink turns away readers that connected
/// meanwhile. Version 1 serves one reader; the others get a clear "busy"
/// instead of waiting forever, for one accept() per this many buffers.
const REFUSAL_INTERVAL: u32 = 256;
/// Connections kept waiting for their hello; beyond this the oldest goes.
const MAX_PENDING_READERS: usize = 8;

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

/// A connected reader and the ring it reads.
struct Link {
    connection: Connection,
    producer: Producer,
    /// Sleeps on the ring's space fd, the socket, the unlock fd and the
    /// listener (to turn away extra readers).
    waiter: Waiter<4>,
}

#[derive(Default)]
struct State {
    listener: Option<Listener>,
    link: Option<Link>,
    /// Events that arrived while a pool buffer was reserved but not yet
    /// rendered. They belong before that buffer, so they go into its
    /// reservation's preamble when it is rendered.
    queued_events: Vec<(RecordHeader, Vec<u8>)>,
    /// Buffers rendered since extra readers were last turned away.
    renders_since_refusal: u32,
    /// Rendering failed: nothing more, EOS included, goes to a reader.
    failed: bool,
    /// Accepted connections whose hello has not arrived yet.
    pending: Vec<Connection>,
    /// Upstream keeps pool buffers after pushing them: the pool hands out
    /// ordinary memory instead.
    pool_disabled: bool,
}

#[derive(Default)]
pub struct ShmRingSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Written by `unlock` to interrupt a wait; separate from `state` so that
    /// it can be reached while `render` holds the state lock.
    unlock: Unlock,
    stats: Stats,
}

/// How `render` handled a buffer the pool may have reserved.
enum InPlace {
    /// Committed where it was reserved.
    Committed,
    /// Out of stream order: copied after the queued events.
    Copied(WriteOutcome),
    /// Not a reservation of the current ring.
    NotReserved,
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

    /// The capacity of a new ring: `ring-size`, or sized from the caps.
    fn ring_capacity(&self, settings: &Settings) -> u64 {
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
        size.div_ceil(page).saturating_mul(page).min(MAX_CAPACITY)
    }

    /// Makes sure a reader is linked. Accepts waiting readers and links the
    /// first that says hello; with `wait`, sleeps until one does. Returns
    /// whether one is linked. A connection that never says hello blocks
    /// nothing: it waits in `pending` while others are served.
    fn ensure_link(&self, state: &mut State, unlock: &Notifier, wait: bool) -> Result<bool, gst::FlowError> {
        if let Some(link) = &state.link {
            if !link.producer.reader_detached() {
                return Ok(true);
            }
            gst::info!(CAT, imp = self, "the reader detached; waiting for a new one");
            state.link = None;
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

    /// Hands a reader that said hello a new ring, and makes it the link.
    /// Returns `false` if the reader was refused (another protocol version).
    fn link_reader(
        &self,
        state: &mut State,
        connection: Connection,
        version: u32,
        unlock: &Notifier,
    ) -> Result<bool, gst::FlowError> {
        let capacity = self.ring_capacity(&self.settings());
        let producer = match ipc::answer_hello(&connection, version, capacity) {
            Ok(producer) => producer,
            Err(IpcError::Ring(err)) => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::OpenWrite,
                    ["Could not create the ring: {err}"]
                );
                return Err(gst::FlowError::Error);
            }
            Err(err) => {
                gst::element_imp_warning!(self, gst::ResourceError::Read, ["Refused a reader: {err}"]);
                return Ok(false);
            }
        };
        let Some(listener) = state.listener.as_ref() else {
            return Err(gst::FlowError::Flushing);
        };
        let fds = [
            (producer.space_fd(), Trigger::Edge),
            (connection.as_fd(), Trigger::Level),
            (unlock.as_fd(), Trigger::Level),
            (listener.as_fd(), Trigger::Level),
        ];
        let waiter = Waiter::new(fds).map_err(|err| self.post_ipc_error(&err))?;
        gst::info!(CAT, imp = self, "reader connected; ring of {capacity} bytes");
        state.link = Some(Link {
            connection,
            producer,
            waiter,
        });
        for extra in std::mem::take(&mut state.pending) {
            ipc::refuse_busy(&extra);
        }
        // The replay below carries the sticky ones.
        state.queued_events.clear();
        self.replay_sticky_events(state)?;
        Ok(state.link.is_some())
    }

    /// Answers "busy" to every reader waiting in the listen queue.
    fn refuse_extra_readers(&self, state: &mut State) {
        state.renders_since_refusal = 0;
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
                self.write_record(state, &header, payload.len(), |dest| dest.copy_from_slice(&payload))?;
            }
        }
        Ok(())
    }

    /// Writes one record into the linked reader's ring, sleeping while the
    /// ring is full. If the reader goes away, the record is dropped with it.
    fn write_record(
        &self,
        state: &mut State,
        header: &RecordHeader,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<WriteOutcome, gst::FlowError> {
        loop {
            let Some(link) = state.link.as_mut() else {
                return Ok(WriteOutcome::NoReader);
            };
            match link.producer.grant(payload_len) {
                Ok(Some(mut grant)) => {
                    fill(grant.payload());
                    grant.commit(header);
                    self.stats.set_wakeups_sent(link.producer.wakeups_sent());
                    return Ok(WriteOutcome::Written);
                }
                Ok(None) => {
                    self.wait_for_space(state, payload_len)?;
                }
                Err(err) => return Err(self.post_ring_error(&err, payload_len)),
            }
        }
    }

    /// Writes the events queued behind a reservation, in order.
    fn write_queued_events(&self, state: &mut State) -> Result<(), gst::FlowError> {
        for (header, payload) in std::mem::take(&mut state.queued_events) {
            self.write_record(state, &header, payload.len(), |dest| dest.copy_from_slice(&payload))?;
        }
        Ok(())
    }

    /// Sleeps until a record with `payload_len` bytes of payload fits, the
    /// reader leaves (the link is dropped), or the sink is unlocked. Returns
    /// `false` if it did not sleep, because the record already fits.
    fn wait_for_space(&self, state: &mut State, payload_len: usize) -> Result<bool, gst::FlowError> {
        let Some(link) = state.link.as_mut() else {
            return Ok(false);
        };
        // The record that waits may sit behind a pool buffer upstream has
        // not rendered yet, perhaps because this very thread is busy here:
        // let the records after it through rather than wait on it.
        if link.producer.has_pending() {
            link.producer.pad_pending();
        }
        match link.producer.prepare_wait(payload_len) {
            Ok(false) => return Ok(false),
            Ok(true) => {
                self.stats.blocked_full();
            }
            Err(err) => return Err(self.post_ring_error(&err, payload_len)),
        }
        let ready = link.waiter.wait();
        link.producer.finish_edge_wait();
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
            state.link = None;
        } else if ready[3] {
            self.refuse_extra_readers(state);
        }
        Ok(true)
    }

    fn post_ring_error(&self, err: &RingError, payload_len: usize) -> gst::FlowError {
        match err {
            RingError::TooLarge { capacity, .. } => gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                ["A buffer of {payload_len} bytes does not fit in the ring of {capacity} bytes; raise ring-size"]
            ),
            _ => gst::element_imp_error!(self, gst::ResourceError::Write, ["{err}"]),
        }
        gst::FlowError::Error
    }

    fn post_ipc_error(&self, err: &IpcError) -> gst::FlowError {
        gst::element_imp_error!(self, gst::ResourceError::OpenWrite, ["{err}"]);
        gst::FlowError::Error
    }

    /// Room in the linked reader's ring for a buffer of `size` bytes that
    /// upstream fills in place, for the buffer pool. Waits for a reader
    /// (with `wait-for-connection`) and for room like `render` does, except
    /// behind another reservation: upstream may hold that one until it gets
    /// this buffer, so then it returns `None` and the buffer is copied.
    pub(super) fn reserve(&self, size: usize) -> Result<Option<Reservation>, gst::FlowError> {
        let unlock = self.unlock.notifier()?;
        let wait = self.wait_for_connection();
        let mut state = self.lock_state();
        loop {
            if state.pool_disabled || !self.ensure_link(&mut state, &unlock, wait)? {
                return Ok(None);
            }
            let Some(link) = state.link.as_mut() else { continue };
            let needed = size + POOL_PREAMBLE;
            if crate::ring::layout::record_size(needed as u64)
                .is_none_or(|record| record > link.producer.capacity() / 2)
            {
                // Too big to pool: render says so, or copies it.
                return Ok(None);
            }
            match link.producer.reserve(size, POOL_PREAMBLE) {
                Ok(Some(reservation)) => return Ok(Some(reservation)),
                // Never wait behind our own buffers: the thread that would
                // render or free them may be the one waiting.
                Ok(None) if link.producer.has_outstanding() => return Ok(None),
                // Room, but pool buffers already span half the ring: this
                // one gets ordinary memory.
                Ok(None) if !self.wait_for_space(&mut state, needed)? => return Ok(None),
                Ok(None) => {}
                Err(err) => {
                    gst::debug!(CAT, imp = self, "not reserving {size} bytes: {err}");
                    return Ok(None);
                }
            }
        }
    }

    /// Interrupts a pool allocation waiting for a reader or for room.
    pub(super) fn interrupt_reserve(&self) {
        self.unlock.unlock();
    }

    /// Commits `buffer` where the pool reserved it, with the queued events
    /// in its preamble: nothing is copied. Returns `false` if it has to be
    /// copied, after turning an out-of-order reservation into padding.
    fn commit_in_place(
        &self,
        state: &mut State,
        buffer: &gst::Buffer,
        map: &[u8],
        header: &RecordHeader,
    ) -> Result<InPlace, gst::FlowError> {
        let Some(link) = state.link.as_mut() else {
            return Ok(InPlace::NotReserved);
        };
        if buffer.n_memory() != 1 {
            return Ok(InPlace::NotReserved);
        }
        let preamble: Vec<(RecordHeader, &[u8])> = state
            .queued_events
            .iter()
            .map(|(header, payload)| (*header, payload.as_slice()))
            .collect();
        match link
            .producer
            .commit_reserved(map.as_ptr(), map.len(), &preamble, header)
        {
            CommitOutcome::Committed => {
                state.queued_events.clear();
                if !buffer.is_writable() && !state.pool_disabled {
                    // Upstream keeps its buffers after pushing them (a
                    // decoder's reference frames, a tee): their ring space
                    // stays in use until it lets go, which can hold up the
                    // whole ring. Hand it ordinary memory from now on.
                    gst::info!(
                        CAT,
                        imp = self,
                        "upstream holds on to pool buffers; copying from now on"
                    );
                    state.pool_disabled = true;
                }
                self.stats.set_wakeups_sent(link.producer.wakeups_sent());
                Ok(InPlace::Committed)
            }
            CommitOutcome::NotReserved => Ok(InPlace::NotReserved),
            CommitOutcome::OutOfOrder(stale) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{buffer:?} was rendered out of the order it was allocated in; copying it"
                );
                drop(preamble);
                // Padding first, so that the copy does not wait behind it; the
                // space stays unused until upstream drops the buffer.
                drop(stale);
                self.write_queued_events(state)?;
                let outcome = self.write_record(state, header, map.len(), |dest| dest.copy_from_slice(map))?;
                Ok(InPlace::Copied(outcome))
            }
        }
    }

    fn render_locked(
        &self,
        state: &mut State,
        unlock: &Notifier,
        buffer: &gst::Buffer,
        map: &gst::BufferMap<'_, gst::buffer::Readable>,
        header: &RecordHeader,
        wait: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        state.renders_since_refusal += 1;
        if state.renders_since_refusal >= REFUSAL_INTERVAL && state.link.is_some() {
            self.refuse_extra_readers(state);
        }
        loop {
            if !self.ensure_link(state, unlock, wait)? {
                gst::trace!(CAT, imp = self, "no reader; dropping {buffer:?}");
                return Ok(gst::FlowSuccess::Ok);
            }
            let outcome = match self.commit_in_place(state, buffer, map, header)? {
                InPlace::Committed => {
                    self.stats.buffer(map.len(), false);
                    return Ok(gst::FlowSuccess::Ok);
                }
                InPlace::Copied(outcome) => outcome,
                InPlace::NotReserved => {
                    self.write_queued_events(state)?;
                    self.write_record(state, header, map.len(), |dest| dest.copy_from_slice(map))?
                }
            };
            match outcome {
                WriteOutcome::Written => {
                    self.stats.buffer(map.len(), true);
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
        // EOS waits for a reader like a buffer does, so that a stream with
        // no buffers still ends on the reader's side.
        if state.failed {
            return Ok(());
        }
        let is_eos = event.type_() == gst::EventType::Eos;
        if is_eos && !self.ensure_link(&mut state, &unlock, self.wait_for_connection())? {
            return Ok(());
        }
        let Some(link) = state.link.as_ref() else { return Ok(()) };
        if link.producer.has_pending() && !is_eos {
            state.queued_events.push((header, payload));
            return Ok(());
        }
        self.write_queued_events(&mut state)?;
        self.write_record(&mut state, &header, payload.len(), |dest| {
            dest.copy_from_slice(&payload)
        })?;
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
                    .blurb("Bytes of shared memory for the ring, rounded up to whole pages; 0 sizes it from the caps (4 frames of raw video, 200 ms of raw audio but at least 64 KiB, 8 MiB otherwise)")
                    .maximum(MAX_CAPACITY)
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
                    .blurb("Counters: buffers, bytes, bytes-copied, buffers-zero-copy, wakeups-sent, wakeups-received, times-blocked-full")
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
            "stats" => self
                .stats
                .to_structure("application/x-shmringsink-stats", true)
                .to_value(),
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Pacing belongs to the reader's sinks; the writer should hand
        // buffers over as soon as they are made.
        self.obj().set_sync(false);
        // A kept last sample could be ring memory that the reader has
        // released and the writer is about to reuse.
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
            check_capacity(rounded)
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
        *self.lock_state() = State::default();
        self.unlock.stop();
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let unlock = self.unlock.notifier()?;
        let wait = self.wait_for_connection();
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ["Could not map a buffer for reading"]);
            gst::FlowError::Error
        })?;
        let header = codec::buffer_header(buffer);
        let mut state = self.lock_state();
        if state.failed {
            return Err(gst::FlowError::Error);
        }
        let rendered = self.render_locked(&mut state, &unlock, buffer, &map, &header, wait);
        if let Err(gst::FlowError::Error) = rendered {
            // Close the connection without EOS, so that the reader reports
            // that the writer failed instead of ending as if it had finished.
            state.failed = true;
            state.link = None;
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
        // Only raw video gets the ring-backed pool: its frames are large and
        // fixed-size. Small buffers cost less to copy than to reserve.
        let (caps, need_pool) = query.get_owned();
        let info = caps
            .as_ref()
            .and_then(|caps| gst_video::VideoInfo::from_caps(caps).ok());
        if let (Some(caps), Some(info), true) = (caps, info, need_pool) {
            let pool = RingBufferPool::new(&self.obj());
            let mut config = pool.config();
            let size = info.size() as u32;
            config.set_params(Some(&caps), size, 0, 0);
            pool.set_config(config)
                .map_err(|err| gst::loggable_error!(CAT, "could not configure the ring pool: {err}"))?;
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
