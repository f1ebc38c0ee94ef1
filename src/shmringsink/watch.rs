//! The sockets a `shmringsink` must look at now and then, turned into a flag
//! that render reads with one load per buffer: the listening socket (a
//! reader knocks), connections waiting to say hello, and the linked
//! readers' sockets (a reader hung up: its process is gone). Without it,
//! render would ask the kernel, or at least the clock, on every buffer.
//!
//! A thread sleeps in `epoll_wait` on those sockets, each registered
//! one-shot, and raises `attention` when any becomes ready. Render clears
//! the flag, looks at every socket, and only then re-arms them.
//!
//! Invariants, which together lose no event:
//!
//! 1. Every socket is registered one-shot, and re-armed only by
//!    `rearm`, which render calls after `take_attention` and after it
//!    looked at every socket. A registration that fired is disarmed until
//!    then, so the thread never spins on a socket that stays ready.
//! 2. `rearm` modifies a level-triggered registration: a socket still (or
//!    newly) ready when it is re-armed fires again at once. So an event
//!    that came between render's look and the re-arm raises `attention`
//!    again instead of being lost.
//! 3. `attention` starts raised, so that the first render looks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::ring::Notifier;

/// The `epoll` data of the stop eventfd; sockets carry their fd number,
/// which is never this.
const STOP: u64 = u64::MAX;

struct Shared {
    epoll: Epoll,
    attention: AtomicBool,
    stop: Notifier,
}

pub(super) struct Watch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What readiness of a socket means here.
#[derive(Clone, Copy)]
pub(super) enum Interest {
    /// Readable: a connection to accept, or a hello to read. A hang-up
    /// reports itself too.
    Readable,
    /// Only a hang-up: what a linked reader sends on its socket is not
    /// render's business.
    HangUp,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        let base = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        match self {
            Interest::Readable => base | EpollFlags::EPOLLIN,
            Interest::HangUp => base,
        }
    }
}

impl Watch {
    pub(super) fn new() -> nix::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let stop = Notifier::new().map_err(|_| Errno::EMFILE)?;
        epoll.add(stop.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        let shared = Arc::new(Shared {
            epoll,
            attention: AtomicBool::new(true),
            stop,
        });
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shmringsink-watch".into())
            .spawn(move || watch(&watched))
            .map_err(|_| Errno::EAGAIN)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether a socket became ready since the last `take_attention`,
    /// leaving the flag as it is.
    pub(super) fn attention_pending(&self) -> bool {
        self.shared.attention.load(Ordering::Relaxed)
    }

    /// Whether a socket became ready since the last call. Clears the flag:
    /// the caller then looks at every socket, and calls `rearm` for each.
    pub(super) fn take_attention(&self) -> bool {
        // Acquire pairs with the thread's Release store; a plain load first
        // keeps the common case (nothing happened) to one read of a line
        // that stays in this core's cache.
        self.shared.attention.load(Ordering::Relaxed) && self.shared.attention.swap(false, Ordering::Acquire)
    }

    /// Watches `fd` for `interest` again, or for the first time.
    pub(super) fn rearm(&self, fd: BorrowedFd<'_>, interest: Interest) {
        let mut event = EpollEvent::new(interest.flags(), fd.as_raw_fd() as u64);
        if self.shared.epoll.modify(fd, &mut event) == Err(Errno::ENOENT) {
            // A failure leaves the socket unwatched: it is still looked at
            // whenever another one wakes render, and at every wait.
            let _ = self.shared.epoll.add(fd, event);
        }
    }

    /// Stops watching `fd`, before it is closed.
    pub(super) fn forget(&self, fd: BorrowedFd<'_>) {
        let _ = self.shared.epoll.delete(fd);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.stop.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared) {
    let mut events = [EpollEvent::empty(); 8];
    loop {
        let ready = match shared.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(ready) => ready,
            Err(Errno::EINTR) => continue,
            // Nothing to watch with: render then never hears of new readers
            // or hang-ups but through its waits, as before this thread.
            Err(_) => return,
        };
        if events[..ready].iter().any(|event| event.data() == STOP) {
            return;
        }
        if ready > 0 {
            shared.attention.store(true, Ordering::Release);
        }
    }
}
