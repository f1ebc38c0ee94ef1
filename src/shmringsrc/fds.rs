//! The fds a writer announced to this reader, and the GstMemory handed
//! downstream for an fd buffer record (kind 9): a GstFdMemory or DMABuf
//! memory over a duplicate of the announced fd, read-only, whose end gives
//! the writer's hold back through the release queue (the entry's
//! `FD_RELEASE_TAG` set), as a lease does for a heap block.
//!
//! Every fd is checked when it arrives (`shared_fd::accept`: a memfd
//! sealed against shrinking or a dma-buf, and its size), and every record's
//! range against that size, before anything is mapped. At most
//! `MAX_ANNOUNCED_FDS` fds are kept, and at most `MAX_FD_HOLDS` memories
//! live downstream; past that the bytes are copied and the hold given back.

use std::collections::HashMap;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst_allocators::prelude::*;

use crate::codec::FdBufferRef;
use crate::ipc::messages::{FdAnnouncement, FdMemoryKind};
use crate::ring::layout::{FD_RELEASE_TAG, MAX_ANNOUNCED_FDS, MAX_FD_HOLDS};
use crate::ring::shared_fd;

use super::imp::Releases;

struct Announced {
    fd: OwnedFd,
    kind: FdMemoryKind,
    size: u64,
    /// A dma-buf whose size `fstat` does not tell (older kernels): its
    /// exporter refuses a mapping larger than the buffer, which fails
    /// cleanly, so any range is tried.
    size_unknown: bool,
}

/// The fds announced to this reader and not yet forgotten, by id.
#[derive(Default)]
pub(super) struct FdTable {
    fds: HashMap<u64, Announced>,
    /// Memories of fd buffers alive downstream now.
    holds: Arc<AtomicU64>,
}

impl FdTable {
    pub(super) fn knows(&self, id: u64) -> bool {
        self.fds.contains_key(&id)
    }

    /// Takes in an fd announcement (socket message kind 16) after checking
    /// it; the error says what was wrong.
    pub(super) fn announce(&mut self, announcement: FdAnnouncement, fds: Vec<OwnedFd>) -> Result<(), String> {
        let Ok([fd]) = <[OwnedFd; 1]>::try_from(fds) else {
            return Err("the writer sent an fd announcement that did not carry exactly one fd".into());
        };
        if self.fds.contains_key(&announcement.id) {
            return Err(format!("the writer announced fd {} twice", announcement.id));
        }
        if self.fds.len() >= MAX_ANNOUNCED_FDS {
            return Err(format!(
                "the writer announced more than {MAX_ANNOUNCED_FDS} fds without forgetting any"
            ));
        }
        let facts = shared_fd::accept(fd.as_fd()).map_err(|err| err.to_string())?;
        self.fds.insert(
            announcement.id,
            Announced {
                fd,
                kind: announcement.kind,
                size: facts.size,
                size_unknown: facts.nature == shared_fd::FdNature::DmaBuf && facts.size == 0,
            },
        );
        Ok(())
    }

    /// An fd forget record: the id is not named again.
    pub(super) fn forget(&mut self, id: u64) {
        self.fds.remove(&id);
    }

    /// The memory an fd buffer record names, holding the writer's hold
    /// until it is freed; and whether it may go downstream as it is (else
    /// its bytes are to be copied out). The error says what was wrong.
    pub(super) fn memory(&self, fd_ref: &FdBufferRef, releases: &Arc<Releases>) -> Result<(gst::Memory, bool), String> {
        let announced = self
            .fds
            .get(&fd_ref.fd_id)
            .ok_or_else(|| format!("the writer named fd {} without announcing it", fd_ref.fd_id))?;
        let end = fd_ref.offset.checked_add(fd_ref.size).filter(|_| fd_ref.size > 0);
        let fits = end.is_some_and(|end| announced.size_unknown || end <= announced.size);
        let (Some(end), true) = (end, fits) else {
            return Err(format!(
                "the writer named bytes {}..+{} of fd {}, which holds {} bytes",
                fd_ref.offset, fd_ref.size, fd_ref.fd_id, announced.size
            ));
        };
        let (Ok(end), Ok(offset), Ok(size)) = (
            usize::try_from(end),
            usize::try_from(fd_ref.offset),
            usize::try_from(fd_ref.size),
        ) else {
            return Err("the writer named an fd range beyond this machine's address space".into());
        };
        let fd = announced
            .fd
            .try_clone()
            .map_err(|err| format!("could not duplicate an announced fd: {err}"))?;
        // Counted before the memory exists, so that its release, which
        // takes the count back, can never run first.
        let holds = self.holds.fetch_add(1, Ordering::Relaxed) + 1;
        let hold = FdHold {
            releases: releases.clone(),
            holds: self.holds.clone(),
            hold: fd_ref.hold,
        };
        // SAFETY: the allocator takes `fd`, ours alone (a fresh duplicate),
        // and closes it when the memory is freed; `end` bytes of it exist
        // (checked above against a size that a sealed memfd or a dma-buf
        // keeps).
        let allocated = unsafe {
            match announced.kind {
                FdMemoryKind::Fd => FD_ALLOCATOR.alloc_fd(fd.into_raw_fd(), end, gst_allocators::FdMemoryFlags::NONE),
                FdMemoryKind::DmaBuf => DMABUF_ALLOCATOR.alloc_dmabuf(fd, end),
            }
        };
        let mut memory = match allocated {
            Ok(memory) => memory,
            Err(err) => {
                drop(hold);
                return Err(format!("could not wrap an announced fd in a GstMemory: {err}"));
            }
        };
        let memory_ref = memory.get_mut().ok_or("a new GstMemory is not writable")?;
        memory_ref.resize(offset..offset + size);
        let object = memory_ref.as_mut_ptr() as *mut gst::ffi::GstMiniObject;
        let hold = Box::into_raw(Box::new(hold));
        // SAFETY: `object` is the memory we own alone; READONLY makes
        // GStreamer refuse to map it writable, and the qdata hands the hold
        // to `fd_memory_freed` once, when the memory is finalized.
        unsafe {
            (*object).flags |= gst::ffi::GST_MEMORY_FLAG_READONLY;
            gst::ffi::gst_mini_object_set_qdata(object, hold_quark(), hold.cast(), Some(fd_memory_freed));
        }
        Ok((memory, holds <= MAX_FD_HOLDS))
    }
}

static FD_ALLOCATOR: LazyLock<gst_allocators::FdAllocator> = LazyLock::new(gst_allocators::FdAllocator::new);
static DMABUF_ALLOCATOR: LazyLock<gst_allocators::DmaBufAllocator> =
    LazyLock::new(gst_allocators::DmaBufAllocator::new);

fn hold_quark() -> glib::ffi::GQuark {
    glib::Quark::from_str("shmring-fd-hold").into_glib()
}

/// The writer's hold on an fd buffer, given back when dropped.
struct FdHold {
    releases: Arc<Releases>,
    holds: Arc<AtomicU64>,
    hold: u64,
}

impl Drop for FdHold {
    fn drop(&mut self) {
        self.holds.fetch_sub(1, Ordering::Relaxed);
        self.releases.give_back(FD_RELEASE_TAG | self.hold);
    }
}

unsafe extern "C" fn fd_memory_freed(hold: glib::ffi::gpointer) {
    // SAFETY: `hold` is the box `FdTable::memory` leaked for this qdata,
    // and GLib calls the destroy notify once.
    drop(unsafe { Box::from_raw(hold.cast::<FdHold>()) });
}

/// A buffer over `memory` as it is, or a private copy of its bytes made by
/// GStreamer's C code (no Rust reference to the writer's pages).
pub(super) fn buffer_of(memory: gst::Memory, keep: bool) -> Option<(gst::Buffer, bool)> {
    let mut buffer = gst::Buffer::new();
    buffer.get_mut()?.append_memory(memory);
    if keep {
        return Some((buffer, false));
    }
    let size = buffer.size();
    let mut copy = gst::Buffer::with_size(size).ok()?;
    {
        let copy = copy.get_mut()?;
        let mut dest = copy.map_writable().ok()?;
        buffer.copy_to_slice(0, &mut dest).ok()?;
    }
    Some((copy, true))
}

/// `caps` without the `memory:DMABuf` feature, for buffers that are not
/// DMABuf memory.
pub(super) fn without_dmabuf(caps: &gst::Caps) -> gst::Caps {
    let mut caps = caps.clone();
    let caps_mut = caps.make_mut();
    for index in 0..caps_mut.size() {
        if caps_mut
            .features(index)
            .is_some_and(|features| features.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF))
        {
            caps_mut.set_features(index, None);
        }
    }
    caps
}

/// Whether `caps` announce DMABuf memory.
pub(super) fn announces_dmabuf(caps: &gst::Caps) -> bool {
    caps.features(0)
        .is_some_and(|features| features.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF))
}
