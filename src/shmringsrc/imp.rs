use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use crate::codec::{self, Decoded};
use crate::ipc::{self, Connection, Trigger, Waiter};
use crate::ring::{Consumer, Notifier, RecordKind};
use crate::stats::Stats;
use crate::unlock::Unlock;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsrc",
        gst::DebugColorFlags::empty(),
        Some("Shared-memory ring source"),
    )
});

const DEFAULT_IS_LIVE: bool = false;
const DEFAULT_ALWAYS_COPY: bool = false;

#[derive(Debug, Clone, Default)]
struct Settings {
    socket_path: Option<PathBuf>,
    is_live: bool,
    always_copy: bool,
}

/// The writer we read from.
struct Link {
    connection: Connection,
    consumer: Consumer,
    /// The writer closed its socket; what is left in the ring is all there is.
    writer_gone: bool,
    /// Whether buffers may be handed out as ring memory: not with
    /// `always-copy`, and only for raw audio and video. Parsers and decoders
    /// read compressed data more than once, and the writer could change it
    /// in between; raw media is only ever read as samples.
    lease: bool,
    /// Sleeps on the ring's data fd, the socket and the unlock fd.
    waiter: Waiter<3>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
}

#[derive(Default)]
pub struct ShmRingSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// The caps last read from the ring, answered to caps queries. Kept apart
    /// from `state` because setting caps queries us back.
    caps: Mutex<Option<gst::Caps>>,
    unlock: Unlock,
    stats: Stats,
    /// Set while the writer's stream-start is pushed; see `constructed`.
    forwarding_stream_start: AtomicBool,
}

/// What one record turned into.
enum Step {
    Buffer(gst::Buffer),
    Continue,
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

    fn connect(&self, unlock: &Notifier) -> Result<Link, gst::FlowError> {
        let settings = self.settings();
        let Some(path) = settings.socket_path else {
            return Err(gst::FlowError::Flushing);
        };
        gst::debug!(CAT, imp = self, "waiting for a shmringsink at {}", path.display());
        match ipc::connect_reader(&path, unlock.as_fd()) {
            Ok(Some((connection, consumer))) => {
                let fds = [
                    (consumer.data_fd(), Trigger::Edge),
                    (connection.as_fd(), Trigger::Level),
                    (unlock.as_fd(), Trigger::Level),
                ];
                let waiter = Waiter::new(fds).map_err(|err| {
                    gst::element_imp_error!(self, gst::ResourceError::Failed, ["{err}"]);
                    gst::FlowError::Error
                })?;
                gst::info!(
                    CAT,
                    imp = self,
                    "connected to {}; ring of {} bytes",
                    path.display(),
                    consumer.capacity()
                );
                Ok(Link {
                    connection,
                    consumer,
                    writer_gone: false,
                    lease: false,
                    waiter,
                })
            }
            Ok(None) => Err(gst::FlowError::Flushing),
            Err(err) => {
                gst::element_imp_error!(self, gst::ResourceError::OpenRead, ["{err}"]);
                Err(gst::FlowError::Error)
            }
        }
    }

    /// Takes the record at the read position, if any, and acts on it.
    fn next_record(&self, link: &mut Link) -> Result<Option<Step>, gst::FlowError> {
        let record = match link.consumer.peek() {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(err) => {
                gst::element_imp_error!(self, gst::StreamError::Decode, ["{err}"]);
                return Err(gst::FlowError::Error);
            }
        };
        let header = *record.header();
        if header.kind == RecordKind::Padding {
            record.release();
            return Ok(Some(Step::Continue));
        }
        if header.kind == RecordKind::Buffer {
            let len = record.payload().len();
            let lease = if !link.lease { Err(record) } else { record.into_lease() };
            let (mut buffer, copied) = match lease {
                // Downstream gets the ring memory itself, read-only; the
                // writer may reuse it once the last reference is dropped.
                Ok(lease) => (gst::Buffer::from_slice(lease), false),
                // Downstream already pins half the ring: copy, so that the
                // writer never waits on buffers held downstream.
                Err(record) => {
                    let buffer = gst::Buffer::from_mut_slice(record.payload().to_vec());
                    record.release();
                    (buffer, true)
                }
            };
            self.stats.buffer(len, copied);
            codec::apply_buffer_header(&header, buffer.make_mut()).map_err(|err| {
                gst::element_imp_error!(self, gst::StreamError::Decode, ["{err}"]);
                gst::FlowError::Error
            })?;
            return Ok(Some(Step::Buffer(buffer)));
        }
        // Parse a private copy: the writer could change shared bytes between
        // the UTF-8 check and the parse.
        if record.payload().len() > codec::MAX_CONTROL_PAYLOAD {
            gst::element_imp_error!(
                self,
                gst::StreamError::Decode,
                [
                    "The writer sent a {:?} record of {} bytes; caps and events are at most {} bytes",
                    header.kind,
                    record.payload().len(),
                    codec::MAX_CONTROL_PAYLOAD
                ]
            );
            return Err(gst::FlowError::Error);
        }
        let payload = record.payload().to_vec();
        record.release();
        let decoded = codec::decode(&header, &payload);
        let decoded = decoded.map_err(|err| {
            gst::element_imp_error!(self, gst::StreamError::Decode, ["{err}"]);
            gst::FlowError::Error
        })?;
        let obj = self.obj();
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
                *self.caps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(caps.clone());
                if obj.set_caps(&caps).is_err() {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["Downstream refused the writer's caps {caps}"]
                    );
                    return Err(gst::FlowError::NotNegotiated);
                }
            }
            Decoded::Segment(segment) => {
                if segment.format() != obj.segment().format() {
                    obj.set_format(segment.format());
                }
                if obj.new_segment(&segment).is_err() {
                    gst::warning!(CAT, imp = self, "could not apply {segment:?}");
                }
            }
            Decoded::Eos => {
                gst::debug!(CAT, imp = self, "end of stream from the writer");
                return Err(gst::FlowError::Eos);
            }
            Decoded::Event(event) => {
                gst::debug!(CAT, imp = self, "forwarding {event:?}");
                let is_stream_start = event.type_() == gst::EventType::StreamStart;
                self.forwarding_stream_start.store(is_stream_start, Ordering::Relaxed);
                obj.src_pad().push_event(event);
                self.forwarding_stream_start.store(false, Ordering::Relaxed);
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
}

impl ObjectImpl for ShmRingSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the unix socket of the shmringsink to read from (required); the source waits for it to appear")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("is-live")
                    .nick("Is live")
                    .blurb("Act as a live source")
                    .default_value(DEFAULT_IS_LIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("always-copy")
                    .nick("Always copy")
                    .blurb("Copy every buffer out of the ring instead of handing out ring memory; for downstreams that keep more than half a ring of buffers until they get more")
                    .default_value(DEFAULT_ALWAYS_COPY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Counters: buffers, bytes, bytes-copied, buffers-zero-copy, wakeups-sent, wakeups-received")
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
            "is-live" => {
                settings.is_live = value.get().unwrap_or(DEFAULT_IS_LIVE);
                drop(settings);
                self.obj().set_live(self.settings().is_live);
            }
            "always-copy" => settings.always_copy = value.get().unwrap_or(DEFAULT_ALWAYS_COPY),
            name => gst::warning!(CAT, imp = self, "no property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "socket-path" => settings.socket_path.map(|path| path.display().to_string()).to_value(),
            "is-live" => settings.is_live.to_value(),
            "always-copy" => settings.always_copy.to_value(),
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
        // id, before the first `create`. The writer's comes through the
        // ring; let only that one through, so downstream sees the stream's
        // real id once.
        let element = obj.downgrade();
        obj.src_pad()
            .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                let is_stream_start =
                    matches!(info.event(), Some(event) if event.type_() == gst::EventType::StreamStart);
                let ours = element
                    .upgrade()
                    .is_some_and(|element| element.imp().forwarding_stream_start.load(Ordering::Relaxed));
                if is_stream_start && !ours {
                    // Taking the event and returning Handled frees it once;
                    // Drop would leave GStreamer unreffing a cleared pointer.
                    drop(info.take_event());
                    gst::PadProbeReturn::Handled
                } else {
                    gst::PadProbeReturn::Ok
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

impl BaseSrcImpl for ShmRingSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let Some(path) = settings.socket_path else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["socket-path is not set; set it to the socket-path of the shmringsink to read from"]
            ));
        };
        ipc::socket_directory(&path).map_err(|err| gst::error_msg!(gst::ResourceError::NotFound, ["{err}"]))?;
        self.unlock.start()?;
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.lock_state() = State::default();
        *self.caps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.unlock.stop();
        Ok(())
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
}

impl PushSrcImpl for ShmRingSrc {
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        let unlock = self.unlock.notifier()?;
        let mut state = self.lock_state();
        if state.link.is_none() {
            state.link = Some(self.connect(&unlock)?);
        }
        let Some(link) = state.link.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        loop {
            self.stats.set_wakeups_sent(link.consumer.wakeups_sent());
            match self.next_record(link)? {
                Some(Step::Buffer(buffer)) => return Ok(CreateSuccess::NewBuffer(buffer)),
                Some(Step::Continue) => continue,
                None => {}
            }
            if link.writer_gone {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Read,
                    ["The shmringsink went away without sending EOS; the writer process stopped or crashed"]
                );
                return Err(gst::FlowError::Error);
            }
            let sleep = link.consumer.prepare_wait().map_err(|err| {
                gst::element_imp_error!(self, gst::StreamError::Decode, ["{err}"]);
                gst::FlowError::Error
            })?;
            if !sleep {
                continue;
            }
            let ready = link.waiter.wait();
            link.consumer.finish_edge_wait();
            let ready = ready.map_err(|err| {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["{err}"]);
                gst::FlowError::Error
            })?;
            if ready[0] {
                self.stats.woken();
            }
            if ready[2] {
                return Err(gst::FlowError::Flushing);
            }
            // The writer's records may still be in the ring; drain them
            // before reporting that it is gone.
            if ready[1] && link.connection.peer_gone() {
                link.writer_gone = true;
            }
        }
    }
}
