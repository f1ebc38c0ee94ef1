//! The caps probe: how a device provider asks a running writer what it
//! streams, without becoming one of its readers.
//!
//! Wire format, version 5. The prober connects and sends a ClientHello
//! whose purpose (offset 12) is 1. The writer answers with one message and
//! closes the connection:
//!
//! ```text
//! writer → prober  ProbeAnswer, 24 bytes + caps, no fds
//!   0  [u8; 8]  "SHMRRING"
//!   8  u32      protocol version
//!   12 u32      status: 3, a probe answer
//!   16 u32      length of the caps text after the header, at most 16384;
//!               0: the writer has no caps yet, or caps longer than that
//!   20 u32      reserved, 0
//!   24 …        the caps (gst_caps_to_string), UTF-8, no NUL
//! ```
//!
//! A writer of another version answers the probe as it would a reader of
//! that version, with its refusal (status 1); magic and version come first
//! in both, so the prober can tell.
//!
//! What the writer promises: the answer comes from where it accepts
//! readers, and costs it one non-blocking send and nothing else. A probe
//! gets no channel, no slot and no fd, is not counted among the readers,
//! and is never sent a record. A probe that arrives while the writer serves
//! `max-readers` readers is answered all the same.
//!
//! What the prober promises: it waits for answers for a bounded time, for
//! all the writers it asks at once, so a writer that never answers (frozen,
//! or not a shmring writer at all) costs that time once and is then listed
//! without caps. Everything in an answer is checked before use; the caps
//! text is handed on as text, for the caller to parse with its own checks.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollTimeout;

use super::{
    ConnectError, Connection, HelloPurpose, IpcError, PROTOCOL_VERSION, Received, SERVER_MAGIC, check_server_header,
    io_err,
};

/// The longest caps text an answer carries: video and audio caps take a few
/// hundred bytes, and a bounded answer always fits the socket's buffer, so
/// the writer's send never waits.
pub const MAX_CAPS_LEN: usize = 16 * 1024;
const HEADER_LEN: usize = 24;
const STATUS_PROBE_ANSWER: u32 = 3;

/// Answers a probe with `caps`, the writer's caps as text if it has any, and
/// never waits: a prober whose socket buffer is full gets nothing. The
/// connection is closed when the caller drops it.
pub fn answer(connection: &Connection, caps: Option<&str>) -> Result<(), IpcError> {
    let caps = caps.filter(|caps| caps.len() <= MAX_CAPS_LEN).unwrap_or_default();
    let mut message = Vec::with_capacity(HEADER_LEN + caps.len());
    message.extend_from_slice(&SERVER_MAGIC);
    message.extend_from_slice(&PROTOCOL_VERSION.to_ne_bytes());
    message.extend_from_slice(&STATUS_PROBE_ANSWER.to_ne_bytes());
    message.extend_from_slice(&(caps.len() as u32).to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(caps.as_bytes());
    connection.send(&message, &[])
}

/// What a probe found at one socket path.
#[derive(Debug)]
pub enum Finding {
    /// No writer listens there: no socket, a stale one, or one this process
    /// may not connect to.
    NoWriter,
    /// A writer listens there.
    Writer {
        /// Its caps as text: `None` when it has none yet, did not answer in
        /// time, or answered something other than a probe answer of this
        /// version.
        caps: Option<String>,
        /// Why there are no caps, for a debug log.
        why_none: Option<String>,
        /// A pidfd of the writer's process, readable once it has exited, so
        /// that a writer killed with its socket file left behind can be seen
        /// to go; `None` where the kernel could not give one.
        exit: Option<OwnedFd>,
    },
}

/// Asks every writer at `paths` for its caps at once, and waits at most
/// `timeout` in all for their answers. Returns one finding per path, in
/// order.
pub fn probe_writers(paths: &[&Path], timeout: Duration) -> Vec<Finding> {
    let deadline = Instant::now() + timeout;
    let mut asked: Vec<Option<Connection>> = Vec::with_capacity(paths.len());
    let mut findings: Vec<Finding> = Vec::with_capacity(paths.len());
    for path in paths {
        let connection = match Connection::connect(path) {
            Ok(connection) => connection,
            Err(ConnectError::NoListener | ConnectError::Other(_)) => {
                asked.push(None);
                findings.push(Finding::NoWriter);
                continue;
            }
            Err(ConnectError::BacklogFull) => {
                asked.push(None);
                findings.push(Finding::Writer {
                    caps: None,
                    why_none: Some("its queue of connections is full".to_owned()),
                    exit: None,
                });
                continue;
            }
        };
        // Opened before the hello is sent: a writer that answers was alive
        // after this, so its pid cannot have been reused by then.
        let exit = connection
            .peer_credentials()
            .and_then(|credentials| pidfd_open(credentials.pid()));
        let sent = connection.send_client_hello(HelloPurpose::Probe);
        findings.push(Finding::Writer {
            caps: None,
            why_none: sent.as_ref().err().map(ToString::to_string),
            exit,
        });
        asked.push(sent.ok().map(|()| connection));
    }
    while asked.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(left) = PollTimeout::try_from(left) else {
            break;
        };
        let waiting: Vec<usize> = (0..asked.len()).filter(|&index| asked[index].is_some()).collect();
        let fds: Vec<_> = waiting
            .iter()
            .filter_map(|&index| asked[index].as_ref().map(AsFd::as_fd))
            .collect();
        let Ok(ready) = super::wait_readable_for(&fds, left) else {
            break;
        };
        if !ready.contains(&true) {
            break;
        }
        for (&index, _) in waiting.iter().zip(ready).filter(|(_, ready)| *ready) {
            let Some(connection) = asked[index].take() else {
                continue;
            };
            if let Finding::Writer { caps, why_none, .. } = &mut findings[index] {
                match receive_answer(&connection) {
                    Ok(Some(text)) => *caps = Some(text),
                    Ok(None) => *why_none = Some("it has no caps yet".to_owned()),
                    Err(err) => *why_none = Some(err.to_string()),
                }
            }
        }
    }
    for (finding, connection) in findings.iter_mut().zip(&asked) {
        if let (Finding::Writer { why_none, .. }, Some(_)) = (finding, connection) {
            why_none.get_or_insert_with(|| format!("it did not answer within {} ms", timeout.as_millis()));
        }
    }
    findings
}

/// Reads a writer's answer once its socket is readable: its caps text, or
/// `None` if it has none.
fn receive_answer(connection: &Connection) -> Result<Option<String>, IpcError> {
    // One byte more than the longest answer, so that a longer one shows.
    let mut message = vec![0u8; HEADER_LEN + MAX_CAPS_LEN + 1];
    // Called once the socket is readable: nothing there is as much an
    // error as any other failure to read.
    let Some(Received { len, .. }) = connection.receive(&mut message, "receiving a probe answer")? else {
        return Err(io_err("receiving a probe answer")(Errno::EAGAIN));
    };
    check_server_header(&message[..len])?;
    let u32_at = |at: usize| u32::from_ne_bytes([message[at], message[at + 1], message[at + 2], message[at + 3]]);
    if len < HEADER_LEN || u32_at(12) != STATUS_PROBE_ANSWER {
        return Err(IpcError::Malformed(
            "the writer's answer to a probe is not a probe answer",
        ));
    }
    let caps_len = u32_at(16) as usize;
    if caps_len > MAX_CAPS_LEN || HEADER_LEN + caps_len != len {
        return Err(IpcError::Malformed("the writer's probe answer has the wrong size"));
    }
    if caps_len == 0 {
        return Ok(None);
    }
    let caps = std::str::from_utf8(&message[HEADER_LEN..len])
        .ok()
        .filter(|text| !text.contains('\0'))
        .ok_or(IpcError::Malformed(
            "the caps in the writer's probe answer are not text",
        ))?;
    Ok(Some(caps.to_owned()))
}

/// A pidfd of process `pid`, or `None` if the kernel has none to give.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and no pointer; it returns a
    // new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just installed `fd` in our table, close-on-exec,
    // and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{HelloPurpose, Listener};

    fn scratch(name: &str) -> std::path::PathBuf {
        crate::ipc::tests::scratch(&format!("probe-{name}"))
    }

    /// A writer that answers the next probe with `caps`, on a thread.
    fn answer_once(listener: Listener, caps: Option<&'static str>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let connection = loop {
                super::super::wait_readable([listener.as_fd()]).unwrap();
                if let Some(connection) = listener.accept().unwrap() {
                    break connection;
                }
            };
            let hello = loop {
                if let Some(hello) = connection.recv_client_hello().unwrap() {
                    break hello;
                }
                super::super::wait_readable([connection.as_fd()]).unwrap();
            };
            assert_eq!(hello, (PROTOCOL_VERSION, HelloPurpose::Probe));
            answer(&connection, caps).unwrap();
        })
    }

    #[test]
    fn a_probe_gets_the_caps_or_none() {
        let dir = scratch("answers");
        let with = dir.join("with");
        let without = dir.join("without");
        let too_long = dir.join("too-long");
        let nobody = dir.join("nobody");
        let long_caps: &'static str = "x".repeat(MAX_CAPS_LEN + 1).leak();
        let threads = [
            answer_once(Listener::bind(&with, 0o600).unwrap(), Some("video/x-raw, width=(int)8")),
            answer_once(Listener::bind(&without, 0o600).unwrap(), None),
            answer_once(Listener::bind(&too_long, 0o600).unwrap(), Some(long_caps)),
        ];
        let findings = probe_writers(&[&with, &without, &too_long, &nobody], Duration::from_secs(60));
        for thread in threads {
            thread.join().unwrap();
        }
        let caps: Vec<_> = findings
            .iter()
            .map(|finding| match finding {
                Finding::Writer { caps, exit, .. } => {
                    assert!(exit.is_some(), "a pidfd of this process");
                    Some(caps.clone())
                }
                Finding::NoWriter => None,
            })
            .collect();
        assert_eq!(
            caps,
            [
                Some(Some("video/x-raw, width=(int)8".to_owned())),
                Some(None),
                Some(None),
                None
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A writer built on `serve_reader` alone answers a probe without caps
    /// and hands out no ring for it.
    #[test]
    fn serve_reader_answers_a_probe_and_serves_no_ring() {
        use crate::ring::{ChannelSizes, HeapMemory, Notifier};
        let dir = scratch("serve");
        let path = dir.join("ring");
        let listener = Listener::bind(&path, 0o600).unwrap();
        let served = std::thread::spawn(move || {
            let connection = loop {
                super::super::wait_readable([listener.as_fd()]).unwrap();
                if let Some(connection) = listener.accept().unwrap() {
                    break connection;
                }
            };
            let sizes = ChannelSizes {
                record_capacity: 4096,
                release_slots: 64,
                heap_size: 4096,
            };
            let heap = HeapMemory::create(sizes.heap_size).unwrap();
            let interrupt = Notifier::new().unwrap();
            super::super::serve_reader(&connection, sizes, &heap, interrupt.as_fd()).map(|channel| channel.is_some())
        });
        let findings = probe_writers(&[&path], Duration::from_secs(60));
        assert!(matches!(served.join().unwrap(), Err(IpcError::Probed)));
        let [Finding::Writer { caps, why_none, .. }] = &findings[..] else {
            panic!("{findings:?}");
        };
        assert_eq!(*caps, None);
        assert_eq!(why_none.as_deref(), Some("it has no caps yet"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn staging_names_are_told_from_stream_names() {
        use std::ffi::OsStr;
        for (name, staging) in [
            ("cam.1234.tmp", true),
            ("cam.tmp", false),
            (".1234.tmp", false),
            ("cam..tmp", false),
            ("cam.12a.tmp", false),
            ("cam", false),
        ] {
            assert_eq!(crate::ipc::is_staging_name(OsStr::new(name)), staging, "{name}");
        }
    }
}
