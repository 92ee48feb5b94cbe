//! Handing freed memory back to the system. The first full read of a large cluster parses every object
//! through its API type before keeping the compact form (`crate::slim`), so the heap's high-water mark is
//! tens of MB above what the agent holds afterwards; glibc keeps freed memory that is not at the top of
//! the heap, so without this the process keeps that peak as resident memory for good (measured at 10k
//! Services: ~30 MB).

/// Returns the heap's free pages to the system (`malloc_trim(0)`); a few milliseconds on a 200 MB heap,
/// during which other threads' allocations wait. Meant for moments nothing waits on, like the end of
/// the first sync.
pub fn return_freed() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code, reason = "a libc call without preconditions")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// Resident memory of this process, from /proc.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Runs in a process of its own (this test binary again, this test only): resident memory is the
    /// whole process's, and the other tests allocate beside it.
    #[test]
    #[cfg(target_env = "gnu")]
    fn freed_memory_between_live_blocks_goes_back() {
        const CHILD: &str = "STRAIT_MEMORY_TEST_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "memory::tests::freed_memory_between_live_blocks_goes_back",
                ])
                .args(["--test-threads", "1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        // Small blocks (on the heap, below the mmap threshold), all touched; every 64th stays, so each
        // freed run of ~64 KB lies between live blocks, where free() itself never gives pages back.
        let mut blocks: Vec<Vec<u8>> = (0..64_000).map(|i| vec![1 + (i % 200) as u8; 1000]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 64 == 0
        });
        let before = rss_kib();
        super::return_freed();
        let after = rss_kib();
        assert!(
            after + 30_000 < before,
            "~60 MB freed between live blocks should leave: {before} KiB before, {after} KiB after"
        );
        assert_eq!(blocks.len(), 1000);
    }
}
