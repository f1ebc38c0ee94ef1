//! The shared-memory layout, version 1.
//!
//! This file and `PROTOCOL.md` describe the same bytes; change both together
//! and bump [`LAYOUT_VERSION`] when the meaning of any byte changes.
//!
//! ```text
//! memfd offset         size  what
//! 0                    4096  control page
//! 4096                 cap   data area (cap is a multiple of the page size)
//!
//! control page
//! 0x000  [u8; 8]  magic, "SHMRING\0"
//! 0x008  u32      layout version
//! 0x00c  u32      control page size (4096)
//! 0x010  u64      capacity of the data area in bytes
//! 0x018  u32      number of reader slots (1 in version 1)
//! 0x080  u64      write position          (written by the writer only)
//! 0x100  u32      writer sleep sequence    (written by the writer only)
//! 0x180  reader slot 0, 256 bytes each, up to 14 slots:
//!        +0x00 u64 read position          (written by that reader only)
//!        +0x80 u32 reader sleep sequence  (written by that reader only;
//!                  u32::MAX once the reader has detached)
//! ```
//!
//! Every field that one side writes while the other reads sits on its own
//! 128-byte line, so the two cores never write the same cache line. All
//! integers are native-endian: both peers run on one machine.
//!
//! Positions count bytes from the start of the stream and never wrap (2^64
//! bytes is centuries of 8K video). The byte at position `p` lives at data
//! offset `p % capacity`. The data area is mapped twice, back to back, so a
//! record that crosses the end of the area is still one contiguous slice.
//!
//! A record starts at a position that is a multiple of [`RECORD_ALIGN`]:
//!
//! ```text
//! 0   u32  kind (see RecordKind)
//! 4   u32  flags (GstBufferFlags for buffers, the event type for events)
//! 8   u64  payload length in bytes
//! 16  u64  pts          } u64::MAX means "none", as GST_CLOCK_TIME_NONE
//! 24  u64  dts          }
//! 32  u64  duration     }
//! 40  u64  offset       } u64::MAX means "none", as GST_BUFFER_OFFSET_NONE
//! 48  u64  offset end   }
//! 56  u32  kind of the metadata area: 0 none, else the user's (the GStreamer
//!          elements use 1 for a video layout, see codec.rs)
//! 60  u32  reserved, 0
//! 64  [u8; 64] metadata area
//! 128 payload, then padding up to the next multiple of 64
//! ```

/// First eight bytes of the control page.
pub const MAGIC: [u8; 8] = *b"SHMRING\0";
/// Version of the layout above. The socket handshake carries it too.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the control page; the data area starts right after it.
pub const CONTROL_SIZE: usize = 4096;
/// Records start at multiples of this, which also keeps every payload
/// aligned for SIMD code downstream.
pub const RECORD_ALIGN: u64 = 64;
/// Size of a record header, metadata area included.
pub const RECORD_HEADER_SIZE: u64 = 128;
/// Size of the metadata area at the end of a record header.
pub const RECORD_META_SIZE: usize = 64;
/// Largest data area a reader accepts from a writer; it bounds the address
/// space a hostile writer can make us reserve.
pub const MAX_CAPACITY: u64 = 1 << 31;
/// Smallest data area: one page.
pub const MIN_CAPACITY: u64 = 4096;
/// Reader slots in version 1.
pub const READER_SLOTS: u32 = 1;

pub const OFFSET_MAGIC: usize = 0x000;
pub const OFFSET_VERSION: usize = 0x008;
pub const OFFSET_CONTROL_SIZE: usize = 0x00c;
pub const OFFSET_CAPACITY: usize = 0x010;
pub const OFFSET_READER_SLOTS: usize = 0x018;
pub const OFFSET_WRITE_POS: usize = 0x080;
pub const OFFSET_WRITER_SLEEP: usize = 0x100;
pub const OFFSET_READER_SLOT0: usize = 0x180;
pub const READER_SLOT_SIZE: usize = 0x100;
pub const SLOT_READ_POS: usize = 0x00;
pub const SLOT_READER_SLEEP: usize = 0x80;

/// A reader's sleep sequence once it has let go of the ring for good. The
/// writer loads that word anyway, so it learns of a clean exit for free.
pub const READER_DETACHED: u32 = u32::MAX;

/// The value of an unset timestamp or offset in a record header.
pub const NONE: u64 = u64::MAX;

/// What a record carries. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    /// A buffer: the payload is its bytes; the header holds its metadata.
    Buffer = 1,
    /// Caps, as the UTF-8 string form GStreamer parses.
    Caps = 2,
    /// A serialized event; `flags` holds its GstEventType, and the payload
    /// its encoding (see `codec.rs`).
    Event = 3,
    /// Space the writer reserved and then gave up; the reader skips it.
    Padding = 4,
}

impl RecordKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Buffer),
            2 => Some(Self::Caps),
            3 => Some(Self::Event),
            4 => Some(Self::Padding),
            _ => None,
        }
    }
}

/// The fixed part of a record, as the writer fills it and the reader gets a
/// private copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u32,
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    pub offset: u64,
    pub offset_end: u64,
    /// What `meta` holds; 0 for nothing.
    pub meta_kind: u32,
    /// Opaque to the ring.
    pub meta: [u8; RECORD_META_SIZE],
}

impl RecordHeader {
    /// A header for a record that has no timing: caps and events.
    pub fn untimed(kind: RecordKind, flags: u32) -> Self {
        Self {
            kind,
            flags,
            pts: NONE,
            dts: NONE,
            duration: NONE,
            offset: NONE,
            offset_end: NONE,
            meta_kind: 0,
            meta: [0; RECORD_META_SIZE],
        }
    }

    /// The header's bytes as they sit in the ring, for a record with
    /// `payload_len` bytes of payload.
    pub(crate) fn encode(&self, payload_len: u64) -> [u8; RECORD_HEADER_SIZE as usize] {
        let mut raw = [0u8; RECORD_HEADER_SIZE as usize];
        raw[0..4].copy_from_slice(&(self.kind as u32).to_ne_bytes());
        raw[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        let words = [
            payload_len,
            self.pts,
            self.dts,
            self.duration,
            self.offset,
            self.offset_end,
        ];
        for (chunk, word) in raw[8..56].chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        raw[56..60].copy_from_slice(&self.meta_kind.to_ne_bytes());
        raw[64..128].copy_from_slice(&self.meta);
        raw
    }

    /// Parses a header copied out of the ring: its fields and the payload
    /// length it claims. `None` if the kind is unknown.
    pub(crate) fn decode(raw: &[u8; RECORD_HEADER_SIZE as usize]) -> Option<(Self, u64)> {
        let u32_at = |at: usize| u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&raw[at..at + 8]);
            u64::from_ne_bytes(bytes)
        };
        let kind = RecordKind::from_u32(u32_at(0))?;
        let mut meta = [0u8; RECORD_META_SIZE];
        meta.copy_from_slice(&raw[64..128]);
        let header = Self {
            kind,
            flags: u32_at(4),
            pts: u64_at(16),
            dts: u64_at(24),
            duration: u64_at(32),
            offset: u64_at(40),
            offset_end: u64_at(48),
            meta_kind: u32_at(56),
            meta,
        };
        Some((header, u64_at(8)))
    }
}

/// Bytes a record with `payload_len` bytes of payload takes in the ring,
/// or `None` if that overflows.
pub fn record_size(payload_len: u64) -> Option<u64> {
    let padded = payload_len.checked_add(RECORD_ALIGN - 1)? & !(RECORD_ALIGN - 1);
    padded.checked_add(RECORD_HEADER_SIZE)
}

/// The largest payload a ring of `capacity` bytes can ever hold.
pub fn max_payload(capacity: u64) -> u64 {
    capacity - RECORD_HEADER_SIZE
}
