//! One running named stream, as a device that makes a `shmringsrc`
//! reading it.

use std::path::Path;
use std::sync::OnceLock;

use gst::glib;
use gst::subclass::prelude::*;

use super::CAT;
use crate::address::Address;

#[derive(Default)]
pub struct ShmRingDevice {
    /// The stream's name in the stream directory, set once at creation.
    stream: OnceLock<String>,
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingDevice {
    const NAME: &'static str = "GstShmRingDevice";
    type Type = super::ShmRingDevice;
    type ParentType = gst::Device;
}

impl ObjectImpl for ShmRingDevice {}

impl GstObjectImpl for ShmRingDevice {}

impl DeviceImpl for ShmRingDevice {
    fn create_element(&self, name: Option<&str>) -> Result<gst::Element, gst::LoggableError> {
        let stream = self
            .stream
            .get()
            .ok_or_else(|| gst::loggable_error!(CAT, "this shmring device was made without a stream name"))?;
        let mut builder = gst::ElementFactory::make("shmringsrc").property("stream", stream);
        if let Some(name) = name {
            builder = builder.name(name);
        }
        builder.build().map_err(|err| {
            gst::loggable_error!(
                CAT,
                "could not make a shmringsrc for stream {stream}: {err}; is the shmring plugin installed where GStreamer finds it?"
            )
        })
    }
}

impl super::ShmRingDevice {
    /// The device for the stream `name`, whose socket is at `path`, with
    /// the caps its writer told of, if it did, and ANY caps otherwise.
    pub(super) fn new(name: &str, path: &Path, caps: Option<&gst::Caps>) -> Self {
        let media = caps
            .and_then(|caps| caps.structure(0))
            .map(|structure| structure.name().as_str());
        let class = match media {
            Some(media) if media.starts_with("video/") || media.starts_with("image/") => "Video/Source",
            Some(media) if media.starts_with("audio/") => "Audio/Source",
            _ => "Source/Generic",
        };
        let mut properties = gst::Structure::builder("shmring-proplist")
            .field("device.api", "shmring")
            .field("shmring.stream", name)
            .field("shmring.socket-path", path.to_string_lossy().as_ref());
        if let Ok(uri) = Address::Stream(name.to_owned()).to_uri() {
            properties = properties.field("shmring.uri", uri);
        }
        // GstDeviceMonitor intersects every device's caps with its filter's
        // and has no case for a device without caps: unknown caps are ANY.
        let caps = caps.cloned().unwrap_or_else(gst::Caps::new_any);
        let device: Self = glib::Object::builder()
            .property("display-name", name)
            .property("device-class", class)
            .property("caps", caps)
            .property("properties", properties.build())
            .build();
        // A fresh object: the name cannot have been set yet.
        let _ = device.imp().stream.set(name.to_owned());
        device
    }
}
