//! The shared-memory ring, with no GStreamer in it.
//!
//! A [`Producer`] and a [`Consumer`], usually in two processes, share a
//! sealed memfd holding variable-size records (see [`layout`] for the bytes
//! and [`spsc`] for the protocol and its invariants). Each side sleeps on an
//! eventfd that the other writes only when it finds that side asleep, so an
//! application can put [`Producer::space_fd`] or [`Consumer::data_fd`] in any
//! poll loop (glib, mio, epoll).
//!
//! ```
//! use gstshmring::ring::{self, RecordHeader, RecordKind};
//!
//! let (mut producer, mut consumer) = ring::channel(1 << 16).unwrap();
//! let mut grant = producer.grant(5).unwrap().expect("an empty ring has room");
//! grant.payload().copy_from_slice(b"hello");
//! grant.commit(&RecordHeader::untimed(RecordKind::Caps, 0));
//!
//! let record = consumer.peek().unwrap().expect("one record was committed");
//! assert_eq!(record.payload(), b"hello");
//! record.release();
//! ```

pub mod layout;
mod memory;
mod notifier;
pub mod ordered;
pub mod spsc;

pub use layout::{RecordHeader, RecordKind};
pub use notifier::Notifier;
pub use ordered::{Lease, Reservation};
pub use spsc::{CommitOutcome, Consumer, Producer, ReadRecord, RingFds, StaleReservation, WriteGrant, channel};

/// What can go wrong with a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The record can never fit, however empty the ring gets.
    #[error("a record with {payload_len} bytes of payload does not fit in a ring of {capacity} bytes")]
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

pub use memory::check_capacity;
