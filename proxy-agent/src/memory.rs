//! Returning freed memory to the system at the end of a reconcile pass.
//!
//! The binary runs on jemalloc with decay-based purging (see `main.rs`): pages freed during a pass
//! are kept for reuse within it, which avoids an madvise and a page fault for every large free (a
//! fifth of a cold start's non-verifier CPU when they were purged at once). What the pass left free
//! is handed back here in one go, so the resident size between passes is what the agent holds.

/// jemalloc's "all arenas" index (`MALLCTL_ARENAS_ALL`).
const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";

/// Purges every jemalloc arena's unused dirty pages. A no-op when jemalloc is not the allocator in
/// use (its arenas then hold nothing); a failure is only logged, since nothing depends on it. True
/// when jemalloc accepted the request.
pub fn return_free_pages() -> bool {
    // SAFETY: `arena.<i>.purge` takes no argument and returns nothing: both pointer pairs are null,
    // and the name is a NUL-terminated static string.
    #[allow(unsafe_code, reason = "jemalloc's control interface is a C function")]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
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
    mallctl_write(b"epoch\0", &mut epoch)?;
    Some(HeapStats {
        allocated: mallctl_read(b"stats.allocated\0")?,
        resident: mallctl_read(b"stats.resident\0")?,
    })
}

fn mallctl_write(name: &[u8], value: &mut u64) -> Option<()> {
    // SAFETY: `name` is NUL-terminated; `epoch` takes a u64 in and we ask for nothing back.
    #[allow(unsafe_code, reason = "jemalloc's control interface is a C function")]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::from_mut(value).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    (rc == 0).then_some(())
}

fn mallctl_read(name: &[u8]) -> Option<u64> {
    // The statistics read here are `size_t`.
    let mut value: usize = 0;
    let mut len = std::mem::size_of::<usize>();
    // SAFETY: `name` is NUL-terminated; `value` and `len` describe a buffer of the statistic's size.
    #[allow(unsafe_code, reason = "jemalloc's control interface is a C function")]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == std::mem::size_of::<usize>()).then_some(value as u64)
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
