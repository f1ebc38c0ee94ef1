//! What this reader sends the writer: upstream events from downstream
//! (navigation, QoS, seek, reconfigure, custom upstream events, the
//! GstForceKeyUnit request among them) and position, duration and seeking
//! queries, which the writer's pipeline answers.
//!
//! Invariants:
//!
//! 1. Whichever thread reads the socket files what it read in the inbox:
//!    the thread that asked a question takes its answer from there, the
//!    streaming thread the fd announcements (`take_announcements`), which
//!    it needs before an fd buffer record. Its poll watches the socket only
//!    for the writer's hang-up (`Trigger::HangUp`).
//! 2. Nothing waits on a writer that does not read or answer: events are
//!    sent without waiting and dropped (with a debug line) when the
//!    socket's buffer is full, and a question gives up after its timeout.
//! 3. One question at a time (`asking`): answers carry the question's id,
//!    so an answer that comes after its question gave up is recognised
//!    and skipped by the next one.
//! 4. What the writer sends is checked like everything else from it: one
//!    datagram of at most `MAX_MESSAGE_LEN` bytes, decoded by
//!    `ipc::messages`; anything but an answer or an fd announcement is a
//!    protocol error, posted as an error on the bus, after which nothing
//!    more is sent. The inbox is bounded: answers nobody waits for are
//!    dropped, and more unread fd announcements than a reader may hold is
//!    a protocol error.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gst::glib::translate::IntoGlib;
use nix::poll::PollTimeout;

use crate::ipc::messages::{Answer, FdAnnouncement, MAX_MESSAGE_LEN, Message, MessageError, Qos, QueryKind, Seek};
use crate::ipc::{self, Connection, Interest, IpcError};
use crate::ring::layout::MAX_ANNOUNCED_FDS;

/// How long a position, duration or seeking query waits for the writer.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a seek waits: the writer's pipeline flushes and prerolls first.
pub(super) const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a question looks in the inbox while it waits: the streaming
/// thread may have taken its answer off the socket.
const INBOX_LOOK: u16 = 10;

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    #[error("the writer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the writer's upstream channel is closed: {0}")]
    Closed(IpcError),
    #[error("the writer broke the control protocol: {0}; it is broken or hostile")]
    Protocol(String),
}

/// The upstream channel to the writer of one link.
pub(super) struct WriterControl {
    connection: Connection,
    /// The next question's id; held while a question waits.
    asking: Mutex<u32>,
    /// The buffer messages are read into; held while the socket is read.
    receiving: Mutex<Vec<u8>>,
    inbox: Mutex<Inbox>,
    /// The writer broke the protocol: nothing more is sent to it.
    broken: AtomicBool,
}

impl WriterControl {
    /// A channel over its own handle on the link's `connection`.
    pub(super) fn new(connection: &Connection) -> Result<Self, IpcError> {
        Ok(Self {
            connection: connection.try_clone()?,
            // One byte more than a message may have, so that a longer one
            // shows as truncated.
            asking: Mutex::new(1),
            receiving: Mutex::new(vec![0; MAX_MESSAGE_LEN + 1]),
            inbox: Mutex::new(Inbox::default()),
            broken: AtomicBool::new(false),
        })
    }

    /// Sends an event without waiting. Returns whether it went.
    pub(super) fn send(&self, message: &Message) -> Result<bool, IpcError> {
        if self.broken.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(bytes) = message.encode() else {
            return Ok(false);
        };
        self.connection.send_message(&bytes)
    }

    /// Sends the question `make(id)` and waits up to `timeout` for the
    /// writer's answer.
    pub(super) fn ask(&self, make: impl FnOnce(u32) -> Message, timeout: Duration) -> Result<Answer, AskError> {
        let mut asking = self.asking.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = *asking;
        *asking = asking.wrapping_add(1);
        if !self.send(&make(id)).map_err(AskError::Closed)? {
            return Err(AskError::Closed(IpcError::Malformed(
                "the socket is full or the writer broke the protocol",
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.receive()?;
            if let Some(answer) = self.lock_inbox().take_answer(id) {
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AskError::Timeout(timeout));
            }
            // Rounded up, so that the last poll does not end just short.
            let wait = PollTimeout::from(left.as_millis().min(u128::from(INBOX_LOOK)) as u16 + 1);
            ipc::wait_for(&[(self.connection.as_fd(), Interest::Readable)], wait).map_err(AskError::Closed)?;
        }
    }

    /// The fd announcements read so far, in the order they came.
    pub(super) fn take_announcements(&self) -> Vec<(FdAnnouncement, Vec<OwnedFd>)> {
        self.lock_inbox().announcements.drain(..).collect()
    }

    /// Takes every message waiting on the socket into the inbox. A
    /// protocol error ends the channel: nothing more is sent.
    pub(super) fn receive(&self) -> Result<(), AskError> {
        let result = self.receive_all();
        if matches!(result, Err(AskError::Protocol(_))) {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    fn receive_all(&self) -> Result<(), AskError> {
        let mut buffer = self.receiving.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(received) = self.connection.recv_message(&mut buffer).map_err(AskError::Closed)? {
            if received.truncated {
                return Err(AskError::Protocol(format!(
                    "a message was longer than {MAX_MESSAGE_LEN} bytes or carried too many fds"
                )));
            }
            let protocol = |err: MessageError| AskError::Protocol(err.to_string());
            let message = Message::decode(&buffer[..received.len]).map_err(protocol)?;
            let mut inbox = self.lock_inbox();
            match message {
                Message::FdAnnounce(announcement) => {
                    if inbox.announcements.len() >= MAX_ANNOUNCED_FDS {
                        return Err(AskError::Protocol(format!(
                            "it sent more than {MAX_ANNOUNCED_FDS} fd announcements that were not read yet"
                        )));
                    }
                    inbox.announcements.push_back((announcement, received.fds));
                }
                _ if !received.fds.is_empty() => {
                    return Err(AskError::Protocol(
                        "a message other than an fd announcement carried fds".into(),
                    ));
                }
                Message::Answer(answer) => {
                    // One question waits at a time: an older answer is one
                    // whose question gave up.
                    inbox.answers.clear();
                    inbox.answers.push_back(answer);
                }
                other => {
                    return Err(AskError::Protocol(format!(
                        "it sent {other:?}, which only a reader sends"
                    )));
                }
            }
        }
        Ok(())
    }

    fn lock_inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What was read from the socket and not yet taken.
#[derive(Default)]
struct Inbox {
    answers: VecDeque<Answer>,
    announcements: VecDeque<(FdAnnouncement, Vec<OwnedFd>)>,
}

impl Inbox {
    fn take_answer(&mut self, id: u32) -> Option<Answer> {
        let position = self.answers.iter().position(|answer| answer.id == id)?;
        self.answers.remove(position)
    }
}

/// What an upstream event becomes on the way to the writer.
pub(super) enum Outgoing {
    /// Sent without waiting.
    Event(Message),
    /// Answered: the seek's result is the writer's pipeline's.
    Seek(Seek),
}

/// The message for `event`, or `None` for an event that stays in this
/// process (flushes, latency, and whatever does not cross).
pub(super) fn outgoing(event: &gst::EventRef) -> Option<Outgoing> {
    use gst::EventView;
    let text = || event.structure().map(|structure| structure.to_string());
    Some(match event.view() {
        EventView::Navigation(_) => Outgoing::Event(Message::Navigation(text()?)),
        EventView::CustomUpstream(_) => Outgoing::Event(Message::CustomUpstream(text()?)),
        EventView::Reconfigure(_) => Outgoing::Event(Message::Reconfigure),
        EventView::Qos(qos) => {
            let (kind, proportion, diff, timestamp) = qos.get();
            Outgoing::Event(Message::Qos(Qos {
                kind: kind.into_glib() as u32,
                proportion,
                diff,
                timestamp: timestamp.map_or(u64::MAX, gst::ClockTime::nseconds),
            }))
        }
        EventView::Seek(seek) => {
            let (rate, flags, start_type, start, stop_type, stop) = seek.get();
            Outgoing::Seek(Seek {
                id: 0,
                rate,
                format: start.format().into_glib() as u32,
                flags: flags.bits(),
                start_type: start_type.into_glib() as u32,
                start: start.value(),
                stop_type: stop_type.into_glib() as u32,
                stop: stop.value(),
            })
        }
        _ => return None,
    })
}

/// The message for a query the writer's pipeline answers, or `None` for
/// one that stays in this process.
pub(super) fn question(query: &gst::QueryRef) -> Option<(QueryKind, gst::Format)> {
    use gst::QueryView;
    match query.view() {
        QueryView::Position(position) => Some((QueryKind::Position, position.format())),
        QueryView::Duration(duration) => Some((QueryKind::Duration, duration.format())),
        QueryView::Seeking(seeking) => Some((QueryKind::Seeking, seeking.format())),
        _ => None,
    }
}

/// Writes the writer's `answer` into `query`, if its format is the one
/// asked for. Returns whether the query is answered.
pub(super) fn fill(query: &mut gst::QueryRef, answer: &Answer, format: gst::Format) -> bool {
    use gst::QueryViewMut;
    if !answer.handled || answer.format != format.into_glib() as u32 {
        return false;
    }
    let value = |raw: i64| gst::GenericFormattedValue::new(format, raw);
    match query.view_mut() {
        QueryViewMut::Position(position) => position.set(value(answer.value)),
        QueryViewMut::Duration(duration) => duration.set(value(answer.value)),
        QueryViewMut::Seeking(seeking) => seeking.set(answer.seekable, value(answer.start), value(answer.end)),
        _ => return false,
    }
    true
}
