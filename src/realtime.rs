//! Real-time scheduling of a streaming thread, when the user asks for it
//! (both elements' `realtime-priority`).
//!
//! On a busy machine a thread woken for the next buffer may wait behind
//! other runnable threads for a whole scheduler slice, milliseconds, which
//! is what sets the latency tail of live audio between processes. A
//! `SCHED_FIFO` thread runs as soon as it is woken, ahead of every normal
//! thread, which is how PipeWire's data thread keeps its tail short.
//!
//! The element calls [`Realtime::enter`] on its streaming thread for every
//! buffer. That costs a thread-local read and an atomic load, except on the
//! first buffer of a run (after `start`, or after the priority changed),
//! when it switches the calling thread to `SCHED_FIFO` with
//! `SCHED_RESET_ON_FORK` (so that no child inherits it) and remembers the
//! thread's previous policy. [`Realtime::leave`], from `stop`, puts every
//! thread it raised back: GStreamer's streaming threads come from a pool
//! and go on to run other tasks. Only a thread still in this process and
//! still at our `SCHED_FIFO` priority is put back, so a thread that has
//! ended (its id possibly reused) or that someone else rescheduled since is
//! left alone.
//!
//! The switch needs root, `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` at least as
//! high. RTKit, the D-Bus service that grants real-time priority to
//! unprivileged desktop processes, is not used: without it a refused switch
//! is reported and the thread keeps normal scheduling.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gst::prelude::*;
use nix::libc;

/// The highest `SCHED_FIFO` priority Linux offers.
pub const MAX_PRIORITY: u32 = 99;

/// The `realtime-priority` property, the same on both elements.
pub fn priority_property() -> gst::glib::ParamSpec {
    gst::glib::ParamSpecUInt::builder("realtime-priority")
        .nick("Real-time priority")
        .blurb("SCHED_FIFO priority (1-99) for the streaming thread while it runs this element, so that it runs as soon as a buffer is due even on a busy machine (a shorter latency tail for live audio); the thread gets its old scheduling back when the element stops. Needs root, CAP_SYS_NICE or a high enough RLIMIT_RTPRIO, else a warning and normal scheduling. 0: leave the scheduling alone")
        .maximum(MAX_PRIORITY)
        .mutable_playing()
        .build()
}

/// Runs are numbered across all elements, so that a pooled thread that ran
/// one element's run cannot mistake another's for it.
static RUNS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last run this thread entered.
    static ENTERED: Cell<u64> = const { Cell::new(0) };
}

/// One element's real-time setting and the threads it raised.
#[derive(Debug, Default)]
pub struct Realtime {
    priority: AtomicU32,
    run: AtomicU64,
    /// Taken only by `enter` on a new run and by `leave`, never by a
    /// property getter.
    raised: Mutex<Vec<Raised>>,
}

/// A thread we switched to `SCHED_FIFO`, and what it had before.
#[derive(Debug)]
struct Raised {
    tid: libc::pid_t,
    policy: libc::c_int,
    param: libc::sched_param,
    priority: libc::c_int,
}

/// What [`Realtime::enter`] did.
#[derive(Debug)]
pub enum Entered {
    /// Nothing to do: the same run, or no priority asked for.
    Unchanged,
    /// The thread now runs at this `SCHED_FIFO` priority.
    Raised(u32),
    /// The kernel refused; the thread keeps its scheduling.
    Refused { priority: u32, error: nix::Error },
}

impl Entered {
    /// What went wrong and what to do about it, for a refused switch.
    pub fn refusal(&self) -> Option<String> {
        let Self::Refused { priority, error } = self else {
            return None;
        };
        Some(format!(
            "could not give the streaming thread SCHED_FIFO priority {priority} ({error}), so it keeps normal scheduling. \
             Run the process as root, give it CAP_SYS_NICE, or raise its real-time limit to {priority} \
             (ulimit -r {priority}, or rtprio in /etc/security/limits.conf); or set realtime-priority=0"
        ))
    }
}

impl Realtime {
    pub fn priority(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Sets the priority (0 for none) that the next buffer's thread gets.
    pub fn set_priority(&self, priority: u32) {
        self.priority.store(priority.min(MAX_PRIORITY), Ordering::Relaxed);
        self.new_run();
    }

    fn new_run(&self) {
        self.run.store(RUNS.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// [`enter`](Self::enter) for `element`'s streaming thread: a refusal
    /// becomes a warning on its bus, a raise a line in its log. Call it
    /// with none of the element's locks held, since it posts.
    pub fn enter_for(&self, element: &gst::Element, category: gst::DebugCategory) {
        let entered = self.enter();
        if let Some(refusal) = entered.refusal() {
            gst::element_warning!(element, gst::CoreError::Thread, ["{refusal}"]);
        } else if let Entered::Raised(priority) = entered {
            gst::info!(
                category,
                obj = element,
                "the streaming thread runs at SCHED_FIFO priority {priority}"
            );
        }
    }

    /// Called on the streaming thread for every buffer: on the first of a
    /// run, gives the thread the priority asked for (or, for 0, puts back
    /// the threads raised before).
    pub fn enter(&self) -> Entered {
        let run = self.run.load(Ordering::Relaxed);
        if ENTERED.get() == run {
            return Entered::Unchanged;
        }
        ENTERED.set(run);
        let priority = self.priority();
        if priority == 0 {
            self.restore();
            return Entered::Unchanged;
        }
        // SAFETY: gettid takes nothing and cannot fail.
        let tid = unsafe { libc::gettid() };
        let mut previous = libc::sched_param { sched_priority: 0 };
        // SAFETY: `previous` is a valid sched_param for the kernel to fill;
        // pid 0 is the calling thread.
        let policy = unsafe {
            if libc::sched_getparam(0, &mut previous) != 0 {
                return Entered::Refused {
                    priority,
                    error: nix::Error::last(),
                };
            }
            libc::sched_getscheduler(0)
        };
        let wanted = libc::sched_param {
            sched_priority: priority as libc::c_int,
        };
        // SAFETY: `wanted` is a valid sched_param that outlives the call;
        // pid 0 is the calling thread.
        let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &wanted) };
        if result != 0 {
            return Entered::Refused {
                priority,
                error: nix::Error::last(),
            };
        }
        let mut raised = self.raised.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !raised.iter().any(|thread| thread.tid == tid) {
            raised.push(Raised {
                tid,
                policy,
                param: previous,
                priority: wanted.sched_priority,
            });
        }
        Entered::Raised(priority)
    }

    /// Ends the run (from `stop`): puts back every thread it raised.
    pub fn leave(&self) {
        self.new_run();
        self.restore();
    }

    fn restore(&self) {
        let raised = std::mem::take(&mut *self.raised.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for thread in raised {
            if !std::path::Path::new(&format!("/proc/self/task/{}", thread.tid)).exists() {
                continue;
            }
            let mut now = libc::sched_param { sched_priority: 0 };
            // SAFETY: `now` is a valid sched_param for the kernel to fill,
            // and `thread.param` a valid one that outlives the call; the
            // tid names a thread of this process (checked just above; at
            // worst it ended since, and the calls fail with ESRCH).
            unsafe {
                let policy = libc::sched_getscheduler(thread.tid) & !libc::SCHED_RESET_ON_FORK;
                if policy == libc::SCHED_FIFO
                    && libc::sched_getparam(thread.tid, &mut now) == 0
                    && now.sched_priority == thread.priority
                {
                    libc::sched_setscheduler(thread.tid, thread.policy, &thread.param);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of_this_thread() -> (libc::c_int, libc::c_int) {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a valid sched_param to fill, for the calling thread.
        let policy = unsafe {
            assert_eq!(libc::sched_getparam(0, &mut param), 0);
            libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK
        };
        (policy, param.sched_priority)
    }

    #[test]
    fn a_run_raises_its_thread_once_and_stop_puts_it_back() {
        std::thread::spawn(|| {
            let before = policy_of_this_thread();
            let realtime = Realtime::default();
            assert!(matches!(realtime.enter(), Entered::Unchanged), "0 asks for nothing");
            assert_eq!(policy_of_this_thread(), before);
            realtime.set_priority(5);
            match realtime.enter() {
                Entered::Raised(5) => {
                    assert_eq!(policy_of_this_thread(), (libc::SCHED_FIFO, 5));
                    assert!(matches!(realtime.enter(), Entered::Unchanged), "once a run");
                    realtime.leave();
                    assert_eq!(policy_of_this_thread(), before);
                }
                // Without the privilege (not root, no CAP_SYS_NICE or
                // RLIMIT_RTPRIO) the thread must keep what it had.
                Entered::Refused { priority: 5, error } => {
                    assert_eq!(error, nix::Error::EPERM);
                    assert_eq!(policy_of_this_thread(), before);
                }
                other => panic!("unexpected {other:?}"),
            }
        })
        .join()
        .unwrap();
    }
}
