//! Messages on the control socket after the handshake (protocol version 5):
//! upstream events and queries from a reader, and the writer's answers.
//! No GStreamer in here: the elements turn these values into events and
//! queries, after checking what GStreamer would choke on.
//!
//! Every message is one SOCK_SEQPACKET datagram of at most
//! [`MAX_MESSAGE_LEN`] bytes, native-endian:
//!
//! ```text
//! 0  u32  kind
//! 4  u32  reserved, 0
//! 8  ...  body, whose length the kind fixes (or, for text, the datagram)
//! ```
//!
//! | kind | direction | body |
//! |-----:|-----------|------|
//! | 1 | reader → writer | navigation: the event's structure as text |
//! | 2 | reader → writer | QoS: u32 type, u32 reserved, f64 proportion, i64 diff, u64 timestamp |
//! | 3 | reader → writer | seek: u32 id, u32 format, f64 rate, u32 flags, u32 start type, u32 stop type, u32 reserved, i64 start, i64 stop |
//! | 4 | reader → writer | reconfigure: empty |
//! | 5 | reader → writer | custom upstream event (GstForceKeyUnit among them): its structure as text |
//! | 6 | reader → writer | query: u32 id, u32 query (1 position, 2 duration, 3 seeking), u32 format, u32 reserved |
//! | 7 | writer → reader | answer: u32 id, u32 handled (0 or 1), u32 format, u32 seekable (0 or 1), i64 value, i64 seek start, i64 seek end |
//! | 16 | writer → reader | fd announcement, with one fd in `SCM_RIGHTS`: u64 fd id (what fd buffer records name it by; never announced twice on one connection), u32 memory kind (1 GstFdMemory, 2 DMABuf), u32 reserved |
//!
//! Kinds 1 to 15 are the upstream channel's; 16 to 31 belong to fd
//! announcements. Anything else, a body of the wrong length, a reserved
//! word that is not 0, a boolean that is neither 0 nor 1, or text that is
//! not UTF-8 or holds a NUL, is a protocol error.

/// The longest datagram either side sends or accepts.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

const HEADER_LEN: usize = 8;

/// What a reader asks of the writer's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Position,
    Duration,
    Seeking,
}

/// A seek, field by field as `gst_event_new_seek` takes it: sent as values
/// rather than as the event's structure, whose missing fields GStreamer
/// would read with a CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seek {
    pub id: u32,
    pub rate: f64,
    pub format: u32,
    pub flags: u32,
    pub start_type: u32,
    pub start: i64,
    pub stop_type: u32,
    pub stop: i64,
}

/// A QoS event's values, as `gst_event_new_qos` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Qos {
    pub kind: u32,
    pub proportion: f64,
    pub diff: i64,
    pub timestamp: u64,
}

/// The writer's answer to a query or a seek with the same `id`. `handled`
/// is what the writer's pipeline returned; the other fields are its
/// answer to a position or duration query (`value`) or to a seeking query
/// (`seekable`, `start`, `end`), in `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answer {
    pub id: u32,
    pub handled: bool,
    pub format: u32,
    pub seekable: bool,
    pub value: i64,
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Navigation(String),
    Qos(Qos),
    Seek(Seek),
    Reconfigure,
    CustomUpstream(String),
    Query {
        id: u32,
        query: QueryKind,
        format: u32,
    },
    Answer(Answer),
    /// The fd that came with this message is to be named `id` in fd
    /// buffer records.
    FdAnnounce(FdAnnouncement),
}

impl FdAnnouncement {
    /// The datagram announcing the fd sent with it.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + FD_ANNOUNCE_LEN);
        out.extend_from_slice(&FD_ANNOUNCE.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.id.to_ne_bytes());
        out.extend_from_slice(&(self.kind as u32).to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out
    }
}

/// What kind of GstMemory an announced fd is to become in the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdMemoryKind {
    Fd = 1,
    DmaBuf = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdAnnouncement {
    pub id: u64,
    pub kind: FdMemoryKind,
}

/// Why a datagram is not a message; each one ends the peer's upstream
/// channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("a control message of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("a control message is longer than the {MAX_MESSAGE_LEN} bytes this protocol allows")]
    TooLong,
    #[error("unknown control message kind {0}")]
    UnknownKind(u32),
    #[error("control message kind {kind} has a body of {len} bytes, not {expected}")]
    WrongLength { kind: u32, len: usize, expected: usize },
    #[error("control message kind {0} has a reserved word that is not 0")]
    Reserved(u32),
    #[error("control message kind {0} has a flag that is neither 0 nor 1")]
    BadFlag(u32),
    #[error("control message kind {0} holds text that is not UTF-8 without NUL")]
    BadText(u32),
    #[error("control message kind {0} names an unknown query")]
    UnknownQuery(u32),
    #[error("control message kind {0} names an unknown kind of memory")]
    UnknownMemory(u32),
}

const NAVIGATION: u32 = 1;
const QOS: u32 = 2;
const SEEK: u32 = 3;
const RECONFIGURE: u32 = 4;
const CUSTOM_UPSTREAM: u32 = 5;
const QUERY: u32 = 6;
const ANSWER: u32 = 7;
/// Kind of an fd announcement, the one message that carries an fd.
pub const FD_ANNOUNCE: u32 = 16;

const QOS_LEN: usize = 32;
const SEEK_LEN: usize = 48;
const QUERY_LEN: usize = 16;
const ANSWER_LEN: usize = 40;
const FD_ANNOUNCE_LEN: usize = 16;

impl QueryKind {
    fn code(self) -> u32 {
        match self {
            Self::Position => 1,
            Self::Duration => 2,
            Self::Seeking => 3,
        }
    }
}

impl Message {
    fn kind(&self) -> u32 {
        match self {
            Self::Navigation(_) => NAVIGATION,
            Self::Qos(_) => QOS,
            Self::Seek(_) => SEEK,
            Self::Reconfigure => RECONFIGURE,
            Self::CustomUpstream(_) => CUSTOM_UPSTREAM,
            Self::Query { .. } => QUERY,
            Self::Answer(_) => ANSWER,
            Self::FdAnnounce(_) => FD_ANNOUNCE,
        }
    }

    /// The datagram, or `None` for text too long to send.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.kind().to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        match self {
            Self::Navigation(text) | Self::CustomUpstream(text) => out.extend_from_slice(text.as_bytes()),
            Self::Qos(qos) => {
                out.extend_from_slice(&qos.kind.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&qos.proportion.to_ne_bytes());
                out.extend_from_slice(&qos.diff.to_ne_bytes());
                out.extend_from_slice(&qos.timestamp.to_ne_bytes());
            }
            Self::Seek(seek) => {
                out.extend_from_slice(&seek.id.to_ne_bytes());
                out.extend_from_slice(&seek.format.to_ne_bytes());
                out.extend_from_slice(&seek.rate.to_ne_bytes());
                out.extend_from_slice(&seek.flags.to_ne_bytes());
                out.extend_from_slice(&seek.start_type.to_ne_bytes());
                out.extend_from_slice(&seek.stop_type.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&seek.start.to_ne_bytes());
                out.extend_from_slice(&seek.stop.to_ne_bytes());
            }
            Self::Reconfigure => {}
            Self::Query { id, query, format } => {
                out.extend_from_slice(&id.to_ne_bytes());
                out.extend_from_slice(&query.code().to_ne_bytes());
                out.extend_from_slice(&format.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
            }
            Self::Answer(answer) => {
                out.extend_from_slice(&answer.id.to_ne_bytes());
                out.extend_from_slice(&u32::from(answer.handled).to_ne_bytes());
                out.extend_from_slice(&answer.format.to_ne_bytes());
                out.extend_from_slice(&u32::from(answer.seekable).to_ne_bytes());
                out.extend_from_slice(&answer.value.to_ne_bytes());
                out.extend_from_slice(&answer.start.to_ne_bytes());
                out.extend_from_slice(&answer.end.to_ne_bytes());
            }
            Self::FdAnnounce(announcement) => return Some(announcement.encode()),
        }
        (out.len() <= MAX_MESSAGE_LEN).then_some(out)
    }

    /// The kind of a datagram, read before its body so that a receiver can
    /// dispatch on it; the body is then decoded by [`Message::decode`].
    pub fn kind_of(datagram: &[u8]) -> Result<u32, MessageError> {
        if datagram.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong);
        }
        let Some((kind, rest)) = datagram.split_first_chunk::<4>() else {
            return Err(MessageError::Short(datagram.len()));
        };
        let Some((reserved, _)) = rest.split_first_chunk::<4>() else {
            return Err(MessageError::Short(datagram.len()));
        };
        let kind = u32::from_ne_bytes(*kind);
        if u32::from_ne_bytes(*reserved) != 0 {
            return Err(MessageError::Reserved(kind));
        }
        Ok(kind)
    }

    /// Decodes one datagram, checking every field it can without
    /// GStreamer.
    pub fn decode(datagram: &[u8]) -> Result<Self, MessageError> {
        let kind = Self::kind_of(datagram)?;
        let body = &datagram[HEADER_LEN..];
        let fixed = |expected: usize| {
            if body.len() == expected {
                Ok(Fields { bytes: body, kind })
            } else {
                Err(MessageError::WrongLength {
                    kind,
                    len: body.len(),
                    expected,
                })
            }
        };
        let text = || {
            if body.contains(&0) {
                return Err(MessageError::BadText(kind));
            }
            std::str::from_utf8(body)
                .map(str::to_owned)
                .map_err(|_| MessageError::BadText(kind))
        };
        Ok(match kind {
            NAVIGATION => Self::Navigation(text()?),
            CUSTOM_UPSTREAM => Self::CustomUpstream(text()?),
            QOS => {
                let mut fields = fixed(QOS_LEN)?;
                let qos_kind = fields.u32();
                fields.reserved()?;
                Self::Qos(Qos {
                    kind: qos_kind,
                    proportion: f64::from_bits(fields.u64()),
                    diff: fields.u64() as i64,
                    timestamp: fields.u64(),
                })
            }
            SEEK => {
                let mut fields = fixed(SEEK_LEN)?;
                let id = fields.u32();
                let format = fields.u32();
                let rate = f64::from_bits(fields.u64());
                let flags = fields.u32();
                let start_type = fields.u32();
                let stop_type = fields.u32();
                fields.reserved()?;
                Self::Seek(Seek {
                    id,
                    rate,
                    format,
                    flags,
                    start_type,
                    start: fields.u64() as i64,
                    stop_type,
                    stop: fields.u64() as i64,
                })
            }
            RECONFIGURE => {
                fixed(0)?;
                Self::Reconfigure
            }
            QUERY => {
                let mut fields = fixed(QUERY_LEN)?;
                let id = fields.u32();
                let query = match fields.u32() {
                    1 => QueryKind::Position,
                    2 => QueryKind::Duration,
                    3 => QueryKind::Seeking,
                    _ => return Err(MessageError::UnknownQuery(kind)),
                };
                let format = fields.u32();
                fields.reserved()?;
                Self::Query { id, query, format }
            }
            ANSWER => {
                let mut fields = fixed(ANSWER_LEN)?;
                Self::Answer(Answer {
                    id: fields.u32(),
                    handled: fields.flag()?,
                    format: fields.u32(),
                    seekable: fields.flag()?,
                    value: fields.u64() as i64,
                    start: fields.u64() as i64,
                    end: fields.u64() as i64,
                })
            }
            FD_ANNOUNCE => {
                let mut fields = fixed(FD_ANNOUNCE_LEN)?;
                let id = fields.u64();
                let memory = match fields.u32() {
                    1 => FdMemoryKind::Fd,
                    2 => FdMemoryKind::DmaBuf,
                    _ => return Err(MessageError::UnknownMemory(kind)),
                };
                fields.reserved()?;
                Self::FdAnnounce(FdAnnouncement { id, kind: memory })
            }
            _ => return Err(MessageError::UnknownKind(kind)),
        })
    }
}

/// A body of a length already checked, read front to back.
struct Fields<'a> {
    bytes: &'a [u8],
    kind: u32,
}

impl Fields<'_> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.bytes.split_first_chunk::<4>().unwrap_or((&[0; 4], &[]));
        self.bytes = rest;
        u32::from_ne_bytes(*head)
    }

    fn u64(&mut self) -> u64 {
        let (head, rest) = self.bytes.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        self.bytes = rest;
        u64::from_ne_bytes(*head)
    }

    fn reserved(&mut self) -> Result<(), MessageError> {
        match self.u32() {
            0 => Ok(()),
            _ => Err(MessageError::Reserved(self.kind)),
        }
    }

    fn flag(&mut self) -> Result<bool, MessageError> {
        match self.u32() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(MessageError::BadFlag(self.kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Message> {
        vec![
            Message::Navigation("application/x-gst-navigation, event=(string)mouse-button-press".into()),
            Message::Qos(Qos {
                kind: 1,
                proportion: 1.5,
                diff: -40_000_000,
                timestamp: 1_000_000_000,
            }),
            Message::Seek(Seek {
                id: 7,
                rate: 1.0,
                format: 3,
                flags: 1 | 4,
                start_type: 1,
                start: 6_000_000_000,
                stop_type: 0,
                stop: -1,
            }),
            Message::Reconfigure,
            Message::CustomUpstream("GstForceKeyUnit, all-headers=(boolean)true".into()),
            Message::Query {
                id: 3,
                query: QueryKind::Duration,
                format: 3,
            },
            Message::Answer(Answer {
                id: 3,
                handled: true,
                format: 3,
                seekable: true,
                value: 10_000_000_000,
                start: 0,
                end: 10_000_000_000,
            }),
            Message::FdAnnounce(FdAnnouncement {
                id: 7,
                kind: FdMemoryKind::DmaBuf,
            }),
        ]
    }

    #[test]
    fn every_kind_survives_a_round_trip() {
        for message in every_kind() {
            let bytes = message.encode().expect("fits");
            assert_eq!(Message::decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn truncated_and_oversized_bodies_are_refused() {
        for message in every_kind() {
            let bytes = message.encode().expect("fits");
            let text = matches!(message, Message::Navigation(_) | Message::CustomUpstream(_));
            for len in 0..bytes.len() {
                let cut = Message::decode(&bytes[..len]);
                if len < HEADER_LEN {
                    assert_eq!(cut, Err(MessageError::Short(len)));
                } else if !text {
                    assert!(
                        matches!(cut, Err(MessageError::WrongLength { .. })),
                        "{message:?} cut to {len}: {cut:?}"
                    );
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err(), "{message:?} with a byte more");
        }
        let huge = Message::Navigation("a".repeat(MAX_MESSAGE_LEN));
        assert_eq!(huge.encode(), None);
        let mut datagram = NAVIGATION.to_ne_bytes().to_vec();
        datagram.resize(MAX_MESSAGE_LEN + 1, b'a');
        assert_eq!(Message::decode(&datagram), Err(MessageError::TooLong));
    }

    #[test]
    fn unknown_kinds_reserved_words_flags_and_text_are_refused() {
        for kind in [0u32, 8, 15, 17, 31, u32::MAX] {
            let mut datagram = kind.to_ne_bytes().to_vec();
            datagram.extend_from_slice(&[0; 4]);
            assert_eq!(Message::decode(&datagram), Err(MessageError::UnknownKind(kind)));
        }
        let mut reserved = Message::Reconfigure.encode().expect("fits");
        reserved[4] = 1;
        assert_eq!(Message::decode(&reserved), Err(MessageError::Reserved(RECONFIGURE)));
        let mut flag = Message::Answer(Answer::default()).encode().expect("fits");
        flag[HEADER_LEN + 4] = 2;
        assert_eq!(Message::decode(&flag), Err(MessageError::BadFlag(ANSWER)));
        let mut query = Message::Query {
            id: 1,
            query: QueryKind::Position,
            format: 3,
        }
        .encode()
        .expect("fits");
        query[HEADER_LEN + 4] = 9;
        assert_eq!(Message::decode(&query), Err(MessageError::UnknownQuery(QUERY)));
        let mut announcement = FdAnnouncement {
            id: 1,
            kind: FdMemoryKind::Fd,
        }
        .encode();
        announcement[HEADER_LEN + 8] = 3;
        assert_eq!(
            Message::decode(&announcement),
            Err(MessageError::UnknownMemory(FD_ANNOUNCE))
        );
        for bad in [&b"nav\0igation"[..], &[0xff, 0xfe][..]] {
            let mut datagram = NAVIGATION.to_ne_bytes().to_vec();
            datagram.extend_from_slice(&[0; 4]);
            datagram.extend_from_slice(bad);
            assert_eq!(Message::decode(&datagram), Err(MessageError::BadText(NAVIGATION)));
        }
    }

    /// Garbage of every length up to a few hundred bytes, from a fixed
    /// xorshift sequence: decoding returns, never panics.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000usize {
            let len = round % 300;
            let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= HEADER_LEN && round % 2 == 0 {
                // Mostly known kinds with a clean header, so bodies are
                // exercised rather than only the kind check.
                datagram[..4].copy_from_slice(&(1 + (next() % 7) as u32).to_ne_bytes());
                datagram[4..8].copy_from_slice(&[0; 4]);
            }
            let _ = Message::decode(&datagram);
        }
    }
}
