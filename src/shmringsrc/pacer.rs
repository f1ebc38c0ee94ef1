//! Waking the reader just before the writer's next record is due.
//!
//! A reader that keeps up with a steady stream (video frames every few
//! hundred microseconds) finds the queue empty after every record and
//! sleeps. The writer then wakes it for every record, and on a VM that
//! eventfd write, which has to wake a sleeping CPU, costs the writer's
//! streaming thread 15-20 µs: several percent of a 1080p frame's time.
//!
//! So the reader learns the gap between records and, before it sleeps,
//! arms a timer that wakes it on its own CPU, where the writer's system
//! call would have had to reach across. Two uses:
//!
//! - With `busy-wait`, the timer fires a little before the next record is
//!   due, and the reader then watches the queue for a short window: a
//!   record that arrives in the window is found without the writer making
//!   any system call ([`Pacer::arm`]).
//! - Without it, for frames in heap blocks that come faster than
//!   `BRIEF_SLEEP` apart, the timer fires one frame's gap after the reader
//!   fell asleep, and the reader takes whatever arrived; the writer's batch
//!   (see `ring::wake`) stays the bound in case the timer is late
//!   ([`Pacer::arm_for_next_frame`]). A timer that comes before the frame
//!   leaves the reader to sleep on for the batch, with no timer, as it
//!   did before. The reader never spins.
//!
//! Either way a late record is simply waited for as before: the timer only
//! ever adds a wake-up, and the protocol that guarantees none is lost is
//! unchanged.

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
    /// Whether the timer may still fire: armed, and not seen firing or
    /// disarmed since.
    armed: bool,
    /// When the last record arrived after the queue had been empty.
    last: Option<Instant>,
    /// The usual gap between such arrivals; zero until one is seen.
    gap: Duration,
    /// When the reader last fell asleep without `busy-wait`, and the usual
    /// time per buffer between two such sleeps; zero until measured.
    sleep_began: Option<Instant>,
    frame_gap: Duration,
}

impl Pacer {
    pub(super) fn new() -> nix::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )?;
        Ok(Self {
            timer,
            armed: false,
            last: None,
            gap: Duration::ZERO,
            sleep_began: None,
            frame_gap: Duration::ZERO,
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
        self.arm_in(delay)
    }

    /// The reader, without `busy-wait`, is about to sleep after reading
    /// `buffers` since it last fell asleep with any read before. Learns the
    /// time per buffer from that, and if `frames` (the sleep is for frames
    /// in heap blocks, which came fast) and the gap is shorter than
    /// `longest`, arms the timer for one gap from now. Returns whether it
    /// did.
    pub(super) fn arm_for_next_frame(&mut self, now: Instant, buffers: u32, frames: bool, longest: Duration) -> bool {
        if let Some(began) = self.sleep_began
            && buffers > 0
        {
            // A sleep that lasted long (the writer paused) counts as no
            // more than `longest`, so that the estimate recovers within a
            // few sleeps once frames come fast again.
            let gap = (now.saturating_duration_since(began) / buffers).min(longest);
            self.frame_gap = if self.frame_gap.is_zero() {
                gap
            } else {
                (self.frame_gap * 3 + gap) / 4
            };
        }
        // A sleep that follows a wake-up with nothing read (the timer fired
        // before the frame) does not start a new measurement: one that
        // started there would span only the rest of the gap, and the
        // estimate would settle at half the real one.
        if buffers > 0 || self.sleep_began.is_none() {
            self.sleep_began = Some(now);
        }
        let gap = self.frame_gap;
        if frames && !gap.is_zero() && gap < longest {
            self.arm_in(gap)
        } else {
            self.disarm();
            false
        }
    }

    fn arm_in(&mut self, delay: Duration) -> bool {
        let delay = TimeSpec::from_duration(delay);
        self.armed = self
            .timer
            .set(Expiration::OneShot(delay), TimerSetTimeFlags::empty())
            .is_ok();
        self.armed
    }

    /// The timer fired: it will not again until armed.
    pub(super) fn fired(&mut self) {
        self.armed = false;
    }

    /// Stops an armed timer from firing.
    pub(super) fn disarm(&mut self) {
        if self.armed {
            self.armed = false;
            let _ = self.timer.unset();
        }
    }

    /// How long to watch the queue once the timer fired.
    pub(super) fn window(&self) -> Duration {
        2 * MARGIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_micros(500);

    /// Frames 100 µs apart, each preceded by a timer that fired 10 µs
    /// early (a sleep with nothing read): the gap learnt is still 100 µs,
    /// not the 10 µs left after the early wake-up.
    #[test]
    fn a_timer_that_fires_early_does_not_shrink_the_gap_learnt() {
        let mut pacer = Pacer::new().expect("a timerfd");
        let start = Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        pacer.arm_for_next_frame(at(0), 1, true, LONGEST);
        for frame in 1..20 {
            assert!(!pacer.arm_for_next_frame(at(frame * 100 - 10), 0, false, LONGEST));
            assert!(pacer.arm_for_next_frame(at(frame * 100), 1, true, LONGEST));
        }
        assert_eq!(pacer.frame_gap, Duration::from_micros(100));
    }

    /// A pause counts as `longest` at most, so the timer is back in use at
    /// the first sleep after it.
    #[test]
    fn a_pause_moves_the_gap_learnt_by_a_bounded_step() {
        let mut pacer = Pacer::new().expect("a timerfd");
        let start = Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        for frame in 0..20 {
            pacer.arm_for_next_frame(at(frame * 100), 1, true, LONGEST);
        }
        assert!(pacer.arm_for_next_frame(at(1_000_000), 1, true, LONGEST));
        assert_eq!(pacer.frame_gap, Duration::from_micros(200));
    }
}
