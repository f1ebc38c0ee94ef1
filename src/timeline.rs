//! One timeline across processes.
//!
//! Each pipeline has its own running time: a buffer's running time plus the
//! pipeline's base time is the clock time at which it is due. When both
//! pipelines' clocks run on CLOCK_MONOTONIC (GstSystemClock's default), that
//! clock time means the same instant in every process. So the writer tells
//! the reader its base time, as a CLOCK_MONOTONIC time, and the reader turns
//! each buffer's running time in the writer's pipeline into a running time in
//! its own:
//!
//! ```text
//! reader running time = writer base (monotonic) + writer running time
//!                     - reader base (monotonic)
//! ```
//!
//! A clock that is not CLOCK_MONOTONIC (a realtime system clock, a network
//! clock) is handled by measuring its offset from CLOCK_MONOTONIC when the
//! base time is converted; this holds while that clock runs at the
//! monotonic clock's rate, which is what slaved network clocks aim at.
//!
//! The writer sends its timeline as a custom downstream event (see
//! [`TIMELINE_EVENT`] and PROTOCOL.md), whenever its base time changes and
//! to every new reader; the reader keeps it to itself.

use nix::time::{ClockId, clock_gettime};

/// The structure name of the timeline event.
pub const TIMELINE_EVENT: &str = "shmring/timeline";

/// What the writer's pipeline says about time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// The writer's base time, as a CLOCK_MONOTONIC time.
    pub base_monotonic: u64,
    /// The latency upstream of the writer (from its latency query), where
    /// upstream is live.
    pub upstream_latency: Option<gst::ClockTime>,
}

impl Timeline {
    /// The writer's timeline now, if its pipeline is running with a clock.
    pub fn of(element: &gst::Element, upstream_latency: Option<gst::ClockTime>) -> Option<Self> {
        use gst::prelude::*;
        let clock = element.clock()?;
        let base_time = element.base_time()?;
        Some(Self {
            base_monotonic: to_monotonic(&clock, base_time)?,
            upstream_latency,
        })
    }

    pub fn to_event(self) -> gst::Event {
        let mut structure = gst::Structure::builder(TIMELINE_EVENT).field("base-monotonic", self.base_monotonic);
        if let Some(latency) = self.upstream_latency {
            structure = structure.field("upstream-latency", latency.nseconds());
        }
        gst::event::CustomDownstream::new(structure.build())
    }

    /// The timeline a writer's event carries; `None` for any other event,
    /// or one whose fields are missing.
    pub fn from_event(event: &gst::Event) -> Option<Self> {
        let structure = event.structure()?;
        if structure.name() != TIMELINE_EVENT {
            return None;
        }
        Some(Self {
            base_monotonic: structure.get::<u64>("base-monotonic").ok()?,
            upstream_latency: structure
                .get::<u64>("upstream-latency")
                .ok()
                .map(gst::ClockTime::from_nseconds),
        })
    }

    /// A running time of the writer's pipeline as a running time of the
    /// pipeline of `element`; `None` if that pipeline has no clock or base
    /// time yet, or the instant lies before its start.
    pub fn map(&self, writer_running_time: gst::ClockTime, element: &gst::Element) -> Option<gst::ClockTime> {
        use gst::prelude::*;
        let clock = element.clock()?;
        let reader_base = to_monotonic(&clock, element.base_time()?)?;
        let due = self.base_monotonic.checked_add(writer_running_time.nseconds())?;
        due.checked_sub(reader_base).map(gst::ClockTime::from_nseconds)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_now() -> Option<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    u64::try_from(now.tv_sec())
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(now.tv_nsec()).ok()?)
}

/// `time` on `clock` as a CLOCK_MONOTONIC time. Exact for a GstSystemClock
/// of type monotonic, whose time is CLOCK_MONOTONIC; for another clock, its
/// offset from CLOCK_MONOTONIC is read now.
pub fn to_monotonic(clock: &gst::Clock, time: gst::ClockTime) -> Option<u64> {
    use gst::prelude::*;
    let monotonic = monotonic_now()?;
    let clock_now = clock.time().nseconds();
    // time - (clock_now - monotonic), without leaving u64.
    (time.nseconds() as i128 - clock_now as i128 + monotonic as i128)
        .try_into()
        .ok()
}
