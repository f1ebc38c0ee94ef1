//! The control socket's messages after the handshake (protocol version 5):
//! each is one SOCK_SEQPACKET datagram, a u32 kind and a u32 reserved (0),
//! then a body whose form the kind decides. An unknown kind, a non-zero
//! reserved word or a body of the wrong size is a protocol error.
//!
//! ```text
//! writer → reader  kind 16, fd announcement, 24 bytes, SCM_RIGHTS [one fd]
//!   0  u32  16
//!   4  u32  reserved, 0
//!   8  u64  fd id: what fd buffer records (kind 9) name it by; never
//!           announced twice on one connection
//!   16 u32  memory kind: 1 GstFdMemory, 2 DMABuf
//!   20 u32  reserved, 0
//! ```

use std::os::fd::OwnedFd;

/// Kind of an fd announcement.
pub const FD_ANNOUNCE: u32 = 16;

/// Largest message either side accepts; a longer one is cut, and refused.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Most fds one message may carry; more arrive cut, and are refused.
pub const MAX_MESSAGE_FDS: usize = 4;

const HEADER_LEN: usize = 8;
const FD_ANNOUNCE_LEN: usize = 24;

/// One message as it came off the socket, with the fds it carried: they
/// are closed with it unless a receive path takes them.
#[derive(Debug)]
pub struct Message {
    pub kind: u32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Splits a datagram into its kind and body; `None` if it is shorter
    /// than the header or the reserved word is not 0.
    pub fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Option<Self> {
        let kind = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
        let reserved = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
        (reserved == 0).then(|| Self {
            kind,
            body: bytes[HEADER_LEN..].to_vec(),
            fds,
        })
    }
}

/// What kind of GstMemory an announced fd is to become in the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdMemoryKind {
    Fd = 1,
    DmaBuf = 2,
}

/// The writer will name `fd` as `id` in fd buffer records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdAnnouncement {
    pub id: u64,
    pub kind: FdMemoryKind,
}

impl FdAnnouncement {
    pub fn encode(&self) -> [u8; FD_ANNOUNCE_LEN] {
        let mut bytes = [0u8; FD_ANNOUNCE_LEN];
        bytes[0..4].copy_from_slice(&FD_ANNOUNCE.to_ne_bytes());
        bytes[8..16].copy_from_slice(&self.id.to_ne_bytes());
        bytes[16..20].copy_from_slice(&(self.kind as u32).to_ne_bytes());
        bytes
    }

    /// Parses the body of a message of kind [`FD_ANNOUNCE`].
    pub fn decode(body: &[u8]) -> Option<Self> {
        if body.len() != FD_ANNOUNCE_LEN - HEADER_LEN {
            return None;
        }
        let id = u64::from_ne_bytes(body[0..8].try_into().ok()?);
        let kind = match u32::from_ne_bytes(body[8..12].try_into().ok()?) {
            1 => FdMemoryKind::Fd,
            2 => FdMemoryKind::DmaBuf,
            _ => return None,
        };
        let reserved = u32::from_ne_bytes(body[12..16].try_into().ok()?);
        (reserved == 0).then_some(Self { id, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_survives_encoding() {
        let announcement = FdAnnouncement {
            id: 7,
            kind: FdMemoryKind::DmaBuf,
        };
        let message = Message::parse(&announcement.encode(), Vec::new()).unwrap();
        assert_eq!(message.kind, FD_ANNOUNCE);
        assert_eq!(FdAnnouncement::decode(&message.body), Some(announcement));
    }

    #[test]
    fn malformed_announcements_are_refused() {
        let mut bytes = FdAnnouncement {
            id: 1,
            kind: FdMemoryKind::Fd,
        }
        .encode();
        bytes[4] = 1;
        assert!(Message::parse(&bytes, Vec::new()).is_none());
        bytes[4] = 0;
        bytes[16] = 3;
        let message = Message::parse(&bytes, Vec::new()).unwrap();
        assert!(FdAnnouncement::decode(&message.body).is_none());
        assert!(FdAnnouncement::decode(&message.body[..15]).is_none());
    }
}
