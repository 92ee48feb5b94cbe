//! Returning freed memory to the system at the end of a reconcile pass.
//!
//! The binary runs on jemalloc with decay-based purging (see `main.rs`): pages freed during a pass
//! are kept for reuse within it, which avoids an madvise and a page fault for every large free (a
//! fifth of a cold start's non-verifier CPU when they were purged at once). What the pass left free
//! is handed back here in one go, so the resident size between passes is what the agent holds.

/// jemalloc's "all arenas" index (`MALLCTL_ARENAS_ALL`).
const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";

/// jemalloc's cache of freed blocks of the calling thread.
const FLUSH_THREAD_CACHE: &[u8] = b"thread.tcache.flush\0";

/// Empties the calling thread's cache of freed blocks into the arena, then purges every arena's
/// unused dirty pages. The passes run on one thread (the runtime's `block_on`), whose cache keeps up
/// to 200 freed blocks of each small size class after a pass; flushed, their pages can be purged with
/// the rest (agent bench: heap allocated after sync 45.75 → 45.20 MiB, RSS 62.9 → 60.3–62.3 MiB with
/// the smaller events ring and pod index of the same session). A no-op when jemalloc is not the allocator in use (its
/// arenas then hold nothing); a failure is only logged, since nothing depends on it. True when
/// jemalloc accepted the purge.
pub fn return_free_pages() -> bool {
    let flushed = mallctl(FLUSH_THREAD_CACHE, None, None);
    if flushed != 0 {
        tracing::debug!(errno = flushed, "jemalloc thread cache flush failed");
    }
    let rc = mallctl(PURGE_ALL_ARENAS, None, None);
    if rc != 0 {
        tracing::debug!(errno = rc, "jemalloc purge failed");
    }
    rc == 0
}

/// What jemalloc holds, in bytes: `allocated` in live allocations, `resident` in pages it has mapped
/// and touched (its own metadata included). Their difference is the allocator's overhead and free
/// pages not yet returned; the process's resident size adds the binary, stacks and kernel mappings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapStats {
    pub allocated: u64,
    pub resident: u64,
}

/// jemalloc's statistics now (`None` when it does not answer, i.e. it is not the allocator).
pub fn heap_stats() -> Option<HeapStats> {
    // jemalloc's statistics are a snapshot taken when the epoch advances.
    let mut epoch: u64 = 1;
    (mallctl(b"epoch\0", None, Some(&mut epoch)) == 0).then_some(())?;
    let read = |name: &[u8]| {
        let mut value: usize = 0;
        (mallctl(name, Some(&mut value), None) == 0).then_some(value as u64)
    };
    Some(HeapStats {
        allocated: read(b"stats.allocated\0")?,
        resident: read(b"stats.resident\0")?,
    })
}

/// One jemalloc control call: `name` (NUL-terminated), reading a `size_t` into `read` and/or
/// writing the `u64` in `write`. Returns jemalloc's error code (0: done); a read whose size is not
/// a `size_t` is an error.
fn mallctl(name: &[u8], read: Option<&mut usize>, write: Option<&mut u64>) -> i32 {
    debug_assert_eq!(name.last(), Some(&0));
    let mut read_len = std::mem::size_of::<usize>();
    let (old, old_len) = match read {
        Some(value) => (
            std::ptr::from_mut(value).cast(),
            std::ptr::from_mut(&mut read_len),
        ),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    let (new, new_len) = match write {
        Some(value) => (std::ptr::from_mut(value).cast(), std::mem::size_of::<u64>()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: `name` is NUL-terminated; `old`/`old_len` are null or a `usize` and its size, `new`/
    // `new_len` null and 0 or a `u64` and its size, all live for the call.
    #[allow(unsafe_code, reason = "jemalloc's control interface is a C function")]
    let rc = unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr().cast(), old, old_len, new, new_len) };
    if rc == 0 && !old_len.is_null() && read_len != std::mem::size_of::<usize>() {
        return libc::EINVAL;
    }
    rc
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(
        unsafe_code,
        reason = "allocating from jemalloc directly: the tests run on glibc's malloc"
    )]
    fn heap_statistics_follow_an_allocation() {
        use std::alloc::{GlobalAlloc, Layout};
        let size = 8 << 20;
        let layout = Layout::from_size_align(size, 4096).unwrap();
        let before = super::heap_stats().expect("jemalloc answers");
        // SAFETY: a non-zero size; the block is written within its bounds and freed with its layout.
        let during = unsafe {
            let block = tikv_jemallocator::Jemalloc.alloc(layout);
            assert!(!block.is_null());
            std::ptr::write_bytes(block, 1, size);
            let during = super::heap_stats().expect("jemalloc answers");
            tikv_jemallocator::Jemalloc.dealloc(block, layout);
            during
        };
        let after = super::heap_stats().expect("jemalloc answers");
        // Per-thread caches make the counts lag by a little (seen: 28 KiB short of the block).
        let slack = 1 << 20;
        assert!(
            during.allocated + slack >= before.allocated + size as u64,
            "{before:?} → {during:?}"
        );
        assert!(
            during.resident + slack >= size as u64,
            "the written block is resident: {during:?}"
        );
        assert!(
            after.allocated + size as u64 <= during.allocated + slack,
            "{during:?} → {after:?}"
        );
    }

    #[test]
    fn jemalloc_accepts_the_purge_of_all_arenas() {
        // The name must be one jemalloc knows: a typo would make every purge a silent no-op.
        assert!(super::return_free_pages());
    }
}
