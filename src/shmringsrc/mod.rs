//! `shmringsrc`: reads the stream a `shmringsink` in another process writes.

use gst::glib;
use gst::prelude::*;

mod imp;
mod pacer;

glib::wrapper! {
    pub struct ShmRingSrc(ObjectSubclass<imp::ShmRingSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "shmringsrc", gst::Rank::NONE, ShmRingSrc::static_type())
}
