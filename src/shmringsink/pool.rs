//! What `shmringsink` offers upstream in the allocation query: an allocator
//! for any caps, and a buffer pool for raw video, both handing out blocks of
//! the sink's heap. Upstream then fills shared memory directly, and the sink
//! only sends a record naming the block: nothing is copied.
//!
//! A block is held for as long as upstream keeps the buffer, and pins
//! nothing else, so upstream may keep as many as it likes (a decoder's
//! reference frames, a tee). When no block is free, an allocation waits for
//! a reader to give one back, interruptibly. It never waits for blocks only
//! this process holds, since the thread that would let go of them may be the
//! one waiting: it hands out ordinary memory instead, which render copies.

use std::sync::{Mutex, OnceLock};

use gst::glib;
use gst::glib::translate::*;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::ShmRingSink;
use crate::ring::Notifier;

/// Payloads up to this size travel inline in the record queue, so blocks
/// are only worth handing out for larger ones.
pub(super) const INLINE_MAX: usize = 4096;

glib::wrapper! {
    pub struct HeapBufferPool(ObjectSubclass<imp::HeapBufferPool>) @extends gst::BufferPool, gst::Object;
}

glib::wrapper! {
    pub struct HeapAllocator(ObjectSubclass<imp::HeapAllocator>) @extends gst::Allocator, gst::Object;
}

impl HeapBufferPool {
    pub fn new(sink: &ShmRingSink) -> Self {
        let pool: Self = glib::Object::new();
        let _ = pool.imp().sink.set(sink.downgrade());
        pool
    }
}

impl HeapAllocator {
    pub fn new(sink: &ShmRingSink) -> Self {
        let allocator: Self = glib::Object::new();
        let _ = allocator.imp().sink.set(sink.downgrade());
        allocator
    }
}

/// Memory of `size` bytes from the sink's heap, or ordinary memory when no
/// block can be had without waiting on this process itself. A wait ends
/// when `interrupt` becomes readable.
fn memory(sink: Option<ShmRingSink>, size: usize, interrupt: &Notifier) -> Result<gst::Memory, gst::FlowError> {
    if size > INLINE_MAX
        && let Some(sink) = sink
        && let Some(block) = sink.imp().block_for_upstream(size, interrupt)?
    {
        return Ok(gst::Memory::from_mut_slice(block));
    }
    Ok(gst::Memory::with_size(size))
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
    pub struct HeapBufferPool {
        pub(super) sink: OnceLock<glib::WeakRef<ShmRingSink>>,
        config: Mutex<PoolConfig>,
        /// Readable from `flush_start` to `flush_stop`: interrupts a wait
        /// for a block. The pool's own, since the sink's flushing follows
        /// another cycle.
        cancel: OnceLock<Notifier>,
    }

    impl HeapBufferPool {
        fn cancel(&self) -> Result<&Notifier, gst::FlowError> {
            if let Some(cancel) = self.cancel.get() {
                return Ok(cancel);
            }
            let notifier = Notifier::new().map_err(|_| gst::FlowError::Error)?;
            Ok(self.cancel.get_or_init(|| notifier))
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for HeapBufferPool {
        const NAME: &'static str = "GstShmRingHeapBufferPool";
        type Type = super::HeapBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for HeapBufferPool {}
    impl GstObjectImpl for HeapBufferPool {}

    impl BufferPoolImpl for HeapBufferPool {
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
                .and_then(|caps| crate::shmringsink::imp::raw_video_info(caps));
            *self.config.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = PoolConfig {
                size: size as usize,
                video_layout: info.filter(|_| wants_meta),
            };
            self.parent_set_config(config)
        }

        fn alloc_buffer(&self, _params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            let (size, video_layout) = {
                let config = self.config.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                (config.size, config.video_layout.clone())
            };
            let sink = self.sink.get().and_then(|sink| sink.upgrade());
            let mut buffer = gst::Buffer::new();
            {
                let buffer = buffer.get_mut().ok_or(gst::FlowError::Error)?;
                buffer.append_memory(memory(sink, size, self.cancel()?)?);
                if let Some(info) = video_layout {
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
            }
            Ok(buffer)
        }

        fn acquire_buffer(&self, params: Option<&gst::BufferPoolAcquireParams>) -> Result<gst::Buffer, gst::FlowError> {
            // Each buffer gets a block of its own, chosen when it is needed,
            // so that the heap hands out its most recently freed block: a
            // buffer parked in the pool would pin its block meanwhile.
            self.alloc_buffer(params)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Dropping the buffer gives its block back to the heap.
            drop(buffer);
        }

        fn flush_start(&self) {
            if let Ok(cancel) = self.cancel() {
                cancel.notify();
            }
        }

        fn flush_stop(&self) {
            if let Ok(cancel) = self.cancel() {
                cancel.drain();
            }
        }
    }

    #[derive(Default)]
    pub struct HeapAllocator {
        pub(super) sink: OnceLock<glib::WeakRef<ShmRingSink>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for HeapAllocator {
        const NAME: &'static str = "GstShmRingHeapAllocator";
        type Type = super::HeapAllocator;
        type ParentType = gst::Allocator;
    }

    impl ObjectImpl for HeapAllocator {}
    impl GstObjectImpl for HeapAllocator {}

    // SAFETY: `alloc` returns a new GstMemory with one reference, owned by
    // the caller, or NULL; `free` is never reached for it, because the
    // memory frees itself through the allocator that made it (the one
    // behind `gst::Memory::from_mut_slice` or the system allocator).
    unsafe impl AllocatorImpl for HeapAllocator {
        unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut gst::ffi::GstMemory {
            let prefix = params.prefix();
            let total = prefix.saturating_add(size).saturating_add(params.padding());
            // A small payload travels inline, copied into the record queue,
            // and a stricter alignment than a block's 64 bytes cannot be
            // had: system memory, decided before anything that costs a lock
            // (the sink's weak reference), since small audio buffers come
            // here hundreds of thousands of times a second.
            if total <= INLINE_MAX || params.align() >= 64 {
                return system_memory(size, params);
            }
            if let Some(sink) = self.sink.get().and_then(|sink| sink.upgrade())
                && let Ok(unlock) = sink.imp().unlock_notifier()
                && let Ok(Some(mut block)) = sink.imp().block_for_upstream(total, &unlock)
            {
                // A reused block holds an earlier buffer's bytes.
                let flags = params.flags();
                let bytes = block.as_mut();
                if flags.contains(gst::MemoryFlags::ZERO_PREFIXED) {
                    bytes[..prefix].fill(0);
                }
                if flags.contains(gst::MemoryFlags::ZERO_PADDED) {
                    bytes[prefix + size..].fill(0);
                }
                let mut memory = gst::Memory::from_mut_slice(block);
                if let Some(memory) = memory.get_mut() {
                    memory.resize(prefix..prefix + size);
                }
                return memory.into_glib_ptr();
            }
            system_memory(size, params)
        }
    }

    /// Memory of the default allocator, asked for directly: looking it up by
    /// name would take the allocators' lock for every buffer.
    fn system_memory(size: usize, params: &gst::AllocationParams) -> *mut gst::ffi::GstMemory {
        let params: *const gst::ffi::GstAllocationParams = params.to_glib_none().0;
        // SAFETY: a NULL allocator is GStreamer's default one, which lives
        // as long as the library; `params` is a valid GstAllocationParams
        // that the call only reads. The memory it returns (or NULL) has one
        // reference, which the caller owns.
        unsafe { gst::ffi::gst_allocator_alloc(std::ptr::null_mut(), size, params.cast_mut()) }
    }
}
