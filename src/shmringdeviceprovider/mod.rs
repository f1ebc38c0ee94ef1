//! `shmringdeviceprovider`: the named streams running in the stream
//! directory (see [`crate::address`]), listed as devices for
//! GstDeviceMonitor, each with the caps its writer streams.
//!
//! - A stream is a socket in the directory whose writer answers a caps
//!   probe (`ipc::probe`): asking costs the writer one non-blocking send,
//!   and the probe is never one of its readers.
//! - Its class follows its caps: `Video/Source` for video and images,
//!   `Audio/Source` for audio, `Source/Generic` for anything else and for a
//!   writer that has no caps yet or did not answer in time (its caps are
//!   then ANY: unknown).
//! - Once started, the provider follows the directory through inotify, and
//!   nothing else: a socket renamed into place is asked, one whose times
//!   change (its writer's caps changed) is asked again, and one removed is
//!   dropped. A writer killed with its socket left behind is seen to go
//!   through a pidfd of its process.
//! - A device makes a `shmringsrc` with `stream` set to its name.
//!
//! Rank: secondary. Monitors skip providers of rank none, and these streams
//! are not hardware: an application that ranks its inputs lists the
//! cameras and microphones (primary) first.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod device;
mod imp;
mod streams;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringdeviceprovider",
        gst::DebugColorFlags::empty(),
        Some("Lists running shmring streams as devices"),
    )
});

glib::wrapper! {
    pub struct ShmRingDeviceProvider(ObjectSubclass<imp::ShmRingDeviceProvider>) @extends gst::DeviceProvider, gst::Object;
}

glib::wrapper! {
    pub struct ShmRingDevice(ObjectSubclass<device::ShmRingDevice>) @extends gst::Device, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::DeviceProvider::register(
        Some(plugin),
        "shmringdeviceprovider",
        gst::Rank::SECONDARY,
        ShmRingDeviceProvider::static_type(),
    )
}
