//! Threads that do the agent's background work (the resync's dumps, the manifests' scans, the
//! conntrack sweeps, freeing large dumps) give way to the daemon's loop. On two cores, a resync's dump
//! and scan running beside the loop made the changes arriving meanwhile wait several milliseconds; at
//! the lowest niceness the scheduler lets the loop run as soon as it wakes.

/// Lowers the calling thread's scheduling priority to the lowest niceness (19); its policy stays
/// time-sharing, so it is slowed, never starved.
pub fn lower_this_thread() {
    use thread_priority::{ThreadPriority, set_current_thread_priority};
    if let Err(e) = set_current_thread_priority(ThreadPriority::Min) {
        tracing::debug!(error = ?e, "lowering a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn nice_of_this_thread() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) may hold spaces; the fields after it are plain.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_background_thread_runs_at_the_lowest_niceness_and_others_do_not() {
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, 19);
        assert_eq!(nice_of_this_thread(), before, "only the calling thread");
    }
}
