//! The control socket: the versioned handshake that hands a reader the ring,
//! and the liveness signal afterwards. No GStreamer in here either.
//!
//! Wire format, version 6 (native-endian, one SOCK_SEQPACKET message each):
//!
//! ```text
//! reader → writer  ClientHello, 16 bytes
//!   0  [u8; 8]  "SHMRHELO"
//!   8  u32      protocol version
//!   12 u32      purpose: 0 a reader, 1 a caps probe (answered as in probe.rs)
//!
//! writer → reader  ServerHello, 48 bytes, with SCM_RIGHTS
//!                  [channel memfd, heap memfd, data-ready eventfd,
//!                   space-ready eventfd, release-ready eventfd]
//!                  when status is 0 and no fds otherwise
//!   0  [u8; 8]  "SHMRRING"
//!   8  u32      protocol version
//!   12 u32      status: 0 accepted, 1 version mismatch, 2 busy (3 answers
//!               a probe, see probe.rs)
//!   16 u64      record queue capacity in bytes
//!   24 u64      release queue capacity in entries
//!   32 u64      heap size in bytes
//!   40 u32      accepted: the reader's slot (below 31, informational);
//!               busy: the writer's max-readers
//!   44 u32      reserved, 0
//! ```
//!
//! The magic and version words come first in every version, so two builds
//! that disagree can always tell the user so. After the handshake the
//! socket carries the messages of [`messages`] (upstream events and
//! queries, and their answers), and each side sees the other's exit as a
//! hang-up in its poll set. Only the thread that reads messages reads the
//! socket: the others watch it for the hang-up alone (`Trigger::HangUp`,
//! `Interest::HangUp`, `peer_gone` peeks), so no message is ever eaten by
//! a liveness check.
//! A caps probe is not a reader: its one answer ends the connection (see
//! [`probe`]).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockType, UnixAddr,
    UnixCredentials, accept4, bind, connect, getsockopt, listen, recv, recvmsg, sendmsg, shutdown, socket, sockopt,
};

pub mod messages;

use crate::ring::{ChannelFds, ChannelSizes, HeapMemory, ReaderChannel, ReceivedFds, RingError, WriterChannel};

pub mod probe;

/// Version of the handshake and of the ring layout it hands over.
pub const PROTOCOL_VERSION: u32 = crate::ring::layout::LAYOUT_VERSION;

const CLIENT_MAGIC: [u8; 8] = *b"SHMRHELO";
const SERVER_MAGIC: [u8; 8] = *b"SHMRRING";
const CLIENT_HELLO_LEN: usize = 16;
const SERVER_HELLO_LEN: usize = 48;

/// Errors of the control socket, worded for the user who has to fix them.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("socket-path {0} is already served by a running shmringsink; stop it or choose another socket-path")]
    InUse(PathBuf),
    #[error("socket-path {0} exists and is not a socket; remove it or choose another socket-path")]
    NotASocket(PathBuf),
    #[error("the directory of socket-path {0} does not exist; create it or choose another socket-path")]
    NoDirectory(PathBuf),
    #[error(
        "the peer speaks shmring protocol version {peer}, this build speaks version {ours}; use the same gst-plugin-shmring on both sides"
    )]
    VersionMismatch { peer: u32, ours: u32 },
    #[error("the peer is not a shmring element (bad handshake magic)")]
    NotShmring,
    #[error(
        "the shmringsink at {0} already serves as many readers as its max-readers ({1}) allows; raise max-readers on the sink (at most 31) or stop another reader"
    )]
    Busy(PathBuf, u32),
    #[error(
        "permission denied connecting to socket-path {path} ({owner}); the shmringsink's perms property decides who may connect: set perms=0660 and share a group, or run both sides as the same user"
    )]
    PermissionDenied { path: PathBuf, owner: String },
    #[error("the peer closed the control socket")]
    PeerGone,
    #[error("the peer was a caps probe, not a reader, and got its answer; accept the next connection")]
    Probed,
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Ring(#[from] RingError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(Errno) -> IpcError {
    move |errno| IpcError::Io {
        context,
        source: errno.into(),
    }
}

/// What the writer tells a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u32,
    pub status: HelloStatus,
    pub sizes: ChannelSizes,
    pub reader_slot: u32,
}

impl ServerHello {
    /// A hello that turns the reader away, carrying no ring.
    fn refusal(status: HelloStatus) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            status,
            sizes: ChannelSizes {
                record_capacity: 0,
                release_slots: 0,
                heap_size: 0,
            },
            reader_slot: 0,
        }
    }
}

/// Why a peer connected, from its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloPurpose {
    /// To read the stream: it gets a channel and a slot.
    Reader,
    /// To ask what the stream carries: it gets the caps and nothing else.
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    Accepted,
    VersionMismatch,
    Busy,
}

/// Sleeps until at least one of `fds` is readable or hung up. Returns which.
pub fn wait_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> Result<[bool; N], IpcError> {
    let mut poll_fds = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    loop {
        match poll(&mut poll_fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(io_err("poll")(errno)),
        }
    }
    Ok(poll_fds.map(|fd| fd.revents().is_some_and(|events| !events.is_empty())))
}

/// How a [`Waiter`] watches one fd.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// Reports the fd while it is readable: for sockets and the unlock fd.
    Level,
    /// Reports each new write to an eventfd once, without the counter having
    /// to be drained: a ring's wake-up fd, which saves a read per wake-up.
    Edge,
    /// Reports a socket once the peer has shut it or closed it, and not for
    /// messages waiting on it, which another thread reads.
    HangUp,
}

/// An epoll set built once per connection, so that each sleep costs one
/// system call.
pub struct Waiter<const N: usize> {
    epoll: nix::sys::epoll::Epoll,
}

impl<const N: usize> Waiter<N> {
    pub fn new(fds: [(BorrowedFd<'_>, Trigger); N]) -> Result<Self, IpcError> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io_err("epoll_create"))?;
        for (index, (fd, trigger)) in fds.into_iter().enumerate() {
            let flags = match trigger {
                Trigger::Level => EpollFlags::EPOLLIN,
                Trigger::Edge => EpollFlags::EPOLLIN | EpollFlags::EPOLLET,
                Trigger::HangUp => EpollFlags::EPOLLRDHUP,
            };
            epoll
                .add(fd, EpollEvent::new(flags, index as u64))
                .map_err(io_err("epoll_ctl"))?;
        }
        Ok(Self { epoll })
    }

    /// Sleeps until at least one fd is reported. Returns which were.
    pub fn wait(&self) -> Result<[bool; N], IpcError> {
        self.wait_at_most(None)
    }

    /// Sleeps until at least one fd is reported or `timeout` (to the
    /// millisecond) has passed. Returns which were: none on a timeout.
    pub fn wait_at_most(&self, timeout: Option<std::time::Duration>) -> Result<[bool; N], IpcError> {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            Some(timeout) => EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX),
        };
        let mut events = [EpollEvent::empty(); N];
        let count = loop {
            match self.epoll.wait(&mut events, timeout) {
                Ok(count) => break count,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(io_err("epoll_wait")(errno)),
            }
        };
        let mut ready = [false; N];
        for event in &events[..count] {
            if let Some(flag) = ready.get_mut(event.data() as usize) {
                *flag = true;
            }
        }
        Ok(ready)
    }
}

fn seqpacket_socket() -> Result<OwnedFd, IpcError> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io_err("creating a unix socket"))
}

/// The directory a socket path lives in, which must exist: nothing creates
/// it, and a reader could otherwise wait for a socket that cannot appear.
pub fn socket_directory(path: &Path) -> Result<&Path, IpcError> {
    let directory = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if directory.is_dir() {
        Ok(directory)
    } else {
        Err(IpcError::NoDirectory(path.to_owned()))
    }
}

/// The writer's listening socket. The socket file is removed on drop.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    inode: (u64, u64),
}

impl Listener {
    /// Binds `path` with file mode `mode`. A stale socket file with nobody
    /// behind it is replaced; a live one is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, IpcError> {
        let directory = socket_directory(path)?;
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(IpcError::NotASocket(path.to_owned()));
            }
            match Connection::connect(path) {
                Ok(_) | Err(ConnectError::BacklogFull) => return Err(IpcError::InUse(path.to_owned())),
                Err(ConnectError::NoListener) => {}
                Err(ConnectError::Other(err)) => return Err(err),
            }
        }
        // Bind under a private name, set the mode, then rename into place,
        // so that the socket is never reachable with the wrong permissions.
        let file_name = path.file_name().ok_or_else(|| IpcError::NoDirectory(path.to_owned()))?;
        let staging = directory.join(staging_name(file_name));
        let _ = std::fs::remove_file(&staging);
        let fd = seqpacket_socket()?;
        let addr = UnixAddr::new(&staging).map_err(io_err("building the socket address"))?;
        bind(fd.as_raw_fd(), &addr).map_err(io_err("binding the socket"))?;
        // Listen before the socket appears under its name: a reader woken by
        // the rename must find it accepting, or it would see "connection
        // refused", take the socket for a stale one, and wait for a change
        // in the directory that never comes. The queue is as long as the
        // system allows: up to 31 readers started before the writer all
        // knock at once, and each one the queue cannot hold has to retry.
        let listening = listen(&fd, Backlog::MAXCONN).map_err(std::io::Error::from);
        let placed = listening
            .and_then(|()| std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)))
            .and_then(|()| std::fs::rename(&staging, path));
        if let Err(source) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(IpcError::Io {
                context: "placing the socket file",
                source,
            });
        }
        let metadata = std::fs::symlink_metadata(path).map_err(|source| IpcError::Io {
            context: "reading the socket file",
            source,
        })?;
        Ok(Self {
            fd,
            path: path.to_owned(),
            inode: (metadata.dev(), metadata.ino()),
        })
    }

    /// A pending reader, if one is waiting.
    pub fn accept(&self) -> Result<Option<Connection>, IpcError> {
        match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            Ok(fd) => Ok(Some(Connection {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })),
            Err(Errno::EAGAIN | Errno::ECONNABORTED | Errno::EINTR) => Ok(None),
            Err(errno) => Err(io_err("accepting a reader")(errno)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells whoever watches the socket's directory that what the stream
    /// carries changed, so that a device provider asks again: the file's
    /// times are set to now, which inotify reports as IN_ATTRIB.
    pub fn announce_change(&self) -> Result<(), IpcError> {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        utimensat(
            nix::fcntl::AT_FDCWD,
            &self.path,
            &TimeSpec::UTIME_NOW,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err("touching the socket file"))
    }
}

/// The name a socket is bound under before it is renamed to `file_name`.
fn staging_name(file_name: &OsStr) -> OsString {
    let mut name = file_name.to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    name
}

/// Whether `name` is a socket file on its way in, bound under its private
/// name (see [`Listener::bind`]): something watching the directory waits
/// for the rename instead.
pub fn is_staging_name(name: &OsStr) -> bool {
    let Some(rest) = name.as_bytes().strip_suffix(b".tmp") else {
        return false;
    };
    match rest.iter().rposition(|&byte| byte == b'.') {
        Some(dot) => dot > 0 && dot + 1 < rest.len() && rest[dot + 1..].iter().all(u8::is_ascii_digit),
        None => false,
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the file only if it is still ours, not a newer sink's.
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && (metadata.dev(), metadata.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The mode and owner of the socket file at `path`, next to who we are, for
/// a permission error.
fn describe_owner(path: &Path) -> String {
    let ours = nix::unistd::geteuid();
    match std::fs::metadata(path) {
        Ok(metadata) => format!(
            "mode {:04o}, owned by uid {} gid {}; this process runs as uid {ours}",
            metadata.mode() & 0o7777,
            metadata.uid(),
            metadata.gid()
        ),
        Err(err) => format!("{err}; this process runs as uid {ours}"),
    }
}

/// Why a reader could not connect.
#[derive(Debug)]
pub enum ConnectError {
    /// No socket file, or a stale one: wait for a writer.
    NoListener,
    /// A writer listens, but its queue of connections not yet accepted is
    /// full: try again shortly. Its socket file exists already, so waiting
    /// for the file to appear would wait forever.
    BacklogFull,
    Other(IpcError),
}

/// One end of an established control connection.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
}

impl Connection {
    pub fn connect(path: &Path) -> Result<Self, ConnectError> {
        let fd = seqpacket_socket().map_err(ConnectError::Other)?;
        let addr = UnixAddr::new(path).map_err(|errno| ConnectError::Other(io_err("socket address")(errno)))?;
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => return Ok(Self { fd }),
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Err(ConnectError::NoListener),
                Err(Errno::EAGAIN) => return Err(ConnectError::BacklogFull),
                Err(Errno::EACCES | Errno::EPERM) => {
                    return Err(ConnectError::Other(IpcError::PermissionDenied {
                        path: path.to_owned(),
                        owner: describe_owner(path),
                    }));
                }
                Err(errno) => return Err(ConnectError::Other(io_err("connecting to the writer")(errno))),
            }
        }
    }

    pub fn send_client_hello(&self, purpose: HelloPurpose) -> Result<(), IpcError> {
        let mut message = [0u8; CLIENT_HELLO_LEN];
        message[0..8].copy_from_slice(&CLIENT_MAGIC);
        message[8..12].copy_from_slice(&PROTOCOL_VERSION.to_ne_bytes());
        let purpose: u32 = match purpose {
            HelloPurpose::Reader => 0,
            HelloPurpose::Probe => 1,
        };
        message[12..16].copy_from_slice(&purpose.to_ne_bytes());
        self.send(&message, &[])
    }

    /// The peer's hello, once it has arrived: `Ok(None)` means not yet.
    /// Returns the peer's protocol version and why it connected. The purpose
    /// of a peer of another version is not read: it is refused either way.
    pub fn recv_client_hello(&self) -> Result<Option<(u32, HelloPurpose)>, IpcError> {
        let mut message = [0u8; CLIENT_HELLO_LEN];
        let len = match recv(self.fd.as_raw_fd(), &mut message, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(IpcError::PeerGone),
            Ok(len) => len,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::ECONNRESET) => return Err(IpcError::PeerGone),
            Err(errno) => return Err(io_err("receiving the reader's hello")(errno)),
        };
        if len < 12 || message[0..8] != CLIENT_MAGIC {
            return Err(IpcError::NotShmring);
        }
        let u32_at = |at: usize| u32::from_ne_bytes([message[at], message[at + 1], message[at + 2], message[at + 3]]);
        let version = u32_at(8);
        if version != PROTOCOL_VERSION {
            return Ok(Some((version, HelloPurpose::Reader)));
        }
        if len != CLIENT_HELLO_LEN {
            return Err(IpcError::Malformed("the reader's hello has the wrong size"));
        }
        let purpose = match u32_at(12) {
            0 => HelloPurpose::Reader,
            1 => HelloPurpose::Probe,
            _ => return Err(IpcError::Malformed("unknown hello purpose")),
        };
        Ok(Some((version, purpose)))
    }

    pub fn send_server_hello(&self, hello: &ServerHello, fds: Option<ChannelFds<'_>>) -> Result<(), IpcError> {
        let mut message = [0u8; SERVER_HELLO_LEN];
        message[0..8].copy_from_slice(&SERVER_MAGIC);
        message[8..12].copy_from_slice(&hello.version.to_ne_bytes());
        let status: u32 = match hello.status {
            HelloStatus::Accepted => 0,
            HelloStatus::VersionMismatch => 1,
            HelloStatus::Busy => 2,
        };
        message[12..16].copy_from_slice(&status.to_ne_bytes());
        message[16..24].copy_from_slice(&hello.sizes.record_capacity.to_ne_bytes());
        message[24..32].copy_from_slice(&hello.sizes.release_slots.to_ne_bytes());
        message[32..40].copy_from_slice(&hello.sizes.heap_size.to_ne_bytes());
        message[40..44].copy_from_slice(&hello.reader_slot.to_ne_bytes());
        match fds {
            Some(fds) => {
                let raw = [
                    fds.channel.as_raw_fd(),
                    fds.heap.as_raw_fd(),
                    fds.data_ready.as_raw_fd(),
                    fds.space_ready.as_raw_fd(),
                    fds.release_ready.as_raw_fd(),
                ];
                self.send(&message, &raw)
            }
            None => self.send(&message, &[]),
        }
    }

    /// The writer's hello and the fds that came with it, once it has
    /// arrived: `Ok(None)` means not yet. A version mismatch or a busy
    /// writer is reported as an error.
    pub fn recv_server_hello(&self) -> Result<Option<(ServerHello, Vec<OwnedFd>)>, IpcError> {
        let mut message = [0u8; SERVER_HELLO_LEN];
        let Some(Received { len, truncated, fds }) = self.receive(&mut message, "receiving the writer's hello")? else {
            return Ok(None);
        };
        let version = check_server_header(&message[..len])?;
        let u32_at = |at: usize| u32::from_ne_bytes([message[at], message[at + 1], message[at + 2], message[at + 3]]);
        if len != SERVER_HELLO_LEN || truncated {
            return Err(IpcError::Malformed("the writer's hello has the wrong size"));
        }
        let status = match u32_at(12) {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::VersionMismatch,
            2 => HelloStatus::Busy,
            _ => return Err(IpcError::Malformed("unknown hello status")),
        };
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&message[at..at + 8]);
            u64::from_ne_bytes(bytes)
        };
        let hello = ServerHello {
            version,
            status,
            sizes: ChannelSizes {
                record_capacity: u64_at(16),
                release_slots: u64_at(24),
                heap_size: u64_at(32),
            },
            reader_slot: u32_at(40),
        };
        Ok(Some((hello, fds)))
    }

    /// The peer's process as the kernel recorded it when the connection was
    /// made (SO_PEERCRED), for messages that name a misbehaving peer.
    pub fn peer_credentials(&self) -> Option<UnixCredentials> {
        getsockopt(&self.fd, sockopt::PeerCredentials).ok()
    }

    /// "pid 1234, uid 1000", or "pid unknown" where the kernel cannot tell.
    pub fn peer_description(&self) -> String {
        match self.peer_credentials() {
            Some(credentials) => format!("pid {}, uid {}", credentials.pid(), credentials.uid()),
            None => "pid unknown".to_owned(),
        }
    }

    /// Whether the peer is gone: it closed the socket or shut its side.
    /// Asked of the kernel with a poll, not a read, so that messages
    /// waiting on the socket are left to the thread that reads them.
    pub fn peer_gone(&self) -> bool {
        hung_up(self.fd.as_fd())
    }

    /// Sends one message after the handshake, with `fds` attached, without
    /// waiting: `Ok(false)` if the socket's buffer is full.
    pub fn send_message_with_fds(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> Result<bool, IpcError> {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        match self.send(message, &raw) {
            Ok(()) => Ok(true),
            Err(IpcError::Io { source, .. }) if source.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Ends this side's half of the connection, as a writer that lets a
    /// reader go: the peer sees a hang-up once it has read what it had,
    /// while this side still sees the peer's own hang-up when it closes.
    pub fn shut_out(&self) {
        // Fails only on a socket that is already disconnected, which is
        // the aim.
        let _ = shutdown(self.fd.as_raw_fd(), Shutdown::Write);
    }

    /// Another handle on the same connection, for a thread that reads its
    /// messages while this one watches it.
    pub fn try_clone(&self) -> Result<Self, IpcError> {
        let fd = self.fd.try_clone().map_err(|source| IpcError::Io {
            context: "duplicating the control socket",
            source,
        })?;
        Ok(Self { fd })
    }

    /// Sends one message after the handshake without waiting: `Ok(false)`
    /// if the socket's buffer is full, because the peer does not read, and
    /// the message was not sent.
    pub fn send_message(&self, message: &[u8]) -> Result<bool, IpcError> {
        loop {
            match nix::sys::socket::send(
                self.fd.as_raw_fd(),
                message,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(IpcError::PeerGone),
                Err(errno) => return Err(io_err("sending a control message")(errno)),
            }
        }
    }

    /// Takes the next message waiting on the socket into `buffer`, without
    /// waiting: `Ok(None)` if there is none. A message longer than the
    /// buffer is cut short, which the returned [`Received`] says; fds sent
    /// with it are returned, to be closed by whoever does not want them.
    pub fn recv_message(&self, buffer: &mut [u8]) -> Result<Option<Received>, IpcError> {
        self.receive(buffer, "receiving a control message")
    }

    /// One datagram into `buffer`, with the fds it carried, without
    /// waiting. A closed or reset peer is [`IpcError::PeerGone`], also for
    /// a writer that died with our connection still in its listen queue.
    fn receive(&self, buffer: &mut [u8], context: &'static str) -> Result<Option<Received>, IpcError> {
        let mut control = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [io::IoSliceMut::new(buffer)];
        loop {
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(received) => {
                    let mut fds = Vec::new();
                    for cmsg in received.cmsgs().map_err(io_err("reading control messages"))? {
                        if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
                            // SAFETY: the kernel just installed these fds in
                            // our table for us alone; wrapping each in an
                            // OwnedFd at once means every one is closed,
                            // even the ones nobody wants.
                            fds.extend(raw_fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    if received.bytes == 0 {
                        return Err(IpcError::PeerGone);
                    }
                    return Ok(Some(Received {
                        len: received.bytes,
                        truncated: received.flags.intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC),
                        fds,
                    }));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::ECONNRESET) => return Err(IpcError::PeerGone),
                Err(errno) => return Err(io_err(context)(errno)),
            }
        }
    }

    fn send(&self, message: &[u8], fds: &[RawFd]) -> Result<(), IpcError> {
        let iov = [io::IoSlice::new(message)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(IpcError::PeerGone),
                Err(errno) => return Err(io_err("sending a handshake message")(errno)),
            }
        }
    }
}

/// One message taken off the socket by [`Connection::recv_message`].
#[derive(Debug)]
pub struct Received {
    /// Bytes of it in the caller's buffer.
    pub len: usize,
    /// It was longer than the buffer, or its fds did not all fit.
    pub truncated: bool,
    pub fds: Vec<OwnedFd>,
}

/// Checks the magic and version that start every message a writer sends
/// during the handshake (a hello or a probe answer), and returns the
/// version: the same bytes in every version, so that two builds that
/// disagree can say so.
fn check_server_header(message: &[u8]) -> Result<u32, IpcError> {
    let (Some(magic), Some(version)) = (message.get(0..8), message.get(8..12)) else {
        return Err(IpcError::NotShmring);
    };
    if magic != SERVER_MAGIC {
        return Err(IpcError::NotShmring);
    }
    let version = u32::from_ne_bytes([version[0], version[1], version[2], version[3]]);
    if version != PROTOCOL_VERSION {
        return Err(IpcError::VersionMismatch {
            peer: version,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(version)
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Watches the directory of a socket path, so a reader can sleep until a
/// writer creates the socket instead of polling the file system.
pub struct ListenerWatch {
    inotify: Inotify,
}

impl ListenerWatch {
    pub fn new(path: &Path) -> Result<Self, IpcError> {
        let directory = socket_directory(path)?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(io_err("inotify_init"))?;
        inotify
            .add_watch(
                directory,
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ATTRIB,
            )
            .map_err(io_err("watching the socket directory"))?;
        Ok(Self { inotify })
    }

    /// Forgets the events seen so far, after a wake-up.
    pub fn drain(&self) {
        while self.inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
    }
}

impl AsFd for ListenerWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

/// Longest pause between two attempts on a writer whose listen queue is
/// full: it drains the queue at its next buffer, or at once while it waits
/// for readers.
const BACKLOG_RETRY_MAX_MS: u16 = 64;

/// The reader's side of the handshake: sleeps until a writer listens at
/// `path`, connects, and attaches to the ring it sends after checking every
/// part of it. Returns `Ok(None)` as soon as one of `interrupts` becomes
/// readable.
pub fn connect_reader(
    path: &Path,
    interrupts: &[BorrowedFd<'_>],
) -> Result<Option<(Connection, ReaderChannel)>, IpcError> {
    // The directory is watched only once a first attempt finds no writer,
    // and then tried again before sleeping, so no creation is missed.
    let mut watch: Option<ListenerWatch> = None;
    let mut retry_ms: u16 = 1;
    loop {
        let connection = match Connection::connect(path) {
            Ok(connection) => connection,
            Err(ConnectError::NoListener) => {
                match &watch {
                    None => watch = Some(ListenerWatch::new(path)?),
                    Some(watch) => {
                        let mut fds = vec![watch.as_fd()];
                        fds.extend_from_slice(interrupts);
                        if wait_readable_any(&fds)?[1..].contains(&true) {
                            return Ok(None);
                        }
                        watch.drain();
                    }
                }
                continue;
            }
            Err(ConnectError::BacklogFull) => {
                // Nothing announces room in another process's listen
                // queue, so this one wait is on a timer.
                if wait_readable_for(interrupts, PollTimeout::from(retry_ms))?.contains(&true) {
                    return Ok(None);
                }
                retry_ms = (retry_ms * 2).min(BACKLOG_RETRY_MAX_MS);
                continue;
            }
            Err(ConnectError::Other(err)) => return Err(err),
        };
        if let Some(watch) = watch.take() {
            // Closing an inotify fd waits for the kernel to retire the watch,
            // which took 6-14 ms here: do it off the caller's thread, which
            // is about to stream. Should the thread fail to start, the watch
            // is simply closed here.
            let _ = std::thread::Builder::new()
                .name("shmring-unwatch".into())
                .spawn(move || drop(watch));
        }
        match connection.send_client_hello(HelloPurpose::Reader) {
            // A writer that turns us away (max-readers) may answer and close
            // before our hello reaches it, and the send then finds the peer
            // gone; its answer is still queued for us, so read on. A writer
            // that closed without answering leaves nothing, and the read
            // below says that the peer is gone.
            Ok(()) | Err(IpcError::PeerGone) => {}
            Err(err) => return Err(err),
        }
        let (hello, fds) = loop {
            match connection.recv_server_hello() {
                Ok(Some(reply)) => break reply,
                Ok(None) => {
                    let mut fds = vec![connection.as_fd()];
                    fds.extend_from_slice(interrupts);
                    if wait_readable_any(&fds)?[1..].contains(&true) {
                        return Ok(None);
                    }
                }
                Err(err) => return Err(err),
            }
        };
        match hello.status {
            HelloStatus::Accepted => {}
            HelloStatus::Busy => return Err(IpcError::Busy(path.to_owned(), hello.reader_slot)),
            HelloStatus::VersionMismatch => {
                return Err(IpcError::VersionMismatch {
                    peer: hello.version,
                    ours: PROTOCOL_VERSION,
                });
            }
        }
        // The slot only tells which holder bit the writer keeps for us.
        if hello.reader_slot >= crate::ring::MAX_READERS {
            return Err(IpcError::Malformed(
                "the writer assigned a reader slot beyond the 31 this protocol version has",
            ));
        }
        let Ok([channel, heap, data_ready, space_ready, release_ready]) = <[OwnedFd; 5]>::try_from(fds) else {
            return Err(IpcError::Malformed("the writer's hello did not carry exactly five fds"));
        };
        let fds = ReceivedFds {
            channel,
            heap,
            data_ready,
            space_ready,
            release_ready,
        };
        let reader = ReaderChannel::attach(fds, hello.sizes)?;
        return Ok(Some((connection, reader)));
    }
}

/// The writer's side of the handshake on a freshly accepted connection:
/// waits for the reader's hello, then answers it (see [`answer_hello`]).
/// Returns `Ok(None)` as soon as `interrupt` becomes readable. A caps probe
/// is answered without caps, which this layer does not know, and fails with
/// [`IpcError::Probed`]: the caller accepts the next connection.
pub fn serve_reader(
    connection: &Connection,
    sizes: ChannelSizes,
    heap: &HeapMemory,
    interrupt: BorrowedFd<'_>,
) -> Result<Option<WriterChannel>, IpcError> {
    loop {
        match connection.recv_client_hello()? {
            Some((_, HelloPurpose::Probe)) => {
                probe::answer(connection, None)?;
                return Err(IpcError::Probed);
            }
            Some((version, HelloPurpose::Reader)) => {
                return answer_hello(connection, version, sizes, heap, 0).map(Some);
            }
            None => {}
        }
        if wait_readable([connection.as_fd(), interrupt])?[1] {
            return Ok(None);
        }
    }
}

/// Answers a reader's hello: refuses another protocol version, or creates a
/// channel of `sizes` and hands it over with the heap, naming the holder
/// slot `reader_slot` the writer keeps for this reader.
pub fn answer_hello(
    connection: &Connection,
    version: u32,
    sizes: ChannelSizes,
    heap: &HeapMemory,
    reader_slot: u32,
) -> Result<WriterChannel, IpcError> {
    if version != PROTOCOL_VERSION {
        let _ = connection.send_server_hello(&ServerHello::refusal(HelloStatus::VersionMismatch), None);
        return Err(IpcError::VersionMismatch {
            peer: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let channel = WriterChannel::create(sizes)?;
    let hello = ServerHello {
        version: PROTOCOL_VERSION,
        status: HelloStatus::Accepted,
        sizes,
        reader_slot,
    };
    connection.send_server_hello(&hello, Some(channel.fds(heap)))?;
    Ok(channel)
}

/// Like [`wait_readable`], for a number of fds known only at run time.
pub fn wait_readable_any(fds: &[BorrowedFd<'_>]) -> Result<Vec<bool>, IpcError> {
    wait_readable_for(fds, PollTimeout::NONE)
}

/// Whether `fd` is readable now, without waiting.
pub fn readable_now(fd: BorrowedFd<'_>) -> Result<bool, IpcError> {
    Ok(wait_readable_for(&[fd], PollTimeout::ZERO)?[0])
}

/// Like [`wait_readable_any`], giving up after `timeout`: then no fd is
/// marked ready.
pub fn wait_readable_for(fds: &[BorrowedFd<'_>], timeout: PollTimeout) -> Result<Vec<bool>, IpcError> {
    let fds: Vec<_> = fds.iter().map(|fd| (*fd, Interest::Readable)).collect();
    wait_for(&fds, timeout)
}

/// Whether the peer of the socket `fd` closed it or shut its side, asked
/// without reading (see [`Interest::HangUp`]).
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    wait_for(&[(fd, Interest::HangUp)], PollTimeout::ZERO).map_or(true, |ready| ready[0])
}

/// What [`wait_for`] waits for on one fd.
#[derive(Debug, Clone, Copy)]
pub enum Interest {
    Readable,
    /// The peer shut or closed a socket; messages waiting on it do not
    /// count (see [`Trigger::HangUp`]).
    HangUp,
}

/// Sleeps until one of `fds` shows what it is watched for, or `timeout`
/// passes. Returns which did.
pub fn wait_for(fds: &[(BorrowedFd<'_>, Interest)], timeout: PollTimeout) -> Result<Vec<bool>, IpcError> {
    use nix::libc;
    // nix's PollFlags has no POLLRDHUP, and its `revents` gives up on a
    // bit it does not know, so this poll is made directly.
    let mut poll_fds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, interest)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: match interest {
                Interest::Readable => libc::POLLIN,
                Interest::HangUp => libc::POLLRDHUP,
            },
            revents: 0,
        })
        .collect();
    let timeout = i32::from(timeout);
    loop {
        // SAFETY: `poll_fds` is a live, exclusively borrowed array of
        // `poll_fds.len()` pollfd structs, which poll only reads and writes
        // within; every fd in it is borrowed from `fds`, so it stays open
        // for the call.
        let ready = unsafe { libc::poll(poll_fds.as_mut_ptr(), poll_fds.len() as libc::nfds_t, timeout) };
        if ready >= 0 {
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            errno => return Err(io_err("poll")(errno)),
        }
    }
    Ok(poll_fds.iter().map(|fd| fd.revents != 0).collect())
}

/// Tells a reader that connected while the writer already serves
/// `max_readers` readers that it has to go; its `connect_reader` then fails
/// with [`IpcError::Busy`], which names the limit.
pub fn refuse_busy(connection: &Connection, max_readers: u32) {
    // Closing a unix socket with unread data resets it, and the reset would
    // overtake our reply: read the reader's hello first.
    let _ = connection.recv_client_hello();
    let mut hello = ServerHello::refusal(HelloStatus::Busy);
    hello.reader_slot = max_readers;
    let _ = connection.send_server_hello(&hello, None);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An empty directory of this test process's own, for sockets.
    pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("shmring-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A writer at its max-readers limit answers a new reader at once, and
    /// may close before the reader's hello arrives: the reader still reads
    /// the refusal, which names the limit, rather than "the peer closed the
    /// control socket".
    #[test]
    fn a_refusal_sent_before_the_readers_hello_still_reaches_it() {
        let directory = scratch("refusal");
        let path = directory.join("socket");
        let listener = Listener::bind(&path, 0o600).unwrap();
        let reader = match Connection::connect(&path) {
            Ok(connection) => connection,
            Err(_) => panic!("connecting to a listening writer"),
        };
        let writer = listener.accept().unwrap().expect("the reader is pending");
        // The writer's side, before the reader has said anything.
        refuse_busy(&writer, 16);
        drop(writer);
        assert!(
            matches!(reader.send_client_hello(HelloPurpose::Reader), Err(IpcError::PeerGone)),
            "the writer has closed"
        );
        let (hello, _) = reader.recv_server_hello().unwrap().expect("the refusal is queued");
        assert_eq!((hello.status, hello.reader_slot), (HelloStatus::Busy, 16));
        drop(listener);
        let _ = std::fs::remove_dir_all(&directory);
    }
}
