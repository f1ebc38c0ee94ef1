//! The eventfds that wake a sleeping side.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::RingError;

/// One eventfd, made non-blocking, so a saturated counter cannot block a
/// wake-up. The flag lives in the open file description the two processes
/// share: a peer that clears it and saturates the counter can still block
/// our write. That takes a hostile process of the same user (the socket is
/// 0600 by default), which could just as well ptrace us.
#[derive(Debug)]
pub struct Notifier(
    EventFd,
    /// Under `--cfg loom`, the counter as the model checker sees it (see
    /// [`sync`](super::sync)), shared with the peer's `Notifier`.
    #[cfg(loom)]
    std::sync::Arc<super::sync::ModelEvent>,
);

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

    fn wrap(eventfd: EventFd) -> Self {
        #[cfg(not(loom))]
        let notifier = Self(eventfd);
        #[cfg(loom)]
        let notifier = Self(eventfd, Default::default());
        notifier
    }

    /// Wakes whoever polls this fd. A full counter (EAGAIN) already means a
    /// wake-up is pending, so it is not an error.
    pub fn notify(&self) {
        // EBADF or EINVAL cannot happen on an fd we own and checked; EAGAIN
        // is the saturated counter. Neither leaves anything to do.
        let _ = self.0.write(1);
        #[cfg(loom)]
        self.1.notify();
    }

    /// Resets the counter after a wake-up.
    pub fn drain(&self) {
        let _ = self.0.read();
        #[cfg(loom)]
        self.1.drain();
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(all(loom, test))]
impl Notifier {
    /// The other process's `Notifier` for the same eventfd, in a model: it
    /// shares the model counter (its own fd is a fresh eventfd that nothing
    /// polls).
    pub(crate) fn model_peer(&self) -> Self {
        let mut peer = Self::new().expect("an eventfd for a model");
        peer.1 = self.1.clone();
        peer
    }

    /// The model counter, for a model to wait on.
    pub(crate) fn model(&self) -> std::sync::Arc<super::sync::ModelEvent> {
        self.1.clone()
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
