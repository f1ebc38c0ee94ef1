//! The ring's shared memory: creating the sealed memfd, checking one received
//! from a peer, and mapping it. Every `unsafe` block of the ring lives here.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use memfd::{FileSeal, Memfd, MemfdOptions};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};
use nix::sys::stat::fstat;

use super::RingError;
use super::layout::*;

/// The seals a ring memfd must carry before it is shared: its size can never
/// change, so a mapping of it can never fault with SIGBUS, and no other seal
/// can be added later.
const REQUIRED_SEALS: [FileSeal; 3] = [FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal];

/// A mapped ring: the control page followed by the data area mapped twice.
pub struct RingMemory {
    memfd: Memfd,
    base: NonNull<u8>,
    mapped_len: usize,
    capacity: u64,
    data_writable: bool,
}

// SAFETY: the mapping stays valid until drop. Shared fields are only touched
// through atomics. The data area is written only by the writer, through
// `data_mut`, whose callers own the range they write: a `WriteGrant` (one at
// a time, from the single `Producer`), a `Reservation` (its own range until
// it drops), or a header written for a record not yet published.
unsafe impl Send for RingMemory {}
// SAFETY: as above; `&RingMemory` only gives out atomics and byte slices.
unsafe impl Sync for RingMemory {}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

/// Checks a capacity before anything is created or mapped with it.
pub fn check_capacity(capacity: u64) -> Result<(), RingError> {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_multiple_of(page_size()) {
        return Err(RingError::Invalid(format!(
            "ring capacity {capacity} must be a multiple of the page size between {MIN_CAPACITY} and {MAX_CAPACITY}"
        )));
    }
    if page_size() as usize > CONTROL_SIZE {
        return Err(RingError::Invalid(format!(
            "page size {} is larger than the {CONTROL_SIZE}-byte control page",
            page_size()
        )));
    }
    Ok(())
}

impl RingMemory {
    /// Creates a new sealed memfd ring of `capacity` data bytes and writes its
    /// control page.
    pub fn create(capacity: u64) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let memfd = MemfdOptions::default()
            .close_on_exec(true)
            .allow_sealing(true)
            .create("shmring")
            .map_err(|err| RingError::io("creating the ring memfd", std::io::Error::other(err)))?;
        memfd
            .as_file()
            .set_len(CONTROL_SIZE as u64 + capacity)
            .map_err(|err| RingError::io("sizing the ring memfd", err))?;
        memfd
            .add_seals(&REQUIRED_SEALS)
            .map_err(|err| RingError::io("sealing the ring memfd", std::io::Error::other(err)))?;
        let memory = Self::map(memfd, capacity, true)?;
        // SAFETY: the control page is mapped read-write, these offsets lie
        // inside it and are aligned for their types, and no peer has the fd
        // yet, so nothing else touches the page.
        unsafe {
            let page = memory.base.as_ptr();
            page.add(OFFSET_MAGIC).cast::<[u8; 8]>().write(MAGIC);
            page.add(OFFSET_VERSION).cast::<u32>().write(LAYOUT_VERSION);
            page.add(OFFSET_CONTROL_SIZE).cast::<u32>().write(CONTROL_SIZE as u32);
            page.add(OFFSET_CAPACITY).cast::<u64>().write(capacity);
            page.add(OFFSET_READER_SLOTS).cast::<u32>().write(READER_SLOTS);
        }
        Ok(memory)
    }

    /// Maps a ring received from a peer, after checking that the fd is a
    /// memfd with the required seals and at least as large as `capacity`
    /// needs, and that its control page agrees. The data area is mapped
    /// read-only: a reader cannot scribble on what the writer wrote.
    pub fn open(fd: OwnedFd, capacity: u64) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let memfd = Memfd::try_from_fd(fd)
            .map_err(|_| RingError::Invalid("the ring fd the writer sent is not a memfd".into()))?;
        let seals = memfd
            .seals()
            .map_err(|err| RingError::io("reading the ring memfd's seals", std::io::Error::other(err)))?;
        if let Some(missing) = REQUIRED_SEALS.iter().find(|seal| !seals.contains(seal)) {
            return Err(RingError::Invalid(format!(
                "the ring memfd lacks the {missing:?} seal, so the writer could still resize it"
            )));
        }
        let stat = fstat(memfd.as_file()).map_err(|err| RingError::io("fstat of the ring memfd", err.into()))?;
        let needed = CONTROL_SIZE as u64 + capacity;
        if (stat.st_size as u64) < needed {
            return Err(RingError::Invalid(format!(
                "the ring memfd holds {} bytes but a ring of capacity {capacity} needs {needed}",
                stat.st_size
            )));
        }
        let memory = Self::map(memfd, capacity, false)?;
        // SAFETY: the control page is mapped and at least 0x20 bytes long.
        // The peer may change these bytes concurrently, so they are copied
        // once with a volatile read and only the copy is checked.
        let page = unsafe { std::ptr::read_volatile(memory.base.as_ptr().cast::<[u8; 0x20]>()) };
        let u32_at = |at: usize| u32::from_ne_bytes(page[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_ne_bytes(page[at..at + 8].try_into().unwrap_or_default());
        if page[OFFSET_MAGIC..OFFSET_MAGIC + 8] != MAGIC {
            return Err(RingError::Invalid(
                "the ring memfd does not start with the shmring magic".into(),
            ));
        }
        let version = u32_at(OFFSET_VERSION);
        if version != LAYOUT_VERSION {
            return Err(RingError::Invalid(format!(
                "the ring uses layout version {version}, this build reads version {LAYOUT_VERSION}"
            )));
        }
        if u32_at(OFFSET_CONTROL_SIZE) as usize != CONTROL_SIZE || u64_at(OFFSET_CAPACITY) != capacity {
            return Err(RingError::Invalid(
                "the ring's control page disagrees with the handshake about its size".into(),
            ));
        }
        Ok(memory)
    }

    /// Reserves address space for the control page and two copies of the data
    /// area, then maps the memfd over it so that data byte `i` and
    /// `i + capacity` are the same memory.
    fn map(memfd: Memfd, capacity: u64, data_writable: bool) -> Result<Self, RingError> {
        let capacity_len = usize::try_from(capacity).map_err(|_| RingError::Invalid("ring too large".into()))?;
        // Checked: on a 32-bit target twice `MAX_CAPACITY` does not fit in a
        // usize, and the capacity comes from the peer.
        let mapped_len = capacity_len
            .checked_mul(2)
            .and_then(|data_len| data_len.checked_add(CONTROL_SIZE))
            .ok_or_else(|| RingError::Invalid("ring too large for this address space".into()))?;
        let reserve_len = NonZeroUsize::new(mapped_len).ok_or_else(|| RingError::Invalid("empty ring".into()))?;
        // SAFETY: an anonymous PROT_NONE mapping at an address the kernel
        // chooses aliases nothing.
        let reserved = unsafe {
            mmap_anonymous(
                None,
                reserve_len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|err| RingError::io("reserving address space for the ring", err.into()))?;
        let base = reserved.cast::<u8>();
        // From here on, dropping `memory` unmaps the whole reservation.
        let memory = Self {
            memfd,
            base,
            mapped_len,
            capacity,
            data_writable,
        };
        let read_write = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let data_prot = if data_writable {
            read_write
        } else {
            ProtFlags::PROT_READ
        };
        let control = CONTROL_SIZE as i64;
        memory.map_fixed(0, CONTROL_SIZE, read_write, 0)?;
        memory.map_fixed(CONTROL_SIZE, capacity_len, data_prot, control)?;
        memory.map_fixed(CONTROL_SIZE + capacity_len, capacity_len, data_prot, control)?;
        Ok(memory)
    }

    fn map_fixed(&self, at: usize, len: usize, prot: ProtFlags, file_offset: i64) -> Result<(), RingError> {
        let invalid = || RingError::Invalid("ring mapping out of range".into());
        if at.checked_add(len).is_none_or(|end| end > self.mapped_len) {
            return Err(invalid());
        }
        let addr = NonZeroUsize::new(self.base.as_ptr() as usize + at).ok_or_else(invalid)?;
        let len = NonZeroUsize::new(len).ok_or_else(invalid)?;
        // SAFETY: [addr, addr + len) lies inside the reservation made in
        // `map`, which this object owns and nothing else has references
        // into yet, so MAP_FIXED replaces only our own PROT_NONE pages. The
        // file is sealed against shrinking and was checked to be long enough,
        // so the pages never fault.
        unsafe {
            mmap(
                Some(addr),
                len,
                prot,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                self.memfd.as_file(),
                file_offset,
            )
        }
        .map_err(|err| RingError::io("mapping the ring memfd", err.into()))?;
        Ok(())
    }

    /// The memfd, to send to a reader.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_file().as_fd()
    }

    pub(crate) fn control_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= CONTROL_SIZE);
        // SAFETY: the offset is inside the mapped read-write control page
        // and 8-byte aligned (the page is page-aligned). AtomicU64 has the
        // layout of u64, and this process only accesses the word atomically.
        // Whatever a hostile peer stores there is only a value that the
        // protocol checks before using it.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    pub(crate) fn control_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= CONTROL_SIZE);
        // SAFETY: as in `control_u64`, for a 4-byte aligned u32.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// A private copy of the record header at data offset `offset`, read
    /// once with a volatile read so that the compiler cannot read shared
    /// memory again after the copy has been checked.
    pub(crate) fn copy_header(&self, offset: u64) -> Option<[u8; RECORD_HEADER_SIZE as usize]> {
        let range = self.data_range(offset, RECORD_HEADER_SIZE)?;
        // SAFETY: the range lies inside the mapped data area (checked by
        // `data_range`), and any byte pattern is a valid [u8; N]. The writer
        // may change the bytes concurrently; the volatile read takes one copy.
        Some(unsafe {
            std::ptr::read_volatile(
                self.base
                    .as_ptr()
                    .add(range.0)
                    .cast::<[u8; RECORD_HEADER_SIZE as usize]>(),
            )
        })
    }

    /// `len` bytes of the data area starting at `offset` (in `0..2 * capacity`).
    pub(crate) fn data(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let range = self.data_range(offset, len)?;
        // SAFETY: the range lies inside the mapped data area (checked by
        // `data_range`). A hostile writer may change these bytes while we
        // hold the slice, so they must only be copied or handed on as opaque
        // media bytes, never validated in place and then used: `peek` copies
        // the header out first, and `ReadRecord::payload` states the same
        // rule for its callers.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(range.0), range.1) })
    }

    /// Mutable access to `len` data bytes at `offset`.
    ///
    /// # Safety
    /// The caller must be the ring's only producer, and the range must lie in
    /// the free part of the ring, which an honest reader does not touch, with
    /// no other slice into it alive. A hostile reader that maps the memfd
    /// writable itself can still store there, so the bytes are written, never
    /// read back to make a decision.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn data_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        if !self.data_writable {
            return None;
        }
        let range = self.data_range(offset, len)?;
        // SAFETY: in bounds (checked), mapped writable, and exclusive by the
        // caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(range.0), range.1) })
    }

    /// The data offset (in `0..2 * capacity`) of a pointer into the data
    /// area, if it points there.
    pub(crate) fn data_offset_of(&self, pointer: *const u8) -> Option<u64> {
        let data_start = self.base.as_ptr() as usize + CONTROL_SIZE;
        let offset = (pointer as usize).checked_sub(data_start)? as u64;
        (offset < 2 * self.capacity).then_some(offset)
    }

    fn data_range(&self, offset: u64, len: u64) -> Option<(usize, usize)> {
        let end = offset.checked_add(len)?;
        if end > 2 * self.capacity {
            return None;
        }
        Some((CONTROL_SIZE + usize::try_from(offset).ok()?, usize::try_from(len).ok()?))
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: `base` and `mapped_len` describe the reservation this object
        // made, and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.mapped_len) };
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;

    use super::*;

    const CAPACITY: u64 = 4096;
    const RING_LEN: u64 = CONTROL_SIZE as u64 + CAPACITY;

    /// A memfd of `len` bytes with a valid control page for `CAPACITY` and
    /// the given seals, for a test to spoil before handing it to `open`.
    fn fake_ring(len: u64, seals: &[FileSeal]) -> Memfd {
        let memfd = MemfdOptions::default().allow_sealing(true).create("fake ring").unwrap();
        let file = memfd.as_file();
        file.set_len(len).unwrap();
        file.write_all_at(&MAGIC, OFFSET_MAGIC as u64).unwrap();
        put_u32(file, OFFSET_VERSION, LAYOUT_VERSION);
        put_u32(file, OFFSET_CONTROL_SIZE, CONTROL_SIZE as u32);
        put_u64(file, OFFSET_CAPACITY, CAPACITY);
        put_u32(file, OFFSET_READER_SLOTS, READER_SLOTS);
        memfd.add_seals(seals).unwrap();
        memfd
    }

    fn put_u32(file: &File, at: usize, value: u32) {
        file.write_all_at(&value.to_ne_bytes(), at as u64).unwrap();
    }

    fn put_u64(file: &File, at: usize, value: u64) {
        file.write_all_at(&value.to_ne_bytes(), at as u64).unwrap();
    }

    fn open(memfd: Memfd, capacity: u64) -> Result<RingMemory, RingError> {
        RingMemory::open(OwnedFd::from(memfd.into_file()), capacity)
    }

    /// The message of the `Invalid` error that opening `memfd` must give.
    fn rejection(memfd: Memfd, capacity: u64) -> String {
        match open(memfd, capacity) {
            Ok(_) => panic!("a bad ring memfd was accepted"),
            Err(RingError::Invalid(message)) => message,
            Err(other) => panic!("expected RingError::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn well_formed_ring_opens() {
        // The baseline the rejections below each spoil in one way.
        let memory = open(fake_ring(RING_LEN, &REQUIRED_SEALS), CAPACITY).unwrap();
        assert_eq!(memory.capacity, CAPACITY);
        assert!(!memory.data_writable);
    }

    #[test]
    fn memfd_missing_any_seal_is_rejected() {
        assert!(rejection(fake_ring(RING_LEN, &[]), CAPACITY).contains("seal"));
        for missing in REQUIRED_SEALS {
            let seals: Vec<FileSeal> = REQUIRED_SEALS.into_iter().filter(|seal| *seal != missing).collect();
            let message = rejection(fake_ring(RING_LEN, &seals), CAPACITY);
            assert!(message.contains(&format!("{missing:?}")), "{message}");
        }
    }

    #[test]
    fn memfd_smaller_than_the_ring_is_rejected() {
        let message = rejection(fake_ring(RING_LEN - 4096, &REQUIRED_SEALS), CAPACITY);
        assert!(message.contains("needs"), "{message}");
        // A handshake claiming a larger ring than the memfd holds.
        let message = rejection(fake_ring(RING_LEN, &REQUIRED_SEALS), 2 * CAPACITY);
        assert!(message.contains("needs"), "{message}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let memfd = fake_ring(RING_LEN, &REQUIRED_SEALS);
        memfd.as_file().write_all_at(b"SHMRINGX", OFFSET_MAGIC as u64).unwrap();
        assert!(rejection(memfd, CAPACITY).contains("magic"));
    }

    #[test]
    fn wrong_version_is_rejected() {
        let memfd = fake_ring(RING_LEN, &REQUIRED_SEALS);
        put_u32(memfd.as_file(), OFFSET_VERSION, LAYOUT_VERSION + 1);
        assert!(rejection(memfd, CAPACITY).contains("version"));
    }

    #[test]
    fn control_page_disagreeing_about_sizes_is_rejected() {
        let memfd = fake_ring(RING_LEN + CAPACITY, &REQUIRED_SEALS);
        put_u64(memfd.as_file(), OFFSET_CAPACITY, 2 * CAPACITY);
        assert!(rejection(memfd, CAPACITY).contains("disagrees"));
        let memfd = fake_ring(RING_LEN, &REQUIRED_SEALS);
        put_u32(memfd.as_file(), OFFSET_CONTROL_SIZE, 8192);
        assert!(rejection(memfd, CAPACITY).contains("disagrees"));
    }

    #[test]
    fn fd_that_is_not_a_memfd_is_rejected() {
        let (pipe, _writer) = nix::unistd::pipe().unwrap();
        match RingMemory::open(pipe, CAPACITY) {
            Err(RingError::Invalid(message)) => assert!(message.contains("not a memfd"), "{message}"),
            Err(other) => panic!("expected RingError::Invalid, got {other:?}"),
            Ok(_) => panic!("a pipe was accepted as a ring"),
        }
    }

    #[test]
    fn memfd_that_cannot_be_mapped_writable_is_an_error() {
        // A writer that also sealed writes, or sent a read-only fd, must get
        // an mmap error, not a fault on our first store to the control page.
        let sealed = fake_ring(
            RING_LEN,
            &[
                FileSeal::SealWrite,
                FileSeal::SealShrink,
                FileSeal::SealGrow,
                FileSeal::SealSeal,
            ],
        );
        assert!(matches!(open(sealed, CAPACITY), Err(RingError::Io { .. })));

        let memfd = fake_ring(RING_LEN, &REQUIRED_SEALS);
        let path = format!("/proc/self/fd/{}", memfd.as_file().as_fd().as_raw_fd());
        let read_only = File::open(path).unwrap();
        assert!(matches!(
            RingMemory::open(read_only.into(), CAPACITY),
            Err(RingError::Io { .. })
        ));
    }

    #[test]
    fn capacity_must_be_whole_pages_within_bounds() {
        for bad in [
            0,
            MIN_CAPACITY - 1,
            MIN_CAPACITY + 1,
            MAX_CAPACITY + MIN_CAPACITY,
            u64::MAX,
        ] {
            assert!(
                matches!(check_capacity(bad), Err(RingError::Invalid(_))),
                "capacity {bad}"
            );
        }
        for good in [MIN_CAPACITY, 4 * MIN_CAPACITY, MAX_CAPACITY] {
            assert!(check_capacity(good).is_ok(), "capacity {good}");
        }
        assert!(matches!(
            RingMemory::create(MIN_CAPACITY + 1),
            Err(RingError::Invalid(_))
        ));
    }

    #[test]
    fn data_area_is_mapped_twice_back_to_back() {
        let writer = RingMemory::create(CAPACITY).unwrap();
        let pattern: Vec<u8> = (1..=16).collect();
        // SAFETY: this test is the only user of the ring.
        let slot = unsafe { writer.data_mut(CAPACITY - 8, 16) }.unwrap();
        slot.copy_from_slice(&pattern);
        // The tail of the write went through the second mapping, onto the
        // start of the area.
        assert_eq!(writer.data(0, 8).unwrap(), &pattern[8..]);
        assert_eq!(writer.data(CAPACITY + CAPACITY - 8, 8).unwrap(), &pattern[..8]);

        // The reader's mapping sees the same bytes, and cannot write them.
        let reader = RingMemory::open(writer.memfd().try_clone_to_owned().unwrap(), CAPACITY).unwrap();
        assert_eq!(reader.data(CAPACITY - 8, 16).unwrap(), &pattern[..]);
        // SAFETY: `data_mut` on a reader's mapping must refuse before any
        // slice exists.
        assert!(unsafe { reader.data_mut(0, 1) }.is_none());
    }

    #[test]
    fn pointers_map_back_to_data_offsets_in_either_mapping() {
        let memory = RingMemory::create(CAPACITY).unwrap();
        for offset in [0, 64, CAPACITY - 1, CAPACITY, 2 * CAPACITY - 1] {
            let pointer = memory.data(offset, 1).unwrap().as_ptr();
            assert_eq!(memory.data_offset_of(pointer), Some(offset));
        }
        let end = memory.data(2 * CAPACITY - 1, 1).unwrap().as_ptr().wrapping_add(1);
        assert_eq!(memory.data_offset_of(end), None);
        let control = memory.base.as_ptr().cast_const();
        assert_eq!(memory.data_offset_of(control), None);
        let elsewhere = [0u8; 4];
        assert_eq!(memory.data_offset_of(elsewhere.as_ptr()), None);
    }

    #[test]
    fn data_outside_the_double_mapping_is_refused() {
        let memory = RingMemory::create(CAPACITY).unwrap();
        assert!(memory.data(0, 2 * CAPACITY).is_some());
        assert!(memory.data(2 * CAPACITY - 8, 9).is_none());
        assert!(memory.data(2 * CAPACITY, 1).is_none());
        assert!(memory.data(u64::MAX, 2).is_none());
        // SAFETY: each call must refuse before any slice exists.
        unsafe {
            assert!(memory.data_mut(2 * CAPACITY - 8, 9).is_none());
            assert!(memory.data_mut(u64::MAX, 2).is_none());
        }
    }
}
