//! Shared memory: creating the sealed memfds, checking ones received from a
//! peer, and mapping them. Every `unsafe` block of the ring lives here.
//!
//! Two kinds of memfd (see [`layout`](super::layout)): a [`ChannelMemory`]
//! per reader, holding the control page and both queues, and one
//! [`HeapMemory`] per writer holding payload blocks, which readers map
//! read-only.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memfd::{FileSeal, Memfd, MemfdOptions};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};
use nix::sys::stat::fstat;

use super::RingError;
use super::layout::*;
use super::sync::{AtomicU64, Ordering};
use super::wake;
use std::sync::atomic::AtomicU32;

/// The seals a memfd must carry before it is shared: its size can never
/// change, so a mapping of it can never fault with SIGBUS, and no other seal
/// can be added later.
const REQUIRED_SEALS: [FileSeal; 3] = [FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal];

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

/// The largest piece [`copy_bytes`] hands to `memcpy` when source and
/// destination nearly alias: below glibc's smallest `rep movsb` threshold
/// (2,112 bytes on CPUs with fast short `rep movsb`), so glibc copies it
/// with vector loads and stores.
const ALIASED_COPY_CHUNK: usize = 2048;

/// Whether a copy from `source` to `dest` falls into the trap described at
/// [`copy_bytes`]: the destination lies 1 to 63 bytes past the source,
/// modulo 4 KiB (the trap starts at 1 and ends before 32 on the machines
/// measured; the margin costs nothing).
fn nearly_aliased(source: *const u8, dest: *const u8) -> bool {
    let distance = (dest as usize).wrapping_sub(source as usize) % 4096;
    (1..64).contains(&distance)
}

/// Copies `len` bytes from `source` to `dest` like
/// `std::ptr::copy_nonoverlapping`, but around a trap of glibc's `memcpy`
/// before 2.39 on AMD Zen 3 and Zen 4 (glibc bug 30994): from about 2 KiB
/// up to the non-temporal threshold it uses `rep movsb`, which runs 15 to
/// 25 times slower when the destination lies a few bytes past the source
/// modulo 4 KiB (measured here: 4 KiB in 1.5-2.3 µs instead of 60-90 ns,
/// 64 KiB in 24-38 µs instead of 1.5-2 µs). Where a ring record or a block
/// lands relative to a buffer is chance, so without this one copy in about
/// 130 would hit the trap, and a stream whose buffers keep their placement
/// would hit it every time. In the trap, on a CPU with AVX-512 the copy
/// runs backwards through vector registers ([`copy_backwards_avx512`]),
/// and elsewhere in 2 KiB pieces, which glibc copies with vector
/// instructions; anywhere else it is one `memcpy`, and the check is three
/// instructions. (On a later host, an AVX-512 EPYC, glibc's `memcpy` at
/// such a distance was only 1.3 times slower, and the pieces 1.9 times at
/// 64 KiB: the backward copy matched the untrapped `memcpy` there.)
///
/// # Safety
/// As for `std::ptr::copy_nonoverlapping`: both ranges valid for `len`
/// bytes, and not overlapping.
#[inline]
unsafe fn copy_bytes(source: *const u8, dest: *mut u8, len: usize) {
    if len <= ALIASED_COPY_CHUNK || !nearly_aliased(source, dest) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(source, dest, len) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the caller's contract, and the CPU has AVX-512F.
        unsafe { copy_backwards_avx512(source, dest, len) };
        return;
    }
    let mut done = 0;
    while done < len {
        let piece = (len - done).min(ALIASED_COPY_CHUNK);
        // SAFETY: `done + piece <= len`, so both pieces lie inside the
        // ranges the caller vouched for.
        unsafe { std::ptr::copy_nonoverlapping(source.add(done), dest.add(done), piece) };
        // Keeps the compiler from fusing the pieces back into one `memcpy`.
        std::hint::black_box(dest);
        done += piece;
    }
}

/// [`copy_bytes`] in the trap, on a CPU with AVX-512: from the end to the
/// start, 128 bytes a step through vector registers. Going backwards, no
/// load reads an address that aliases, modulo 4 KiB, a store made just
/// before it, which is what slows a forward copy (glibc's or our 2 KiB
/// pieces) when the destination lies a few bytes past the source. Measured
/// on an AMD EPYC with AVX-512, destination 16 bytes past: 64 KiB in 650 ns
/// against 960 ns in pieces, 4 KiB in 21 ns against 26 ns, as fast as an
/// untrapped `memcpy`.
///
/// # Safety
/// As for [`copy_bytes`], on a CPU that has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_backwards_avx512(source: *const u8, dest: *mut u8, len: usize) {
    type Step = [u128; 8];
    let step = std::mem::size_of::<Step>();
    let mut end = len;
    while end >= step {
        end -= step;
        // SAFETY: `end + step <= len`, inside both ranges the caller
        // vouched for; unaligned reads and writes need no alignment.
        unsafe {
            let piece = source.add(end).cast::<Step>().read_unaligned();
            dest.add(end).cast::<Step>().write_unaligned(piece);
        }
    }
    // SAFETY: the first `end` bytes, inside both ranges.
    unsafe { std::ptr::copy_nonoverlapping(source, dest, end) };
}

/// Copies `source` into `dest`, which must be as long, steering around a
/// trap of glibc's `memcpy` before 2.39 on AMD Zen 3 and Zen 4 (glibc bug
/// 30994): a copy of 2 KiB or more whose destination lies a few bytes past
/// its source, modulo 4 KiB, runs 15 to 25 times slower. Such a copy goes
/// backwards through AVX-512 registers where the CPU has them, else in
/// 2 KiB pieces (see `copy_bytes`); any other is one `memcpy`. For copies into or
/// out of ring memory that the caller holds as slices (the writer's own
/// heap blocks, GStreamer's mapped buffers).
///
/// # Panics
/// If the lengths differ, as `<[u8]>::copy_from_slice` does.
pub fn copy_slice(dest: &mut [u8], source: &[u8]) {
    assert_eq!(
        dest.len(),
        source.len(),
        "copy_slice between slices of different lengths"
    );
    // SAFETY: both slices are valid for their (equal) length, and a `&mut`
    // slice cannot overlap any other live slice.
    unsafe { copy_bytes(source.as_ptr(), dest.as_mut_ptr(), dest.len()) };
}

fn check_size(what: &str, size: u64, min: u64, max: u64) -> Result<(), RingError> {
    if !(min..=max).contains(&size) || !size.is_multiple_of(page_size()) {
        return Err(RingError::Invalid(format!(
            "{what} of {size} bytes must be a multiple of the page size between {min} and {max}"
        )));
    }
    Ok(())
}

/// Checks a record queue capacity before anything is created or mapped.
pub fn check_record_capacity(capacity: u64) -> Result<(), RingError> {
    check_size("a record queue", capacity, MIN_RECORD_CAPACITY, MAX_RECORD_CAPACITY)?;
    if page_size() as usize > CONTROL_SIZE {
        return Err(RingError::Invalid(format!(
            "page size {} is larger than the {CONTROL_SIZE}-byte control page",
            page_size()
        )));
    }
    Ok(())
}

/// Checks a heap size before anything is created or mapped.
pub fn check_heap_size(size: u64) -> Result<(), RingError> {
    check_size("a heap", size, MIN_HEAP_SIZE, MAX_HEAP_SIZE)
}

fn check_release_slots(slots: u64) -> Result<(), RingError> {
    if !(1..=MAX_RELEASE_SLOTS).contains(&slots) {
        return Err(RingError::Invalid(format!(
            "a release queue of {slots} entries is outside 1..={MAX_RELEASE_SLOTS}"
        )));
    }
    Ok(())
}

/// Bytes of the release queue, rounded up to whole pages.
fn release_bytes(slots: u64) -> u64 {
    (slots * 8).next_multiple_of(page_size())
}

/// The heap's seals, added once the writer has mapped it: on top of the
/// required ones, no mapping made later can write, so a reader cannot
/// scribble on blocks that upstream still uses.
const HEAP_SEALS: [FileSeal; 4] = [
    FileSeal::SealShrink,
    FileSeal::SealGrow,
    FileSeal::SealFutureWrite,
    FileSeal::SealSeal,
];

fn new_memfd(name: &str, len: u64) -> Result<Memfd, RingError> {
    let memfd = MemfdOptions::default()
        .close_on_exec(true)
        .allow_sealing(true)
        .create(name)
        .map_err(|err| RingError::io("creating a memfd", std::io::Error::other(err)))?;
    memfd
        .as_file()
        .set_len(len)
        .map_err(|err| RingError::io("sizing a memfd", err))?;
    Ok(memfd)
}

fn seal(memfd: &Memfd, seals: &[FileSeal]) -> Result<(), RingError> {
    memfd
        .add_seals(seals)
        .map_err(|err| RingError::io("sealing a memfd", std::io::Error::other(err)))
}

fn new_sealed_memfd(name: &str, len: u64) -> Result<Memfd, RingError> {
    let memfd = new_memfd(name, len)?;
    seal(&memfd, &REQUIRED_SEALS)?;
    Ok(memfd)
}

/// Takes a memfd from the peer after checking that it is one, that it
/// carries the required seals, and that it holds at least `needed` bytes.
fn received_memfd(fd: OwnedFd, what: &str, needed: u64) -> Result<Memfd, RingError> {
    received_memfd_sealed(fd, what, needed, &REQUIRED_SEALS)
}

fn received_memfd_sealed(fd: OwnedFd, what: &str, needed: u64, required: &[FileSeal]) -> Result<Memfd, RingError> {
    let memfd = Memfd::try_from_fd(fd)
        .map_err(|_| RingError::Invalid(format!("the {what} fd the writer sent is not a memfd")))?;
    let seals = memfd
        .seals()
        .map_err(|err| RingError::io("reading a memfd's seals", std::io::Error::other(err)))?;
    if let Some(missing) = required.iter().find(|seal| !seals.contains(seal)) {
        return Err(RingError::Invalid(format!(
            "the {what} memfd lacks the {missing:?} seal, so it could still be resized or written through a new mapping"
        )));
    }
    let stat = fstat(memfd.as_file()).map_err(|err| RingError::io("fstat of a memfd", err.into()))?;
    if (stat.st_size as u64) < needed {
        return Err(RingError::Invalid(format!(
            "the {what} memfd holds {} bytes but needs {needed}",
            stat.st_size
        )));
    }
    Ok(memfd)
}

/// A range of address space this process reserved, into which parts of a
/// memfd are mapped. Unmapped as a whole on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn reserve(len: u64) -> Result<Self, RingError> {
        let len = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| RingError::Invalid("mapping too large for this address space".into()))?;
        // SAFETY: an anonymous PROT_NONE mapping at an address the kernel
        // chooses aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|err| RingError::io("reserving address space", err.into()))?;
        Ok(Self {
            base: base.cast(),
            len: len.get(),
        })
    }

    /// Maps `len` bytes of `memfd` from `file_offset` at `at` in the
    /// reservation.
    fn map(&self, memfd: &Memfd, at: u64, len: u64, writable: bool, file_offset: u64) -> Result<(), RingError> {
        let invalid = || RingError::Invalid("mapping out of range".into());
        let at = usize::try_from(at).map_err(|_| invalid())?;
        let len = usize::try_from(len).map_err(|_| invalid())?;
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(invalid());
        }
        let addr = NonZeroUsize::new(self.base.as_ptr() as usize + at).ok_or_else(invalid)?;
        let len = NonZeroUsize::new(len).ok_or_else(invalid)?;
        let file_offset = i64::try_from(file_offset).map_err(|_| invalid())?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: [addr, addr + len) lies inside the reservation this object
        // owns, and nothing has references into it yet, so MAP_FIXED replaces
        // only our own pages. The file is sealed against shrinking and was
        // checked to be long enough, so the pages never fault.
        unsafe {
            mmap(
                Some(addr),
                len,
                prot,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                memfd.as_file(),
                file_offset,
            )
        }
        .map_err(|err| RingError::io("mapping a memfd", err.into()))?;
        Ok(())
    }

    /// The range `at..at + len` as (start, len), if it lies inside.
    fn range(&self, at: u64, len: u64) -> Option<(usize, usize)> {
        let end = at.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        Some((usize::try_from(at).ok()?, usize::try_from(len).ok()?))
    }

    fn atomic_u32(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= self.len);
        // SAFETY: as for `atomic_u64`, for a 4-byte aligned word.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }

    #[cfg(not(loom))]
    fn atomic_u64(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= self.len);
        // SAFETY: `at` is inside the mapping and 8-byte aligned (the mapping
        // is page-aligned); callers only ask for words in read-write parts.
        // AtomicU64 has the layout of u64, and this process only accesses the
        // word atomically. Whatever a hostile peer stores there is only a
        // value that the protocol checks before using it.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU64>() }
    }

    /// The address of `at..at + len`, if the range lies inside. Only a
    /// pointer: nothing here forms a reference to the bytes.
    fn pointer(&self, at: u64, len: u64) -> Option<NonNull<u8>> {
        let (start, _) = self.range(at, len)?;
        // SAFETY: `start` is inside the reservation (checked by `range`), so
        // the offset pointer stays within one allocation and is not null.
        Some(unsafe { self.base.add(start) })
    }

    /// Copies `dest.len()` bytes from `at` into `dest`, a private buffer.
    fn copy_out(&self, at: u64, dest: &mut [u8]) -> Option<()> {
        let source = self.pointer(at, dest.len() as u64)?;
        // SAFETY: the source range is inside the mapping, which stays mapped
        // (and, sealed against shrinking, never faults) for as long as
        // `self`; `dest` is private memory, so the two cannot overlap. The
        // source is read through a raw pointer once, never as a Rust
        // reference, so a peer that stores there concurrently can only make
        // the copy hold any byte values, which every caller treats as
        // untrusted; the compiler cannot read the shared side again later.
        unsafe { copy_bytes(source.as_ptr(), dest.as_mut_ptr(), dest.len()) };
        Some(())
    }

    fn offset_of(&self, pointer: *const u8) -> Option<u64> {
        let offset = (pointer as usize).checked_sub(self.base.as_ptr() as usize)?;
        (offset < self.len).then_some(offset as u64)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` describe the reservation this object made,
        // and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

// SAFETY: the mapping stays valid until drop, and is only reached through
// atomics, raw-pointer copies, and the writer's slices of its own heap
// (see `HeapMemory::own_block`), whose exclusivity the callers guarantee.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// The sizes of a channel, as its control page and the handshake state them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSizes {
    /// Bytes of record queue.
    pub record_capacity: u64,
    /// Entries of release queue.
    pub release_slots: u64,
    /// Bytes of the writer's heap.
    pub heap_size: u64,
}

impl ChannelSizes {
    pub fn check(&self) -> Result<(), RingError> {
        check_record_capacity(self.record_capacity)?;
        check_release_slots(self.release_slots)?;
        check_heap_size(self.heap_size)
    }

    fn file_len(&self) -> u64 {
        CONTROL_SIZE as u64 + self.record_capacity + release_bytes(self.release_slots)
    }
}

/// A mapped channel: the control page, the record queue mapped twice, then
/// the release queue.
pub struct ChannelMemory {
    memfd: Memfd,
    map: Mapping,
    sizes: ChannelSizes,
    records_writable: bool,
    /// Under `--cfg loom`, the shared words as the model checker sees them
    /// (see [`sync`](super::sync)).
    #[cfg(loom)]
    model: super::sync::ModelChannel,
}

impl ChannelMemory {
    /// Creates a channel memfd for a writer and writes its control page.
    pub fn create(sizes: ChannelSizes) -> Result<Self, RingError> {
        sizes.check()?;
        let memfd = new_sealed_memfd("shmring-channel", sizes.file_len())?;
        let memory = Self::map(memfd, sizes, true)?;
        // SAFETY: the control page is mapped read-write, these offsets lie
        // inside it and are aligned for their types, and no peer has the fd
        // yet, so nothing else touches the page.
        unsafe {
            let page = memory.map.base.as_ptr();
            page.add(OFFSET_MAGIC).cast::<[u8; 8]>().write(MAGIC);
            page.add(OFFSET_VERSION).cast::<u32>().write(LAYOUT_VERSION);
            page.add(OFFSET_CONTROL_SIZE).cast::<u32>().write(CONTROL_SIZE as u32);
            page.add(OFFSET_RECORD_CAPACITY)
                .cast::<u64>()
                .write(sizes.record_capacity);
            page.add(OFFSET_RELEASE_SLOTS).cast::<u64>().write(sizes.release_slots);
            page.add(OFFSET_HEAP_SIZE).cast::<u64>().write(sizes.heap_size);
        }
        let light = u64::from(wake::register_light_publisher());
        memory.control_u64(OFFSET_WRITER_LIGHT).store(light, Ordering::Release);
        Ok(memory)
    }

    /// Maps a channel received from a writer, after checking the memfd and
    /// that its control page agrees with `sizes` from the handshake. The
    /// record queue is mapped read-only: a reader cannot scribble on what
    /// the writer wrote.
    pub fn open(fd: OwnedFd, sizes: ChannelSizes) -> Result<Self, RingError> {
        sizes.check()?;
        let memfd = received_memfd(fd, "channel", sizes.file_len())?;
        let memory = Self::map(memfd, sizes, false)?;
        // SAFETY: the control page is mapped and at least 0x28 bytes long.
        // The peer may change these bytes concurrently, so they are copied
        // once with a volatile read and only the copy is checked.
        let page = unsafe { std::ptr::read_volatile(memory.map.base.as_ptr().cast::<[u8; 0x28]>()) };
        let u32_at = |at: usize| u32::from_ne_bytes(page[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_ne_bytes(page[at..at + 8].try_into().unwrap_or_default());
        if page[OFFSET_MAGIC..OFFSET_MAGIC + 8] != MAGIC {
            return Err(RingError::Invalid(
                "the channel memfd does not start with the shmring magic".into(),
            ));
        }
        let version = u32_at(OFFSET_VERSION);
        if version != LAYOUT_VERSION {
            return Err(RingError::Invalid(format!(
                "the channel uses layout version {version}, this build reads version {LAYOUT_VERSION}"
            )));
        }
        let stated = ChannelSizes {
            record_capacity: u64_at(OFFSET_RECORD_CAPACITY),
            release_slots: u64_at(OFFSET_RELEASE_SLOTS),
            heap_size: u64_at(OFFSET_HEAP_SIZE),
        };
        if u32_at(OFFSET_CONTROL_SIZE) as usize != CONTROL_SIZE || stated != sizes {
            return Err(RingError::Invalid(
                "the channel's control page disagrees with the handshake about its sizes".into(),
            ));
        }
        Ok(memory)
    }

    /// Reserves address space for the control page, two copies of the
    /// record queue and the release queue, then maps the memfd over it so
    /// that record byte `i` and `i + capacity` are the same memory.
    fn map(memfd: Memfd, sizes: ChannelSizes, records_writable: bool) -> Result<Self, RingError> {
        let control = CONTROL_SIZE as u64;
        let records = sizes.record_capacity;
        let releases = release_bytes(sizes.release_slots);
        let map = Mapping::reserve(control + 2 * records + releases)?;
        map.map(&memfd, 0, control, true, 0)?;
        map.map(&memfd, control, records, records_writable, control)?;
        map.map(&memfd, control + records, records, records_writable, control)?;
        map.map(&memfd, control + 2 * records, releases, true, control + records)?;
        Ok(Self {
            memfd,
            map,
            sizes,
            records_writable,
            #[cfg(loom)]
            model: super::sync::ModelChannel::new(sizes),
        })
    }

    /// The memfd, to send to a reader.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_file().as_fd()
    }

    pub fn sizes(&self) -> ChannelSizes {
        self.sizes
    }

    pub(crate) fn control_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= CONTROL_SIZE);
        #[cfg(not(loom))]
        let word = self.map.atomic_u64(offset);
        #[cfg(loom)]
        let word = self.model.control(offset);
        word
    }

    /// The flush word (see `flush.rs`). It is not modelled under loom: it
    /// is a futex, outside the wake-up protocol of the queues.
    pub(crate) fn flush_word(&self) -> &AtomicU32 {
        self.map.atomic_u32(OFFSET_FLUSH)
    }

    /// Sleeps while the flush word holds `seen`, until a `futex_wake` on
    /// the same word by any process that maps this memfd, or `timeout`.
    pub(crate) fn futex_wait(&self, seen: u32, timeout: Option<std::time::Duration>) {
        let word: *const AtomicU32 = self.flush_word();
        let timeout = timeout.map(|timeout| libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        });
        let timeout = timeout
            .as_ref()
            .map_or(std::ptr::null(), |timeout| timeout as *const libc::timespec);
        // SAFETY: FUTEX_WAIT only reads the aligned word, which stays mapped
        // while `self` lives; without FUTEX_PRIVATE_FLAG the kernel keys the
        // futex on the memfd's page, which both processes map shared. The
        // timeout, if any, is a relative timespec that lives across the
        // call; null waits until woken. An error (EAGAIN when the word
        // changed, EINTR, ETIMEDOUT) returns, and the caller looks at the
        // word again.
        unsafe {
            libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAIT, seen, timeout);
        }
    }

    /// Wakes every thread, of any process, sleeping in `futex_wait` on this
    /// channel's flush word.
    pub(crate) fn futex_wake(&self) {
        let word: *const AtomicU32 = self.flush_word();
        // SAFETY: FUTEX_WAKE touches no memory; it only needs the word's
        // address, inside this live mapping, to find the waiters.
        unsafe {
            libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, i32::MAX);
        }
    }

    /// Release queue slot `index` (below `release_slots`).
    pub(crate) fn release_slot(&self, index: u64) -> &AtomicU64 {
        let index = index % self.sizes.release_slots;
        #[cfg(not(loom))]
        let slot = {
            let at = CONTROL_SIZE as u64 + 2 * self.sizes.record_capacity + 8 * index;
            self.map.atomic_u64(at as usize)
        };
        #[cfg(loom)]
        let slot = self.model.release_slot(index);
        slot
    }

    /// Copies `dest.len()` bytes of the record queue from `offset` (in
    /// `0..2 * capacity`) into `dest`. The peer may be changing them: check
    /// the copy, never the queue.
    #[inline]
    pub(crate) fn read_records(&self, offset: u64, dest: &mut [u8]) -> Option<()> {
        let len = dest.len() as u64;
        let source = self.record_pointer(offset, len)?;
        #[cfg(loom)]
        self.model.records.read(offset, len);
        // SAFETY: the range lies inside the record queue's two copies
        // (checked by `record_pointer`), which stay mapped, and never fault,
        // for as long as `self`; `dest` is private memory, so the two cannot
        // overlap. The source is read through a raw pointer, never a Rust
        // reference, so a peer that stores there concurrently can only make
        // the copy hold any byte values, which every caller treats as
        // untrusted.
        unsafe { copy_bytes(source.as_ptr(), dest.as_mut_ptr(), dest.len()) };
        Some(())
    }

    /// Copies `source` into the record queue at `offset`. A hostile reader
    /// that maps the memfd writable itself can store there too, so the bytes
    /// are written, never read back to make a decision.
    ///
    /// # Safety
    /// The caller must be the channel's only producer, and the range must
    /// lie in the free part of the queue, which the consumer never reads.
    #[inline]
    pub(crate) unsafe fn write_records(&self, offset: u64, source: &[u8]) -> Option<()> {
        if !self.records_writable {
            return None;
        }
        let len = source.len() as u64;
        let dest = self.record_pointer(offset, len)?;
        #[cfg(loom)]
        self.model.records.write(offset, len);
        // SAFETY: in the record queue (checked), mapped writable (checked),
        // and no other thread of this process touches the free part: the
        // producer is unique and the consumer reads only the written part.
        // `source` is private memory, so the two cannot overlap. Stored
        // through a raw pointer, never a Rust reference: a hostile reader
        // storing there too can only spoil what its own side reads.
        unsafe { copy_bytes(source.as_ptr(), dest.as_ptr(), source.len()) };
        Some(())
    }

    /// The `len` bytes of the record queue from `offset` (in
    /// `0..2 * capacity`, both multiples of [`RECORD_ALIGN`]), checked once
    /// to lie inside it, for reading word by word. The peer may be changing
    /// them: check what is read, never the queue.
    #[inline]
    pub(crate) fn record_words(&self, offset: u64, len: u64) -> Option<RecordWords<'_>> {
        let first = self.word_span(offset, len)?;
        #[cfg(loom)]
        self.model.records.read(offset, len);
        Some(RecordWords {
            first,
            len: (len / RECORD_ALIGN) as usize,
            memory: PhantomData,
        })
    }

    /// As [`Self::record_words`], for writing.
    ///
    /// # Safety
    /// As for [`Self::write_records`], for the whole range.
    #[inline]
    pub(crate) unsafe fn record_words_mut(&self, offset: u64, len: u64) -> Option<RecordWordsMut<'_>> {
        if !self.records_writable {
            return None;
        }
        let first = self.word_span(offset, len)?;
        #[cfg(loom)]
        self.model.records.write(offset, len);
        Some(RecordWordsMut {
            first,
            len: (len / RECORD_ALIGN) as usize,
            memory: PhantomData,
        })
    }

    /// The first word of `offset..offset + len` in the record queue, if
    /// that lies inside it and both are whole words.
    #[inline]
    fn word_span(&self, offset: u64, len: u64) -> Option<NonNull<u64>> {
        if !(offset | len).is_multiple_of(RECORD_ALIGN) {
            return None;
        }
        // The mapping is page-aligned and the record queue starts a page
        // after it, so a whole-word offset gives an aligned `u64`.
        Some(self.record_pointer(offset, len)?.cast())
    }

    /// The address of `offset..offset + len` of the record queue, if that
    /// lies within the queue's two copies (and so not in the release queue
    /// after them). Only a pointer: nothing here forms a reference.
    #[inline]
    fn record_pointer(&self, offset: u64, len: u64) -> Option<NonNull<u8>> {
        let end = offset.checked_add(len)?;
        if end > 2 * self.sizes.record_capacity {
            return None;
        }
        // SAFETY: `offset < end <= 2 * capacity`, and `map` reserved the
        // control page, then the two copies of the queue, then the release
        // queue, so the pointer stays inside the reservation (and a `u64`
        // that small is a `usize`) and is not null.
        Some(unsafe { self.map.base.add(CONTROL_SIZE + offset as usize) })
    }
}

/// Whole words of the record queue that [`ChannelMemory::record_words`]
/// checked lie inside it.
pub(crate) struct RecordWords<'a> {
    first: NonNull<u64>,
    len: usize,
    memory: PhantomData<&'a ChannelMemory>,
}

impl RecordWords<'_> {
    /// Word `index` of the range, as the peer left it; 0 past its end.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> u64 {
        if index >= self.len {
            return 0;
        }
        // SAFETY: `index` is inside the range, which `record_words` checked
        // lies inside the mapping and is aligned; the mapping lives as long
        // as the borrow of the `ChannelMemory`, and any bits are a valid
        // u64. A volatile read of a raw pointer, never a reference: a peer
        // that stores there concurrently only changes the value returned,
        // which callers treat as untrusted, and the compiler cannot read the
        // word again after it has been checked.
        unsafe { self.first.add(index).read_volatile() }
    }

    /// The `N` words from `index`, as [`Self::get`] reads them (0 past the
    /// range's end), with one bounds check when all lie inside.
    #[inline]
    pub(crate) fn get_array<const N: usize>(&self, index: usize) -> [u64; N] {
        if index.checked_add(N).is_none_or(|end| end > self.len) {
            return std::array::from_fn(|at| self.get(index.saturating_add(at)));
        }
        // SAFETY: as in `get`, for the `N` words from `index`, all inside
        // the range (checked above); `[u64; N]` has the alignment of `u64`.
        unsafe { self.first.add(index).cast::<[u64; N]>().read_volatile() }
    }
}

/// Whole words of the record queue that [`ChannelMemory::record_words_mut`]
/// checked lie inside it, for the producer to fill.
pub(crate) struct RecordWordsMut<'a> {
    first: NonNull<u64>,
    len: usize,
    memory: PhantomData<&'a ChannelMemory>,
}

impl RecordWordsMut<'_> {
    /// Stores the header's words in the record that starts at word 0, and
    /// returns `false`, with nothing stored, if the range is too short for
    /// a full trailer.
    #[inline]
    pub(crate) fn put_header(&mut self, header: &EncodedHeader) -> bool {
        let index = header.trailer_index;
        if index < header.base.len() || index.checked_add(TRAILER_WORDS).is_none_or(|end| end > self.len) {
            return false;
        }
        let first = self.first.as_ptr();
        // SAFETY: words 0 and 1, and `index..index + TRAILER_WORDS`, lie
        // inside the range (checked above), which `record_words_mut`
        // checked lies inside the mapping, is aligned and mapped writable,
        // and which its caller guaranteed no other thread of this process
        // touches; `[u64; N]` has the alignment of `u64`. Stored through raw
        // pointers, never a reference: a hostile reader storing there too
        // only spoils what it reads.
        unsafe {
            first.cast::<[u64; 2]>().write(header.base);
            first.add(index).cast::<[u64; TRAILER_WORDS]>().write(header.trailer);
        }
        true
    }
}

/// The writer's heap of payload blocks, mapped read-write by the writer and
/// read-only by readers.
pub struct HeapMemory {
    memfd: Memfd,
    map: Mapping,
    size: u64,
    writable: bool,
}

impl HeapMemory {
    /// Creates a heap memfd of `size` bytes for a writer.
    pub fn create(size: u64) -> Result<Self, RingError> {
        check_heap_size(size)?;
        let memfd = new_memfd("shmring-heap", size)?;
        let heap = Self::map(memfd, size, true)?;
        // After our own writable mapping: it keeps working, and every later
        // one, a reader's included, can only read.
        seal(&heap.memfd, &HEAP_SEALS)?;
        Ok(heap)
    }

    /// Maps a heap received from a writer, read-only, after checking it,
    /// its seal against new writable mappings included.
    pub fn open(fd: OwnedFd, size: u64) -> Result<Self, RingError> {
        check_heap_size(size)?;
        let memfd = received_memfd_sealed(fd, "heap", size, &HEAP_SEALS)?;
        Self::map(memfd, size, false)
    }

    fn map(memfd: Memfd, size: u64, writable: bool) -> Result<Self, RingError> {
        let map = Mapping::reserve(size)?;
        map.map(&memfd, 0, size, writable, 0)?;
        Ok(Self {
            memfd,
            map,
            size,
            writable,
        })
    }

    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_file().as_fd()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `dest.len()` bytes at heap offset `offset` into `dest`, if
    /// they lie inside the heap. A hostile writer can change them at any
    /// time: check the copy, never the heap.
    #[must_use]
    pub fn read_block(&self, offset: u64, dest: &mut [u8]) -> bool {
        self.map.copy_out(offset, dest).is_some()
    }

    /// A private copy of the `len` bytes at `offset`, if they lie inside
    /// the heap.
    pub fn block_to_vec(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.map.range(offset, len)?;
        let mut copy = vec![0; usize::try_from(len).ok()?];
        self.read_block(offset, &mut copy).then_some(copy)
    }

    /// The address of the `len` bytes at `offset`, if they lie inside the
    /// heap: for handing a block to C code (GStreamer) without forming a
    /// Rust reference to memory that a peer writes.
    pub fn block_pointer(&self, offset: u64, len: u64) -> Option<NonNull<u8>> {
        self.map.pointer(offset, len)
    }

    /// The writer's view of a block of its own heap; `None` in a reader.
    ///
    /// A slice is sound here, unlike anywhere else in shared memory, because
    /// no other process can write the heap: it was sealed with
    /// `F_SEAL_FUTURE_WRITE` right after this process mapped it and before
    /// its fd went anywhere, so no peer can map it writable, add write access
    /// with `mprotect`, `write(2)` to it or punch holes in it. Within this
    /// process the heap's books hand each block to one user at a time.
    pub fn own_block(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if !self.writable {
            return None;
        }
        let pointer = self.map.pointer(offset, len)?;
        // SAFETY: in bounds (checked by `pointer`, so `len` fits a usize),
        // and written only by this process (see above). The caller holds the block in the books, so
        // nothing in this process writes it while the slice lives: `block_mut`
        // is only called on a block that no one else holds.
        Some(unsafe { std::slice::from_raw_parts(pointer.as_ptr(), len as usize) })
    }

    /// Mutable access to the `len` bytes at `offset` of the writer's own
    /// heap (see [`Self::own_block`] for why a slice is sound here).
    ///
    /// # Safety
    /// Only the writer may call this, on a block its allocator handed out and
    /// that no reader has been sent yet, with no other slice into it alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn block_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        let pointer = self.map.pointer(offset, len)?;
        // SAFETY: in bounds (checked by `pointer`, so `len` fits a usize);
        // mapped writable (checked)
        // and sealed so that no other process can write it (see `own_block`);
        // exclusive within this process by the caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(pointer.as_ptr(), len as usize) })
    }

    /// The heap offset of a pointer into the heap, if it points there.
    pub fn offset_of(&self, pointer: *const u8) -> Option<u64> {
        self.map.offset_of(pointer)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;

    use super::*;

    const SIZES: ChannelSizes = ChannelSizes {
        record_capacity: 4096,
        release_slots: 64,
        heap_size: 8192,
    };
    const CHANNEL_LEN: u64 = CONTROL_SIZE as u64 + 4096 + 4096;

    /// A memfd of `len` bytes with a valid control page for `SIZES` and the
    /// given seals, for a test to spoil before handing it to `open`.
    fn fake_channel(len: u64, seals: &[FileSeal]) -> Memfd {
        let memfd = MemfdOptions::default().allow_sealing(true).create("fake").unwrap();
        let file = memfd.as_file();
        file.set_len(len).unwrap();
        file.write_all_at(&MAGIC, OFFSET_MAGIC as u64).unwrap();
        put_u32(file, OFFSET_VERSION, LAYOUT_VERSION);
        put_u32(file, OFFSET_CONTROL_SIZE, CONTROL_SIZE as u32);
        put_u64(file, OFFSET_RECORD_CAPACITY, SIZES.record_capacity);
        put_u64(file, OFFSET_RELEASE_SLOTS, SIZES.release_slots);
        put_u64(file, OFFSET_HEAP_SIZE, SIZES.heap_size);
        memfd.add_seals(seals).unwrap();
        memfd
    }

    fn put_u32(file: &File, at: usize, value: u32) {
        file.write_all_at(&value.to_ne_bytes(), at as u64).unwrap();
    }

    fn put_u64(file: &File, at: usize, value: u64) {
        file.write_all_at(&value.to_ne_bytes(), at as u64).unwrap();
    }

    fn open(memfd: Memfd, sizes: ChannelSizes) -> Result<ChannelMemory, RingError> {
        ChannelMemory::open(OwnedFd::from(memfd.into_file()), sizes)
    }

    /// The message of the `Invalid` error that opening `memfd` must give.
    fn rejection(memfd: Memfd, sizes: ChannelSizes) -> String {
        match open(memfd, sizes) {
            Ok(_) => panic!("a bad channel memfd was accepted"),
            Err(RingError::Invalid(message)) => message,
            Err(other) => panic!("expected RingError::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn well_formed_channel_opens() {
        // The baseline the rejections below each spoil in one way.
        let memory = open(fake_channel(CHANNEL_LEN, &REQUIRED_SEALS), SIZES).unwrap();
        assert_eq!(memory.sizes(), SIZES);
        assert!(!memory.records_writable);
    }

    #[test]
    fn memfd_missing_any_seal_is_rejected() {
        assert!(rejection(fake_channel(CHANNEL_LEN, &[]), SIZES).contains("seal"));
        for missing in REQUIRED_SEALS {
            let seals: Vec<FileSeal> = REQUIRED_SEALS.into_iter().filter(|seal| *seal != missing).collect();
            let message = rejection(fake_channel(CHANNEL_LEN, &seals), SIZES);
            assert!(message.contains(&format!("{missing:?}")), "{message}");
        }
    }

    #[test]
    fn memfd_smaller_than_stated_is_rejected() {
        let message = rejection(fake_channel(CHANNEL_LEN - 4096, &REQUIRED_SEALS), SIZES);
        assert!(message.contains("needs"), "{message}");
        let larger = ChannelSizes {
            record_capacity: 8192,
            ..SIZES
        };
        let message = rejection(fake_channel(CHANNEL_LEN, &REQUIRED_SEALS), larger);
        assert!(message.contains("needs"), "{message}");
    }

    #[test]
    fn wrong_magic_or_version_is_rejected() {
        let memfd = fake_channel(CHANNEL_LEN, &REQUIRED_SEALS);
        memfd.as_file().write_all_at(b"SHMRINGX", OFFSET_MAGIC as u64).unwrap();
        assert!(rejection(memfd, SIZES).contains("magic"));
        let memfd = fake_channel(CHANNEL_LEN, &REQUIRED_SEALS);
        put_u32(memfd.as_file(), OFFSET_VERSION, LAYOUT_VERSION + 1);
        assert!(rejection(memfd, SIZES).contains("version"));
    }

    #[test]
    fn control_page_disagreeing_about_sizes_is_rejected() {
        for field in [OFFSET_RECORD_CAPACITY, OFFSET_RELEASE_SLOTS, OFFSET_HEAP_SIZE] {
            let memfd = fake_channel(CHANNEL_LEN, &REQUIRED_SEALS);
            put_u64(memfd.as_file(), field, 1 << 20);
            assert!(rejection(memfd, SIZES).contains("disagrees"));
        }
        let memfd = fake_channel(CHANNEL_LEN, &REQUIRED_SEALS);
        put_u32(memfd.as_file(), OFFSET_CONTROL_SIZE, 8192);
        assert!(rejection(memfd, SIZES).contains("disagrees"));
    }

    #[test]
    fn fd_that_is_not_a_memfd_is_rejected() {
        let (pipe, _writer) = nix::unistd::pipe().unwrap();
        match ChannelMemory::open(pipe, SIZES) {
            Err(RingError::Invalid(message)) => assert!(message.contains("not a memfd"), "{message}"),
            Err(other) => panic!("expected RingError::Invalid, got {other:?}"),
            Ok(_) => panic!("a pipe was accepted as a channel"),
        }
        let (pipe, _writer) = nix::unistd::pipe().unwrap();
        assert!(matches!(HeapMemory::open(pipe, 8192), Err(RingError::Invalid(_))));
    }

    #[test]
    fn memfd_that_cannot_be_mapped_writable_is_an_error() {
        // A writer that also sealed writes, or sent a read-only fd, must get
        // an mmap error, not a fault on our first store to the control page.
        let sealed = fake_channel(
            CHANNEL_LEN,
            &[
                FileSeal::SealWrite,
                FileSeal::SealShrink,
                FileSeal::SealGrow,
                FileSeal::SealSeal,
            ],
        );
        assert!(matches!(open(sealed, SIZES), Err(RingError::Io { .. })));

        let memfd = fake_channel(CHANNEL_LEN, &REQUIRED_SEALS);
        let path = format!("/proc/self/fd/{}", memfd.as_file().as_fd().as_raw_fd());
        let read_only = File::open(path).unwrap();
        assert!(matches!(
            ChannelMemory::open(read_only.into(), SIZES),
            Err(RingError::Io { .. })
        ));
    }

    #[test]
    fn sizes_must_be_whole_pages_within_bounds() {
        for bad in [0, 4095, 4097, MAX_RECORD_CAPACITY + 4096, u64::MAX] {
            assert!(check_record_capacity(bad).is_err(), "capacity {bad}");
        }
        for bad in [0, 4095, MAX_HEAP_SIZE + 4096, u64::MAX] {
            assert!(check_heap_size(bad).is_err(), "heap {bad}");
        }
        for bad in [0, MAX_RELEASE_SLOTS + 1, u64::MAX] {
            let sizes = ChannelSizes {
                release_slots: bad,
                ..SIZES
            };
            assert!(ChannelMemory::create(sizes).is_err(), "release slots {bad}");
        }
        assert!(check_record_capacity(4096).is_ok());
        assert!(check_heap_size(MAX_HEAP_SIZE).is_ok());
    }

    #[test]
    fn record_queue_is_mapped_twice_back_to_back() {
        let writer = ChannelMemory::create(SIZES).unwrap();
        let capacity = SIZES.record_capacity;
        let pattern: Vec<u8> = (1..=16).collect();
        let read = |memory: &ChannelMemory, offset: u64, len: usize| {
            let mut copy = vec![0; len];
            memory.read_records(offset, &mut copy).map(|()| copy)
        };
        // SAFETY: this test is the only user of the channel.
        unsafe { writer.write_records(capacity - 8, &pattern) }.unwrap();
        assert_eq!(read(&writer, 0, 8).unwrap(), &pattern[8..]);
        assert_eq!(read(&writer, 2 * capacity - 8, 8).unwrap(), &pattern[..8]);

        // The reader sees the same bytes and cannot write them.
        let reader = ChannelMemory::open(writer.memfd().try_clone_to_owned().unwrap(), SIZES).unwrap();
        assert_eq!(read(&reader, capacity - 8, 16).unwrap(), pattern);
        // SAFETY: must refuse before touching the queue.
        assert!(unsafe { reader.write_records(0, &[1]) }.is_none());
        assert!(read(&reader, 2 * capacity - 8, 9).is_none());
        assert!(read(&reader, u64::MAX, 2).is_none());
        // SAFETY: must refuse before touching the queue.
        assert!(unsafe { writer.write_records(2 * capacity - 8, &[0; 9]) }.is_none());
        assert_eq!(read(&reader, 2 * capacity - 8, 8).unwrap(), &pattern[..8]);
    }

    #[test]
    fn release_slots_are_shared_and_wrap() {
        let writer = ChannelMemory::create(SIZES).unwrap();
        let reader = ChannelMemory::open(writer.memfd().try_clone_to_owned().unwrap(), SIZES).unwrap();
        use std::sync::atomic::Ordering;
        reader.release_slot(3).store(77, Ordering::Relaxed);
        assert_eq!(writer.release_slot(3).load(Ordering::Relaxed), 77);
        assert_eq!(writer.release_slot(3 + SIZES.release_slots).load(Ordering::Relaxed), 77);
    }

    #[test]
    fn heap_blocks_are_bounds_checked_and_read_only_for_readers() {
        let writer = HeapMemory::create(8192).unwrap();
        // SAFETY: this test owns the heap.
        unsafe { writer.block_mut(4096, 4) }.unwrap().copy_from_slice(b"abcd");
        let reader = HeapMemory::open(writer.memfd().try_clone_to_owned().unwrap(), 8192).unwrap();
        assert_eq!(reader.block_to_vec(4096, 4).unwrap(), b"abcd");
        let mut copy = [0; 3];
        assert!(reader.read_block(4097, &mut copy));
        assert_eq!(&copy, b"bcd");
        assert!(!reader.read_block(8190, &mut copy));
        assert!(reader.block_to_vec(u64::MAX, 2).is_none());
        assert!(reader.block_pointer(8190, 3).is_none());
        // Only the writer gets slices of the heap.
        assert!(reader.own_block(4096, 4).is_none());
        // SAFETY: must refuse before any slice exists.
        assert!(unsafe { reader.block_mut(0, 1) }.is_none());
        let pointer = writer.own_block(4096, 1).unwrap().as_ptr();
        assert_eq!(writer.offset_of(pointer), Some(4096));
        assert_eq!(
            writer.block_pointer(4096, 1).map(NonNull::as_ptr),
            Some(pointer.cast_mut())
        );
        assert_eq!(writer.offset_of([0u8; 1].as_ptr()), None);
        // Nobody can map it writable any more, a reader least of all.
        let path = format!("/proc/self/fd/{}", writer.memfd().as_raw_fd());
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        // SAFETY: a mapping that must fail; it is unmapped at once if not.
        let mapped = unsafe {
            mmap(
                None,
                std::num::NonZeroUsize::new(4096).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        };
        if let Ok(pointer) = mapped {
            // SAFETY: the mapping was just made and nothing refers to it.
            let _ = unsafe { munmap(pointer, 4096) };
            panic!("a writable mapping of the sealed heap was allowed");
        }
        // A heap without that seal is refused.
        let unsealed = new_sealed_memfd("fake heap", 8192).unwrap();
        let message = match HeapMemory::open(OwnedFd::from(unsealed.into_file()), 8192) {
            Err(RingError::Invalid(message)) => message,
            _ => panic!("a heap without the future-write seal was accepted"),
        };
        assert!(message.contains("SealFutureWrite"), "{message}");
        // A heap that claims more than its memfd holds is refused.
        let message = match HeapMemory::open(writer.memfd().try_clone_to_owned().unwrap(), 16384) {
            Err(RingError::Invalid(message)) => message,
            _ => panic!("a short heap was accepted"),
        };
        assert!(message.contains("needs 16384"), "{message}");
    }

    #[test]
    fn sealed_heap_cannot_be_written_through_its_fd_at_all() {
        // `own_block` hands out slices of the writer's heap on the grounds
        // that no other process can write it: every way a reader holding
        // the fd, even reopened read-write, could try must fail.
        use nix::fcntl::{FallocateFlags, fallocate};
        let writer = HeapMemory::create(8192).unwrap();
        // SAFETY: this test owns the heap.
        unsafe { writer.block_mut(0, 4) }.unwrap().copy_from_slice(b"keep");
        let path = format!("/proc/self/fd/{}", writer.memfd().as_raw_fd());
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        assert!(file.write_all_at(b"lost", 0).is_err(), "write(2) to the sealed heap");
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        assert!(
            fallocate(&file, punch, 0, 4096).is_err(),
            "punching a hole in the sealed heap"
        );
        // SAFETY: a read-only shared mapping of our own memfd, unmapped below.
        let mapped = unsafe {
            mmap(
                None,
                NonZeroUsize::new(4096).unwrap(),
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .unwrap();
        // SAFETY: changes the protection of the mapping just made, which
        // nothing refers to.
        let upgraded = unsafe { nix::sys::mman::mprotect(mapped, 4096, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE) };
        // SAFETY: as above; nothing refers to the mapping.
        let _ = unsafe { munmap(mapped, 4096) };
        assert!(
            upgraded.is_err(),
            "mprotect made a read-only mapping of the sealed heap writable"
        );
        assert_eq!(writer.own_block(0, 4).unwrap(), b"keep");
    }

    #[test]
    fn copy_slice_copies_every_byte_at_every_distance() {
        // Lengths around the piece size, and distances in and out of the
        // trap `copy_bytes` steers around, so both ways of copying run.
        const PAGE: usize = 4096;
        let source_memory: Vec<u8> = (0..70_000 + PAGE).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut dest_memory = vec![0u8; 70_000 + 3 * PAGE];
        let source_start = (PAGE - source_memory.as_ptr() as usize % PAGE) % PAGE;
        for len in [0, 1, 2047, 2048, 2049, 4096, 5000, 65_536 + 3] {
            let source = &source_memory[source_start..source_start + len];
            for distance in [0, 1, 15, 16, 31, 32, 63, 64, 2048, 4095] {
                let base = dest_memory.as_ptr() as usize;
                // `dest` starts `distance` bytes past `source`, modulo a page,
                // with a guard byte on either side.
                let wanted = (source.as_ptr() as usize + distance) % PAGE;
                let start = PAGE + (PAGE + wanted - base % PAGE) % PAGE;
                dest_memory.fill(0xEE);
                copy_slice(&mut dest_memory[start..start + len], source);
                assert_eq!(
                    &dest_memory[start..start + len],
                    source,
                    "len {len}, distance {distance}"
                );
                assert_eq!(
                    dest_memory[start - 1],
                    0xEE,
                    "a byte before, len {len}, distance {distance}"
                );
                assert_eq!(
                    dest_memory[start + len],
                    0xEE,
                    "a byte after, len {len}, distance {distance}"
                );
                assert_eq!(
                    nearly_aliased(source.as_ptr(), dest_memory[start..].as_ptr()),
                    (1..64).contains(&distance)
                );
            }
        }
    }
}
