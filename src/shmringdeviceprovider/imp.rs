use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::CAT;
use super::streams::{self, Streams};
use crate::address::stream_directory;
use crate::ipc;
use crate::ring::Notifier;

/// The thread that follows the directory while the provider is started.
struct Follower {
    stop: Arc<Notifier>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
pub struct ShmRingDeviceProvider {
    follower: Mutex<Option<Follower>>,
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingDeviceProvider {
    const NAME: &'static str = "GstShmRingDeviceProvider";
    type Type = super::ShmRingDeviceProvider;
    type ParentType = gst::DeviceProvider;
}

impl ObjectImpl for ShmRingDeviceProvider {}

impl GstObjectImpl for ShmRingDeviceProvider {}

impl DeviceProviderImpl for ShmRingDeviceProvider {
    fn metadata() -> Option<&'static gst::subclass::DeviceProviderMetadata> {
        static METADATA: std::sync::LazyLock<gst::subclass::DeviceProviderMetadata> = std::sync::LazyLock::new(|| {
            gst::subclass::DeviceProviderMetadata::new(
                "Shared-memory ring streams",
                "Source/Video/Audio/Generic",
                "Lists the named streams shmringsink writers serve in the stream directory",
                "gst-shmring developers",
            )
        });
        Some(&METADATA)
    }

    fn probe(&self) -> Vec<gst::Device> {
        match stream_directory() {
            Ok(directory) => streams::survey(&directory),
            Err(err) => {
                gst::warning!(CAT, imp = self, "{err}");
                Vec::new()
            }
        }
    }

    fn start(&self) -> Result<(), gst::LoggableError> {
        let directory = stream_directory().map_err(|err| gst::loggable_error!(CAT, "{err}"))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|err| gst::loggable_error!(CAT, "could not start inotify: {err}"))?;
        // Watched before it is listed, so that no stream slips between.
        inotify
            .add_watch(
                &directory,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM,
            )
            .map_err(|err| {
                gst::loggable_error!(
                    CAT,
                    "could not watch the stream directory {}: {err}",
                    directory.display()
                )
            })?;
        let stop = Arc::new(Notifier::new().map_err(|err| gst::loggable_error!(CAT, "{err}"))?);
        let provider = self.obj().clone().upcast::<gst::DeviceProvider>();
        let mut streams = Streams::new(directory);
        let names = streams::names_in(streams.directory());
        streams.look_at(&provider, names);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shmring-devices".into())
            .spawn(move || follow(&provider, streams, &inotify, &thread_stop))
            .map_err(|err| gst::loggable_error!(CAT, "could not start the thread that follows streams: {err}"))?;
        let previous = self
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(Follower { stop, thread });
        if let Some(previous) = previous {
            end(previous);
        }
        Ok(())
    }

    fn stop(&self) {
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(follower) = follower {
            end(follower);
        }
    }
}

fn end(follower: Follower) {
    follower.stop.notify();
    if follower.thread.join().is_err() {
        gst::error!(CAT, "the thread that follows streams panicked");
    }
}

/// Keeps `streams` in step with the directory until `stop` is notified:
/// sleeps until a name changes in the directory or a listed writer's
/// process exits, and looks at those names again.
fn follow(provider: &gst::DeviceProvider, mut streams: Streams, inotify: &Inotify, stop: &Notifier) {
    loop {
        let mut names = BTreeSet::new();
        {
            let exits: Vec<_> = streams.exits().collect();
            let mut fds = vec![stop.as_fd(), inotify.as_fd()];
            fds.extend(exits.iter().map(|(_, fd)| *fd));
            let ready = match ipc::wait_readable_any(&fds) {
                Ok(ready) => ready,
                Err(err) => {
                    gst::error!(CAT, obj = provider, "stopped following streams: {err}");
                    return;
                }
            };
            if ready[0] {
                return;
            }
            for ((name, _), _) in exits.iter().zip(&ready[2..]).filter(|(_, ready)| **ready) {
                gst::debug!(CAT, obj = provider, "the writer of stream {name} exited");
                names.insert(OsString::from(*name));
            }
            if ready[1] {
                collect_events(provider, &streams, inotify, &mut names);
            }
        }
        streams.look_at(provider, names);
    }
}

/// Adds the names the pending inotify events are about to `names`; all of
/// them if events were lost.
fn collect_events(
    provider: &gst::DeviceProvider,
    streams: &Streams,
    inotify: &Inotify,
    names: &mut BTreeSet<OsString>,
) {
    while let Ok(events) = inotify.read_events() {
        if events.is_empty() {
            break;
        }
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                gst::debug!(CAT, obj = provider, "inotify lost events; looking at every stream");
                names.extend(streams::names_in(streams.directory()));
                names.extend(streams.names());
            } else if let Some(name) = event.name {
                names.insert(name);
            }
        }
    }
}
