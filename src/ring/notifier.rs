//! The eventfds that wake a sleeping side.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::RingError;

/// One eventfd, kept non-blocking, so that neither a wake-up nor a drain
/// can block the thread that makes it.
///
/// O_NONBLOCK lives in the open file description, which the two processes
/// share: a peer can clear it, and then either saturate the counter (so our
/// write would block) or leave it at zero (so our drain would block). Every
/// write and read therefore first checks the flag and puts it back if it is
/// gone, and remembers that the peer tampered with it, so the element can
/// drop that peer with a warning. What remains is a peer that clears the
/// flag in the microsecond between our check and our write, on purpose:
/// that takes a hostile process of the same user (the socket is 0600 by
/// default), which could as well ptrace or kill us.
#[derive(Debug)]
pub struct Notifier {
    fd: EventFd,
    /// Set once O_NONBLOCK was found cleared, by whoever shares the fd.
    tampered: AtomicBool,
}

impl Notifier {
    pub fn new() -> Result<Self, RingError> {
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map(Self::wrap)
            .map_err(|err| RingError::io("creating an eventfd", err.into()))
    }

    /// Takes an fd received from a peer, after checking that it really is an
    /// eventfd, and makes it non-blocking.
    pub fn from_peer(fd: OwnedFd, role: &str) -> Result<Self, RingError> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|err| RingError::io("inspecting a received fd", err))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(RingError::Invalid(format!(
                "the {role} fd the writer sent is {}, not an eventfd",
                link.display()
            )));
        }
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|err| RingError::io("reading eventfd flags", err.into()))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags))
            .map_err(|err| RingError::io("making an eventfd non-blocking", err.into()))?;
        // SAFETY: the fd was just checked to be an eventfd.
        Ok(Self::wrap(unsafe { EventFd::from_owned_fd(fd) }))
    }

    fn wrap(fd: EventFd) -> Self {
        Self {
            fd,
            tampered: AtomicBool::new(false),
        }
    }

    /// Puts O_NONBLOCK back if someone cleared it, and notes that they did.
    /// One F_GETFL (a few hundred nanoseconds) per wake-up or drain, which
    /// the ring makes only when a side sleeps.
    fn keep_nonblocking(&self) {
        let Ok(bits) = fcntl(&self.fd, FcntlArg::F_GETFL) else {
            return;
        };
        let flags = OFlag::from_bits_truncate(bits);
        if !flags.contains(OFlag::O_NONBLOCK) {
            self.tampered.store(true, Ordering::Relaxed);
            let _ = fcntl(&self.fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK));
        }
    }

    /// Whether O_NONBLOCK was ever found cleared on this fd. Only a peer
    /// that shares the fd can clear it: our side never does.
    pub fn tampered(&self) -> bool {
        self.tampered.load(Ordering::Relaxed)
    }

    /// Wakes whoever polls this fd. A full counter (EAGAIN) already means a
    /// wake-up is pending, so it is not an error.
    pub fn notify(&self) {
        // EBADF or EINVAL cannot happen on an fd we own and checked; EAGAIN
        // is the saturated counter. Neither leaves anything to do.
        self.keep_nonblocking();
        let _ = self.fd.write(1);
    }

    /// Resets the counter after a wake-up.
    pub fn drain(&self) {
        self.keep_nonblocking();
        let _ = self.fd.read();
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
