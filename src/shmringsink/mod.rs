//! `shmringsink`: writes a stream into a shared-memory ring that a
//! `shmringsrc` in another process reads.

use gst::glib;
use gst::prelude::*;

mod heap;
mod imp;
mod pool;

glib::wrapper! {
    pub struct ShmRingSink(ObjectSubclass<imp::ShmRingSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "shmringsink", gst::Rank::NONE, ShmRingSink::static_type())
}
