//! `shmringsink`: writes a stream into a shared-memory ring that a
//! `shmringsrc` in another process reads.
//!
//! # Many readers
//!
//! The sink serves up to `max-readers` readers, each with a channel of its
//! own (record queue, release queue, eventfds) onto one heap. Invariants:
//!
//! 1. A payload is in the heap once: a block held by the holder bit of
//!    every reader it is sent to (and by `WRITER` while upstream's buffer
//!    wraps it). A reader's bit is set before the record naming the block is
//!    published, and a record that is not sent has its bit cleared before
//!    any reader could see it.
//! 2. The writer writes only into blocks no reader holds: freshly allocated
//!    ones, or upstream's before they are sent. So no mode, `drop`
//!    included, ever changes memory a reader may still read; `drop` only
//!    stops giving a lagging reader new blocks (it holds at most its share
//!    of the heap, `size / (readers + 1)`).
//! 3. Records reach each reader in stream order. In `drop` mode, caps and
//!    events a reader could not take wait in its backlog and go before
//!    anything else; dropped buffers are announced by a Lost record before
//!    its next buffer, which then is not a delta unit.
//! 4. A reader that leaves is forgotten alone, and its blocks come back;
//!    nothing waits for it except, in `block` mode, a write to it.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod heap;
mod imp;
mod pool;
mod readers;
mod upstream;
mod watch;

/// The element's debug category, here so that every part of the element
/// takes it from above rather than from one another.
static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsink",
        gst::DebugColorFlags::empty(),
        Some("Shared-memory ring sink"),
    )
});

glib::wrapper! {
    pub struct ShmRingSink(ObjectSubclass<imp::ShmRingSink>) @extends gst_base::BaseSink, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "shmringsink", gst::Rank::NONE, ShmRingSink::static_type())
}
