//! The metas that cross with a buffer (other than GstVideoMeta, which the
//! video layout record carries): how the writer lists them in a Metas
//! record and how the reader puts them back on the buffer. The encoding is
//! part of the wire format (see `PROTOCOL.md`).
//!
//! A Metas record's payload is a list of entries, each a u32 kind, a u32
//! length and that many bytes:
//!
//! | kind | meta                        | body |
//! |-----:|-----------------------------|------|
//! | 1    | GstAudioMeta                | u64 samples, u32 offsets (0 or channels), u32 reserved, u64 channel offsets |
//! | 2    | GstVideoTimeCodeMeta        | u32 fps_n, fps_d, flags, hours, minutes, seconds, frames, field count |
//! | 3    | GstReferenceTimestampMeta   | u64 timestamp, u64 duration (u64::MAX = none), the reference caps as a string |
//! | 4    | GstCustomMeta               | its structure as a string; the structure's name is the meta's |
//! | 5    | GstVideoRegionOfInterestMeta| i32 id, i32 parent id, u32 x, y, w, h, u32 type length, the type, then per param a u32 length and the structure as a string |
//! | 6    | GstVideoCaptionMeta         | u32 caption type, the caption bytes |
//!
//! The record goes right before its buffer's record, which then carries
//! [`METAS_PRECEDE`] in its flags. A buffer without that flag has no metas,
//! so a Metas record whose buffer never followed (lost in `drop` mode, or cut
//! off by a flush) is applied to nothing.

use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::glib::translate::{FromGlib, IntoGlib};
use gst::prelude::*;

use crate::codec::{self, DecodeError, bad, split_u32, split_u64};
use crate::ring::RecordHeader;
use crate::ring::layout::NONE;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringmetas",
        gst::DebugColorFlags::empty(),
        Some("Metas carried through the shared-memory ring"),
    )
});

/// Set in a buffer record's flags (never a GstBufferFlags bit) when a
/// Metas record for that buffer immediately precedes it.
pub const METAS_PRECEDE: u32 = 1 << 31;

const AUDIO: u32 = 1;
const TIME_CODE: u32 = 2;
const REFERENCE_TIMESTAMP: u32 = 3;
const CUSTOM: u32 = 4;
const REGION_OF_INTEREST: u32 = 5;
const CAPTION: u32 = 6;

/// Entries a reader accepts on one buffer: more is a writer flooding it.
const MAX_ENTRIES: usize = 1024;
/// Longest region-of-interest type: each distinct one becomes a GQuark,
/// which lives as long as the process.
const MAX_ROI_TYPE: usize = 256;
/// Custom meta names a reader process registers (or drops) for its writers:
/// each registered one is two GTypes, which live as long as the process.
const MAX_CUSTOM_REGISTRATIONS: usize = 64;

/// The writer's side: lists a buffer's metas, and logs once per kind those
/// that cannot cross.
#[derive(Default)]
pub struct Outgoing {
    dropped: Mutex<Vec<glib::Type>>,
}

impl Outgoing {
    /// The payload of the Metas record for `buffer`; empty (and not
    /// allocated) when it has no meta to carry.
    pub fn encode(&self, element: &gst::Element, buffer: &gst::BufferRef) -> Vec<u8> {
        let mut out = Vec::new();
        for meta in buffer.iter_meta::<gst::Meta>() {
            let api = meta.api();
            if api == gst_video::VideoMeta::meta_api() {
                continue;
            }
            // Checked before anything is written, so that a buffer whose
            // metas all stay behind costs no allocation.
            if !carried(&meta) {
                self.log_dropped(element, api);
                continue;
            }
            let start = out.len();
            out.extend_from_slice(&[0; 8]);
            let kind = encode_one(&meta, &mut out);
            match kind {
                Some(kind) => {
                    let len = (out.len() - start - 8) as u32;
                    out[start..start + 4].copy_from_slice(&kind.to_ne_bytes());
                    out[start + 4..start + 8].copy_from_slice(&len.to_ne_bytes());
                }
                None => {
                    out.truncate(start);
                    self.log_dropped(element, api);
                }
            }
        }
        out
    }

    fn log_dropped(&self, element: &gst::Element, api: glib::Type) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !dropped.contains(&api) {
            dropped.push(api);
            gst::debug!(
                CAT,
                obj = element,
                "{} does not cross the ring: readers get buffers without it",
                api.name()
            );
        }
    }
}

/// Whether `meta` is of a kind the ring carries.
fn carried(meta: &gst::MetaRef<'_, gst::Meta>) -> bool {
    let api = meta.api();
    [
        gst_audio::AudioMeta::meta_api(),
        gst_video::VideoTimeCodeMeta::meta_api(),
        gst::ReferenceTimestampMeta::meta_api(),
        gst_video::VideoRegionOfInterestMeta::meta_api(),
        gst_video::VideoCaptionMeta::meta_api(),
    ]
    .contains(&api)
        || meta.try_as_custom_meta().is_some()
}

/// Appends the body of `meta`'s entry; returns its kind, or `None` for a
/// meta the ring does not carry.
fn encode_one(meta: &gst::MetaRef<'_, gst::Meta>, out: &mut Vec<u8>) -> Option<u32> {
    if let Some(audio) = meta.downcast_ref::<gst_audio::AudioMeta>() {
        out.extend_from_slice(&(audio.samples() as u64).to_ne_bytes());
        let offsets = audio.offsets();
        out.extend_from_slice(&(offsets.len() as u32).to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        for &offset in offsets {
            out.extend_from_slice(&(offset as u64).to_ne_bytes());
        }
        return Some(AUDIO);
    }
    if let Some(time_code) = meta.downcast_ref::<gst_video::VideoTimeCodeMeta>() {
        let tc = time_code.tc();
        let fps = tc.fps();
        for word in [
            fps.numer() as u32,
            fps.denom() as u32,
            tc.flags().bits(),
            tc.hours(),
            tc.minutes(),
            tc.seconds(),
            tc.frames(),
            tc.field_count(),
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        return Some(TIME_CODE);
    }
    if let Some(reference) = meta.downcast_ref::<gst::ReferenceTimestampMeta>() {
        let caps = reference.reference().to_string();
        if !codec::parses_cleanly(&caps) {
            return None;
        }
        out.extend_from_slice(&reference.timestamp().nseconds().to_ne_bytes());
        let duration = reference.duration().map_or(NONE, gst::ClockTime::nseconds);
        out.extend_from_slice(&duration.to_ne_bytes());
        out.extend_from_slice(caps.as_bytes());
        return Some(REFERENCE_TIMESTAMP);
    }
    if let Some(roi) = meta.downcast_ref::<gst_video::VideoRegionOfInterestMeta>() {
        let roi_type = roi.roi_type();
        if roi_type.len() > MAX_ROI_TYPE {
            return None;
        }
        let (x, y, w, h) = roi.rect();
        out.extend_from_slice(&roi.id().to_ne_bytes());
        out.extend_from_slice(&roi.parent_id().to_ne_bytes());
        for word in [x, y, w, h, roi_type.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(roi_type.as_bytes());
        for param in roi.params() {
            let text = param.to_string();
            if !codec::parses_cleanly(&text) {
                return None;
            }
            out.extend_from_slice(&(text.len() as u32).to_ne_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        return Some(REGION_OF_INTEREST);
    }
    if let Some(caption) = meta.downcast_ref::<gst_video::VideoCaptionMeta>() {
        out.extend_from_slice(&(caption.caption_type().into_glib() as u32).to_ne_bytes());
        out.extend_from_slice(caption.data());
        return Some(CAPTION);
    }
    if let Some(custom) = meta.try_as_custom_meta() {
        let text = custom.structure().to_string();
        if !codec::parses_cleanly(&text) {
            return None;
        }
        out.extend_from_slice(text.as_bytes());
        return Some(CUSTOM);
    }
    None
}

/// The reader's side: the Metas record waiting for its buffer, and the
/// stream's audio format, which audio metas are checked against.
#[derive(Default)]
pub struct Incoming {
    pending: Option<Vec<u8>>,
    audio: Option<gst_audio::AudioInfo>,
}

impl Incoming {
    /// New caps: audio metas from now on describe buffers of these.
    pub fn set_caps(&mut self, caps: &gst::CapsRef) {
        self.audio = caps
            .structure(0)
            .is_some_and(|s| s.name() == "audio/x-raw")
            .then(|| gst_audio::AudioInfo::from_caps(caps).ok())
            .flatten();
    }

    /// Keeps a Metas record's payload (a private copy) for the next buffer.
    pub fn hold(&mut self, payload: Vec<u8>) {
        self.pending = Some(payload);
    }

    /// Puts the metas of the buffer record `header` on `buffer`. A Metas
    /// record held for a buffer that never came is dropped here.
    pub fn apply(&mut self, header: &RecordHeader, buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
        let pending = self.pending.take();
        if header.flags & METAS_PRECEDE == 0 {
            return Ok(());
        }
        let payload = pending.ok_or(bad("buffer (its metas are missing)"))?;
        decode(&payload, self.audio.as_ref(), buffer)
    }
}

/// Adds the metas a Metas record's payload lists to `buffer`, whose stream
/// has raw audio of `audio` if any. Every entry is checked before it
/// reaches GStreamer, which would log a CRITICAL for many bad values.
pub fn decode(
    payload: &[u8],
    audio: Option<&gst_audio::AudioInfo>,
    buffer: &mut gst::BufferRef,
) -> Result<(), DecodeError> {
    let mut rest = payload;
    let mut entries = 0;
    while !rest.is_empty() {
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(bad("metas (too many entries)"));
        }
        let (kind, tail) = split_u32(rest).ok_or(bad("metas (truncated entry)"))?;
        let (len, tail) = split_u32(tail).ok_or(bad("metas (truncated entry)"))?;
        let (body, tail) = tail
            .split_at_checked(len as usize)
            .ok_or(bad("metas (entry longer than the record)"))?;
        rest = tail;
        match kind {
            AUDIO => add_audio(body, audio, buffer)?,
            TIME_CODE => add_time_code(body, buffer)?,
            REFERENCE_TIMESTAMP => add_reference_timestamp(body, buffer)?,
            CUSTOM => add_custom(body, buffer)?,
            REGION_OF_INTEREST => add_region_of_interest(body, buffer)?,
            CAPTION => add_caption(body, buffer)?,
            _ => return Err(bad("metas (unknown meta kind)")),
        }
    }
    Ok(())
}

fn add_audio(body: &[u8], info: Option<&gst_audio::AudioInfo>, buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "audio meta";
    let info = info.ok_or(bad("audio meta (the caps are not raw audio)"))?;
    let (samples, rest) = split_u64(body).ok_or(bad(WHAT))?;
    let (count, rest) = split_u32(rest).ok_or(bad(WHAT))?;
    let (_, mut rest) = split_u32(rest).ok_or(bad(WHAT))?;
    let channels = info.channels() as usize;
    let planar = info.layout() == gst_audio::AudioLayout::NonInterleaved;
    if count != 0 && (!planar || count as usize != channels) {
        return Err(bad("audio meta (channel offsets that do not match the caps)"));
    }
    let size = buffer.size() as u64;
    let whole = samples.checked_mul(u64::from(info.bpf()));
    if whole.is_none_or(|bytes| bytes > size) {
        return Err(bad("audio meta (more samples than the buffer holds)"));
    }
    let plane = samples * u64::from(info.width() / 8);
    let mut offsets = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (offset, tail) = split_u64(rest).ok_or(bad(WHAT))?;
        rest = tail;
        if offset.checked_add(plane).is_none_or(|end| end > size) {
            return Err(bad("audio meta (a channel outside the buffer)"));
        }
        offsets.push(offset);
    }
    if !rest.is_empty() {
        return Err(bad(WHAT));
    }
    for (index, &offset) in offsets.iter().enumerate() {
        if offsets[..index]
            .iter()
            .any(|&other| offset < other + plane && other < offset + plane)
        {
            return Err(bad("audio meta (overlapping channels)"));
        }
    }
    let offsets: Vec<usize> = offsets.into_iter().map(|offset| offset as usize).collect();
    gst_audio::AudioMeta::add(buffer, info, samples as usize, &offsets).map_err(|_| bad(WHAT))?;
    Ok(())
}

fn add_time_code(body: &[u8], buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "time code meta";
    let words: [u8; 32] = body.try_into().map_err(|_| bad(WHAT))?;
    let word = |index: usize| u32::from_ne_bytes(words[index * 4..index * 4 + 4].try_into().unwrap_or_default());
    let (fps_n, fps_d) = (word(0), word(1));
    let (minutes, seconds, field_count) = (word(4), word(5), word(7));
    // gstreamer-rs asserts these (a panic), and a zero denominator too.
    if fps_n > i32::MAX as u32
        || fps_d == 0
        || fps_d > i32::MAX as u32
        || minutes >= 60
        || seconds >= 60
        || field_count > 2
    {
        return Err(bad(WHAT));
    }
    let time_code = gst_video::VideoTimeCode::new(
        gst::Fraction::new(fps_n as i32, fps_d as i32),
        None,
        gst_video::VideoTimeCodeFlags::from_bits_truncate(word(2)),
        word(3),
        minutes,
        seconds,
        word(6),
        field_count,
    );
    let valid = gst_video::ValidVideoTimeCode::try_from(time_code).map_err(|_| bad(WHAT))?;
    gst_video::VideoTimeCodeMeta::add(buffer, &valid);
    Ok(())
}

fn add_reference_timestamp(body: &[u8], buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "reference timestamp meta";
    let (timestamp, rest) = split_u64(body).ok_or(bad(WHAT))?;
    let (duration, caps) = split_u64(rest).ok_or(bad(WHAT))?;
    if timestamp == NONE {
        return Err(bad(WHAT));
    }
    let caps = gst::Caps::from_str(codec::structure_text(caps, WHAT)?).map_err(|_| bad(WHAT))?;
    let duration = (duration != NONE).then(|| gst::ClockTime::from_nseconds(duration));
    gst::ReferenceTimestampMeta::add(buffer, &caps, gst::ClockTime::from_nseconds(timestamp), duration);
    Ok(())
}

/// A name GLib takes for a type without a warning: a letter or `_`, then
/// letters, digits, `-`, `_` or `+`, at least three in all.
fn is_type_name(name: &str) -> bool {
    name.len() >= 3
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'))
}

/// Whether the custom meta `name` may be added in this process: it is
/// registered, or it is registered now, as in the writer's process. A name
/// in GStreamer's namespace (`Gst...`, such as vp8enc's `GstVP8Meta`) is
/// not: the plugin that owns it registers it when it loads, and fails with
/// a CRITICAL if the name is taken by then, so such a meta is dropped
/// (logged once) until that plugin is loaded here. Refuses a name that GLib
/// would refuse or that another type holds, each of which GStreamer answers
/// with a CRITICAL, and more names than `MAX_CUSTOM_REGISTRATIONS`.
fn ensure_custom_meta(name: &str) -> Result<bool, DecodeError> {
    static REGISTERED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    const WHAT: &str = "custom meta (a name this process cannot register)";
    let mut registered = REGISTERED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if gst::meta::CustomMeta::is_registered(name) {
        return Ok(true);
    }
    if name.starts_with("Gst") {
        if !registered.iter().any(|dropped| dropped == name) {
            registered.push(name.to_owned());
            gst::debug!(
                CAT,
                "dropping custom meta {name}: a GStreamer plugin registers it, and none that has is loaded in this process"
            );
        }
        return Ok(false);
    }
    // gst_meta_register_custom registers the API type `NAME-api` and the
    // type NAME; either existing already makes it fail with a CRITICAL.
    let api = format!("{name}-api");
    if !is_type_name(name)
        || glib::Type::from_name(name).is_some()
        || glib::Type::from_name(&api).is_some()
        || registered.len() >= MAX_CUSTOM_REGISTRATIONS
    {
        return Err(bad(WHAT));
    }
    gst::meta::CustomMeta::register(name, &[]);
    registered.push(name.to_owned());
    Ok(true)
}

fn add_custom(body: &[u8], buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "custom meta";
    let structure = gst::Structure::from_str(codec::structure_text(body, WHAT)?).map_err(|_| bad(WHAT))?;
    if !ensure_custom_meta(structure.name())? {
        return Ok(());
    }
    let mut meta = gst::meta::CustomMeta::add(buffer, structure.name()).map_err(|_| bad(WHAT))?;
    let fields = meta.mut_structure();
    for (field, value) in structure.iter() {
        fields.set_value(field, value.clone());
    }
    Ok(())
}

fn add_region_of_interest(body: &[u8], buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "region of interest meta";
    let (id, rest) = split_u32(body).ok_or(bad(WHAT))?;
    let (parent_id, mut rest) = split_u32(rest).ok_or(bad(WHAT))?;
    let mut words = [0u32; 5];
    for word in &mut words {
        let (value, tail) = split_u32(rest).ok_or(bad(WHAT))?;
        *word = value;
        rest = tail;
    }
    let [x, y, w, h, type_len] = words;
    if type_len as usize > MAX_ROI_TYPE {
        return Err(bad(WHAT));
    }
    let (roi_type, mut rest) = rest.split_at_checked(type_len as usize).ok_or(bad(WHAT))?;
    let roi_type = codec::text(roi_type, WHAT)?;
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = split_u32(rest).ok_or(bad(WHAT))?;
        let (param, tail) = tail.split_at_checked(len as usize).ok_or(bad(WHAT))?;
        rest = tail;
        params.push(gst::Structure::from_str(codec::structure_text(param, WHAT)?).map_err(|_| bad(WHAT))?);
    }
    let mut meta = gst_video::VideoRegionOfInterestMeta::add(buffer, roi_type, (x, y, w, h));
    meta.set_id(id as i32);
    meta.set_parent_id(parent_id as i32);
    for param in params {
        meta.add_param(param);
    }
    Ok(())
}

fn add_caption(body: &[u8], buffer: &mut gst::BufferRef) -> Result<(), DecodeError> {
    const WHAT: &str = "caption meta";
    let (caption_type, data) = split_u32(body).ok_or(bad(WHAT))?;
    // SAFETY: `from_glib` for a GLib enum accepts any i32; an unknown value
    // becomes `__Unknown`, refused below.
    let caption_type = unsafe { gst_video::VideoCaptionType::from_glib(caption_type as i32) };
    if matches!(
        caption_type,
        gst_video::VideoCaptionType::Unknown | gst_video::VideoCaptionType::__Unknown(_)
    ) || data.is_empty()
    {
        return Err(bad(WHAT));
    }
    gst_video::VideoCaptionMeta::add(buffer, caption_type, data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RecordKind;

    fn entry(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut entry = kind.to_ne_bytes().to_vec();
        entry.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        entry.extend_from_slice(body);
        entry
    }

    fn caption(data: &[u8]) -> Vec<u8> {
        let mut body = (gst_video::VideoCaptionType::Cea608Raw.into_glib() as u32)
            .to_ne_bytes()
            .to_vec();
        body.extend_from_slice(data);
        entry(CAPTION, &body)
    }

    fn buffer_record(flags: u32) -> RecordHeader {
        RecordHeader::untimed(RecordKind::Buffer, flags)
    }

    #[test]
    fn a_metas_record_applies_only_to_the_buffer_flagged_for_it() {
        gst::init().unwrap();
        let mut incoming = Incoming::default();
        let mut buffer = gst::Buffer::with_size(16).unwrap();
        // Its buffer was lost: the next buffer, unflagged, gets nothing.
        incoming.hold(caption(b"lost"));
        incoming.apply(&buffer_record(0), buffer.make_mut()).unwrap();
        assert_eq!(buffer.iter_meta::<gst::Meta>().count(), 0);
        // Nor does a later flagged buffer whose own record went missing.
        assert!(
            incoming
                .apply(&buffer_record(METAS_PRECEDE), buffer.make_mut())
                .is_err()
        );
        incoming.hold(caption(b"mine"));
        incoming
            .apply(&buffer_record(METAS_PRECEDE), buffer.make_mut())
            .unwrap();
        let meta = buffer.meta::<gst_video::VideoCaptionMeta>().unwrap();
        assert_eq!(meta.data(), b"mine");
    }

    fn audio(samples: u64, offsets: &[u64]) -> Vec<u8> {
        let mut body = samples.to_ne_bytes().to_vec();
        body.extend_from_slice(&(offsets.len() as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for offset in offsets {
            body.extend_from_slice(&offset.to_ne_bytes());
        }
        entry(AUDIO, &body)
    }

    #[test]
    fn audio_metas_are_checked_against_the_buffer_and_the_caps() {
        gst::init().unwrap();
        let caps = gst::Caps::from_str(
            "audio/x-raw, format=F32LE, layout=non-interleaved, rate=48000, channels=2, channel-mask=(bitmask)0x3",
        )
        .unwrap();
        let mut incoming = Incoming::default();
        incoming.set_caps(&caps);
        let info = incoming.audio.clone();
        // 100 samples of two F32 channels.
        let decode_on = |payload: &[u8]| {
            let mut buffer = gst::Buffer::with_size(800).unwrap();
            decode(payload, info.as_ref(), buffer.make_mut()).map(|()| buffer)
        };
        for hostile in [
            audio(101, &[0, 400]),
            audio(100, &[0, 401]),
            audio(100, &[0, 200]),
            audio(100, &[0]),
            audio(100, &[0, u64::MAX]),
            audio(u64::MAX, &[0, 400]),
            audio(1 << 62, &[]),
        ] {
            assert!(decode_on(&hostile).is_err(), "{hostile:?}");
        }
        let buffer = decode_on(&audio(100, &[400, 0])).unwrap();
        let meta = buffer.meta::<gst_audio::AudioMeta>().unwrap();
        assert_eq!((meta.samples(), meta.offsets()), (100, &[400, 0][..]));
        let mut buffer = gst::Buffer::with_size(800).unwrap();
        assert!(decode(&audio(100, &[0, 400]), None, buffer.make_mut()).is_err());
    }

    #[test]
    fn hostile_entries_are_refused_without_a_critical() {
        gst::init().unwrap();
        let mut time_code = [0u32; 8];
        time_code[..2].copy_from_slice(&[25, 1]);
        let time_code_with = |index: usize, value: u32| {
            let mut words = time_code;
            words[index] = value;
            entry(
                TIME_CODE,
                &words.iter().flat_map(|word| word.to_ne_bytes()).collect::<Vec<u8>>(),
            )
        };
        let mut reference = NONE.to_ne_bytes().to_vec();
        reference.extend_from_slice(&NONE.to_ne_bytes());
        reference.extend_from_slice(b"timestamp/x-ntp");
        // Takes the name of the API type that `shmring-collide` would need.
        gst::meta::CustomMeta::register("shmring-collide-api", &[]);
        let mut roi = [0u8; 28].to_vec();
        roi[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        for hostile in [
            time_code_with(1, 0),
            time_code_with(4, 60),
            time_code_with(7, 3),
            time_code_with(6, 25),
            time_code_with(0, u32::MAX),
            entry(REFERENCE_TIMESTAMP, &reference),
            entry(CUSTOM, b"GObject, a=(int)1"),
            entry(CUSTOM, b"shmring-collide"),
            entry(CUSTOM, b"ab, a=(int)1"),
            entry(CUSTOM, b"with/slash"),
            entry(CUSTOM, b"x, n=(structure)\"a;\""),
            entry(REGION_OF_INTEREST, &roi),
            entry(CAPTION, &0u32.to_ne_bytes()),
            entry(CAPTION, &99u32.to_ne_bytes()),
            caption(b""),
            entry(99, b""),
            caption(b"abc")[..9].to_vec(),
            {
                let mut long = caption(b"abc");
                long[4] = 200;
                long
            },
        ] {
            let mut buffer = gst::Buffer::with_size(64).unwrap();
            assert!(decode(&hostile, None, buffer.make_mut()).is_err(), "{hostile:?}");
        }
        // GStreamer's namespace is left to the plugins that own it.
        let mut buffer = gst::Buffer::with_size(64).unwrap();
        decode(&entry(CUSTOM, b"GstShmringUnitMeta, a=(int)7"), None, buffer.make_mut()).unwrap();
        assert_eq!(buffer.iter_meta::<gst::Meta>().count(), 0);
        assert!(!gst::meta::CustomMeta::is_registered("GstShmringUnitMeta"));
        // A name no type holds is registered, as the writer's process did.
        let mut buffer = gst::Buffer::with_size(64).unwrap();
        decode(&entry(CUSTOM, b"shmring-unit-meta, a=(int)7"), None, buffer.make_mut()).unwrap();
        let custom = gst::meta::CustomMeta::from_buffer(&buffer, "shmring-unit-meta").unwrap();
        assert_eq!(custom.structure().get::<i32>("a").unwrap(), 7);
    }
}
