//! The buffer pool `shmringsink` offers upstream: each buffer is carved out
//! of the ring at the write position, so upstream renders straight into
//! shared memory and the sink only commits the record.
//!
//! An allocation waits, like `render`, for a reader (with
//! `wait-for-connection`) and for room, interruptibly. It never waits
//! behind another outstanding pool buffer, since upstream may hold that one
//! until it gets this one: it hands out ordinary memory instead, which the
//! sink copies once. A buffer that is dropped without being rendered
//! becomes padding that the reader skips.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::ShmRingSink;

glib::wrapper! {
    pub struct RingBufferPool(ObjectSubclass<imp::RingBufferPool>) @extends gst::BufferPool, gst::Object;
}

impl RingBufferPool {
    pub fn new(sink: &ShmRingSink) -> Self {
        let pool: Self = glib::Object::new();
        let _ = pool.imp().sink.set(sink.downgrade());
        pool
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    struct PoolConfig {
        size: usize,
        /// Set when upstream asked for GstVideoMeta on every buffer.
        video_layout: Option<gst_video::VideoInfo>,
    }

    #[derive(Default)]
    pub struct RingBufferPool {
        pub(super) sink: OnceLock<glib::WeakRef<ShmRingSink>>,
        config: Mutex<PoolConfig>,
        /// Buffers of ordinary memory handed out and not yet freed. While
        /// one is out, no ring space is reserved: a reservation made after
        /// it could reach the sink before it does, and hold ring space the
        /// copy of that earlier buffer then waits for.
        ordinary_outstanding: Arc<AtomicUsize>,
    }

    /// Ordinary memory for a pool buffer, counted while it lives.
    struct OrdinaryMemory {
        bytes: Vec<u8>,
        outstanding: Arc<AtomicUsize>,
    }

    impl AsRef<[u8]> for OrdinaryMemory {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }

    impl AsMut<[u8]> for OrdinaryMemory {
        fn as_mut(&mut self) -> &mut [u8] {
            &mut self.bytes
        }
    }

    impl Drop for OrdinaryMemory {
        fn drop(&mut self) {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for RingBufferPool {
        const NAME: &'static str = "GstShmRingBufferPool";
        type Type = super::RingBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for RingBufferPool {}
    impl GstObjectImpl for RingBufferPool {}

    impl BufferPoolImpl for RingBufferPool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: [&str; 1] = [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()];
            &OPTIONS
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((caps, size, _, _)) = config.params() else {
                return false;
            };
            let wants_meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            let info = caps
                .as_ref()
                .and_then(|caps| gst_video::VideoInfo::from_caps(caps).ok());
            *self.config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = PoolConfig {
                size: size as usize,
                video_layout: info.filter(|_| wants_meta),
            };
            self.parent_set_config(config)
        }

        fn acquire_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let (size, video_layout) = {
                let config = self.config.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                (config.size, config.video_layout.clone())
            };
            let sink = self.sink.get().and_then(|sink| sink.upgrade());
            let reserved = match &sink {
                Some(sink) if self.ordinary_outstanding.load(Ordering::SeqCst) == 0 => sink.imp().reserve(size)?,
                _ => None,
            };
            let mut buffer = match reserved {
                Some(reservation) => gst::Buffer::from_mut_slice(reservation),
                None => {
                    self.ordinary_outstanding.fetch_add(1, Ordering::SeqCst);
                    let memory = OrdinaryMemory {
                        bytes: vec![0; size],
                        outstanding: self.ordinary_outstanding.clone(),
                    };
                    gst::Buffer::from_mut_slice(memory)
                }
            };
            if let Some(info) = video_layout {
                let buffer = buffer.get_mut().ok_or(gst::FlowError::Error)?;
                gst_video::VideoMeta::add_full(
                    buffer,
                    gst_video::VideoFrameFlags::empty(),
                    info.format(),
                    info.width(),
                    info.height(),
                    info.offset(),
                    info.stride(),
                )
                .map_err(|_| gst::FlowError::Error)?;
            }
            Ok(buffer)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Every buffer is carved anew at the write position, so none is
            // kept for reuse: dropping it here frees its ring space (or its
            // ordinary memory) instead of parking it in the pool.
            drop(buffer);
        }

        fn flush_start(&self) {
            if let Some(sink) = self.sink.get().and_then(|sink| sink.upgrade()) {
                sink.imp().interrupt_reserve();
            }
        }
    }
}
