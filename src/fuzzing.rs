//! Entry points for fuzzing the code that parses what a peer shares: the
//! fuzz targets in `fuzz/` and the fixed-seed test in `tests/fuzz_corpus.rs`
//! call the same functions. Not part of the API.
//!
//! Each entry point reads its input as a script of operations. Some play a
//! hostile peer, storing any value anywhere in the shared memory it could
//! write; the others run the real code of the side under test between those
//! stores. The invariants asserted here are the promises that code makes:
//!
//! - nothing panics, whatever the peer stores (a panic fails the fuzzer);
//! - a record that `Consumer::peek` returns names a payload that lies inside
//!   the queue or the heap, so every lookup of it succeeds;
//! - every operation takes a bounded number of steps (a loop that a peer
//!   could keep going would time the fuzzer out);
//! - the writer's books never lose heap space, whatever the reader releases.
//!
//! The peer's stores go through the memfd with `pwrite`, as another process
//! would store through its own mapping, so this module needs no `unsafe`
//! for them; only the heap, sealed against new writable mappings, is
//! written through the writer's own mapping.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use gst::glib::translate::IntoGlib;

use crate::codec;
use crate::metas;
use crate::ring::layout::*;
use crate::ring::{
    self, ChannelSizes, HeapBooks, HeapMemory, Payload, Producer, ReaderChannel, ReceivedFds, RecordHeader, RecordKind,
    ReleaseConsumer, WRITER,
};

/// Small sizes, so that short inputs reach the wrap of both queues and the
/// end of the heap.
const SIZES: ChannelSizes = ChannelSizes {
    record_capacity: 4096,
    release_slots: 16,
    heap_size: 8192,
};

/// Every word of the control page, those the side under test owns included:
/// a hostile peer maps the page read-write and can store anywhere in it.
/// The positions come twice, as the checks are mostly about them.
const CONTROL_FIELDS: [usize; 16] = [
    OFFSET_MAGIC,
    OFFSET_VERSION,
    OFFSET_RECORD_CAPACITY,
    OFFSET_RELEASE_SLOTS,
    OFFSET_HEAP_SIZE,
    OFFSET_RECORD_WRITE,
    OFFSET_RECORD_WRITE,
    OFFSET_WRITER_RECORD_SLEEP,
    OFFSET_RECORD_READ,
    OFFSET_RECORD_READ,
    OFFSET_READER_SLEEP,
    OFFSET_RELEASE_WRITE,
    OFFSET_RELEASE_WRITE,
    OFFSET_RELEASE_READ,
    OFFSET_WRITER_RELEASE_SLEEP,
    OFFSET_FLUSH,
];

/// Pieces of caps, tag lists and structures, so that random inputs also
/// build text that parses.
const TEXT_PIECES: [&str; 24] = [
    "video/x-raw",
    "audio/x-raw",
    "application/x-custom",
    ",format=I420",
    ",format=(string)RGBA",
    ",width=(int)",
    ",height=(int)",
    ",framerate=(fraction)",
    "30/1",
    "0/1",
    "320",
    "-1",
    "4294967296",
    ",rate=(int)48000",
    ",channels=(int)",
    "{ 1, 2 }",
    "[ 1, 10 ]",
    "taglist",
    ",title=(string)",
    "\"x\\\"y\"",
    ",bitrate=(uint)",
    ";",
    ", ",
    "\u{fffd}",
];

/// What a script did, so that a test can check that its inputs reach the
/// code they are meant for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Records the side under test read (reader) or wrote (writer).
    pub records: u64,
    /// Payloads the codec accepted (reader), or blocks the reader's
    /// releases freed (writer).
    pub accepted: u64,
    /// Things refused as broken: a `RingError` from the ring, a rejected
    /// attach, a release the books did not allow.
    pub refused: u64,
}

/// The input, read front to back; past its end every read gives zeros.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    fn u32(&mut self) -> u32 {
        let mut word = [0u8; 4];
        let head = self.bytes(4);
        word[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(word)
    }

    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let head = self.bytes(8);
        word[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(word)
    }

    /// A value for a position, length or offset: mostly near `near` and
    /// aligned, as the checks care about, sometimes anything.
    fn value(&mut self, near: u64) -> u64 {
        let step = u64::from(self.byte());
        match self.byte() % 7 {
            0 => near.wrapping_add(step * RECORD_ALIGN),
            1 => near.wrapping_sub(step * RECORD_ALIGN),
            2 => near.wrapping_add(step),
            3 => step * RECORD_ALIGN,
            4 => step,
            5 => u64::MAX - step,
            _ => self.u64(),
        }
    }

    /// A record kind, the unknown ones 0 and 5 included.
    fn kind(&mut self) -> u32 {
        u32::from(self.byte() % 7)
    }

    /// A Metas record's payload: a few entries of kinds mostly known, each
    /// with a body of its own.
    fn metas(&mut self) -> Vec<u8> {
        let mut metas = Vec::new();
        for _ in 0..self.byte() % 4 {
            let kind = u32::from(self.byte() % 8);
            let body = self.payload();
            metas.extend_from_slice(&kind.to_ne_bytes());
            metas.extend_from_slice(&(body.len() as u32).to_ne_bytes());
            metas.extend_from_slice(&body);
        }
        metas
    }

    /// An event type for a record's flags: mostly ones the codec reads.
    fn flags(&mut self) -> u32 {
        use gst::EventType;
        let known = [
            EventType::Eos,
            EventType::StreamStart,
            EventType::Segment,
            EventType::Gap,
            EventType::Tag,
            EventType::CustomDownstream,
            EventType::CustomDownstreamSticky,
            EventType::CustomBoth,
            EventType::FlushStart,
        ];
        let pick = usize::from(self.byte());
        match known.get(pick % (known.len() + 2)) {
            Some(kind) => kind.into_glib() as u32,
            None => self.u32(),
        }
    }

    /// A payload: raw bytes, small words (for segments and video layouts),
    /// or text made of `TEXT_PIECES`.
    fn payload(&mut self) -> Vec<u8> {
        let len = usize::from(self.byte());
        match self.byte() % 3 {
            0 => self.bytes(len).to_vec(),
            1 => (0..len / 4)
                .flat_map(|_| u32::from(self.byte()).to_ne_bytes())
                .collect(),
            _ => (0..len / 8)
                .flat_map(|_| TEXT_PIECES[usize::from(self.byte()) % TEXT_PIECES.len()].bytes())
                .collect(),
        }
    }
}

/// The channel memfd, for storing as a peer would.
fn channel_file(fds: &ReceivedFds) -> File {
    File::from(
        fds.channel
            .try_clone()
            .expect("duplicating the channel fd of a fuzzing ring"),
    )
}

fn load(file: &File, at: u64) -> u64 {
    let mut word = [0u8; 8];
    let _ = file.read_exact_at(&mut word, at);
    u64::from_ne_bytes(word)
}

fn store(file: &File, at: u64, bytes: &[u8]) {
    // The memfd is sealed at its full size; a store past it is dropped,
    // as it would fault in a peer.
    let _ = file.write_all_at(bytes, at);
}

/// Stores `bytes` in the record queue from queue offset `at`, wrapping.
fn store_records(file: &File, at: u64, bytes: &[u8]) {
    let capacity = SIZES.record_capacity;
    let mut at = at % capacity;
    for chunk in bytes.chunks(capacity as usize) {
        let first = chunk.len().min((capacity - at) as usize);
        store(file, CONTROL_SIZE as u64 + at, &chunk[..first]);
        store(file, CONTROL_SIZE as u64, &chunk[first..]);
        at = (at + chunk.len() as u64) % capacity;
    }
}

/// Stores `bytes` in the heap at `offset`, through the writer's mapping.
fn store_heap(heap: &HeapMemory, offset: u64, bytes: &[u8]) {
    // SAFETY: only the fuzzing scripts call this, between the operations
    // they run, when no slice into the heap is alive in this process: the
    // reader only copies blocks, within one step, and the writer keeps no
    // slice.
    if let Some(block) = unsafe { heap.block_mut(offset, bytes.len() as u64) } {
        block.copy_from_slice(bytes);
    }
}

fn duplicate(fds: &ReceivedFds) -> Option<ReceivedFds> {
    let dup = |fd: &OwnedFd| fd.try_clone().ok();
    Some(ReceivedFds {
        channel: dup(&fds.channel)?,
        heap: dup(&fds.heap)?,
        data_ready: dup(&fds.data_ready)?,
        space_ready: dup(&fds.space_ready)?,
        release_ready: dup(&fds.release_ready)?,
    })
}

/// What the reader under test keeps between records, as `shmringsrc` does.
struct Reader {
    channel: ReaderChannel,
    layout: codec::VideoLayout,
    metas: metas::Incoming,
}

fn count<T, E>(result: &Result<T, E>, accepted: &mut u64) {
    if result.is_ok() {
        *accepted += 1;
    }
}

impl Reader {
    /// One record, handled as `shmringsrc` handles it.
    fn step(&mut self, outcome: &mut Outcome) {
        let record = match self.channel.records.peek() {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(_) => {
                outcome.refused += 1;
                return;
            }
        };
        outcome.records += 1;
        let header = *record.header();
        let payload = record.payload();
        let bytes = match payload {
            Payload::Inline { len } => {
                let mut inline = vec![0; len as usize];
                assert!(
                    record.read_inline(&mut inline),
                    "peek accepted an inline payload outside the queue"
                );
                inline
            }
            Payload::Block { offset, len } => {
                let block = self.channel.heap.block_to_vec(offset, len);
                block.expect("peek accepted a block outside the heap")
            }
        };
        record.release();
        if let Payload::Block { offset, .. } = payload {
            let _ = self.channel.releases.push(offset);
        }
        match header.kind {
            RecordKind::Buffer => {
                let mut buffer = gst::Buffer::from_mut_slice(bytes);
                let applied = codec::apply_buffer_header(&header, &self.layout, buffer.make_mut());
                count(&applied, &mut outcome.accepted);
                count(&self.metas.apply(&header, buffer.make_mut()), &mut outcome.accepted);
            }
            RecordKind::Metas => self.metas.hold(bytes),
            // Fds come through the socket, which this harness does not feed.
            RecordKind::FdBuffer | RecordKind::FdForget => {}
            RecordKind::VideoLayout => {
                if let Ok(layout) = codec::decode_video_layout(&bytes) {
                    self.layout = layout;
                    outcome.accepted += 1;
                }
            }
            RecordKind::Caps | RecordKind::Event => {
                let decoded = codec::decode(&header, &bytes);
                if let Ok(codec::Decoded::Caps(caps)) = &decoded {
                    self.metas.set_caps(caps);
                }
                count(&decoded, &mut outcome.accepted);
            }
            RecordKind::Lost => count(&codec::decode_lost(&bytes), &mut outcome.accepted),
            RecordKind::Flush => {
                // As `shmringsrc` does: a Flush record counts only if its
                // count is the one the flush word names now.
                let now = ring::FlushState::from_word(self.channel.records.flush_word().load());
                if ring::flush::decode_flush(&bytes) == Some(now.count) {
                    outcome.accepted += 1;
                }
            }
        }
    }
}

fn init_gstreamer() {
    gst::init().expect("GStreamer initializes");
}

/// The reader's side against a hostile writer: record headers, inline and
/// block payloads, positions, sleep sequences and the control page as the
/// writer may store them, read by the real `Consumer`, `ReleaseProducer`,
/// heap bounds checks and codec.
pub fn reader_against_hostile_writer(data: &[u8]) -> Outcome {
    init_gstreamer();
    let mut outcome = Outcome::default();
    let mut script = Script { data };
    let (writer, heap, channel) = ring::channel(SIZES).expect("creating a fuzzing ring");
    let spare = writer
        .fds(&heap)
        .try_clone_to_owned()
        .expect("duplicating the fds of a fuzzing ring");
    let file = channel_file(&spare);
    let mut reader = Some(Reader {
        channel,
        layout: None,
        metas: metas::Incoming::default(),
    });
    // Where the hostile writer puts its next record.
    let mut write = 0u64;
    while !script.is_empty() {
        match script.byte() % 10 {
            0 => {
                let field = CONTROL_FIELDS[usize::from(script.byte()) % CONTROL_FIELDS.len()] as u64;
                let near = if field == OFFSET_RECORD_WRITE as u64 {
                    write
                } else {
                    load(&file, field)
                };
                store(&file, field, &script.value(near).to_ne_bytes());
            }
            1 => {
                let at = u64::from(script.u32());
                let len = usize::from(script.byte());
                store_records(&file, at, script.bytes(len));
            }
            2 => {
                // A record at `write`, well formed or not, and maybe the
                // write position past it.
                let kind = script.kind();
                let flags = script.flags();
                let bytes = script.payload();
                let block = match script.byte() % 3 {
                    0 => None,
                    _ => Some(script.value(0)),
                };
                let len = match script.byte() % 4 {
                    0 => script.value(bytes.len() as u64),
                    _ => bytes.len() as u64,
                };
                // The timing words present, and now and then a reserved bit
                // or a reserved byte.
                let mut present = script.byte() & 0x1f;
                if block.is_some() {
                    present |= 0x20;
                }
                let reserved = match script.byte() % 8 {
                    0 => (u32::from(script.byte() & 0xc0) << 8) | (u32::from(script.byte()) << 16),
                    _ => 0,
                };
                let mut base = [0u8; RECORD_BASE_SIZE as usize];
                base[0..4].copy_from_slice(&(kind | (u32::from(present) << 8) | reserved).to_ne_bytes());
                base[4..8].copy_from_slice(&flags.to_ne_bytes());
                base[8..16].copy_from_slice(&len.to_ne_bytes());
                store_records(&file, write, &base);
                let inline = match block {
                    None => {
                        store_records(&file, write.wrapping_add(RECORD_BASE_SIZE), &bytes);
                        bytes.len() as u64
                    }
                    Some(block) => {
                        store_heap(&heap, block, &bytes);
                        0
                    }
                };
                let mut trailer = Vec::new();
                for _ in 0..(present & 0x1f).count_ones() {
                    let word = if script.byte() & 1 == 0 { NONE } else { script.u64() };
                    trailer.extend_from_slice(&word.to_ne_bytes());
                }
                if let Some(block) = block {
                    trailer.extend_from_slice(&block.to_ne_bytes());
                }
                let padded = inline.next_multiple_of(RECORD_ALIGN);
                store_records(&file, write.wrapping_add(RECORD_BASE_SIZE + padded), &trailer);
                let size = RECORD_BASE_SIZE + padded + trailer.len() as u64;
                if script.byte() & 3 != 0 {
                    write = write.wrapping_add(size);
                    store(&file, OFFSET_RECORD_WRITE as u64, &write.to_ne_bytes());
                }
            }
            3 | 4 => {
                if let Some(reader) = reader.as_mut() {
                    for _ in 0..=script.byte() % 4 {
                        reader.step(&mut outcome);
                    }
                }
            }
            5 => {
                if let Some(reader) = reader.as_mut() {
                    let records = &mut reader.channel.records;
                    if script.byte() & 1 == 0 {
                        let _ = records.spin_for_data(u32::from(script.byte() % 4));
                    } else if let Ok(true) = records.prepare_wait() {
                        // No poll: the eventfd either has the wake-up or not.
                        records.finish_wait();
                    }
                }
            }
            6 => {
                if let Some(reader) = reader.as_mut() {
                    let offset = script.value(0);
                    if reader.channel.releases.push(offset).is_err() {
                        outcome.refused += 1;
                    }
                }
            }
            7 => {
                let offset = script.value(0);
                let len = usize::from(script.byte());
                store_heap(&heap, offset, script.bytes(len));
            }
            8 => {
                // A reader attaching to whatever the writer left, or leaving.
                reader = None;
                if script.byte() & 1 == 0
                    && let Some(fds) = duplicate(&spare)
                {
                    match ReaderChannel::attach(fds, SIZES) {
                        Ok(channel) => {
                            reader = Some(Reader {
                                channel,
                                layout: None,
                                metas: metas::Incoming::default(),
                            })
                        }
                        Err(_) => outcome.refused += 1,
                    }
                }
            }
            _ => {
                // The codec alone, on a payload of its own.
                let header = RecordHeader {
                    kind: RecordKind::from_u32(script.kind()).unwrap_or(RecordKind::Event),
                    flags: script.flags(),
                    pts: script.u64(),
                    dts: NONE,
                    duration: NONE,
                    offset: NONE,
                    offset_end: NONE,
                };
                let bytes = script.payload();
                count(&codec::decode(&header, &bytes), &mut outcome.accepted);
                if let Ok(layout) = codec::decode_video_layout(&bytes) {
                    let mut buffer = gst::Buffer::with_size(usize::from(script.byte()) * 64).expect("a small buffer");
                    let applied = codec::apply_buffer_header(&header, &layout, buffer.make_mut());
                    count(&applied, &mut outcome.accepted);
                }
                // Metas, against planar audio caps as audio metas need.
                let metas = script.metas();
                let mut buffer = gst::Buffer::with_size(usize::from(script.byte()) * 8).expect("a small buffer");
                let audio = gst_audio::AudioInfo::builder(gst_audio::AudioFormat::F32le, 48000, 2)
                    .layout(gst_audio::AudioLayout::NonInterleaved)
                    .build()
                    .expect("planar audio info");
                count(
                    &metas::decode(&metas, Some(&audio), buffer.make_mut()),
                    &mut outcome.accepted,
                );
            }
        }
    }
    drop(writer);
    outcome
}

/// What the writer under test keeps about its one reader, as `shmringsink`
/// does: its records, its releases, and the books of the heap.
struct Writer {
    records: Producer,
    releases: ReleaseConsumer,
    books: HeapBooks,
    heap: Arc<HeapMemory>,
    /// Blocks allocated with the writer's own hold, as upstream buffers.
    own: Vec<u64>,
    /// Blocks sent to the reader, which it may release honestly.
    sent: Vec<u64>,
    outcome: Outcome,
}

const SLOT: u32 = 0;

impl Writer {
    /// Writes a record, waiting (without sleeping) if the queue is full.
    /// `false` if the reader broke the queue, as the sink then drops it.
    fn write(&mut self, header: &RecordHeader, payload: Payload, bytes: &[u8]) -> bool {
        for _ in 0..2 {
            match self.records.grant(payload) {
                Ok(Some(mut grant)) => {
                    let len = bytes.len().min(payload.inline_len() as usize);
                    grant.write_inline(0, &bytes[..len]);
                    grant.commit(header);
                    self.outcome.records += 1;
                    return true;
                }
                Ok(None) => match self.records.prepare_wait(payload.inline_len()) {
                    Ok(true) => self.records.finish_wait(),
                    Ok(false) => {}
                    Err(_) => {
                        self.outcome.refused += 1;
                        return false;
                    }
                },
                Err(_) => {
                    self.outcome.refused += 1;
                    return false;
                }
            }
        }
        false
    }

    fn send_block(&mut self, len: u64, also_writer: bool) {
        let holders = if also_writer {
            ring::reader(SLOT) | WRITER
        } else {
            ring::reader(SLOT)
        };
        let Some(offset) = self.books.allocate(len, holders) else {
            return;
        };
        store_heap(&self.heap, offset, &[0x5a; 64][..len.min(64) as usize]);
        if also_writer {
            self.own.push(offset);
        }
        let header = RecordHeader::untimed(RecordKind::Buffer, 0);
        if self.write(&header, Payload::Block { offset, len }, &[]) {
            self.sent.push(offset);
        } else {
            let _ = self.books.release(offset, ring::reader(SLOT));
        }
    }

    /// Takes the reader's releases, as the sink does: a bad one is counted,
    /// never trusted.
    fn collect(&mut self) {
        let Self {
            books,
            outcome,
            releases,
            ..
        } = self;
        let taken = releases.take_all(|offset| match books.release(offset, ring::reader(SLOT)) {
            Ok(_) => outcome.accepted += 1,
            Err(_) => outcome.refused += 1,
        });
        if taken.is_err() {
            outcome.refused += 1;
        }
        assert!(self.books.allocated_bytes() <= self.books.size());
    }
}

/// The writer's side against a hostile reader: read positions, sleep
/// sequences, release positions and release entries as the reader may store
/// them, read by the real `Producer`, `ReleaseConsumer` and `HeapBooks`,
/// with the honest reader's own operations mixed in.
pub fn writer_against_hostile_reader(data: &[u8]) -> Outcome {
    init_gstreamer();
    let mut script = Script { data };
    let (channel, heap, reader) = ring::channel(SIZES).expect("creating a fuzzing ring");
    let fds = channel
        .fds(&heap)
        .try_clone_to_owned()
        .expect("duplicating the fds of a fuzzing ring");
    let file = channel_file(&fds);
    let (records, releases) = channel.into_parts();
    let mut writer = Writer {
        records,
        releases,
        books: HeapBooks::new(heap.size()),
        heap,
        own: Vec::new(),
        sent: Vec::new(),
        outcome: Outcome::default(),
    };
    let mut reader = Some(reader);
    let release_queue = CONTROL_SIZE as u64 + SIZES.record_capacity;
    while !script.is_empty() {
        match script.byte() % 11 {
            0 | 1 => {
                let field = CONTROL_FIELDS[usize::from(script.byte()) % CONTROL_FIELDS.len()] as u64;
                let near = load(&file, field);
                store(&file, field, &script.value(near).to_ne_bytes());
            }
            2 => {
                let slot = u64::from(script.byte()) % SIZES.release_slots;
                let near = writer.sent.last().copied().unwrap_or(0);
                store(&file, release_queue + 8 * slot, &script.value(near).to_ne_bytes());
            }
            3 => {
                let at = u64::from(script.u32());
                let len = usize::from(script.byte());
                store_records(&file, at, script.bytes(len));
            }
            4 => {
                let bytes = script.payload();
                let header = RecordHeader::untimed(RecordKind::Event, script.flags());
                writer.write(
                    &header,
                    Payload::Inline {
                        len: bytes.len() as u64,
                    },
                    &bytes,
                );
            }
            5 => {
                let len = script.value(64).min(2 * SIZES.heap_size);
                let also_writer = script.byte() & 1 == 0;
                writer.send_block(len, also_writer);
            }
            6 => writer.collect(),
            7 => {
                if let Ok(true) = writer.releases.prepare_wait() {
                    writer.releases.finish_wait();
                }
                if script.byte() & 1 == 0
                    && let Some(offset) = writer.own.pop()
                {
                    let _ = writer.books.release(offset, WRITER);
                }
            }
            8 => {
                // The honest reader's own work, which the stores above
                // may have broken.
                if let Some(reader) = reader.as_mut() {
                    for _ in 0..=script.byte() % 4 {
                        let Ok(Some(record)) = reader.records.peek() else {
                            break;
                        };
                        let payload = record.payload();
                        record.release();
                        if let Payload::Block { offset, .. } = payload {
                            let _ = reader.releases.push(offset);
                        }
                    }
                }
            }
            9 => {
                // Releases it should not make: twice, never held, anywhere.
                if let Some(reader) = reader.as_mut() {
                    let near = writer.sent.get(usize::from(script.byte())).copied().unwrap_or(0);
                    let _ = reader.releases.push(script.value(near));
                }
            }
            _ => {
                // The reader leaves; the writer sees it and stops.
                if script.byte() & 1 == 0 {
                    reader = None;
                }
                let _ = writer.records.reader_detached();
                let _ = writer.records.progress().read_position();
            }
        }
    }
    // Whatever the reader did, dropping it and the writer's own holds
    // returns the whole heap, in one piece.
    writer.collect();
    writer.books.release_all(ring::reader(SLOT));
    writer.books.release_all(WRITER);
    assert_eq!(writer.books.allocated_bytes(), 0, "heap space was lost");
    let size = writer.books.size();
    assert!(
        writer.books.allocate(size, WRITER).is_some(),
        "the freed heap did not coalesce back into one block"
    );
    writer.outcome
}
