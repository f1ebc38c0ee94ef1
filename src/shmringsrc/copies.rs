//! The buffers `shmringsrc` copies payloads into, when it copies: recycled,
//! so that a stream of copies does not allocate per buffer.
//!
//! A size seen twice in a row gets a pool of its own, a [`CopyBufferPool`]:
//! a GstBufferPool that keeps returned buffers in a plain list. GStreamer's
//! default pool resizes every returned buffer, walks its metas and goes
//! through its own queue; for a stream of 256-byte audio buffers that was
//! about 900 instructions a buffer, more than the copy itself. Variable
//! sizes get a fresh buffer each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

/// Buffers `CopyBufferPool` keeps for reuse at most: what downstream holds
/// beyond that is freed when it comes back.
const MAX_FREE_BUFFERS: usize = 64;

#[derive(Default)]
pub(super) struct CopyPool {
    pool: Option<(usize, CopyBufferPool)>,
    last_size: usize,
}

impl CopyPool {
    /// A buffer of `len` bytes that `read` fills with a copy from shared
    /// memory; `None` if `read` fails.
    pub(super) fn copy(&mut self, len: usize, mut read: impl FnMut(&mut [u8]) -> bool) -> Option<gst::Buffer> {
        let mut buffer = self.buffer(len);
        // The buffer's one memory, mapped alone: mapping the whole buffer
        // costs three times as much, on the path of every small buffer.
        let memory = buffer
            .get_mut()
            .filter(|buffer| buffer.n_memory() == 1)
            .and_then(|buffer| buffer.peek_memory_mut(0).ok());
        let copied = match memory.and_then(|memory| memory.map_writable().ok()) {
            Some(mut dest) if dest.len() == len => Some(read(&mut dest)),
            _ => None,
        };
        match copied {
            Some(true) => Some(buffer),
            Some(false) => None,
            None => {
                let mut bytes = vec![0; len];
                read(&mut bytes).then(|| gst::Buffer::from_mut_slice(bytes))
            }
        }
    }

    /// A writable buffer of `size` bytes, from the pool of that size if
    /// there is one.
    pub(super) fn buffer(&mut self, size: usize) -> gst::Buffer {
        if let Some((pool_size, pool)) = &self.pool
            && *pool_size == size
            && let Ok(buffer) = pool.acquire_buffer(None)
        {
            return buffer;
        }
        if let Ok(pool_size) = u32::try_from(size)
            && size == self.last_size
            && size > 0
        {
            if let Some((_, old)) = self.pool.take() {
                let _ = old.set_active(false);
            }
            let pool = CopyBufferPool::default();
            let mut config = pool.config();
            config.set_params(None, pool_size, 0, 0);
            if pool.set_config(config).is_ok() && pool.set_active(true).is_ok() {
                let buffer = pool.acquire_buffer(None);
                self.pool = Some((size, pool));
                if let Ok(buffer) = buffer {
                    return buffer;
                }
            }
        }
        self.last_size = size;
        gst::Buffer::with_size(size).unwrap_or_default()
    }
}

impl Drop for CopyPool {
    fn drop(&mut self) {
        if let Some((_, pool)) = self.pool.take() {
            let _ = pool.set_active(false);
        }
    }
}

glib::wrapper! {
    pub struct CopyBufferPool(ObjectSubclass<imp::CopyBufferPool>) @extends gst::BufferPool, gst::Object;
}

impl Default for CopyBufferPool {
    fn default() -> Self {
        glib::Object::new()
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct CopyBufferPool {
        /// The configured size of every buffer.
        size: AtomicUsize,
        /// Buffers downstream gave back, whole and unshared.
        free: Mutex<Vec<gst::Buffer>>,
    }

    impl CopyBufferPool {
        fn free(&self) -> std::sync::MutexGuard<'_, Vec<gst::Buffer>> {
            self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        fn size(&self) -> usize {
            self.size.load(Ordering::Relaxed)
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for CopyBufferPool {
        const NAME: &'static str = "GstShmRingCopyBufferPool";
        type Type = super::CopyBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for CopyBufferPool {}
    impl GstObjectImpl for CopyBufferPool {}

    impl BufferPoolImpl for CopyBufferPool {
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((_, size, _, _)) = config.params() else {
                return false;
            };
            self.size.store(size as usize, Ordering::Relaxed);
            self.parent_set_config(config)
        }

        fn alloc_buffer(&self, _params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            gst::Buffer::with_size(self.size()).map_err(|_| gst::FlowError::Error)
        }

        fn acquire_buffer(&self, params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            // The pool never runs dry: with no buffer back yet, a new one.
            match self.free().pop() {
                Some(buffer) => Ok(buffer),
                None => self.alloc_buffer(params),
            }
        }

        fn reset_buffer(&self, buffer: &mut gst::BufferRef) {
            // Every field is set again from the next record's header, but
            // flags are only ever added there, and downstream may have
            // added metas.
            buffer.unset_flags(gst::BufferFlags::all() - gst::BufferFlags::TAG_MEMORY);
            buffer.set_pts(gst::ClockTime::NONE);
            buffer.set_dts(gst::ClockTime::NONE);
            buffer.set_duration(gst::ClockTime::NONE);
            buffer.set_offset(u64::MAX);
            buffer.set_offset_end(u64::MAX);
            if buffer.iter_meta::<gst::Meta>().next().is_some() {
                buffer.foreach_meta_mut(|meta| {
                    if meta.flags().contains(gst::MetaFlags::POOLED) {
                        std::ops::ControlFlow::Continue(gst::buffer::BufferMetaForeachAction::Keep)
                    } else {
                        std::ops::ControlFlow::Continue(gst::buffer::BufferMetaForeachAction::Remove)
                    }
                });
            }
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Only a buffer whose memory is still its own, whole and
            // unshared, is written again: downstream may have replaced,
            // resized or shared it.
            let reusable = !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
                && buffer.n_memory() == 1
                && buffer.size() == self.size()
                && buffer.is_all_memory_writable();
            if reusable {
                let mut free = self.free();
                if free.len() < MAX_FREE_BUFFERS {
                    free.push(buffer);
                }
            }
        }

        fn stop(&self) -> bool {
            let freed = std::mem::take(&mut *self.free());
            drop(freed);
            self.parent_stop()
        }
    }
}
