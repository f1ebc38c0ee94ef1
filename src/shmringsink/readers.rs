//! The set of readers linked to a `shmringsink`: the listening socket and
//! the connections waiting to say hello, admission (up to `max-readers`),
//! pruning of readers that left, the replay of sticky events to one that
//! joins, and the one way out, `unlink`. What the readers are sent, and
//! how, is `delivery.rs`.
//!
//! The element (`imp.rs`) calls in through a small interface: `listen`
//! when it starts, `admit_readers`, `render` (a buffer to each reader that
//! is to get it) and `send_event`, and `unlink_all` when it fails or
//! stops. What this set needs of the element (posting messages, waiting
//! for PLAYING after an unlock, the heap, the stats, a few settings) it
//! asks of the `ShmRingSink` it is handed, through the few methods
//! `imp.rs` keeps for it; it reaches none of the element's fields.
//!
//! Invariants:
//!
//! 1. Every method runs under the element's state lock, which owns this
//!    set, and that is the only lock held while it calls into GStreamer
//!    (posting a message, waiting for preroll, reading the pad's sticky
//!    events). The element's `settings` and `heap` locks are taken only
//!    inside its getters, for a few instructions.
//! 2. Every way a reader leaves goes through `unlink`, whose `Unlink`
//!    reason decides who holds its blocks afterwards: a reader whose socket
//!    hung up gives them back at once; one that detached, or that this
//!    writer drops while it may still run (it is shut out too), keeps them
//!    until its socket hangs up, so that no block it may still read is
//!    written again.
//! 3. A reader joins with `needs_keyframe` set, and gets the pad's sticky
//!    events before anything else.
//! 4. The element's `readers` count is updated after every link and
//!    unlink.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;

use gst::subclass::prelude::*;

use crate::codec::VideoLayout;
use crate::ipc::{self, Connection, HelloPurpose, IpcError, Listener, Trigger, Waiter};
use crate::ring::layout::{MAX_FD_HOLDS, MAX_RELEASE_SLOTS};
use crate::ring::{self, ChannelSizes, Notifier, Producer, RecordHeader, RingError};

use super::CAT;
use super::heap::{Holds, SinkHeap};
use super::imp::ShmRingSink;
use super::pool::INLINE_MAX;
use super::watch::{Interest, Watch};

mod delivery;
mod fds;
mod flush;

/// Connections kept waiting for their hello; beyond this the oldest goes.
/// Every reader a sink can serve may knock at once (readers started before
/// the writer all wake when its socket appears), and a few more may be
/// connections that never say hello, which must not push them out.
const MAX_PENDING_READERS: usize = ring::MAX_READERS as usize + 8;

/// The linked readers and the ones on their way in.
#[derive(Default)]
pub(super) struct Readers {
    listener: Option<Listener>,
    /// Raised when the listener, a pending connection or a linked reader's
    /// socket is ready, so that render asks the kernel about them only
    /// then: a reader killed while its queue has room tells nobody else,
    /// and would keep its blocks and its slot until its queue or the heap
    /// ran out.
    watch: Option<Watch>,
    /// One per connected reader, in the order they joined.
    links: Vec<Link>,
    /// Accepted connections whose hello has not arrived yet.
    pending: Vec<Connection>,
    /// Whether a lagging reader loses buffers instead of pacing the
    /// writer: `when-full`, with `auto` decided once per run.
    drop_mode: Option<bool>,
    /// The first buffer (or event that waits for readers) went through,
    /// having waited for `wait-for-readers` readers if it waited at all:
    /// from now on, waiting for readers means waiting for one.
    readers_gathered: bool,
    /// The Metas record of the buffer being rendered; empty if it has none.
    metas: Vec<u8>,
    /// The caps as text, for probes: what the stream carries now.
    caps: Option<String>,
    /// Fd-backed memories sent by their fd that have since been freed.
    fd_deaths: fds::Deaths,
    /// Tells, cheaply, whether a buffer's memory is fd-backed.
    fd_check: fds::FdCheck,
    /// Whether upstream is not live, so that a reader that asks may be
    /// woken once per batch of buffers rather than for each.
    batch_wakes: bool,
}

impl Readers {
    /// Readers come in through `listener` from now on.
    pub(super) fn listen(&mut self, listener: Listener) -> Result<(), gst::ErrorMessage> {
        let watch = Watch::new().map_err(|err| {
            gst::error_msg!(
                gst::ResourceError::Failed,
                ["Could not start the thread that watches the readers' sockets: {err}"]
            )
        })?;
        watch.rearm(listener.as_fd(), Interest::Readable);
        self.watch = Some(watch);
        self.listener = Some(listener);
        Ok(())
    }

    /// Whether a watched socket became ready since the last look; true
    /// without a watch, which only a sink that is not started lacks.
    fn take_attention(&self) -> bool {
        self.watch.as_ref().is_none_or(Watch::take_attention)
    }

    /// Whether no reader is linked or waiting to join and no socket has
    /// news: a buffer now would reach nobody.
    pub(super) fn idle(&self) -> bool {
        self.links.is_empty() && self.pending.is_empty() && !self.attention_pending()
    }

    /// Whether `take_attention` would say yes, without taking it.
    fn attention_pending(&self) -> bool {
        self.watch.as_ref().is_none_or(Watch::attention_pending)
    }

    /// Watches every socket again, once render has looked at them all.
    fn rearm_watch(&self) {
        let Some(watch) = self.watch.as_ref() else {
            return;
        };
        if let Some(listener) = self.listener.as_ref() {
            watch.rearm(listener.as_fd(), Interest::Readable);
        }
        for connection in &self.pending {
            watch.rearm(connection.as_fd(), Interest::Readable);
        }
        for link in &self.links {
            watch.rearm(link.connection.as_fd(), Interest::HangUp);
        }
    }

    /// Stops watching a connection that is about to be closed.
    fn forget(&self, connection: &Connection) {
        if let Some(watch) = self.watch.as_ref() {
            watch.forget(connection.as_fd());
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether a lagging reader loses buffers (`when-full`), asked of the
    /// element once per run.
    pub(super) fn drop_mode(&mut self, sink: &ShmRingSink) -> bool {
        *self.drop_mode.get_or_insert_with(|| sink.decide_drop_mode())
    }

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

    fn update_linked(&self, sink: &ShmRingSink) {
        sink.set_linked(self.links.len() as u32);
    }

    /// Makes sure the readers that connected are linked: drops the links of
    /// readers that left, and takes in readers waiting to join (only when
    /// the watch saw a socket become ready, unless it waits). With `wait`, sleeps
    /// until one is linked, or the first time until `wait-for-readers` are,
    /// so that readers started before the writer all get its first buffer.
    /// Returns whether any is. A connection that never says hello blocks
    /// nothing: it waits in `pending` while others are served.
    pub(super) fn admit_readers(
        &mut self,
        sink: &ShmRingSink,
        unlock: &Notifier,
        wait: bool,
    ) -> Result<bool, gst::FlowError> {
        let attention = self.take_attention();
        self.prune_links(sink, attention);
        let wanted = if self.readers_gathered {
            1
        } else {
            sink.wait_for_readers() as usize
        };
        let waits = wait && self.links.len() < wanted;
        if attention || waits {
            self.accept_readers(sink, unlock)?;
        }
        while self.links.len() < wanted && wait {
            let Some(listener) = self.listener.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            gst::debug!(CAT, imp = sink, "waiting for a reader on {}", listener.path().display());
            let mut fds = vec![unlock.as_fd(), listener.as_fd()];
            fds.extend(self.pending.iter().map(|connection| connection.as_fd()));
            let ready = ipc::wait_readable_any(&fds).map_err(|err| post_ipc_error(sink, &err))?;
            drop(fds);
            if ready[0] {
                sink.resume_after_unlock()?;
            }
            self.accept_readers(sink, unlock)?;
        }
        if attention || waits {
            self.rearm_watch();
        }
        self.readers_gathered = true;
        Ok(!self.links.is_empty())
    }

    /// Forgets the links of readers that detached or were dropped for
    /// breaking the release protocol, and, with `look_for_hang_ups`, of
    /// those whose socket hung up.
    fn prune_links(&mut self, sink: &ShmRingSink, look_for_hang_ups: bool) {
        let mut index = 0;
        while let Some(link) = self.links.get(index) {
            let slot = link.slot;
            if link.heap.evicted(slot) {
                gst::info!(CAT, imp = sink, "reader {slot} was dropped");
                self.unlink(sink, slot, Unlink::Dropped);
            } else if link.records.peer_tampered() {
                gst::element_imp_warning!(
                    sink,
                    gst::ResourceError::Write,
                    [
                        "Dropped reader {slot} ({}): it cleared O_NONBLOCK on a shared eventfd, which could block this writer",
                        link.connection.peer_description()
                    ]
                );
                self.unlink(sink, slot, Unlink::Dropped);
            } else if link.records.reader_detached() {
                gst::info!(CAT, imp = sink, "reader {slot} detached");
                self.unlink(sink, slot, Unlink::Detached);
            } else if look_for_hang_ups && link.connection.peer_gone() {
                gst::info!(CAT, imp = sink, "reader {slot} went away");
                self.unlink(sink, slot, Unlink::HungUp);
            } else {
                index += 1;
            }
        }
    }

    /// Accepts the connections waiting in the listen queue, keeping them in
    /// `pending` until they say hello, without waiting for any.
    fn accept_waiting(&mut self, sink: &ShmRingSink) -> Result<(), gst::FlowError> {
        let listener = self.listener.as_ref().ok_or(gst::FlowError::Flushing)?;
        while let Some(connection) = listener.accept().map_err(|err| post_ipc_error(sink, &err))? {
            if self.pending.len() == MAX_PENDING_READERS {
                let oldest = self.pending.remove(0);
                self.forget(&oldest);
            }
            self.pending.push(connection);
        }
        Ok(())
    }

    /// Accepts waiting connections and links (or refuses) every one whose
    /// hello has arrived.
    fn accept_readers(&mut self, sink: &ShmRingSink, unlock: &Notifier) -> Result<(), gst::FlowError> {
        self.accept_waiting(sink)?;
        let mut index = 0;
        while index < self.pending.len() {
            match self.pending[index].recv_client_hello() {
                Ok(None) => index += 1,
                Ok(Some((_, HelloPurpose::Probe))) => {
                    let connection = self.pending.remove(index);
                    self.answer_probe(sink, &connection);
                }
                Ok(Some((version, HelloPurpose::Reader))) => {
                    let connection = self.pending.remove(index);
                    self.link_reader(sink, connection, version, unlock)?;
                }
                Err(err) => {
                    gst::debug!(CAT, imp = sink, "dropping a would-be reader: {err}");
                    let connection = self.pending.remove(index);
                    self.forget(&connection);
                }
            }
        }
        Ok(())
    }

    /// Tells a device provider what this stream carries. A probe is not a
    /// reader: it is answered whatever `max-readers` says, gets no slot, and
    /// its connection closes when it is dropped after this.
    fn answer_probe(&self, sink: &ShmRingSink, connection: &Connection) {
        match ipc::probe::answer(connection, self.caps.as_deref()) {
            Ok(()) => gst::debug!(
                CAT,
                imp = sink,
                "answered a caps probe ({})",
                connection.peer_description()
            ),
            Err(err) => gst::debug!(CAT, imp = sink, "could not answer a caps probe: {err}"),
        }
    }

    /// Keeps the caps a probe is told of, and lets a device provider
    /// watching the directory know that they changed.
    /// Whether readers may be woken once per batch of buffers: only
    /// while upstream is not live, since a live stream's reader must see
    /// each buffer as soon as it is written.
    pub(super) fn set_batch_wakes(&mut self, batch: bool) {
        self.batch_wakes = batch;
        for link in &mut self.links {
            link.records.set_batch_wakes(batch);
        }
    }

    pub(super) fn announce_caps(&mut self, sink: &ShmRingSink, caps: String) {
        self.caps = Some(caps);
        if let Some(listener) = &self.listener
            && let Err(err) = listener.announce_change()
        {
            gst::debug!(CAT, imp = sink, "could not announce the new caps: {err}");
        }
    }

    /// Hands a reader that said hello a new channel onto the heap and links
    /// it, or refuses it when `max-readers` readers are linked already.
    fn link_reader(
        &mut self,
        sink: &ShmRingSink,
        connection: Connection,
        version: u32,
        unlock: &Notifier,
    ) -> Result<(), gst::FlowError> {
        let max_readers = sink.max_readers();
        if self.links.len() >= max_readers as usize {
            gst::warning!(
                CAT,
                imp = sink,
                "refusing a reader: {} are linked, which is max-readers",
                self.links.len()
            );
            ipc::refuse_busy(&connection, max_readers);
            return Ok(());
        }
        let heap = sink.heap_or_error(!self.links.is_empty())?;
        let Some(slot) = heap.free_slot() else {
            gst::warning!(CAT, imp = sink, "every holder slot is taken by departing readers");
            ipc::refuse_busy(&connection, max_readers);
            return Ok(());
        };
        let sizes = ChannelSizes {
            record_capacity: sink.record_queue_size(),
            release_slots: (heap.size() / INLINE_MAX as u64 + 1).clamp(64, MAX_RELEASE_SLOTS - MAX_FD_HOLDS)
                + MAX_FD_HOLDS,
            heap_size: heap.size(),
        };
        let channel = match ipc::answer_hello(&connection, version, sizes, heap.memory(), slot) {
            Ok(channel) => channel,
            Err(IpcError::Ring(err)) => {
                gst::element_imp_error!(
                    sink,
                    gst::ResourceError::OpenWrite,
                    ["Could not create the channel: {err}"]
                );
                return Err(gst::FlowError::Error);
            }
            Err(err) => {
                gst::element_imp_warning!(sink, gst::ResourceError::Read, ["Refused a reader: {err}"]);
                return Ok(());
            }
        };
        let (mut records, releases) = channel.into_parts();
        records.set_batch_wakes(self.batch_wakes);
        let Some(listener) = self.listener.as_ref() else {
            return Err(gst::FlowError::Flushing);
        };
        let fds = [
            (records.space_fd(), Trigger::Edge),
            (connection.as_fd(), Trigger::HangUp),
            (unlock.as_fd(), Trigger::Level),
            (listener.as_fd(), Trigger::Level),
        ];
        let waiter = Waiter::new(fds).map_err(|err| post_ipc_error(sink, &err))?;
        heap.add_reader(slot, releases, records.progress(), connection.as_fd())
            .map_err(|err| post_ring_error(sink, &err, 0))?;
        if let Err(err) = sink.upstream().add(slot, &connection) {
            gst::warning!(CAT, imp = sink, "reader {slot} can send nothing upstream: {err}");
        }
        gst::info!(
            CAT,
            imp = sink,
            "reader {slot} connected ({}; {} linked); heap of {} bytes",
            connection.peer_description(),
            self.links.len() + 1,
            heap.size()
        );
        self.links.push(Link {
            connection,
            records,
            heap,
            slot,
            waiter,
            layout: None,
            needs_keyframe: true,
            key_unit_asked: false,
            timeline_sent: None,
            lost: 0,
            backlog: VecDeque::new(),
            wakeups_counted: 0,
            flush_owed: None,
            fds: fds::FdCache::default(),
        });
        self.update_linked(sink);
        self.replay_sticky_events(sink, slot)
    }

    /// Stops sending to the reader in `slot`. Every way a reader leaves
    /// comes here, and `why` decides what becomes of the blocks it holds:
    /// they come back at once only when its process is gone. A reader that
    /// may still run keeps them until its socket hangs up, so that no block
    /// it may still read is ever written again.
    fn unlink(&mut self, sink: &ShmRingSink, slot: u32, why: Unlink) {
        if let Some(index) = self.links.iter().position(|link| link.slot == slot) {
            let mut link = self.links.remove(index);
            // Its pipeline must not stay flushing after this writer is gone.
            let signal = link.records.flush_signal();
            if signal.is_open() {
                signal.stop(false);
            }
            self.forget(&link.connection);
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
            sink.upstream().remove(slot);
        }
        self.update_linked(sink);
    }

    pub(super) fn unlink_all(&mut self, sink: &ShmRingSink) {
        for slot in self.slots() {
            self.unlink(sink, slot, Unlink::Dropped);
        }
    }

    /// Drops a reader that broke the record queue: only the reader stores
    /// its read position, so a position outside the queue is its fault, and
    /// the stream goes on for the next reader instead of failing.
    fn drop_offender(&mut self, sink: &ShmRingSink, slot: u32, err: &RingError) {
        let peer = self
            .link(slot)
            .map_or_else(|| "gone".to_owned(), |link| link.connection.peer_description());
        gst::warning!(CAT, imp = sink, "dropping the reader: {err}");
        gst::element_imp_warning!(
            sink,
            gst::ResourceError::Write,
            ["Dropped reader {slot} ({peer}): {err}; the stream goes on for the others"]
        );
        self.unlink(sink, slot, Unlink::Dropped);
    }
}

fn post_ring_error(sink: &ShmRingSink, err: &RingError, len: u64) -> gst::FlowError {
    match err {
        RingError::TooLarge { capacity, .. } => gst::element_imp_error!(
            sink,
            gst::ResourceError::NoSpaceLeft,
            ["A record of {len} bytes does not fit in the record queue of {capacity} bytes"]
        ),
        _ => gst::element_imp_error!(sink, gst::ResourceError::Write, ["{err}"]),
    }
    gst::FlowError::Error
}

fn post_ipc_error(sink: &ShmRingSink, err: &IpcError) -> gst::FlowError {
    gst::element_imp_error!(sink, gst::ResourceError::OpenWrite, ["{err}"]);
    gst::FlowError::Error
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
    /// Upstream was asked for a keyframe since `needs_keyframe` was last
    /// set: one request per join or loss.
    key_unit_asked: bool,
    /// Buffers dropped for this reader (`drop` mode) that it has not yet
    /// been told of; the next buffer it gets follows a Lost record.
    lost: u64,
    /// Caps, events and layouts that did not fit while it lagged (`drop`
    /// mode), oldest first: they go before anything else it gets.
    backlog: VecDeque<(RecordHeader, Vec<u8>)>,
    /// Its wake-ups already counted in the stats.
    wakeups_counted: u64,
    /// The fds it was announced, for buffers that cross by their fd.
    fds: fds::FdCache,
    /// The `timeline_epoch` whose timeline this reader was sent.
    timeline_sent: Option<u32>,
    /// A flush stopped, whose Flush record (count, reset-time) this reader
    /// has not been sent yet.
    flush_owed: Option<(u32, bool)>,
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
