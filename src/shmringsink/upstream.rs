//! What readers send upstream: a thread of the sink reads every linked
//! reader's control socket, pushes the events it may from the sink pad
//! into the writer's pipeline, as if the reader's pipeline were downstream
//! in this process, and answers position, duration and seeking queries
//! with the writer's pipeline. It also asks upstream for a keyframe when
//! a reader needs one (it joined, or lost buffers, of a stream with delta
//! units).
//!
//! Invariants:
//!
//! 1. Only this thread reads the readers' sockets after the handshake;
//!    everyone else watches them for a hang-up alone (`ipc::Interest`).
//! 2. It holds none of the element's locks while it calls into GStreamer:
//!    the readers it serves are its own copies of their connections,
//!    handed over through `changes`, a lock that nothing else holds across
//!    a call. Render, under the state lock, only pushes to `changes` and
//!    sets `key_unit`, then wakes the thread.
//! 3. Everything a reader sends is bounded before it reaches GStreamer: one
//!    datagram of at most `MAX_MESSAGE_LEN` bytes, decoded and checked by
//!    `ipc::messages`, structures that would make GStreamer log a CRITICAL
//!    refused (`codec::parses_cleanly`), values of events rebuilt from
//!    checked fields, and at most `MESSAGES_PER_SECOND` messages per reader
//!    and second (the rest are dropped, queries answered as unhandled).
//!    A reader that breaks the protocol is no longer listened to.
//! 4. No wake-up is lost: `changes` and `key_unit` are written before the
//!    eventfd, and the thread drains the eventfd before it reads them.

use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use nix::poll::PollTimeout;

use crate::codec;
use crate::ipc::messages::{Answer, MAX_MESSAGE_LEN, Message, Qos, QueryKind, Seek};
use crate::ipc::{self, Connection, Interest, IpcError};
use crate::ring::Notifier;

use super::CAT;

/// Messages a reader may send per second; beyond that they are dropped.
/// A pointer moving over a window sends a navigation event per motion, a
/// few hundred per second at most.
const MESSAGES_PER_SECOND: u32 = 500;
/// Messages taken from one reader before the others get a turn.
const MESSAGES_PER_TURN: usize = 32;

/// Which upstream events from readers reach the writer's pipeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstShmRingSinkUpstreamEvents")]
pub enum UpstreamEvents {
    #[enum_value(name = "None: no event from a reader reaches the writer's pipeline", nick = "none")]
    None = 0,
    #[default]
    #[enum_value(
        name = "Safe: navigation, force-key-unit, reconfigure and custom upstream events; no seek and no QoS, so that no reader changes what the others get",
        nick = "safe"
    )]
    Safe = 1,
    #[enum_value(name = "All: also seeks and QoS, for a writer with one reader", nick = "all")]
    All = 2,
}

/// What render and the element tell the thread.
enum Change {
    Add { slot: u32, connection: Connection },
    Remove { slot: u32 },
    Stop,
}

/// The sink's side of the control thread.
#[derive(Default)]
pub(super) struct Upstream {
    shared: Mutex<Option<Arc<Shared>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    changes: Mutex<Vec<Change>>,
    /// Some reader needs a keyframe that upstream should make now.
    key_unit: AtomicBool,
    wake: Notifier,
}

impl Shared {
    fn tell(&self, change: Change) {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(change);
        self.wake.notify();
    }
}

impl Upstream {
    /// Starts the thread for `sink`.
    pub(super) fn start(&self, sink: &super::ShmRingSink) -> Result<(), gst::ErrorMessage> {
        let wake = Notifier::new()
            .map_err(|err| gst::error_msg!(gst::ResourceError::Failed, ["Could not create an eventfd: {err}"]))?;
        let shared = Arc::new(Shared {
            changes: Mutex::new(Vec::new()),
            key_unit: AtomicBool::new(false),
            wake,
        });
        let weak = sink.downgrade();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shmring-upstream".into())
            .spawn(move || Served::new(weak, for_thread).run())
            .map_err(|err| gst::error_msg!(gst::ResourceError::Failed, ["Could not start a thread: {err}"]))?;
        *self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(shared);
        *self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(thread);
        Ok(())
    }

    pub(super) fn stop(&self) {
        if let Some(shared) = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            shared.tell(Change::Stop);
        }
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            // The thread holds no lock of ours and gives up on a pad call
            // only when that call returns; joining it keeps stop's promise
            // that nothing runs on the element afterwards.
            let _ = thread.join();
        }
    }

    fn tell(&self, change: Change) {
        if let Some(shared) = &*self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            shared.tell(change);
        }
    }

    /// The reader in `slot` is linked: its messages are read from now on,
    /// through a handle of its own on `connection`.
    pub(super) fn add(&self, slot: u32, connection: &Connection) -> Result<(), IpcError> {
        let connection = connection.try_clone()?;
        self.tell(Change::Add { slot, connection });
        Ok(())
    }

    /// The reader in `slot` left: its handle on the socket is closed.
    pub(super) fn remove(&self, slot: u32) {
        self.tell(Change::Remove { slot });
    }

    /// A reader needs a keyframe: upstream is asked for one, once however
    /// many readers ask before the thread gets to it.
    pub(super) fn request_key_unit(&self) {
        if let Some(shared) = &*self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            shared.key_unit.store(true, Ordering::SeqCst);
            shared.wake.notify();
        }
    }
}

/// One reader as the thread sees it.
struct Reader {
    slot: u32,
    connection: Connection,
    window_start: Instant,
    in_window: u32,
    dropped_in_window: u32,
}

/// The thread's own state.
struct Served {
    sink: glib::WeakRef<super::ShmRingSink>,
    shared: Arc<Shared>,
    readers: Vec<Reader>,
    buffer: Vec<u8>,
}

impl Served {
    fn new(sink: glib::WeakRef<super::ShmRingSink>, shared: Arc<Shared>) -> Self {
        Self {
            sink,
            shared,
            readers: Vec::new(),
            // One byte more than a message may have, so that a longer one
            // shows as truncated.
            buffer: vec![0; MAX_MESSAGE_LEN + 1],
        }
    }

    fn run(mut self) {
        loop {
            self.shared.wake.drain();
            let changes = std::mem::take(
                &mut *self
                    .shared
                    .changes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            for change in changes {
                match change {
                    Change::Add { slot, connection } => {
                        self.readers.retain(|reader| reader.slot != slot);
                        self.readers.push(Reader {
                            slot,
                            connection,
                            window_start: Instant::now(),
                            in_window: 0,
                            dropped_in_window: 0,
                        });
                    }
                    Change::Remove { slot } => self.readers.retain(|reader| reader.slot != slot),
                    Change::Stop => return,
                }
            }
            let Some(sink) = self.sink.upgrade() else {
                return;
            };
            if self.shared.key_unit.swap(false, Ordering::SeqCst) {
                request_key_unit(&sink);
            }
            let mut watched = vec![(self.shared.wake.as_fd(), Interest::Readable)];
            watched.extend(
                self.readers
                    .iter()
                    .map(|reader| (reader.connection.as_fd(), Interest::Readable)),
            );
            let ready = ipc::wait_for(&watched, PollTimeout::NONE);
            drop(watched);
            let ready = match ready {
                Ok(ready) => ready,
                Err(err) => {
                    gst::element_warning!(
                        sink,
                        gst::ResourceError::Read,
                        ["Upstream events from readers stop: {err}"]
                    );
                    return;
                }
            };
            let readable: Vec<u32> = self
                .readers
                .iter()
                .zip(&ready[1..])
                .filter(|(_, ready)| **ready)
                .map(|(reader, _)| reader.slot)
                .collect();
            for slot in readable {
                self.serve(&sink, slot);
            }
        }
    }

    /// Takes the messages waiting from the reader in `slot`, a turn's worth.
    fn serve(&mut self, sink: &super::ShmRingSink, slot: u32) {
        for _ in 0..MESSAGES_PER_TURN {
            let Some(index) = self.readers.iter().position(|reader| reader.slot == slot) else {
                return;
            };
            let reader = &self.readers[index];
            let received = match reader.connection.recv_message(&mut self.buffer) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(IpcError::PeerGone) => {
                    // Render sees the hang-up too, and unlinks it.
                    self.readers.remove(index);
                    return;
                }
                Err(err) => {
                    self.stop_listening(sink, index, &err.to_string());
                    return;
                }
            };
            if received.truncated || !received.fds.is_empty() {
                let why = format!("a message was longer than {MAX_MESSAGE_LEN} bytes or carried fds");
                self.stop_listening(sink, index, &why);
                return;
            }
            let message = match Message::decode(&self.buffer[..received.len]) {
                Ok(message) => message,
                Err(err) => {
                    self.stop_listening(sink, index, &err.to_string());
                    return;
                }
            };
            if !self.readers[index].admit(sink) {
                if let Message::Query { id, .. } | Message::Seek(Seek { id, .. }) = message {
                    answer(
                        sink,
                        &self.readers[index],
                        Answer {
                            id,
                            ..Answer::default()
                        },
                    );
                }
                continue;
            }
            let reader = &self.readers[index];
            let policy = sink.imp().upstream_events();
            match message {
                Message::Navigation(text) => on_navigation(sink, reader, policy, &text),
                Message::Qos(qos) => on_qos(sink, reader, policy, qos),
                Message::Seek(seek) => on_seek(sink, reader, policy, seek),
                Message::Reconfigure => on_reconfigure(sink, reader, policy),
                Message::CustomUpstream(text) => on_custom_upstream(sink, reader, policy, &text),
                Message::Query { id, query, format } => on_query(sink, reader, policy, id, query, format),
                Message::Answer(_) | Message::FdAnnounce(_) => {
                    self.stop_listening(sink, index, "it sent a message only a writer sends");
                    return;
                }
            }
        }
    }

    /// Stops reading a reader that broke the protocol. Its stream goes on:
    /// only its upstream channel is closed.
    fn stop_listening(&mut self, sink: &super::ShmRingSink, index: usize, why: &str) {
        let reader = self.readers.remove(index);
        gst::element_warning!(
            sink,
            gst::ResourceError::Read,
            [
                "Ignoring upstream events and queries from reader {} ({}): {why}; it is broken or hostile",
                reader.slot,
                reader.connection.peer_description()
            ]
        );
    }
}

impl Reader {
    /// Whether this message is within the reader's rate bound.
    fn admit(&mut self, sink: &super::ShmRingSink) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            if self.dropped_in_window > 0 {
                gst::debug!(
                    CAT,
                    obj = sink,
                    "reader {}: dropped {} upstream messages beyond {MESSAGES_PER_SECOND} per second",
                    self.slot,
                    self.dropped_in_window
                );
            }
            self.window_start = now;
            self.in_window = 0;
            self.dropped_in_window = 0;
        }
        if self.in_window < MESSAGES_PER_SECOND {
            self.in_window += 1;
            true
        } else {
            self.dropped_in_window += 1;
            false
        }
    }
}

fn sink_pad(sink: &super::ShmRingSink) -> gst::Pad {
    sink.sink_pad().clone()
}

fn push(sink: &super::ShmRingSink, reader: &Reader, event: gst::Event) -> bool {
    gst::debug!(CAT, obj = sink, "reader {}: pushing {event:?} upstream", reader.slot);
    sink_pad(sink).push_event(event)
}

fn refuse(sink: &super::ShmRingSink, reader: &Reader, what: &str, policy: UpstreamEvents) {
    gst::info!(
        CAT,
        obj = sink,
        "reader {}: {what} refused by upstream-events={policy:?}",
        reader.slot
    );
}

/// A structure of a reader's event, if GStreamer parses it cleanly.
fn structure(sink: &super::ShmRingSink, reader: &Reader, text: &str) -> Option<gst::Structure> {
    let structure = codec::parses_cleanly(text)
        .then(|| gst::Structure::from_str(text).ok())
        .flatten();
    if structure.is_none() {
        gst::debug!(
            CAT,
            obj = sink,
            "reader {}: dropping an event whose structure does not parse cleanly",
            reader.slot
        );
    }
    structure
}

fn on_navigation(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents, text: &str) {
    if policy == UpstreamEvents::None {
        return refuse(sink, reader, "navigation", policy);
    }
    // Navigation structures name this flags type, which GStreamer parses
    // only once it is registered; nothing in a writer's pipeline may have
    // registered it yet.
    gst_video::NavigationModifierType::static_type();
    if let Some(structure) = structure(sink, reader, text)
        && structure.name() == "application/x-gst-navigation"
    {
        push(sink, reader, gst::event::Navigation::new(structure));
    }
}

fn on_custom_upstream(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents, text: &str) {
    if policy == UpstreamEvents::None {
        return refuse(sink, reader, "a custom upstream event", policy);
    }
    if let Some(structure) = structure(sink, reader, text) {
        push(sink, reader, gst::event::CustomUpstream::new(structure));
    }
}

fn on_reconfigure(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents) {
    if policy == UpstreamEvents::None {
        return refuse(sink, reader, "reconfigure", policy);
    }
    push(sink, reader, gst::event::Reconfigure::new());
}

fn on_qos(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents, qos: Qos) {
    if policy != UpstreamEvents::All {
        return refuse(sink, reader, "QoS", policy);
    }
    let kind = match qos.kind {
        0 => gst::QOSType::Overflow,
        1 => gst::QOSType::Underflow,
        2 => gst::QOSType::Throttle,
        _ => return,
    };
    let timestamp = (qos.timestamp != u64::MAX).then(|| gst::ClockTime::from_nseconds(qos.timestamp));
    // gst_event_new_qos refuses, with a CRITICAL, a diff that would put
    // the timestamp before 0.
    let fits = qos.diff >= 0 || timestamp.is_none_or(|timestamp| qos.diff.unsigned_abs() <= timestamp.nseconds());
    if !qos.proportion.is_finite() || !fits {
        return;
    }
    push(
        sink,
        reader,
        gst::event::Qos::new(kind, qos.proportion, qos.diff, timestamp),
    );
}

fn format(code: u32) -> Option<gst::Format> {
    Some(match code {
        1 => gst::Format::Default,
        2 => gst::Format::Bytes,
        3 => gst::Format::Time,
        4 => gst::Format::Buffers,
        5 => gst::Format::Percent,
        _ => return None,
    })
}

fn seek_type(code: u32) -> Option<gst::SeekType> {
    Some(match code {
        0 => gst::SeekType::None,
        1 => gst::SeekType::Set,
        2 => gst::SeekType::End,
        _ => return None,
    })
}

fn on_seek(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents, seek: Seek) {
    let mut reply = Answer {
        id: seek.id,
        ..Answer::default()
    };
    if policy != UpstreamEvents::All {
        refuse(sink, reader, "a seek", policy);
        return answer(sink, reader, reply);
    }
    let flags = gst::SeekFlags::from_bits_truncate(seek.flags);
    let snap = gst::SeekFlags::SNAP_BEFORE | gst::SeekFlags::SNAP_AFTER;
    // gst_event_new_seek refuses a rate of 0 with a CRITICAL, and warns
    // about SNAP without KEY_UNIT.
    let sane = seek.rate.is_finite()
        && seek.rate != 0.0
        && (flags.contains(gst::SeekFlags::KEY_UNIT) || !flags.intersects(snap));
    if let (Some(format), Some(start_type), Some(stop_type), true) = (
        format(seek.format),
        seek_type(seek.start_type),
        seek_type(seek.stop_type),
        sane,
    ) {
        let start = gst::GenericFormattedValue::new(format, seek.start);
        let stop = gst::GenericFormattedValue::new(format, seek.stop);
        let event = gst::event::Seek::new(seek.rate, flags, start_type, start, stop_type, stop);
        reply.handled = push(sink, reader, event);
    }
    answer(sink, reader, reply);
}

fn on_query(sink: &super::ShmRingSink, reader: &Reader, policy: UpstreamEvents, id: u32, query: QueryKind, code: u32) {
    let mut reply = Answer {
        id,
        format: code,
        ..Answer::default()
    };
    if let Some(format) = format(code) {
        let pad = sink_pad(sink);
        match query {
            QueryKind::Position => {
                let mut query = gst::query::Position::new(format);
                if pad.peer_query(&mut query) {
                    reply.handled = true;
                    reply.value = query.result().value();
                }
            }
            QueryKind::Duration => {
                let mut query = gst::query::Duration::new(format);
                if pad.peer_query(&mut query) {
                    reply.handled = true;
                    reply.value = query.result().value();
                }
            }
            QueryKind::Seeking => {
                let mut query = gst::query::Seeking::new(format);
                if pad.peer_query(&mut query) {
                    let (seekable, start, end) = query.result();
                    reply.handled = true;
                    // A reader that may not seek is told so.
                    reply.seekable = seekable && policy == UpstreamEvents::All;
                    reply.start = start.value();
                    reply.end = end.value();
                }
            }
        }
    }
    answer(sink, reader, reply);
}

fn answer(sink: &super::ShmRingSink, reader: &Reader, answer: Answer) {
    let Some(bytes) = Message::Answer(answer).encode() else {
        return;
    };
    match reader.connection.send_message(&bytes) {
        Ok(true) => {}
        Ok(false) => gst::debug!(
            CAT,
            obj = sink,
            "reader {}: its socket is full; answer {} dropped",
            reader.slot,
            answer.id
        ),
        Err(err) => gst::debug!(CAT, obj = sink, "reader {}: answer not sent: {err}", reader.slot),
    }
}

/// Asks upstream for a keyframe now, with its headers, for a reader that
/// joined or lost buffers.
fn request_key_unit(sink: &super::ShmRingSink) {
    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    gst::debug!(CAT, obj = sink, "a reader needs a keyframe: asking upstream");
    sink_pad(sink).push_event(event);
}
