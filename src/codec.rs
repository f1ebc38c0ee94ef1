//! How GStreamer objects become ring records and come back: buffer
//! metadata, caps and serialized events. Payload encodings are part of the
//! wire format (see `PROTOCOL.md`).
//!
//! | record            | payload                                            |
//! |-------------------|----------------------------------------------------|
//! | buffer            | the buffer's bytes                                 |
//! | metas             | the buffer's metas (see `metas.rs`)                |
//! | video layout      | empty (no GstVideoMeta), or u32 format, u32 frame flags, u32 width, u32 height, u32 planes, u32 reserved, u32 plane offsets\[4\], i32 plane strides\[4\] |
//! | caps              | the caps as a UTF-8 string                         |
//! | event stream-start| u32 flags, u32 group-id (0 = none), UTF-8 stream-id |
//! | event segment     | u32 format, u32 flags, f64 rate, f64 applied-rate, then base, offset, start, stop, time, position, duration as u64 |
//! | event eos         | empty                                              |
//! | event gap         | u64 timestamp, u64 duration                        |
//! | event tag         | u32 scope, UTF-8 tag list string                   |
//! | event custom-*    | UTF-8 structure string                             |
//!
//! An event record's `flags` is its `GstEventType` value.

use std::str::FromStr;

use gst::glib::prelude::*;
use gst::glib::translate::{FromGlib, IntoGlib};
use gst::prelude::*;

use crate::ring::layout::NONE;
use crate::ring::{RecordHeader, RecordKind};

/// A record whose payload does not decode, with what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("the writer sent an unreadable {what} record")]
pub struct DecodeError {
    what: &'static str,
}

pub(crate) fn bad(what: &'static str) -> DecodeError {
    DecodeError { what }
}

/// What a decoded record asks the reader to do.
#[derive(Debug)]
pub enum Decoded {
    Caps(gst::Caps),
    Segment(gst::Segment),
    Eos,
    Event(gst::Event),
    /// An event type this build does not forward.
    Unsupported(u32),
}

/// The largest caps or event payload a reader accepts; larger ones are an
/// error rather than an allocation the writer chose.
pub const MAX_CONTROL_PAYLOAD: usize = 16 << 20;

/// Bytes of a video layout record's payload.
pub const VIDEO_LAYOUT_SIZE: usize = 56;

/// A buffer's memory layout, as a video layout record carries it; `None`
/// for a buffer without a GstVideoMeta.
pub type VideoLayout = Option<[u8; VIDEO_LAYOUT_SIZE]>;

/// The record header describing `buffer`.
pub fn buffer_header(buffer: &gst::BufferRef) -> RecordHeader {
    let time = |value: Option<gst::ClockTime>| value.map_or(NONE, gst::ClockTime::nseconds);
    let mut header = RecordHeader::untimed(RecordKind::Buffer, buffer.flags().bits());
    header.pts = time(buffer.pts());
    header.dts = time(buffer.dts());
    header.duration = time(buffer.duration());
    header.offset = buffer.offset();
    header.offset_end = buffer.offset_end();
    header
}

/// The layout of `buffer`'s GstVideoMeta, if it has one that fits a record.
pub fn video_layout(buffer: &gst::BufferRef) -> VideoLayout {
    let meta = buffer.meta::<gst_video::VideoMeta>()?;
    let planes = meta.n_planes() as usize;
    if planes > 4 || meta.offset().iter().any(|&offset| u32::try_from(offset).is_err()) {
        return None;
    }
    let mut words = [0u32; VIDEO_LAYOUT_SIZE / 4];
    words[0] = meta.format().into_glib() as u32;
    words[1] = meta.video_frame_flags().bits();
    words[2] = meta.width();
    words[3] = meta.height();
    words[4] = planes as u32;
    for plane in 0..planes {
        words[6 + plane] = meta.offset()[plane] as u32;
        words[10 + plane] = meta.stride()[plane] as u32;
    }
    let mut layout = [0u8; VIDEO_LAYOUT_SIZE];
    for (chunk, word) in layout.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Some(layout)
}

/// The payload of a lost record: how many buffers the writer dropped.
pub fn encode_lost(count: u64) -> [u8; 8] {
    count.to_ne_bytes()
}

/// Where an fd buffer record's bytes are: `size` bytes at `offset` in the
/// fd announced as `fd_id`, held by the writer under `hold` until the
/// reader gives that number back through its release queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBufferRef {
    pub fd_id: u64,
    pub offset: u64,
    pub size: u64,
    pub hold: u64,
}

/// Bytes of an fd buffer record's payload.
pub const FD_BUFFER_REF_SIZE: usize = 32;

impl FdBufferRef {
    pub fn encode(&self) -> [u8; FD_BUFFER_REF_SIZE] {
        let mut bytes = [0u8; FD_BUFFER_REF_SIZE];
        for (chunk, word) in bytes
            .chunks_exact_mut(8)
            .zip([self.fd_id, self.offset, self.size, self.hold])
        {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }

    /// Parses a private copy of the payload. The range is checked against
    /// the fd when it is used, and the hold must fit beside the release
    /// entries' tag bit.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (fd_id, rest) = split_u64(payload).ok_or_else(|| bad("fd buffer"))?;
        let (offset, rest) = split_u64(rest).ok_or_else(|| bad("fd buffer"))?;
        let (size, rest) = split_u64(rest).ok_or_else(|| bad("fd buffer"))?;
        let (hold, rest) = split_u64(rest).ok_or_else(|| bad("fd buffer"))?;
        if !rest.is_empty() || hold & crate::ring::layout::FD_RELEASE_TAG != 0 {
            return Err(bad("fd buffer"));
        }
        Ok(Self {
            fd_id,
            offset,
            size,
            hold,
        })
    }
}

/// Parses an fd forget record's payload: the id of the fd.
pub fn decode_fd_forget(payload: &[u8]) -> Result<u64, DecodeError> {
    <[u8; 8]>::try_from(payload)
        .map(u64::from_ne_bytes)
        .map_err(|_| bad("fd forget"))
}

/// Parses a lost record's payload (a private copy of it).
pub fn decode_lost(payload: &[u8]) -> Result<u64, DecodeError> {
    <[u8; 8]>::try_from(payload)
        .map(u64::from_ne_bytes)
        .map_err(|_| bad("lost"))
}

/// Parses a video layout record's payload (a private copy of it).
pub fn decode_video_layout(payload: &[u8]) -> Result<VideoLayout, DecodeError> {
    match payload.len() {
        0 => Ok(None),
        VIDEO_LAYOUT_SIZE => {
            let mut layout = [0u8; VIDEO_LAYOUT_SIZE];
            layout.copy_from_slice(payload);
            Ok(Some(layout))
        }
        _ => Err(bad("video layout")),
    }
}

/// Restores the metadata of a buffer record, and the video layout in force.
/// A layout that does not describe memory inside the buffer is refused.
pub fn apply_buffer_header(
    header: &RecordHeader,
    layout: &VideoLayout,
    buffer: &mut gst::BufferRef,
) -> Result<(), DecodeError> {
    let time = |value: u64| (value != NONE).then(|| gst::ClockTime::from_nseconds(value));
    buffer.set_pts(time(header.pts));
    buffer.set_dts(time(header.dts));
    buffer.set_duration(time(header.duration));
    buffer.set_offset(header.offset);
    buffer.set_offset_end(header.offset_end);
    buffer.set_flags(gst::BufferFlags::from_bits_truncate(header.flags));
    if let Some(layout) = layout {
        add_video_meta(layout, buffer).ok_or(bad("video layout"))?;
    }
    Ok(())
}

fn add_video_meta(meta: &[u8; VIDEO_LAYOUT_SIZE], buffer: &mut gst::BufferRef) -> Option<()> {
    let word = |index: usize| {
        let at = index * 4;
        u32::from_ne_bytes([meta[at], meta[at + 1], meta[at + 2], meta[at + 3]])
    };
    // SAFETY: `from_glib` for a GLib enum accepts any i32; an unknown value
    // becomes `__Unknown`, refused below.
    let format = unsafe { gst_video::VideoFormat::from_glib(word(0) as i32) };
    // Before the format-info lookup, which for a value past GStreamer's
    // table logs a CRITICAL and returns NULL (found by the fuzzer).
    if matches!(
        format,
        gst_video::VideoFormat::Unknown | gst_video::VideoFormat::Encoded | gst_video::VideoFormat::__Unknown(_)
    ) {
        return None;
    }
    let (width, height, planes) = (word(2), word(3), word(4) as usize);
    let info = gst_video::VideoFormatInfo::from_format(format);
    if planes != info.n_planes() as usize || planes > 4 || width == 0 || height == 0 {
        return None;
    }
    let offsets: Vec<usize> = (0..planes).map(|plane| word(6 + plane) as usize).collect();
    let strides: Vec<i32> = (0..planes).map(|plane| word(10 + plane) as i32).collect();
    // Every plane must lie inside the buffer: downstream trusts the layout.
    let size = buffer.size() as u64;
    for plane in 0..planes {
        let component = info.plane().iter().position(|&p| p as usize == plane)?;
        let rows = u64::from(info.scale_height(component as u8, height));
        let stride = u64::try_from(strides[plane]).ok().filter(|&stride| stride > 0)?;
        let end = (offsets[plane] as u64).checked_add(stride.checked_mul(rows)?)?;
        if end > size {
            return None;
        }
    }
    let flags = gst_video::VideoFrameFlags::from_bits_truncate(word(1));
    gst_video::VideoMeta::add_full(buffer, flags, format, width, height, &offsets, &strides).ok()?;
    Some(())
}

/// A record for an event, or `None` for events that stay in this process:
/// flushes, and event types this version does not carry.
pub fn encode_event(event: &gst::Event) -> Option<(RecordHeader, Vec<u8>)> {
    use gst::EventView;
    let mut payload = Vec::new();
    let kind = match event.view() {
        EventView::Caps(caps) => {
            return Some((
                RecordHeader::untimed(RecordKind::Caps, 0),
                caps.caps().to_string().into_bytes(),
            ));
        }
        EventView::StreamStart(start) => {
            payload.extend_from_slice(&start.stream_flags().bits().to_ne_bytes());
            let group: u32 = event
                .structure()
                .and_then(|s| s.get::<u32>("group-id").ok())
                .unwrap_or(0);
            payload.extend_from_slice(&group.to_ne_bytes());
            payload.extend_from_slice(start.stream_id().as_bytes());
            event.type_()
        }
        EventView::Segment(segment) => {
            let segment = segment.segment();
            payload.extend_from_slice(&segment.format().into_glib().to_ne_bytes());
            payload.extend_from_slice(&segment.flags().bits().to_ne_bytes());
            payload.extend_from_slice(&segment.rate().to_ne_bytes());
            payload.extend_from_slice(&segment.applied_rate().to_ne_bytes());
            for value in [
                segment.base(),
                segment.offset(),
                segment.start(),
                segment.stop(),
                segment.time(),
                segment.position(),
                segment.duration(),
            ] {
                payload.extend_from_slice(&value.value().to_ne_bytes());
            }
            event.type_()
        }
        EventView::Eos(_) => event.type_(),
        EventView::Gap(gap) => {
            let (timestamp, duration) = gap.get();
            payload.extend_from_slice(&timestamp.nseconds().to_ne_bytes());
            payload.extend_from_slice(&duration.map_or(NONE, gst::ClockTime::nseconds).to_ne_bytes());
            event.type_()
        }
        EventView::Tag(tag) => {
            let tags = tag.tag();
            payload.extend_from_slice(&tags.scope().into_glib().to_ne_bytes());
            payload.extend_from_slice(tags.to_string().as_bytes());
            event.type_()
        }
        EventView::CustomDownstream(_) | EventView::CustomDownstreamSticky(_) | EventView::CustomBoth(_) => {
            payload.extend_from_slice(event.structure()?.to_string().as_bytes());
            event.type_()
        }
        _ => return None,
    };
    let event_type = kind.into_glib() as u32;
    Some((RecordHeader::untimed(RecordKind::Event, event_type), payload))
}

pub(crate) fn split_u32(payload: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = payload.split_first_chunk::<4>()?;
    Some((u32::from_ne_bytes(*head), rest))
}

pub(crate) fn split_u64(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = payload.split_first_chunk::<8>()?;
    Some((u64::from_ne_bytes(*head), rest))
}

/// A payload's text: UTF-8 without NUL, which GLib's C strings cannot hold
/// (gstreamer-rs panics on one; found by the fuzzer).
pub(crate) fn text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    if bytes.contains(&0) {
        return Err(bad(what));
    }
    std::str::from_utf8(bytes).map_err(|_| bad(what))
}

/// Type annotations of values that hold structures or caps of their own,
/// lowercased and without spaces, as `parses_cleanly` compares them.
const NESTED_TYPES: [&str; 12] = [
    "(gststructure)",
    "(structure)",
    "(gstcaps)",
    "(caps)",
    "(gstcapsfeatures)",
    "(gstsample)",
    "(sample)",
    "(gsttaglist)",
    "(taglist)",
    "(gstsegment)",
    "(segment)",
    "(gstdatetime)",
];

/// Whether GStreamer parses `text` (caps, a structure or a tag list) without
/// a GStreamer-CRITICAL. GStreamer 1.22 checks a structure's name only with
/// `g_return_val_if_fail` in `gst_structure_new_empty`, so caps such as
/// `4x` log a CRITICAL, which aborts a process run with
/// `G_DEBUG=fatal-criticals`. So every structure must start with a letter,
/// and values that nest structures or caps, whose names would have to be
/// found inside them, are refused. This refuses more than GStreamer would,
/// never less: structures are split at every `;` outside double quotes, and
/// GStreamer only starts a new one at some of those.
pub(crate) fn parses_cleanly(text: &str) -> bool {
    // g_ascii_isspace, which the parser skips; Rust's ASCII whitespace
    // lacks the vertical tab.
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r');
    let squashed: String = text
        .chars()
        .filter(|&c| !space(c))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if NESTED_TYPES.iter().any(|nested| squashed.contains(nested)) {
        return false;
    }
    let mut structures = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                structures.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    structures.push(&text[start..]);
    structures.iter().all(|structure| {
        let name = structure.trim_start_matches(space);
        name.is_empty() || name.starts_with(|c: char| c.is_ascii_alphabetic())
    })
}

/// The text of a caps, structure or tag list payload, if it is UTF-8 and
/// parses without a CRITICAL (see `parses_cleanly`).
pub(crate) fn structure_text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    let text = text(bytes, what)?;
    if !parses_cleanly(text) {
        return Err(bad(what));
    }
    Ok(text)
}

/// Caps a peer sent as text, if they parse without a CRITICAL and are fixed,
/// as a stream's caps are.
pub fn decode_caps(payload: &[u8]) -> Result<gst::Caps, DecodeError> {
    let caps = gst::Caps::from_str(structure_text(payload, "caps")?).map_err(|_| bad("caps"))?;
    if !caps.is_fixed() {
        return Err(bad("caps"));
    }
    Ok(caps)
}

/// Decodes a caps or event record.
pub fn decode(header: &RecordHeader, payload: &[u8]) -> Result<Decoded, DecodeError> {
    match header.kind {
        RecordKind::Caps => decode_caps(payload).map(Decoded::Caps),
        RecordKind::Event => decode_event(header.flags, payload),
        RecordKind::Buffer
        | RecordKind::VideoLayout
        | RecordKind::Lost
        | RecordKind::Metas
        | RecordKind::FdBuffer
        | RecordKind::FdForget
        | RecordKind::Flush => Err(bad("buffer")),
    }
}

fn decode_event(event_type: u32, payload: &[u8]) -> Result<Decoded, DecodeError> {
    use gst::EventType;
    // SAFETY: `from_glib` for a GLib enum accepts any i32: a value that
    // names no known event type becomes `__Unknown` and matches no arm.
    let kind = unsafe { EventType::from_glib(event_type as i32) };
    let event = match kind {
        EventType::Eos => return Ok(Decoded::Eos),
        EventType::StreamStart => {
            let (flags, rest) = split_u32(payload).ok_or(bad("stream-start"))?;
            let (group, stream_id) = split_u32(rest).ok_or(bad("stream-start"))?;
            let mut event = gst::event::StreamStart::builder(text(stream_id, "stream-start")?)
                .flags(gst::StreamFlags::from_bits_truncate(flags))
                .build();
            // gstreamer-rs cannot build a GroupId from a number, but the
            // group id is just this field of the event's structure.
            if group != 0 {
                event.make_mut().structure_mut().set("group-id", group);
            }
            event
        }
        EventType::Segment => return decode_segment(payload).map(Decoded::Segment).ok_or(bad("segment")),
        EventType::Gap => {
            let (timestamp, rest) = split_u64(payload).ok_or(bad("gap"))?;
            let (duration, _) = split_u64(rest).ok_or(bad("gap"))?;
            if timestamp == NONE {
                return Err(bad("gap"));
            }
            let duration = (duration != NONE).then(|| gst::ClockTime::from_nseconds(duration));
            gst::event::Gap::builder(gst::ClockTime::from_nseconds(timestamp))
                .duration(duration)
                .build()
        }
        EventType::Tag => {
            let (scope, rest) = split_u32(payload).ok_or(bad("tag"))?;
            let text = text(rest, "tag")?;
            // GStreamer checks this prefix only with a CRITICAL (found by
            // the fuzzer); a tag list serializes with it.
            if !text.starts_with("taglist") {
                return Err(bad("tag"));
            }
            if !parses_cleanly(text) {
                // Tags with samples (cover art) or nested structures: only
                // metadata, so skipped rather than failing the stream.
                return Ok(Decoded::Unsupported(event_type));
            }
            let mut tags = gst::glib::Value::deserialize(text, gst::TagList::static_type())
                .ok()
                .and_then(|value| value.get::<gst::TagList>().ok())
                .ok_or(bad("tag"))?;
            // SAFETY: as for the event type, any i32 is a valid input; an
            // unknown scope becomes `__Unknown` and is treated as stream scope.
            let scope = unsafe { gst::TagScope::from_glib(scope as i32) };
            tags.make_mut().set_scope(match scope {
                gst::TagScope::Global => gst::TagScope::Global,
                _ => gst::TagScope::Stream,
            });
            gst::event::Tag::new(tags)
        }
        EventType::CustomDownstream | EventType::CustomDownstreamSticky | EventType::CustomBoth => {
            let structure =
                gst::Structure::from_str(structure_text(payload, "custom event")?).map_err(|_| bad("custom event"))?;
            match kind {
                EventType::CustomDownstream => gst::event::CustomDownstream::new(structure),
                EventType::CustomDownstreamSticky => gst::event::CustomDownstreamSticky::new(structure),
                _ => gst::event::CustomBoth::new(structure),
            }
        }
        _ => return Ok(Decoded::Unsupported(event_type)),
    };
    Ok(Decoded::Event(event))
}

fn decode_segment(payload: &[u8]) -> Option<gst::Segment> {
    let (format, rest) = split_u32(payload)?;
    let (flags, rest) = split_u32(rest)?;
    let (rate, rest) = split_u64(rest)?;
    let (applied_rate, mut rest) = split_u64(rest)?;
    let mut values = [0i64; 7];
    for value in &mut values {
        let (raw, tail) = split_u64(rest)?;
        *value = raw as i64;
        rest = tail;
    }
    let format = match format {
        1 => gst::Format::Default,
        2 => gst::Format::Bytes,
        3 => gst::Format::Time,
        4 => gst::Format::Buffers,
        5 => gst::Format::Percent,
        _ => return None,
    };
    let (rate, applied_rate) = (f64::from_bits(rate), f64::from_bits(applied_rate));
    if !rate.is_normal() || !applied_rate.is_normal() {
        return None;
    }
    let mut segment = gst::Segment::new();
    segment.set_format(format);
    segment.set_flags(gst::SegmentFlags::from_bits_truncate(flags));
    segment.set_rate(rate);
    segment.set_applied_rate(applied_rate);
    let value = |raw: i64| gst::GenericFormattedValue::new(format, raw);
    let [base, offset, start, stop, time, position, duration] = values;
    segment.set_base(value(base));
    segment.set_offset(value(offset));
    segment.set_start(value(start));
    segment.set_stop(value(stop));
    segment.set_time(value(time));
    segment.set_position(value(position));
    segment.set_duration(value(duration));
    Some(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_record(text: &str) -> Result<Decoded, DecodeError> {
        gst::init().unwrap();
        decode(&RecordHeader::untimed(RecordKind::Caps, 0), text.as_bytes())
    }

    #[test]
    fn structure_names_that_gstreamer_would_log_a_critical_for_are_refused() {
        // Found by the fuzzer: GStreamer 1.22 logs a CRITICAL for each.
        for text in [
            "4294967296",
            "video/x-raw;4x",
            " _a",
            "\"q\", a=1",
            "a, b=(GstCaps)\"4x\"",
        ] {
            assert!(caps_record(text).is_err(), "{text:?}");
        }
        let caps = "video/x-raw, format=(string)I420, width=(int)320, height=(int)240, framerate=(fraction)30/1, multiview-flags=(GstVideoMultiviewFlagsSet)0:ffffffff:/right-view-first/left-flipped/left-flopped/right-flipped/right-flopped/half-aspect/mixed-mono";
        assert!(matches!(caps_record(caps), Ok(Decoded::Caps(_))), "{caps}");
        // A quoted `;` does not start a structure.
        assert!(matches!(caps_record("a, s=(string)\"x\\\";4\""), Ok(Decoded::Caps(_))));
    }

    #[test]
    fn tags_with_nested_values_are_skipped() {
        gst::init().unwrap();
        let mut payload = 0u32.to_ne_bytes().to_vec();
        payload.extend_from_slice(b"taglist, image=(sample)x");
        let event_type = gst::EventType::Tag.into_glib() as u32;
        let header = RecordHeader::untimed(RecordKind::Event, event_type);
        assert!(matches!(decode(&header, &payload), Ok(Decoded::Unsupported(_))));
        // Found by the fuzzer: a NUL made gstreamer-rs panic.
        let mut payload = [0u8; 8].to_vec();
        payload.extend_from_slice(b"a\0b");
        let stream_start = gst::EventType::StreamStart.into_glib() as u32;
        let header = RecordHeader::untimed(RecordKind::Event, stream_start);
        assert!(decode(&header, &payload).is_err());
        assert!(caps_record("video/x-raw\0").is_err());
        let header = RecordHeader::untimed(RecordKind::Event, event_type);
        // Found by the fuzzer: GStreamer logs a CRITICAL without the prefix.
        let mut payload = 0u32.to_ne_bytes().to_vec();
        payload.extend_from_slice(b"4x, title=(string)a");
        assert!(decode(&header, &payload).is_err());
    }
}
