//! The allocator of the Python and PHP extensions (feature `allocator`): jemalloc, with its
//! symbols prefixed so the host process's `malloc` stays the host's.
//!
//! A message crosses threads on every broker: it is built on the caller's thread (Python's,
//! PHP's), queued by a runtime thread and freed by another (rdkafka's delivery thread, lapin's
//! I/O thread). glibc's malloc serves a free from another thread's arena under that arena's
//! lock, and on 2 cores that lock and its consolidation were about a third of a Kafka
//! producer's CPU. jemalloc keeps a cache per thread and returns blocks to their arena in
//! batches.
//!
//! Only the extension's own Rust allocations go through it: the host's (Python objects, PHP
//! values) and librdkafka's C allocations keep the process's malloc. jemalloc locks itself
//! around `fork()` (a forked Python worker allocates safely, as with glibc's malloc).
//!
//! Declared by each extension:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: polybus::allocator::EngineAllocator = polybus::allocator::EngineAllocator;
//! ```

/// jemalloc, the extensions' global allocator (see the module documentation).
pub use tikv_jemallocator::Jemalloc as EngineAllocator;

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::*;

    #[test]
    fn allocates_grows_and_frees_across_threads() {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: a valid non-zero layout; the block is written within it and freed once.
        let ptr = unsafe { EngineAllocator.alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: the block is 100 bytes long.
        unsafe { ptr.write_bytes(7, 100) };
        let address = ptr as usize;
        // Grown and freed on another thread, as a delivered message is freed.
        std::thread::spawn(move || {
            let ptr = address as *mut u8;
            // SAFETY: the block is live and 100 bytes long.
            let grown = unsafe { EngineAllocator.realloc(ptr, layout, 4096) };
            assert!(!grown.is_null());
            assert_eq!(unsafe { *grown.add(99) }, 7);
            let grown_layout = Layout::from_size_align(4096, 8).unwrap();
            // SAFETY: freed once, with the layout it now has.
            unsafe { EngineAllocator.dealloc(grown, grown_layout) };
        })
        .join()
        .unwrap();
    }
}
