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

#[cfg(test)]
mod tests {
    #[test]
    fn jemalloc_accepts_the_purge_of_all_arenas() {
        // The name must be one jemalloc knows: a typo would make every purge a silent no-op.
        assert!(super::return_free_pages());
    }
}
