//! The record headers the ring bench and `examples/ring_instructions.rs`
//! send, in one place so that both count the same work.

use gstshmring::ring::{RecordHeader, RecordKind};

/// The header of the `sequence`th buffer of a stream of 64-sample audio at
/// 48 kHz, as audiotestsrc stamps it: pts, duration and both offsets set,
/// each following on from the buffer before, with the duration alternating
/// between 1,333,333 and 1,333,334 ns.
pub fn audio_header(sequence: u64) -> RecordHeader {
    let pts = |n: u64| n * 64 * 1_000_000_000 / 48_000;
    RecordHeader {
        pts: pts(sequence),
        duration: pts(sequence + 1) - pts(sequence),
        offset: 64 * sequence,
        offset_end: 64 * (sequence + 1),
        ..RecordHeader::untimed(RecordKind::Buffer, 0)
    }
}
