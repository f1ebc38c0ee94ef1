//! The `shmring://` URI handler both elements share: the URI stands for
//! their `socket-path` and `stream` properties (see [`crate::address`]).

use std::path::{Path, PathBuf};

use gst::glib;
use gst::prelude::*;

use crate::address::Address;

/// The URI the two properties name, if they name exactly one socket.
pub fn uri(socket_path: Option<&Path>, stream: Option<&str>) -> Option<String> {
    Address::from_properties(socket_path, stream).ok()?.to_uri().ok()
}

/// The `socket-path` and `stream` that `uri` stands for; the one it does
/// not set is cleared, so that they cannot conflict. Like the properties, it
/// can only change while `element` is stopped.
pub fn properties(element: &gst::Element, uri: &str) -> Result<(Option<PathBuf>, Option<String>), glib::Error> {
    if element.current_state() > gst::State::Ready {
        return Err(glib::Error::new(
            gst::URIError::BadState,
            &format!(
                "{} cannot change its URI while it runs; set it in the NULL or READY state",
                element.name()
            ),
        ));
    }
    match Address::from_uri(uri) {
        Ok(Address::Path(path)) => Ok((Some(path), None)),
        Ok(Address::Stream(name)) => Ok((None, Some(name))),
        Err(err) => Err(glib::Error::new(gst::URIError::BadUri, &err.to_string())),
    }
}
