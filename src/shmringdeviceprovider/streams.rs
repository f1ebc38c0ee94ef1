//! The streams a provider lists, kept in step with the stream directory.
//!
//! Invariants:
//!
//! 1. After `look_at(names)`, each of those names is listed exactly when a
//!    writer accepted a connection at its socket, with the caps it answered
//!    (none if it did not answer within `PROBE_TIMEOUT`). A listed device
//!    changes only when its caps do, by a removal and an addition, so that
//!    a monitor filtering on a class sees a stream move between classes.
//! 2. Every way a stream can go wakes whoever follows the directory: its
//!    socket file is removed or renamed away (inotify), or its writer's
//!    process exits with the file left behind (the pidfd kept with it). Each
//!    of these makes the name looked at again, and a name nobody listens at
//!    any more is removed. So nothing is found by polling.
//! 3. Only one thread at a time owns this set (`start`, then the follower),
//!    and no lock is held while it calls into GStreamer.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gst::prelude::*;

use super::CAT;
use crate::address::check_stream_name;
use crate::codec;
use crate::ipc::is_staging_name;
use crate::ipc::probe::{Finding, probe_writers};

/// How long the writers asked at once may take to answer, in all: a writer
/// answers as soon as it looks for readers, which a waiting writer does at
/// once and a streaming one at its next buffer.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A listed stream.
struct Listed {
    device: super::ShmRingDevice,
    /// The caps text its writer answered, to tell whether they changed.
    caps: Option<String>,
    /// Readable once its writer's process has exited.
    exit: Option<OwnedFd>,
}

/// The listed streams of one directory, by name.
pub(super) struct Streams {
    directory: PathBuf,
    listed: HashMap<String, Listed>,
}

impl Streams {
    pub(super) fn new(directory: PathBuf) -> Self {
        Self {
            directory,
            listed: HashMap::new(),
        }
    }

    pub(super) fn directory(&self) -> &Path {
        &self.directory
    }

    /// Looks again at the streams `names` (file names in the directory),
    /// and adds, replaces or removes their devices on `provider`.
    pub(super) fn look_at(&mut self, provider: &gst::DeviceProvider, names: impl IntoIterator<Item = OsString>) {
        for (name, path, finding) in ask(&self.directory, names) {
            match finding {
                Finding::NoWriter => {
                    if let Some(gone) = self.listed.remove(&name) {
                        gst::info!(CAT, obj = provider, "stream {name} went away");
                        provider.device_remove(&gone.device);
                    }
                }
                Finding::Writer { caps, why_none, exit } => {
                    if let Some(why) = why_none {
                        gst::info!(CAT, obj = provider, "stream {name} is listed with caps ANY: {why}");
                    }
                    if let Some(listed) = self.listed.get_mut(&name)
                        && listed.caps == caps
                    {
                        listed.exit = exit;
                        continue;
                    }
                    let device = device(&name, &path, caps.as_deref());
                    gst::info!(CAT, obj = provider, "stream {name} runs, caps {:?}", caps);
                    let replaced = self.listed.insert(
                        name,
                        Listed {
                            device: device.clone(),
                            caps,
                            exit,
                        },
                    );
                    if let Some(replaced) = replaced {
                        provider.device_remove(&replaced.device);
                    }
                    provider.device_add(&device);
                }
            }
        }
    }

    /// The names listed now.
    pub(super) fn names(&self) -> impl Iterator<Item = OsString> + '_ {
        self.listed.keys().map(OsString::from)
    }

    /// The pidfd of each listed stream's writer, by name.
    pub(super) fn exits(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.listed
            .iter()
            .filter_map(|(name, listed)| listed.exit.as_ref().map(|exit| (name.as_str(), exit.as_fd())))
    }
}

/// The devices of the streams running in `directory` now.
pub(super) fn survey(directory: &Path) -> Vec<gst::Device> {
    ask(directory, names_in(directory))
        .into_iter()
        .filter_map(|(name, path, finding)| match finding {
            Finding::NoWriter => None,
            Finding::Writer { caps, .. } => Some(device(&name, &path, caps.as_deref()).upcast()),
        })
        .collect()
}

/// The file names in `directory`, or none if it cannot be read.
pub(super) fn names_in(directory: &Path) -> Vec<OsString> {
    match std::fs::read_dir(directory) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
            .collect(),
        Err(err) => {
            gst::warning!(
                CAT,
                "could not list the stream directory {}: {err}",
                directory.display()
            );
            Vec::new()
        }
    }
}

/// Probes the writers of the streams `names`, all at once. A name that is
/// a socket on its way in, or that no `stream` property could name, is
/// skipped.
fn ask(directory: &Path, names: impl IntoIterator<Item = OsString>) -> Vec<(String, PathBuf, Finding)> {
    let mut streams: Vec<(String, PathBuf)> = names
        .into_iter()
        .filter(|name| !is_staging_name(name))
        .filter_map(|name| name.into_string().ok())
        .filter(|name| check_stream_name(name).is_ok())
        .map(|name| {
            let path = directory.join(&name);
            (name, path)
        })
        .collect();
    streams.sort();
    streams.dedup();
    let paths: Vec<&Path> = streams.iter().map(|(_, path)| path.as_path()).collect();
    let findings = probe_writers(&paths, PROBE_TIMEOUT);
    streams
        .into_iter()
        .zip(findings)
        .map(|((name, path), finding)| (name, path, finding))
        .collect()
}

/// The device of stream `name`, with its caps if they parse.
fn device(name: &str, path: &Path, caps: Option<&str>) -> super::ShmRingDevice {
    let caps = caps.and_then(|text| match codec::decode_caps(text.as_bytes()) {
        Ok(caps) => Some(caps),
        Err(err) => {
            gst::info!(
                CAT,
                "stream {name} is listed with caps ANY, its writer's caps do not parse: {err}"
            );
            None
        }
    });
    super::ShmRingDevice::new(name, path, caps.as_ref())
}
