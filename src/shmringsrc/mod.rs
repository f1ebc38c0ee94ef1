//! `shmringsrc`: reads the stream a `shmringsink` in another process writes.

use gst::glib;
use gst::prelude::*;

mod copies;
mod fds;
mod flush;
mod imp;
mod pacer;
mod upstream;

glib::wrapper! {
    pub struct ShmRingSrc(ObjectSubclass<imp::ShmRingSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object, @implements gst::URIHandler;
}

/// What `shmringsrc` does when its writer goes away without sending EOS:
/// the writer process crashed, was killed, or was stopped without `-e`.
/// An EOS the writer sends always ends the stream.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstShmRingSrcOnDisconnect")]
pub enum OnDisconnect {
    #[enum_value(
        name = "End the stream (EOS) with a warning, so that muxers and files downstream are finalized",
        nick = "eos"
    )]
    Eos,
    #[enum_value(name = "Post an error", nick = "error")]
    Error,
    #[enum_value(
        name = "Keep running and resume when a writer appears again at socket-path",
        nick = "wait"
    )]
    Wait,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    OnDisconnect::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(Some(plugin), "shmringsrc", gst::Rank::NONE, ShmRingSrc::static_type())
}
