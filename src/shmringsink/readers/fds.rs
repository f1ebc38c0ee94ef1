//! Buffers whose one memory lives in an fd (GstFdMemory, DMABuf memory)
//! cross by that fd instead of a copy: the fd is announced once per reader
//! on its control socket (SCM_RIGHTS) under an id, and each buffer is then
//! an fd buffer record (kind 9) naming the id, the range and a hold.
//!
//! Invariants:
//!
//! 1. An fd is announced to a reader before the first record that names
//!    its id, and an id is never announced twice on one connection: a
//!    socket message and a record cannot overtake each other that way.
//! 2. The buffer is kept alive from before its record is published until
//!    the reader gives its hold back (or its socket hangs up): a pool
//!    upstream gets it back only then, and so never fills it again while
//!    the reader may read it. The pool then hands the same fds out again,
//!    which the cache finds by identity (device and inode), so a warm pool
//!    costs no message.
//! 3. Once a memory that was sent by its fd is freed (the pool let go),
//!    its fd is forgotten for every reader, with an fd forget record (kind
//!    10) in stream order: its pages may go, or come back as new data.
//! 4. A reader never has more than `MAX_ANNOUNCED_FDS` ids announced and
//!    not yet forgotten, counting forgets it has not read yet: past that,
//!    buffers are copied.
//! 5. Whatever cannot cross by its fd (several memories, a pipe, an
//!    unsealable file, a full socket) is copied, as any other buffer.

use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::subclass::prelude::*;

use crate::codec::{self, FdBufferRef};
use crate::ipc::messages::{FdAnnouncement, FdMemoryKind};
use crate::ring::layout::MAX_ANNOUNCED_FDS;
use crate::ring::shared_fd;
use crate::ring::{Payload, RecordHeader, RecordKind};
use crate::shmringsink::CAT;
use crate::shmringsink::imp::ShmRingSink;

use super::delivery::Inline;
use super::{Readers, SlotList};

/// The fds one reader was announced.
#[derive(Default)]
pub(super) struct FdCache {
    /// Ids by the identity of the file they name.
    ids: HashMap<(u64, u64), u64>,
    next_id: u64,
    next_hold: u64,
    /// Where the forget records not yet read end, in order; `u64::MAX` for
    /// one still in the reader's backlog (`drop` mode), not yet written.
    unread_forgets: VecDeque<u64>,
}

impl FdCache {
    /// Ids the reader may hold now: announced and not forgotten, or
    /// forgotten in a record it has not read. `written` is the record
    /// queue's write position; with `backlog_empty`, every forget that
    /// waited in the backlog has been written before it.
    fn held_by_reader(&mut self, read_position: u64, written: u64, backlog_empty: bool) -> usize {
        if backlog_empty {
            for end in self.unread_forgets.iter_mut().rev() {
                if *end != u64::MAX {
                    break;
                }
                *end = written;
            }
        }
        while self.unread_forgets.front().is_some_and(|&end| end <= read_position) {
            self.unread_forgets.pop_front();
        }
        self.ids.len() + self.unread_forgets.len()
    }
}

/// Identities of memories sent by their fd that have been freed since,
/// filled by a qdata notify on any thread and taken at the next buffer.
#[derive(Default)]
pub(super) struct Deaths(Arc<DeathList>);

#[derive(Default)]
struct DeathList {
    identities: Mutex<Vec<(u64, u64)>>,
    /// Whether `identities` may hold any: checked for every buffer, where
    /// taking the mutex would cost two locked instructions for nothing.
    pending: AtomicBool,
}

/// What the qdata of a watched memory owns.
struct Watch {
    deaths: Arc<DeathList>,
    identity: (u64, u64),
}

unsafe extern "C" fn memory_freed(watch: glib::ffi::gpointer) {
    // SAFETY: `watch` is the box `watch_memory` leaked for this qdata, and
    // GLib calls the destroy notify once, when the memory is finalized.
    let watch = unsafe { Box::from_raw(watch.cast::<Watch>()) };
    let deaths = &watch.deaths;
    let mut identities = deaths
        .identities
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    identities.push(watch.identity);
    // Under the lock, as `take` clears it, so that no set is lost.
    deaths.pending.store(true, Ordering::Release);
}

impl Deaths {
    /// A quark of this sink's own, so that two sinks sending one memory
    /// each learn of its end.
    fn quark(&self) -> glib::Quark {
        glib::Quark::from_str(format!("shmring-fd-watch-{:p}", Arc::as_ptr(&self.0)))
    }

    /// Notes `identity` in this list once `memory` is freed.
    fn watch_memory(&self, memory: &gst::MemoryRef, identity: (u64, u64)) {
        let quark = self.quark().into_glib();
        let object = memory.as_ptr() as *mut gst::ffi::GstMiniObject;
        // SAFETY: `memory` is a live GstMemory for this call; qdata is
        // GStreamer's own thread-safe store on any mini object.
        if !unsafe { gst::ffi::gst_mini_object_get_qdata(object, quark) }.is_null() {
            return;
        }
        let watch = Box::into_raw(Box::new(Watch {
            deaths: self.0.clone(),
            identity,
        }));
        // SAFETY: as above; GStreamer owns the box from now on and hands it
        // to `memory_freed` once. `Watch` is Send: an Arc of a Mutex and
        // integers.
        unsafe { gst::ffi::gst_mini_object_set_qdata(object, quark, watch.cast(), Some(memory_freed)) };
    }

    fn is_empty(&self) -> bool {
        !self.0.pending.load(Ordering::Acquire)
    }

    fn take(&self) -> Vec<(u64, u64)> {
        let mut identities = self
            .0
            .identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.0.pending.store(false, Ordering::Relaxed);
        std::mem::take(&mut *identities)
    }
}

/// A buffer's one memory, when it may cross by its fd.
struct Shared<'a> {
    fd: BorrowedFd<'a>,
    kind: FdMemoryKind,
    identity: (u64, u64),
    offset: u64,
    size: u64,
}

/// Whether a buffer is one fd-backed memory, which may then cross by its
/// fd: the cheap half of [`shareable`]'s checks.
#[derive(Default)]
pub(super) struct FdCheck {
    /// The last allocator seen whose memories are not fd-backed. Whether
    /// they are is a matter of the allocator's type, a GType walk that
    /// costs more than the rest of a small buffer's checks together, so it
    /// runs once per allocator rather than once per buffer.
    plain: Option<gst::Allocator>,
}

impl FdCheck {
    pub(super) fn may_cross_by_fd(&mut self, buffer: &gst::BufferRef) -> bool {
        if buffer.n_memory() != 1 {
            return false;
        }
        let memory = buffer.peek_memory(0);
        let allocator = memory.allocator();
        if let (Some(plain), Some(allocator)) = (&self.plain, allocator)
            && plain == allocator
        {
            return false;
        }
        let fd_backed = memory.downcast_memory_ref::<gst_allocators::FdMemory>().is_some();
        if !fd_backed {
            self.plain = allocator.cloned();
        }
        fd_backed
    }
}

fn shareable(buffer: &gst::Buffer) -> Option<Shared<'_>> {
    if buffer.n_memory() != 1 {
        return None;
    }
    let memory = buffer.peek_memory(0);
    let fd_memory = memory.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    let kind = if memory.is_memory_type::<gst_allocators::DmaBufMemory>() {
        FdMemoryKind::DmaBuf
    } else {
        FdMemoryKind::Fd
    };
    let raw = fd_memory.fd();
    if raw < 0 {
        return None;
    }
    // SAFETY: the memory owns the fd, and `buffer`, borrowed for as long
    // as the result, keeps the memory alive.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let (offset, size) = (memory.offset() as u64, memory.size() as u64);
    let facts = shared_fd::offer(fd, offset, size)?;
    Some(Shared {
        fd,
        kind,
        identity: facts.identity,
        offset,
        size,
    })
}

impl Readers {
    /// Whether fd memories died that readers have not been told to forget.
    pub(super) fn fd_deaths_pending(&self) -> bool {
        !self.fd_deaths.is_empty()
    }

    /// Sends `buffer` by its fd to each reader of `recipients` it can.
    /// Returns to how many it went, and the readers that are to get a copy.
    pub(super) fn deliver_fds(
        &mut self,
        sink: &ShmRingSink,
        buffer: &gst::Buffer,
        header: &RecordHeader,
        recipients: SlotList,
        drop_mode: bool,
    ) -> Result<(usize, SlotList), gst::FlowError> {
        if recipients.is_empty() {
            return Ok((0, recipients));
        }
        self.forget_freed_fds(sink, drop_mode)?;
        let Some(shared) = shareable(buffer) else {
            return Ok((0, recipients));
        };
        self.fd_deaths.watch_memory(buffer.peek_memory(0), shared.identity);
        if let Some(link) = self.links.first() {
            // Holds the readers gave back let upstream's pool have its
            // buffers again, and their fds may be forgotten.
            link.heap.collect_now();
        }
        let mut header = *header;
        header.kind = RecordKind::FdBuffer;
        let mut delivered = 0;
        let mut copies = SlotList::default();
        for slot in recipients {
            let Some((fd_id, hold)) = self.fd_id_for(sink, slot, &shared) else {
                copies.push(slot);
                continue;
            };
            let Some(heap) = self.link(slot).map(|link| link.heap.clone()) else {
                continue;
            };
            if !heap.hold_fd_buffer(slot, hold, buffer.clone()) {
                continue;
            }
            let payload = FdBufferRef {
                fd_id,
                offset: shared.offset,
                size: shared.size,
                hold,
            }
            .encode();
            let sent = self.deliver_one(sink, slot, &header, drop_mode, |readers, sink, header| {
                readers.write_record(
                    sink,
                    slot,
                    header,
                    Payload::Inline {
                        len: codec::FD_BUFFER_REF_SIZE as u64,
                    },
                    Inline::Bytes(&payload),
                    !drop_mode,
                )
            });
            match sent {
                Ok(true) => delivered += 1,
                Ok(false) => heap.drop_fd_hold(slot, hold),
                Err(err) => {
                    heap.drop_fd_hold(slot, hold);
                    return Err(err);
                }
            }
        }
        Ok((delivered, copies))
    }

    /// The id the reader in `slot` knows `shared`'s fd by, announcing it
    /// first if need be, and a new hold number; `None` if the buffer is to
    /// be copied for this reader.
    fn fd_id_for(&mut self, sink: &ShmRingSink, slot: u32, shared: &Shared<'_>) -> Option<(u64, u64)> {
        let link = self.link(slot)?;
        let id = match link.fds.ids.get(&shared.identity) {
            Some(&id) => id,
            None => {
                let read = link.records.progress().read_position();
                let held = link
                    .fds
                    .held_by_reader(read, link.records.position(), link.backlog.is_empty());
                if held >= MAX_ANNOUNCED_FDS {
                    gst::debug!(CAT, imp = sink, "reader {slot} holds {MAX_ANNOUNCED_FDS} fds; copying");
                    return None;
                }
                let id = link.fds.next_id;
                let message = FdAnnouncement { id, kind: shared.kind }.encode();
                match link.connection.send_message_with_fds(&message, &[shared.fd]) {
                    Ok(true) => {}
                    Ok(false) => {
                        gst::debug!(CAT, imp = sink, "reader {slot}'s socket is full; copying");
                        return None;
                    }
                    Err(err) => {
                        gst::debug!(CAT, imp = sink, "could not announce an fd to reader {slot}: {err}");
                        return None;
                    }
                }
                gst::debug!(
                    CAT,
                    imp = sink,
                    "announced fd {id} ({:?}) to reader {slot}",
                    shared.kind
                );
                link.fds.next_id += 1;
                link.fds.ids.insert(shared.identity, id);
                id
            }
        };
        let hold = link.fds.next_hold;
        link.fds.next_hold += 1;
        Some((id, hold))
    }

    /// Tells every reader to forget the fds of memories freed since the
    /// last buffer.
    fn forget_freed_fds(&mut self, sink: &ShmRingSink, drop_mode: bool) -> Result<(), gst::FlowError> {
        let deaths = self.fd_deaths.take();
        if deaths.is_empty() {
            return Ok(());
        }
        for slot in self.slots() {
            for identity in &deaths {
                let Some(id) = self.link(slot).and_then(|link| link.fds.ids.remove(identity)) else {
                    continue;
                };
                gst::debug!(CAT, imp = sink, "reader {slot} forgets fd {id}");
                let header = RecordHeader::untimed(RecordKind::FdForget, 0);
                self.send_control(sink, slot, &header, &id.to_ne_bytes(), drop_mode)?;
                if let Some(link) = self.link(slot) {
                    let end = if link.backlog.is_empty() {
                        link.records.position()
                    } else {
                        u64::MAX
                    };
                    link.fds.unread_forgets.push_back(end);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::FdCache;

    #[test]
    fn a_forget_counts_until_the_reader_has_read_past_it() {
        let mut cache = FdCache::default();
        cache.ids.insert((1, 1), 0);
        cache.unread_forgets.push_back(128);
        assert_eq!(cache.held_by_reader(64, 192, true), 2);
        assert_eq!(cache.held_by_reader(128, 192, true), 1);
    }

    #[test]
    fn a_forget_in_the_backlog_counts_until_written_and_read() {
        let mut cache = FdCache::default();
        cache.unread_forgets.push_back(u64::MAX);
        assert_eq!(cache.held_by_reader(1 << 20, 1 << 20, false), 1);
        // Written by now, somewhere before 4096.
        assert_eq!(cache.held_by_reader(1024, 4096, true), 1);
        assert_eq!(cache.held_by_reader(4096, 8192, true), 0);
    }
}
