//! The shared-memory layout, version 6 (see PROTOCOL.md).
//!
//! This file and `PROTOCOL.md` describe the same bytes; change both together
//! and bump [`LAYOUT_VERSION`] when the meaning of any byte changes.
//!
//! A writer shares two kinds of sealed memfd:
//!
//! - one **heap** per writer: the payload blocks. Only the writer allocates
//!   them, from a free list in its own private memory; readers map the heap
//!   read-only.
//! - one **channel** per reader: a control page, the record queue (writer →
//!   reader) and the release queue (reader → writer).
//!
//! ```text
//! channel memfd offset      size              what
//! 0                         4096              control page
//! 4096                      record_capacity   record queue (mapped twice)
//! 4096 + record_capacity    8 · release_slots release queue
//!
//! control page
//! 0x000  [u8; 8]  magic, "SHMRING\0"
//! 0x008  u32      layout version (6)
//! 0x00c  u32      control page size (4096)
//! 0x010  u64      record queue capacity in bytes
//! 0x018  u64      release queue capacity in entries
//! 0x020  u64      heap size in bytes
//! 0x080  u64      record write position       (writer only)
//! 0x100  u64      writer's record sleep seq   (writer only)
//! 0x180  u64      record read position        (reader only)
//! 0x200  u64      reader's sleep seq          (reader only; u64::MAX once
//!                                              the reader has detached)
//! 0x280  u64      release write position      (reader only)
//! 0x300  u64      release read position       (writer only)
//! 0x380  u64      writer's release sleep seq  (writer only)
//! 0x400  u32      flush word                  (writer only; a futex, see
//!                                              `flush.rs`)
//! 0x480  u64      1 if the writer's process takes membarrier's global
//!                 expedited barrier, so may publish light (writer, once)
//! ```
//!
//! Every field one side writes while the other reads sits on a 128-byte line
//! of its own, so the two cores never write the same cache line. All
//! integers are native-endian: both peers run on one machine.
//!
//! Positions count from the start of the stream and never wrap (2^64 bytes
//! is centuries of 8K video). Record byte `p` lives at record-queue offset
//! `p % record_capacity`, and release entry `n` at slot `n % release_slots`.
//! The record queue is mapped twice, back to back, so a record that crosses
//! its end is still one contiguous slice.
//!
//! A record starts at a multiple of [`RECORD_ALIGN`] (8) and is a base
//! header, the inline payload and a trailer of the header words that are
//! set:
//!
//! ```text
//! 0   u8   kind (see RecordKind)
//! 1   u8   trailer: bit i set when word i of the list below is in the
//!          trailer; bits 6 and 7 are zero
//! 2   u16  zero
//! 4   u32  flags (GstBufferFlags for buffers, with bit 31 set when a Metas
//!          record precedes the buffer; the event type for events)
//! 8   u64  payload length in bytes
//! 16  inline payload, then padding up to the next multiple of 8
//! ..  trailer: one u64 for each bit of the trailer byte, in bit order:
//!     0 pts, 1 dts, 2 duration        (absent means none)
//!     3 offset, 4 offset end          (absent means none)
//!     5 block: the heap offset of the payload (absent: the payload is
//!       inline)
//! ```
//!
//! A 64-byte untimed inline record thus takes 80 bytes, and a timed audio
//! buffer 16 + 64 + 32. The trailer follows the payload, not the base, so
//! that the writer knows where the payload goes before it knows the header
//! (`grant`, then `write_inline`, then `commit`), and room for a record is
//! checked against the largest trailer ([`record_size`]).
//!
//! A release entry is the heap offset of a block the reader no longer uses,
//! or, with [`FD_RELEASE_TAG`] set, the hold number of an fd buffer record
//! (kind 9) whose memory the reader no longer uses.

/// First eight bytes of a channel's control page.
pub const MAGIC: [u8; 8] = *b"SHMRING\0";
/// Version of the layout above. The socket handshake carries it too.
pub const LAYOUT_VERSION: u32 = 6;
/// Size of the control page; the record queue starts right after it.
pub const CONTROL_SIZE: usize = 4096;
/// Records start at multiples of this. Inline payloads are copied out by
/// the reader, so they need no more alignment than the header's words;
/// blocks, which downstream maps directly, keep [`BLOCK_ALIGN`].
pub const RECORD_ALIGN: u64 = 8;
/// Size of a record's base header, before its inline payload.
pub const RECORD_BASE_SIZE: u64 = 16;
/// The most a record's header takes: the base and a full trailer.
pub const RECORD_HEADER_SIZE: u64 = RECORD_BASE_SIZE + 8 * TRAILER_WORDS as u64;
/// Words a record's trailer can hold: pts, dts, duration, offset, offset
/// end and block.
pub const TRAILER_WORDS: usize = 6;
/// The trailer bit of the block word.
const TRAILER_BLOCK: u8 = 1 << 5;
/// Heap blocks start at multiples of this.
pub const BLOCK_ALIGN: u64 = 64;
/// Largest record queue a reader accepts.
pub const MAX_RECORD_CAPACITY: u64 = 1 << 28;
/// Smallest record queue: one page.
pub const MIN_RECORD_CAPACITY: u64 = 4096;
/// Largest release queue a reader accepts, in entries.
pub const MAX_RELEASE_SLOTS: u64 = 1 << 20;
/// Largest heap a reader accepts; it bounds the address space a hostile
/// writer can make us reserve.
pub const MAX_HEAP_SIZE: u64 = 1 << 32;
/// Smallest heap: one page.
pub const MIN_HEAP_SIZE: u64 = 4096;

pub const OFFSET_MAGIC: usize = 0x000;
pub const OFFSET_VERSION: usize = 0x008;
pub const OFFSET_CONTROL_SIZE: usize = 0x00c;
pub const OFFSET_RECORD_CAPACITY: usize = 0x010;
pub const OFFSET_RELEASE_SLOTS: usize = 0x018;
pub const OFFSET_HEAP_SIZE: usize = 0x020;
pub const OFFSET_RECORD_WRITE: usize = 0x080;
pub const OFFSET_WRITER_RECORD_SLEEP: usize = 0x100;
pub const OFFSET_RECORD_READ: usize = 0x180;
pub const OFFSET_READER_SLEEP: usize = 0x200;
pub const OFFSET_RELEASE_WRITE: usize = 0x280;
pub const OFFSET_RELEASE_READ: usize = 0x300;
pub const OFFSET_WRITER_RELEASE_SLEEP: usize = 0x380;
pub const OFFSET_FLUSH: usize = 0x400;

/// Set in a release entry that gives back an fd buffer's hold rather than
/// a heap block: heap offsets stay below 2^32, so the bit is free.
pub const FD_RELEASE_TAG: u64 = 1 << 63;

/// Fds a reader keeps announced at once: the writer never has more
/// announced that the reader has not yet been told to forget (it copies
/// instead), and a reader sent more fails.
pub const MAX_ANNOUNCED_FDS: usize = 64;

/// Fd buffers a reader lets its downstream keep at once; past that it
/// copies the bytes out and gives the hold back at once. The release queue
/// has this many entries beyond the heap's blocks.
pub const MAX_FD_HOLDS: u64 = 64;
/// Written once by the writer (see `wake.rs`); a line of its own after the
/// flush word's.
pub const OFFSET_WRITER_LIGHT: usize = 0x480;

/// A reader's sleep sequence once it has let go of the channel for good.
/// The writer loads that word anyway, so it learns of a clean exit for free.
pub const READER_DETACHED: u64 = u64::MAX;

/// The value of an unset timestamp or offset in a record header, and of the
/// block field of a record whose payload is inline.
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
    /// The memory layout of the buffers that follow (see `codec.rs`); an
    /// empty payload means none. Sent only when it changes, as caps are.
    VideoLayout = 4,
    /// The writer dropped buffers meant for this reader (`when-full=drop`):
    /// the payload is a u64, how many since the last record it sent. The
    /// next buffer record is a discontinuity.
    Lost = 5,
    /// The metas of the buffer record that comes next, which carries
    /// `METAS_PRECEDE` (see `metas.rs`).
    Metas = 6,
    /// The end of a flush: every record before it belongs to the stream
    /// the flush discarded. The payload is a u32, the flush's count in the
    /// flush word, and a u32, 1 if the flush reset the running time.
    Flush = 7,
    /// A buffer whose bytes stay in an fd the writer announced on the
    /// control socket: the 32-byte inline payload names the fd, the range
    /// and the hold (see `codec::FdBufferRef`); the header is a buffer's.
    FdBuffer = 9,
    /// The fd announced under the u64 id of the payload is not named again:
    /// the reader closes its copy.
    FdForget = 10,
}

impl RecordKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Buffer),
            2 => Some(Self::Caps),
            3 => Some(Self::Event),
            4 => Some(Self::VideoLayout),
            5 => Some(Self::Lost),
            6 => Some(Self::Metas),
            7 => Some(Self::Flush),
            9 => Some(Self::FdBuffer),
            10 => Some(Self::FdForget),
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
}

/// Where a record's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// In the record queue, right after the header.
    Inline { len: u64 },
    /// In the heap block at `offset`.
    Block { offset: u64, len: u64 },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match *self {
            Self::Inline { len } | Self::Block { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the payload takes in the record queue.
    pub(crate) fn inline_len(&self) -> u64 {
        match *self {
            Self::Inline { len } => len,
            Self::Block { .. } => 0,
        }
    }
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
        }
    }

    /// The words the header takes in a record whose inline payload is
    /// `payload`'s, or `None` if the record's size overflows.
    ///
    /// The trailer comes back whole: its present words packed at its start,
    /// then whatever is left over, so that the writer stores all of them
    /// with no branch. A record's room holds a full trailer
    /// ([`record_size`]), so the words past the present ones lie past the
    /// record's end, in room the writer owns.
    #[inline]
    pub(crate) fn encode(&self, payload: Payload) -> Option<EncodedHeader> {
        let trailer_at = trailer_at(payload.inline_len())?;
        let trailer_index = usize::try_from(trailer_at / RECORD_ALIGN).ok()?;
        // A heap offset is below 2^32, so never NONE: an inline payload is
        // the one that leaves the block word out.
        let block = match payload {
            Payload::Inline { .. } => NONE,
            Payload::Block { offset, .. } => offset,
        };
        let words = [self.pts, self.dts, self.duration, self.offset, self.offset_end, block];
        let mut trailer = [NONE; TRAILER_WORDS];
        let mut present = 0u8;
        let mut count = 0;
        for (bit, word) in words.into_iter().enumerate() {
            // A branch per word, which a stream whose buffers set the same
            // fields predicts every time: fewer instructions than a
            // branch-free packing.
            if word != NONE {
                // `count <= bit`; the `min` only spares a bounds check.
                trailer[count.min(TRAILER_WORDS - 1)] = word;
                present |= 1 << bit;
                count += 1;
            }
        }
        let [f0, f1, f2, f3] = self.flags.to_ne_bytes();
        Some(EncodedHeader {
            base: [
                u64::from_ne_bytes([self.kind as u8, present, 0, 0, f0, f1, f2, f3]),
                payload.len(),
            ],
            trailer_index,
            trailer,
            size: trailer_at.checked_add(RECORD_ALIGN * count as u64)?,
        })
    }

    /// Parses a base header, its two words copied out of the queue. `None`
    /// if the kind is unknown or a reserved bit is set. What it says is not
    /// checked here: see `Consumer::peek`.
    #[inline]
    pub(crate) fn decode_base(first: u64, len: u64) -> Option<BaseHeader> {
        let [kind, present, zero0, zero1, f0, f1, f2, f3] = first.to_ne_bytes();
        let kind = RecordKind::from_u32(kind.into())?;
        if present >> TRAILER_WORDS != 0 || zero0 != 0 || zero1 != 0 {
            return None;
        }
        Some(BaseHeader {
            kind,
            flags: u32::from_ne_bytes([f0, f1, f2, f3]),
            present,
            len,
        })
    }
}

/// A record's base header, parsed: enough to find its trailer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BaseHeader {
    kind: RecordKind,
    flags: u32,
    present: u8,
    len: u64,
}

impl BaseHeader {
    /// Bytes of inline payload the record has in the queue.
    pub(crate) fn inline_len(&self) -> u64 {
        if self.present & TRAILER_BLOCK == 0 { self.len } else { 0 }
    }

    /// Bytes of the trailer.
    pub(crate) fn trailer_len(&self) -> u64 {
        RECORD_ALIGN * u64::from(self.present.count_ones())
    }

    /// The whole header, and where the payload is, from the trailer's
    /// words: the present ones packed at its start, as [`encode`] puts
    /// them; any words past those are ignored.
    ///
    /// [`encode`]: RecordHeader::encode
    #[inline]
    pub(crate) fn finish(&self, trailer: &[u64; TRAILER_WORDS]) -> (RecordHeader, Payload) {
        let mut fields = [NONE; TRAILER_WORDS];
        let mut next = 0;
        for (bit, field) in fields.iter_mut().enumerate() {
            // A branch per word, predicted every time in a stream whose
            // buffers set the same fields.
            if self.present & (1 << bit) != 0 {
                // `next <= bit`; the `min` only spares a bounds check.
                *field = trailer[next.min(TRAILER_WORDS - 1)];
                next += 1;
            }
        }
        let [pts, dts, duration, offset, offset_end, block] = fields;
        let header = RecordHeader {
            kind: self.kind,
            flags: self.flags,
            pts,
            dts,
            duration,
            offset,
            offset_end,
        };
        let payload = if self.present & TRAILER_BLOCK == 0 {
            Payload::Inline { len: self.len }
        } else {
            Payload::Block {
                offset: block,
                len: self.len,
            }
        };
        (header, payload)
    }
}

/// A record header as the words of the queue, made by
/// [`RecordHeader::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EncodedHeader {
    /// Words 0 and 1 of the record.
    pub(crate) base: [u64; 2],
    /// The word of the record where the trailer starts.
    pub(crate) trailer_index: usize,
    /// The trailer: its present words first, then leftovers that lie past
    /// the record's end.
    pub(crate) trailer: [u64; TRAILER_WORDS],
    /// Bytes the record takes in the queue.
    pub(crate) size: u64,
}

impl EncodedHeader {
    /// The record's header as bytes, from its start to the end of a full
    /// trailer, with its inline payload (zeros here) in between.
    #[cfg(test)]
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut bytes = vec![0; 8 * (self.trailer_index + TRAILER_WORDS)];
        let words = self.base.iter().enumerate().chain(
            self.trailer
                .iter()
                .enumerate()
                .map(|(index, word)| (self.trailer_index + index, word)),
        );
        for (index, word) in words {
            bytes[8 * index..8 * index + 8].copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }
}

/// Bytes a record with `inline_len` bytes of inline payload and a trailer
/// of `trailer_len` bytes takes in the queue, or `None` if that overflows.
pub(crate) fn exact_record_size(inline_len: u64, trailer_len: u64) -> Option<u64> {
    padded_inline(inline_len)?
        .checked_add(RECORD_BASE_SIZE)?
        .checked_add(trailer_len)
}

/// Where a record's trailer starts, from the record's start.
pub(crate) fn trailer_at(inline_len: u64) -> Option<u64> {
    padded_inline(inline_len)?.checked_add(RECORD_BASE_SIZE)
}

fn padded_inline(inline_len: u64) -> Option<u64> {
    (inline_len <= u64::MAX - (RECORD_ALIGN - 1)).then(|| padded_inline_len(inline_len))
}

/// `inline_len` rounded up to whole words, for a length already known not
/// to overflow that (see [`padded_inline`] for one that may).
pub(crate) fn padded_inline_len(inline_len: u64) -> u64 {
    (inline_len + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// The most bytes a record with `inline_len` bytes of inline payload can
/// take in the queue (with a full trailer), or `None` if that overflows:
/// what the writer checks room against.
pub fn record_size(inline_len: u64) -> Option<u64> {
    exact_record_size(inline_len, 8 * TRAILER_WORDS as u64)
}

/// The largest inline payload a queue of `capacity` bytes can ever hold.
pub fn max_inline(capacity: u64) -> u64 {
    capacity - RECORD_HEADER_SIZE
}
