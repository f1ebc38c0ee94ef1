//! The sink's heap: the shared memory its buffers' payloads live in, the
//! books on who holds each block, and the release queues of its readers.
//!
//! It is shared by the streaming thread (render), upstream's threads (the
//! buffer pool and the allocator) and whatever thread drops a buffer that
//! wraps a block, so it has its own lock, apart from the element's state.
//! Nothing here sleeps while holding that lock.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::ipc::{self, Interest};
use nix::poll::PollTimeout;

use crate::ring::layout::FD_RELEASE_TAG;
use crate::ring::{self, HeapBooks, HeapMemory, Holders, Notifier, ReadProgress, ReleaseConsumer, RingError, WRITER};

/// A reader's release queue, the holder bit it answers for, and the blocks
/// on their way to it.
struct ReaderReleases {
    slot: u32,
    releases: ReleaseConsumer,
    progress: ReadProgress,
    /// Where the records naming blocks end, oldest first, until the reader
    /// has read past them.
    unread: VecDeque<u64>,
    /// The reader's control socket: its hang-up means that the reader's
    /// process let go of everything, mappings included.
    connection: OwnedFd,
    /// The reader is no longer sent anything, but it, or buffers of its
    /// downstream, may still read blocks: they come back through the
    /// release queue, or all at once when the socket hangs up.
    departing: bool,
    /// The reader broke its release queue: nothing more is taken from it,
    /// and what it holds comes back only when its socket hangs up.
    releases_ignored: bool,
    /// The buffers whose fd the reader was sent (record kind 9), by hold
    /// number, until it gives the number back: kept alive, so that a pool
    /// upstream does not fill them again while the reader reads them.
    /// Such a buffer never wraps this heap, so dropping it under the books'
    /// lock never takes that lock again; it may return to upstream's pool,
    /// which takes only the pool's own lock.
    fd_holds: HashMap<u64, gst::Buffer>,
}

impl ReaderReleases {
    /// Whether the reader's socket hung up. Messages it sends upstream do
    /// not count: they are the control thread's to read.
    fn hung_up(&self) -> bool {
        ipc::hung_up(self.connection.as_fd())
    }
}

impl ReaderReleases {
    /// Whether a block sent to this reader is still in a record it has not
    /// read. Such a block comes back by itself: the reader either releases
    /// it or leases it, and leases are capped at half the heap, past which
    /// it copies and releases.
    fn has_unread_blocks(&mut self) -> bool {
        let read = self.progress.read_position();
        while self.unread.front().is_some_and(|&end| end <= read) {
            self.unread.pop_front();
        }
        !self.unread.is_empty()
    }
}

struct Books {
    books: HeapBooks,
    readers: Vec<ReaderReleases>,
    /// The memory of each block upstream filled, while a reader holds the
    /// block: pinned, so that a pool upstream, which may recycle our
    /// allocator's memory, discards its buffer instead of filling the block
    /// again while a reader reads it.
    in_place: HashMap<u64, PinnedMemory>,
    /// A thread takes releases while readers hold fd buffers.
    fd_watcher: bool,
}

impl Books {
    /// Lets go of the memory of blocks no reader holds any more.
    /// Returns them, to be dropped after the lock: dropping one may free
    /// its block, which takes the lock.
    fn unpin(&mut self) -> Vec<PinnedMemory> {
        let readers = !WRITER;
        let books = &self.books;
        let done: Vec<u64> = self
            .in_place
            .keys()
            .copied()
            .filter(|&offset| !books.holds(offset, readers))
            .collect();
        done.into_iter()
            .filter_map(|offset| self.in_place.remove(&offset))
            .collect()
    }
}

/// How long a wait for a block goes before it looks again at what the
/// reader has read: a reader that leases a block instead of releasing it
/// sends no wake-up.
const BLOCK_RECHECK_MS: u8 = 5;

/// How long `allocate` may wait for blocks that a reader's downstream keeps
/// (leases), when no free range is large enough. Leases are capped at half
/// the heap, but the free half can be cut into pieces smaller than the
/// buffer, and applications and queues let go of what they keep as they
/// go on. Not forever: a downstream that keeps its buffers until it gets
/// more would then never get any.
pub(super) const LEASE_WAIT: Duration = Duration::from_secs(1);

/// How long [`SinkHeap::allocate`] may wait when no block is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Patience {
    /// Not at all: with `when-full=drop` the writer never waits for a
    /// reader, not even for blocks on their way back.
    None,
    /// For blocks on their way back from readers (in records not read yet,
    /// or held by a departing reader) as long as it takes, since they come
    /// back by themselves; for blocks a reader's downstream keeps (leases)
    /// at most this long.
    Leases(Duration),
}

/// What becomes of the blocks a reader holds when it is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holds {
    /// Its socket hung up, so its process maps none of them any more: they
    /// come back now.
    ComeBack,
    /// It, or its downstream, may still read them: they stay held, and
    /// come back as it gives them back, or all at once when its socket
    /// hangs up.
    KeptUntilHangUp,
}

/// What a wait for a free block ended with.
pub(super) enum Allocation {
    Block(u64),
    /// No block is free, and none is sure to come back: every block in use
    /// is held by this process, or by a reader's downstream, which may keep
    /// it until it gets more data.
    Exhausted,
    /// Unlocked (flushing or stopping) while waiting.
    Interrupted,
}

pub(super) struct SinkHeap {
    memory: HeapMemory,
    books: Mutex<Books>,
    /// Written when dropping a buffer frees a block while someone waits.
    freed: Notifier,
    waiters: AtomicUsize,
    /// One waiter at a time sleeps on the release eventfds: they carry one
    /// wake-up per sleep.
    wait_turn: Mutex<()>,
    /// Reader slots dropped for breaking the release protocol.
    evicted: AtomicU32,
}

impl SinkHeap {
    pub(super) fn create(size: u64) -> Result<Arc<Self>, RingError> {
        Ok(Arc::new(Self {
            memory: HeapMemory::create(size)?,
            books: Mutex::new(Books {
                books: HeapBooks::new(size),
                readers: Vec::new(),
                in_place: HashMap::new(),
                fd_watcher: false,
            }),
            freed: Notifier::new()?,
            waiters: AtomicUsize::new(0),
            wait_turn: Mutex::new(()),
            evicted: AtomicU32::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn memory(&self) -> &HeapMemory {
        &self.memory
    }

    pub(super) fn size(&self) -> u64 {
        self.memory.size()
    }

    /// Whether a block of `len` bytes fits in the heap when it is empty.
    pub(super) fn can_ever_hold(&self, len: u64) -> bool {
        HeapBooks::block_capacity(len).is_some_and(|capacity| capacity <= self.size())
    }

    /// Starts taking releases from the reader in `slot`.
    /// A holder slot that no reader, linked or departing, uses.
    pub(super) fn free_slot(&self) -> Option<u32> {
        let books = self.lock();
        (0..ring::MAX_READERS).find(|&slot| books.readers.iter().all(|reader| reader.slot != slot))
    }

    /// Starts taking releases from the reader in `slot`, whose control
    /// socket is `connection`.
    pub(super) fn add_reader(
        &self,
        slot: u32,
        releases: ReleaseConsumer,
        progress: ReadProgress,
        connection: BorrowedFd<'_>,
    ) -> Result<(), RingError> {
        let connection = connection
            .try_clone_to_owned()
            .map_err(|err| RingError::io("duplicating the reader's socket", err))?;
        self.evicted.fetch_and(!(1 << slot), Ordering::SeqCst);
        self.lock().readers.push(ReaderReleases {
            slot,
            releases,
            progress,
            unread: VecDeque::with_capacity(256),
            connection,
            departing: false,
            releases_ignored: false,
            fd_holds: HashMap::new(),
        });
        Ok(())
    }

    /// The reader in `slot` is sent nothing more; `holds` says what becomes
    /// of the blocks it holds. Every way a reader leaves comes here, so that
    /// a block is never taken back while the reader may still read it.
    pub(super) fn let_go(&self, slot: u32, holds: Holds) {
        gst::info!(super::CAT, "letting reader {slot} go: its blocks {holds:?}");
        let mut books = self.lock();
        match holds {
            Holds::ComeBack => {
                let Books { books, readers, .. } = &mut *books;
                Self::forget(readers, books, slot);
            }
            Holds::KeptUntilHangUp => {
                if let Some(reader) = books.readers.iter_mut().find(|reader| reader.slot == slot) {
                    reader.departing = true;
                    reader.unread.clear();
                }
            }
        }
        self.wake_waiters();
        let unpinned = self.collect(&mut books);
        drop(books);
        drop(unpinned);
    }

    /// The sink stops and never writes this heap again: every reader is
    /// forgotten and its holds dropped, so that the memories pinned for
    /// readers, which hold the heap, let go of it.
    pub(super) fn close(&self) {
        let mut books = self.lock();
        let Books {
            books: holds, readers, ..
        } = &mut *books;
        for slot in readers.iter().map(|reader| reader.slot).collect::<Vec<_>>() {
            Self::forget(readers, holds, slot);
        }
        let unpinned = books.unpin();
        drop(books);
        drop(unpinned);
        // The fd release thread, if any, sees that no hold is left.
        self.freed.notify();
    }

    /// Notes that a record naming a block, ending at queue position
    /// `record_end`, was sent to the reader in `slot`.
    pub(super) fn sent(&self, slot: u32, record_end: u64) {
        if let Some(reader) = self.lock().readers.iter_mut().find(|reader| reader.slot == slot) {
            reader.unread.push_back(record_end);
        }
    }

    /// Keeps `buffer` alive until the reader in `slot` gives back `hold`.
    /// Returns false if that reader is not in the books.
    pub(super) fn hold_fd_buffer(self: &Arc<Self>, slot: u32, hold: u64, buffer: gst::Buffer) -> bool {
        let mut books = self.lock();
        let Some(reader) = books.readers.iter_mut().find(|reader| reader.slot == slot) else {
            drop(books);
            return false;
        };
        reader.fd_holds.insert(hold, buffer);
        if !books.fd_watcher {
            let heap = self.clone();
            let spawned = std::thread::Builder::new()
                .name("shmring-fd-releases".into())
                .spawn(move || heap.take_fd_releases());
            books.fd_watcher = spawned.is_ok();
        }
        true
    }

    /// Whether any reader holds an fd buffer.
    fn fd_buffers_held(books: &Books) -> bool {
        books.readers.iter().any(|reader| !reader.fd_holds.is_empty())
    }

    /// The thread that takes the readers' releases as they come while any
    /// reader holds an fd buffer. Rendering takes releases only when it
    /// needs a block, but an fd buffer goes back to upstream's pool only
    /// once its hold is taken back, and upstream may be waiting for it
    /// before it sends another buffer. Sleeps on the release eventfds (it
    /// has the turn to), the readers' sockets (a hang-up gives everything
    /// back) and `freed` (`close`, or a render that needs the turn).
    fn take_fd_releases(&self) {
        let _turn = self.wait_turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let mut release_fds: Vec<OwnedFd> = Vec::new();
            let mut socket_fds: Vec<OwnedFd> = Vec::new();
            let mut watched_slots = Vec::new();
            let mut sleeping = Vec::new();
            {
                let mut books = self.lock();
                let leftovers = self.collect(&mut books);
                if !Self::fd_buffers_held(&books) {
                    // Under the lock: a hold added from now on starts a new
                    // thread.
                    books.fd_watcher = false;
                    drop(books);
                    drop(leftovers);
                    return;
                }
                let mut ready = false;
                for reader in books.readers.iter_mut().filter(|reader| !reader.releases_ignored) {
                    match reader.releases.prepare_wait() {
                        Ok(true) => sleeping.push(reader.slot),
                        Ok(false) | Err(_) => ready = true,
                    }
                }
                if ready {
                    Self::finish_waits(&mut books, &sleeping);
                    drop(books);
                    drop(leftovers);
                    continue;
                }
                for reader in &books.readers {
                    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned();
                    let (Ok(release), Ok(socket)) = (dup(reader.releases.as_fd()), dup(reader.connection.as_fd()))
                    else {
                        continue;
                    };
                    if !reader.releases_ignored {
                        release_fds.push(release);
                    }
                    socket_fds.push(socket);
                    watched_slots.push(reader.slot);
                }
                self.waiters.fetch_add(1, Ordering::SeqCst);
                drop(books);
                drop(leftovers);
            }
            let mut watched: Vec<_> = release_fds.iter().chain(&socket_fds).map(|fd| fd.as_fd()).collect();
            watched.push(self.freed.as_fd());
            let woken = ipc::wait_readable_for(&watched, PollTimeout::NONE);
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            let mut books = self.lock();
            Self::finish_waits(&mut books, &sleeping);
            self.freed.drain();
            let woken = woken.unwrap_or_default();
            for (index, &slot) in watched_slots.iter().enumerate() {
                if woken.get(release_fds.len() + index) == Some(&true) && Self::socket_hung_up(&books, slot) {
                    let Books { books, readers, .. } = &mut *books;
                    Self::forget(readers, books, slot);
                }
            }
        }
    }

    /// Whether the socket of the reader in `slot` hung up (or sent
    /// something, which only a broken reader does).
    fn socket_hung_up(books: &Books, slot: u32) -> bool {
        books
            .readers
            .iter()
            .find(|reader| reader.slot == slot)
            .is_some_and(ReaderReleases::hung_up)
    }

    /// Drops the hold of an fd buffer record that was never sent.
    pub(super) fn drop_fd_hold(&self, slot: u32, hold: u64) {
        let mut books = self.lock();
        let released = books
            .readers
            .iter_mut()
            .find(|reader| reader.slot == slot)
            .and_then(|reader| reader.fd_holds.remove(&hold));
        drop(books);
        drop(released);
    }

    /// Whether the reader in `slot` broke its release queue, and is to be
    /// let go.
    pub(super) fn evicted(&self, slot: u32) -> bool {
        self.evicted.load(Ordering::Relaxed) & (1 << slot) != 0
    }

    /// Takes every release waiting in the readers' queues. A reader that
    /// releases what it does not hold is dropped from the books.
    #[must_use = "drop the unpinned memories after unlocking"]
    fn collect(&self, all: &mut Books) -> Vec<PinnedMemory> {
        let Books { books, readers, .. } = all;
        let mut offenders = Vec::new();
        for reader in readers.iter_mut().filter(|reader| !reader.releases_ignored) {
            let holder = ring::reader(reader.slot);
            let mut bad = None;
            let fd_holds = &mut reader.fd_holds;
            let taken = reader.releases.take_all(|entry| {
                if entry & FD_RELEASE_TAG != 0 {
                    if fd_holds.remove(&(entry & !FD_RELEASE_TAG)).is_none() {
                        bad.get_or_insert("gave back an fd buffer it was never sent".to_owned());
                    }
                } else if let Err(err) = books.release(entry, holder) {
                    bad.get_or_insert(err.to_string());
                }
            });
            if let Err(err) = taken {
                bad.get_or_insert(err.to_string());
            }
            if reader.releases.peer_tampered() {
                bad.get_or_insert("cleared O_NONBLOCK on its release eventfd".into());
            }
            if let Some(reason) = bad {
                offenders.push((reader.slot, reason));
            }
        }
        for (slot, reason) in offenders {
            gst::warning!(super::CAT, "dropping reader {slot}: it {reason}");
            self.shut_out(readers, slot);
        }
        // A departing reader is forgotten once its process lets go.
        let gone: Vec<u32> = readers
            .iter()
            .filter(|reader| reader.departing && reader.hung_up())
            .map(|reader| reader.slot)
            .collect();
        for slot in gone {
            Self::forget(readers, books, slot);
        }
        if all.in_place.is_empty() {
            Vec::new()
        } else {
            all.unpin()
        }
    }

    /// Forgets the reader in `slot` and takes back every block it held: its
    /// socket hung up, so its process maps none of them any more.
    fn forget(readers: &mut Vec<ReaderReleases>, books: &mut HeapBooks, slot: u32) {
        gst::info!(super::CAT, "reader {slot} is gone: its blocks come back");
        readers.retain(|reader| reader.slot != slot);
        books.release_all(ring::reader(slot));
    }

    /// Stops taking releases from the reader in `slot`, which broke its
    /// release queue, and marks it for the sink to let go. What it holds
    /// stays held until its socket hangs up: it may still be reading it.
    fn shut_out(&self, readers: &mut [ReaderReleases], slot: u32) {
        if let Some(reader) = readers.iter_mut().find(|reader| reader.slot == slot) {
            reader.releases_ignored = true;
            reader.departing = true;
            reader.unread.clear();
        }
        self.evicted.fetch_or(1 << slot, Ordering::SeqCst);
    }

    /// A block of `len` bytes held by `holders`, if one is free now.
    pub(super) fn try_allocate(&self, len: u64, holders: Holders) -> Option<u64> {
        let mut books = self.lock();
        if let Some(offset) = books.books.allocate(len, holders) {
            return Some(offset);
        }
        let unpinned = self.collect(&mut books);
        let offset = books.books.allocate(len, holders);
        drop(books);
        drop(unpinned);
        // Dropping the memories may have freed blocks.
        offset.or_else(|| self.lock().books.allocate(len, holders))
    }

    /// A block of `len` bytes held by `holders`, waiting for a reader to
    /// give one back if none is free. Never waits for blocks only this
    /// process holds: the thread that would let go of them may be this one.
    /// Blocks a reader's downstream keeps are waited for up to `lease_wait`.
    pub(super) fn allocate(
        &self,
        len: u64,
        holders: Holders,
        interrupt: &Notifier,
        patience: Patience,
    ) -> Result<Allocation, RingError> {
        if let Some(offset) = self.try_allocate(len, holders) {
            return Ok(Allocation::Block(offset));
        }
        let Patience::Leases(lease_wait) = patience else {
            return Ok(Allocation::Exhausted);
        };
        let lease_deadline = Instant::now() + lease_wait;
        let _turn = match self.take_wait_turn(len, holders, interrupt)? {
            Ok(turn) => turn,
            Err(done) => return Ok(done),
        };
        loop {
            // Release eventfds first, then the sockets of `watched_slots`.
            let mut release_fds: Vec<OwnedFd> = Vec::new();
            let mut socket_fds: Vec<OwnedFd> = Vec::new();
            let mut sleeping = Vec::new();
            let mut watched_slots = Vec::new();
            {
                let mut books = self.lock();
                let unpinned = self.collect(&mut books);
                if !unpinned.is_empty() {
                    drop(books);
                    drop(unpinned);
                    continue;
                }
                if let Some(offset) = books.books.allocate(len, holders) {
                    return Ok(Allocation::Block(offset));
                }
                let mut coming_back = false;
                for reader in books.readers.iter_mut().filter(|reader| !reader.releases_ignored) {
                    coming_back |= reader.departing || reader.has_unread_blocks();
                }
                if !coming_back && (Instant::now() >= lease_deadline || books.books.bytes_held_by(!WRITER) == 0) {
                    return Ok(Allocation::Exhausted);
                }
                let mut ready = false;
                let mut broken = Vec::new();
                for reader in books.readers.iter_mut().filter(|reader| !reader.releases_ignored) {
                    match reader.releases.prepare_wait() {
                        Ok(true) => sleeping.push(reader.slot),
                        Ok(false) => ready = true,
                        Err(err) => broken.push((reader.slot, err)),
                    }
                }
                for (slot, err) in broken {
                    gst::warning!(super::CAT, "dropping reader {slot}: {err}");
                    self.shut_out(&mut books.readers, slot);
                    ready = true;
                }
                if ready {
                    Self::finish_waits(&mut books, &sleeping);
                    continue;
                }
                for reader in &books.readers {
                    let dup = |fd: BorrowedFd<'_>| {
                        fd.try_clone_to_owned()
                            .map_err(|err| RingError::io("duplicating a reader's fd", err))
                    };
                    // An ignored release queue is not slept on: its eventfd
                    // could be readable for good.
                    if !reader.releases_ignored {
                        release_fds.push(dup(reader.releases.as_fd())?);
                    }
                    socket_fds.push(dup(reader.connection.as_fd())?);
                    watched_slots.push(reader.slot);
                }
                self.waiters.fetch_add(1, Ordering::SeqCst);
            }
            let mut watched: Vec<_> = release_fds.iter().map(|fd| (fd.as_fd(), Interest::Readable)).collect();
            watched.extend(socket_fds.iter().map(|fd| (fd.as_fd(), Interest::HangUp)));
            watched.push((self.freed.as_fd(), Interest::Readable));
            watched.push((interrupt.as_fd(), Interest::Readable));
            let woken = ipc::wait_for(&watched, PollTimeout::from(BLOCK_RECHECK_MS));
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            let mut books = self.lock();
            Self::finish_waits(&mut books, &sleeping);
            self.freed.drain();
            let woken = woken.map_err(|err| RingError::io("waiting for a free block", std::io::Error::other(err)))?;
            // A reader whose socket hung up is gone, and so are its holds.
            for (index, &slot) in watched_slots.iter().enumerate() {
                if woken.get(release_fds.len() + index) == Some(&true) {
                    gst::info!(
                        super::CAT,
                        "reader {slot} went away while the writer waited for a block"
                    );
                    let Books { books, readers, .. } = &mut *books;
                    Self::forget(readers, books, slot);
                }
            }
            drop(books);
            if woken.last() == Some(&true) {
                return Ok(Allocation::Interrupted);
            }
        }
    }

    /// The turn to sleep on the release eventfds. While another thread has
    /// it, this one sleeps beside it on what it can see without the
    /// eventfds, blocks freed in this process and the interrupt, and looks
    /// again every `BLOCK_RECHECK_MS`: so a render queued behind an
    /// allocation of upstream's still ends on its own `unlock`. Returns what
    /// the allocation came to instead, if it came to something first.
    fn take_wait_turn(
        &self,
        len: u64,
        holders: Holders,
        interrupt: &Notifier,
    ) -> Result<Result<MutexGuard<'_, ()>, Allocation>, RingError> {
        loop {
            match self.wait_turn.try_lock() {
                Ok(turn) => return Ok(Ok(turn)),
                Err(TryLockError::Poisoned(poisoned)) => return Ok(Ok(poisoned.into_inner())),
                Err(TryLockError::WouldBlock) => {}
            }
            if let Some(offset) = self.try_allocate(len, holders) {
                return Ok(Err(Allocation::Block(offset)));
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let woken = ipc::wait_readable_for(
                &[self.freed.as_fd(), interrupt.as_fd()],
                PollTimeout::from(BLOCK_RECHECK_MS),
            );
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            let woken = woken.map_err(|err| RingError::io("waiting for a free block", std::io::Error::other(err)))?;
            if woken[1] {
                return Ok(Err(Allocation::Interrupted));
            }
        }
    }

    fn finish_waits(books: &mut Books, sleeping: &[u32]) {
        for reader in books.readers.iter_mut() {
            if sleeping.contains(&reader.slot) {
                reader.releases.finish_wait();
            }
        }
    }

    /// Adds the readers of `holders` as holders of the block that `memory`
    /// (of `len` bytes at heap offset `offset`) fills, if it is a block of
    /// ours that none of them holds yet, and pins `memory` until no reader
    /// holds the block.
    pub(super) fn hold_in_place(&self, offset: u64, len: u64, holders: Holders, memory: gst::Memory) -> bool {
        let mut books = self.lock();
        if books.books.holds(offset, holders) {
            return false;
        }
        let Some(pinned) = PinnedMemory::new(memory) else {
            return false;
        };
        if !books.books.hold(offset, len, holders) {
            drop(books);
            drop(pinned);
            return false;
        }
        let replaced = books.in_place.insert(offset, pinned);
        drop(books);
        drop(replaced);
        true
    }

    /// Takes the readers' releases now, so that upstream's buffers whose
    /// blocks came back are writable again.
    pub(super) fn collect_now(&self) {
        let unpinned = self.collect(&mut self.lock());
        drop(unpinned);
    }

    /// Whether the reader in `slot` holds the block at `offset`.
    pub(super) fn holds_for(&self, offset: u64, slot: u32) -> bool {
        self.lock().books.holds(offset, ring::reader(slot))
    }

    /// Heap bytes that the reader in `slot` holds.
    pub(super) fn bytes_held_by_slot(&self, slot: u32) -> u64 {
        self.lock().books.bytes_held_by(ring::reader(slot))
    }

    /// Heap bytes that readers hold: blocks sent and not yet given back.
    pub(super) fn bytes_held_by_readers(&self) -> u64 {
        self.lock().books.bytes_held_by(!WRITER)
    }

    /// `holder` lets go of the block at `offset`.
    pub(super) fn release(&self, offset: u64, holder: Holders) {
        let mut books = self.lock();
        if books.books.release(offset, holder) == Ok(true) {
            self.wake_waiters();
        }
        let unpinned = if holder != WRITER { books.unpin() } else { Vec::new() };
        drop(books);
        drop(unpinned);
    }

    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.freed.notify();
        }
    }
}

/// A GstMemory locked for exclusive use, as a buffer does with its
/// memories: GStreamer then sees it shared, so not writable, and a pool
/// upstream discards the buffer around it instead of recycling it.
pub(super) struct PinnedMemory(gst::Memory);

impl PinnedMemory {
    fn new(memory: gst::Memory) -> Option<Self> {
        // SAFETY: `memory` is a valid GstMemory that we hold a reference
        // to for as long as the lock. An exclusive lock with no access flags
        // only raises its share count, which cannot fail or conflict.
        let locked = unsafe {
            gst::ffi::gst_mini_object_lock(
                memory.as_ptr() as *mut gst::ffi::GstMiniObject,
                gst::ffi::GST_LOCK_FLAG_EXCLUSIVE,
            )
        };
        (locked != 0).then_some(Self(memory))
    }
}

impl Drop for PinnedMemory {
    fn drop(&mut self) {
        // SAFETY: undoes the exclusive lock `new` took on this memory, which
        // we still hold a reference to.
        unsafe {
            gst::ffi::gst_mini_object_unlock(
                self.0.as_ptr() as *mut gst::ffi::GstMiniObject,
                gst::ffi::GST_LOCK_FLAG_EXCLUSIVE,
            )
        }
    }
}

/// A block wrapped in a GstMemory of the writer's process: the pool's and
/// the allocator's buffers. Holds the block for the writer until dropped.
pub(super) struct BlockMemory {
    heap: Arc<SinkHeap>,
    offset: u64,
    len: u64,
}

impl BlockMemory {
    pub(super) fn new(heap: Arc<SinkHeap>, offset: u64, len: u64) -> Self {
        Self { heap, offset, len }
    }
}

// A block of the sink's own heap may be lent to GStreamer as a slice, unlike
// anything a reader maps: sealed against writes by any other mapping, it is
// written by this process alone (see `HeapMemory::own_block`).
impl AsRef<[u8]> for BlockMemory {
    fn as_ref(&self) -> &[u8] {
        // The allocator handed out at least `len` bytes at `offset`, and this
        // object holds the block for the writer, so the books give it to no
        // one else to write while the slice lives.
        self.heap.memory.own_block(self.offset, self.len).unwrap_or_default()
    }
}

impl AsMut<[u8]> for BlockMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: this object holds the block for the writer, and GStreamer
        // maps a memory writable only while its buffer is writable, that is
        // before it is pushed (and so before any reader gets the block) and
        // with no other mapping alive. No other process can write the heap.
        unsafe { self.heap.memory.block_mut(self.offset, self.len) }.unwrap_or_default()
    }
}

impl Drop for BlockMemory {
    fn drop(&mut self) {
        self.heap.release(self.offset, WRITER);
    }
}
