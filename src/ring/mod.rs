//! The shared-memory ring, with no GStreamer in it.
//!
//! A writer and a reader, usually in two processes, share two sealed memfds
//! (see [`layout`] for the bytes):
//!
//! - a **heap** of payload blocks that only the writer allocates, keeping
//!   its books in its own memory ([`heap`]);
//! - a **channel** per reader with two single-producer single-consumer
//!   queues: [`records`] carries headers, events and small payloads in
//!   stream order, writer → reader; [`releases`] carries the blocks the
//!   reader is done with back, in any order.
//!
//! A buffer that anyone keeps therefore pins only its own block, and the
//! writer reuses the most recently freed block first, so only the blocks in
//! flight stay in the CPU cache.
//!
//! Each side sleeps on an eventfd that the other writes only when it finds
//! that side asleep ([`wake`] has the argument that no wake-up is lost), so
//! an application can put [`Consumer::data_fd`], [`Producer::space_fd`] or
//! [`ReleaseConsumer::release_fd`] in any poll loop (glib, mio, epoll).
//!
//! Copies into and out of ring memory go through [`copy_slice`], which
//! steers around a `memcpy` slow path of AMD Zen 3 and 4 with older glibc;
//! an application that fills a heap block itself can use it too.
//!
//! ```
//! use gstshmring::ring::{self, HeapBooks, Payload, RecordHeader, RecordKind};
//!
//! let (writer, heap, mut reader) = ring::channel(ring::ChannelSizes {
//!     record_capacity: 1 << 16,
//!     release_slots: 64,
//!     heap_size: 1 << 20,
//! })
//! .unwrap();
//! let (mut records, mut releases) = writer.into_parts();
//!
//! // A small payload travels inline.
//! let mut grant = records.grant(Payload::Inline { len: 5 }).unwrap().unwrap();
//! assert!(grant.write_inline(0, b"hello"));
//! grant.commit(&RecordHeader::untimed(RecordKind::Caps, 0));
//!
//! // A large one goes in a heap block, named by the record.
//! let mut books = HeapBooks::new(heap.size());
//! let block = books.allocate(100_000, ring::reader(0)).unwrap();
//! // SAFETY: the block was just allocated and no reader has it yet.
//! unsafe { heap.block_mut(block, 100_000) }.unwrap().fill(7);
//! let payload = Payload::Block { offset: block, len: 100_000 };
//! records.grant(payload).unwrap().unwrap().commit(&RecordHeader::untimed(RecordKind::Buffer, 0));
//!
//! let record = reader.records.peek().unwrap().unwrap();
//! assert_eq!(record.inline_to_vec(), b"hello");
//! record.release();
//! let record = reader.records.peek().unwrap().unwrap();
//! let Payload::Block { offset, len } = record.payload() else { unreachable!() };
//! assert!(reader.heap.block_to_vec(offset, len).unwrap().iter().all(|&byte| byte == 7));
//! record.release();
//!
//! // The reader gives the block back; the writer frees it.
//! reader.releases.push(offset).unwrap();
//! releases.take_all(|offset| { books.release(offset, ring::reader(0)).unwrap(); }).unwrap();
//! assert_eq!(books.allocated_bytes(), 0);
//! ```

pub mod flush;
pub mod heap;
pub mod layout;
mod memory;
mod notifier;
pub mod records;
pub mod releases;
pub mod shared_fd;
mod sync;
pub mod wake;

#[cfg(all(test, loom))]
mod loom_tests;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

pub use flush::{FlushSignal, FlushState, FlushWord};
pub use heap::{HeapBooks, Holders, MAX_READERS, ReleaseError, WRITER, reader};
pub use layout::{Payload, RecordHeader, RecordKind};
pub use memory::{ChannelMemory, ChannelSizes, HeapMemory, check_heap_size, check_record_capacity, copy_slice};
pub use notifier::Notifier;
pub use records::{Consumer, Producer, ReadProgress, ReadRecord, WriteGrant};
pub use releases::{ReleaseConsumer, ReleaseProducer};

/// What can go wrong with a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The record can never fit, however empty the queue gets.
    #[error("a record with {payload_len} bytes of inline payload does not fit in a record queue of {capacity} bytes")]
    TooLarge { payload_len: u64, capacity: u64 },
    /// The peer broke an invariant of the shared memory.
    #[error("the shared ring is corrupt: {0}")]
    Corrupt(&'static str),
    /// Something received from the peer failed a check.
    #[error("{0}")]
    Invalid(String),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RingError {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }
}

/// The writer's end of one reader's channel.
pub struct WriterChannel {
    memory: Arc<ChannelMemory>,
    records: Producer,
    releases: ReleaseConsumer,
}

/// The fds a reader needs, in the order the handshake sends them.
pub struct ChannelFds<'a> {
    pub channel: BorrowedFd<'a>,
    pub heap: BorrowedFd<'a>,
    pub data_ready: BorrowedFd<'a>,
    pub space_ready: BorrowedFd<'a>,
    pub release_ready: BorrowedFd<'a>,
}

impl ChannelFds<'_> {
    /// Owned copies of the fds, as a reader in another process receives them.
    pub fn try_clone_to_owned(&self) -> Result<ReceivedFds, RingError> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|err| RingError::io("duplicating a ring fd", err))
        };
        Ok(ReceivedFds {
            channel: dup(self.channel)?,
            heap: dup(self.heap)?,
            data_ready: dup(self.data_ready)?,
            space_ready: dup(self.space_ready)?,
            release_ready: dup(self.release_ready)?,
        })
    }
}

/// The same fds, received and owned.
pub struct ReceivedFds {
    pub channel: OwnedFd,
    pub heap: OwnedFd,
    pub data_ready: OwnedFd,
    pub space_ready: OwnedFd,
    pub release_ready: OwnedFd,
}

impl WriterChannel {
    /// A new channel of `sizes` for one reader of a heap of
    /// `sizes.heap_size` bytes.
    pub fn create(sizes: ChannelSizes) -> Result<Self, RingError> {
        let memory = Arc::new(ChannelMemory::create(sizes)?);
        let records = Producer::new(memory.clone(), Notifier::new()?, Notifier::new()?);
        let releases = ReleaseConsumer::new(memory.clone(), Notifier::new()?);
        Ok(Self {
            memory,
            records,
            releases,
        })
    }

    /// What a reader in another process needs to attach.
    pub fn fds<'a>(&'a self, heap: &'a HeapMemory) -> ChannelFds<'a> {
        ChannelFds {
            channel: self.memory.memfd(),
            heap: heap.memfd(),
            data_ready: self.records.data_ready().as_fd(),
            space_ready: self.records.space_fd(),
            release_ready: self.releases.release_fd(),
        }
    }

    pub fn sizes(&self) -> ChannelSizes {
        self.memory.sizes()
    }

    /// The record producer and the release consumer, which a writer may
    /// keep in different places.
    pub fn into_parts(self) -> (Producer, ReleaseConsumer) {
        (self.records, self.releases)
    }
}

/// The reader's end of a channel, and the writer's heap it reads blocks
/// from.
pub struct ReaderChannel {
    pub records: Consumer,
    pub releases: ReleaseProducer,
    pub heap: Arc<HeapMemory>,
}

impl ReaderChannel {
    /// Attaches to a channel from the fds a writer sent, checking each one
    /// against `sizes` from the handshake. This reader sleeps plainly: the
    /// writer publishes every record with a SeqCst store. What the elements
    /// use, since a reader of small buffers sleeps between most of them.
    pub fn attach(fds: ReceivedFds, sizes: ChannelSizes) -> Result<Self, RingError> {
        Self::attach_with(fds, sizes, false)
    }

    /// As [`attach`](Self::attach), for a reader that rarely sleeps (one
    /// that polls, or spins before it sleeps): it calls membarrier before
    /// each sleep, so that the writer may publish with a plain Release
    /// store (see `wake.rs`). Measured in W3 (64-sample audio, a reader
    /// that sleeps whenever it catches up), fencing made both processes
    /// about twice as slow.
    pub fn attach_fencing(fds: ReceivedFds, sizes: ChannelSizes) -> Result<Self, RingError> {
        Self::attach_with(fds, sizes, true)
    }

    fn attach_with(fds: ReceivedFds, sizes: ChannelSizes, fencing: bool) -> Result<Self, RingError> {
        let memory = Arc::new(ChannelMemory::open(fds.channel, sizes)?);
        let heap = Arc::new(HeapMemory::open(fds.heap, sizes.heap_size)?);
        let data_ready = Notifier::from_peer(fds.data_ready, "data-ready")?;
        let space_ready = Notifier::from_peer(fds.space_ready, "space-ready")?;
        let release_ready = Notifier::from_peer(fds.release_ready, "release-ready")?;
        let records = Consumer::new(memory.clone(), data_ready, space_ready, fencing)?;
        let releases = ReleaseProducer::new(memory, release_ready);
        Ok(Self {
            records,
            releases,
            heap,
        })
    }
}

/// A writer's channel, its heap and the reader's end, all in one process:
/// for tests, benchmarks and applications that pass the fds on by other
/// means. The reader fences (see [`ReaderChannel::attach_fencing`]).
pub fn channel(sizes: ChannelSizes) -> Result<(WriterChannel, Arc<HeapMemory>, ReaderChannel), RingError> {
    let heap = Arc::new(HeapMemory::create(sizes.heap_size)?);
    let writer = WriterChannel::create(sizes)?;
    let received = writer.fds(&heap).try_clone_to_owned()?;
    let reader = ReaderChannel::attach_fencing(received, sizes)?;
    Ok((writer, heap, reader))
}
