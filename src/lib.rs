//! gst-shmring: move any GStreamer stream between processes on one machine
//! through a sealed shared-memory ring.
//!
//! - [`ring`]: the ring itself, with no GStreamer in it;
//! - [`ipc`]: the control socket that hands a reader the ring;
//! - [`codec`]: how caps, events and buffer metadata become records;
//! - [`metas`]: the metas that cross with a buffer;
//! - [`address`]: socket paths, named streams and `shmring://` URIs;
//! - `shmringsink` and `shmringsrc`: the elements;
//! - `shmringdeviceprovider`: the running named streams, as devices.

use gst::glib;

pub mod address;
pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
pub mod ipc;
pub mod metas;
mod realtime;
pub mod ring;
mod shmringdeviceprovider;
mod shmringsink;
mod shmringsrc;
mod stats;
pub mod timeline;
mod unlock;
mod uri;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    shmringsink::register(plugin)?;
    shmringsrc::register(plugin)?;
    shmringdeviceprovider::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    shmring,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
