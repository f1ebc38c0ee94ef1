//! The unlock eventfd of an element: `unlock` writes it, and every wait of
//! the streaming thread polls it, so flushing and state changes interrupt a
//! wait at once, without timeouts. Kept apart from the element's state lock,
//! which the waiting thread holds.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::ring::Notifier;

#[derive(Default)]
pub struct Unlock(Mutex<Option<Arc<Notifier>>>);

impl Unlock {
    fn slot(&self) -> MutexGuard<'_, Option<Arc<Notifier>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates the eventfd, when the element starts.
    pub fn start(&self) -> Result<(), gst::ErrorMessage> {
        let notifier = Notifier::new().map_err(|err| gst::error_msg!(gst::ResourceError::Failed, ["{err}"]))?;
        *self.slot() = Some(Arc::new(notifier));
        Ok(())
    }

    /// Closes it, when the element stops.
    pub fn stop(&self) {
        *self.slot() = None;
    }

    /// The eventfd to poll; an element that is not started is flushing.
    pub fn notifier(&self) -> Result<Arc<Notifier>, gst::FlowError> {
        self.slot().clone().ok_or(gst::FlowError::Flushing)
    }

    /// Interrupts every wait until [`Unlock::unlock_stop`].
    pub fn unlock(&self) {
        if let Some(notifier) = self.slot().as_ref() {
            notifier.notify();
        }
    }

    pub fn unlock_stop(&self) {
        if let Some(notifier) = self.slot().as_ref() {
            notifier.drain();
        }
    }
}
