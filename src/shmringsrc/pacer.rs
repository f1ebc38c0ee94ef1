//! Waking the reader just before the writer's next record is due.
//!
//! A reader that keeps up with a steady stream (video frames every few
//! hundred microseconds) finds the queue empty after every record and
//! sleeps. The writer then wakes it for every record, and on a VM that
//! eventfd write, which has to wake a sleeping CPU, costs the writer's
//! streaming thread 15-20 µs: several percent of a 1080p frame's time.
//!
//! So the reader learns the gap between records and, before it sleeps,
//! arms a timer for a little before the next one is due. When the timer
//! fires the reader is awake again (its sleep sequence even), and watches
//! the queue for a short window: a record that arrives in the window is
//! found without the writer making any system call. A late record is
//! simply waited for as before. The timer only ever adds a wake-up: the
//! protocol that guarantees none is lost is unchanged.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// How early the timer fires, and half the window the reader then watches:
/// a timer on a VM fires tens of microseconds late. Measured here with
/// 1080p frames every 270 µs, 40 µs still left 60% of the wake-ups to the
/// writer and 80 µs about 5%.
const MARGIN: Duration = Duration::from_micros(80);
/// Gaps shorter than this are covered by the spin before every sleep.
const MIN_GAP: Duration = Duration::from_micros(100);
/// Past this a wake-up costs the writer a few percent of the gap at most,
/// less than the window costs the reader: the reader just sleeps. Measured
/// with live 64-sample audio (1.33 ms gaps, benches/fanout.rs): paced, the
/// writer still woke the reader for 84-88% of buffers (the timer's own
/// jitter) while each reader spent 80-100 µs of CPU per buffer watching;
/// unpaced, 35-48 µs.
const MAX_GAP: Duration = Duration::from_micros(500);

pub(super) struct Pacer {
    timer: TimerFd,
    /// When the last record arrived after the queue had been empty.
    last: Option<Instant>,
    /// The usual gap between such arrivals; zero until one is seen.
    gap: Duration,
}

impl Pacer {
    pub(super) fn new() -> nix::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )?;
        Ok(Self {
            timer,
            last: None,
            gap: Duration::ZERO,
        })
    }

    /// Readable when the timer fired; watch it edge-triggered, since every
    /// arming resets it.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }

    /// A record arrived after the queue had been empty.
    pub(super) fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            // A moving average, so one late frame does not throw it off.
            self.gap = if self.gap.is_zero() {
                gap
            } else {
                (self.gap * 3 + gap) / 4
            };
        }
        self.last = Some(now);
    }

    /// Arms the timer for a little before the next record is due, if the
    /// stream is steady enough to guess. Returns whether it did.
    pub(super) fn arm(&mut self, now: Instant) -> bool {
        let Some(last) = self.last else {
            return false;
        };
        if !(MIN_GAP..=MAX_GAP).contains(&self.gap) {
            return false;
        }
        let due = last + self.gap - MARGIN;
        let Some(delay) = due.checked_duration_since(now).filter(|delay| !delay.is_zero()) else {
            return false;
        };
        let delay = TimeSpec::from_duration(delay);
        self.timer
            .set(Expiration::OneShot(delay), TimerSetTimeFlags::empty())
            .is_ok()
    }

    /// Stops an armed timer from firing.
    pub(super) fn disarm(&self) {
        let _ = self.timer.unset();
    }

    /// How long to watch the queue once the timer fired.
    pub(super) fn window(&self) -> Duration {
        2 * MARGIN
    }
}
