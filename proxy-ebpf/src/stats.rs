//! Per-program packet and byte counters, per CPU so counting never contends.
use common::stats::StatIndex;

use crate::maps::STRAIT_PROG_STATS_V1;

#[inline(always)]
pub fn count(index: StatIndex, len: u32) {
    if let Some(slot) = STRAIT_PROG_STATS_V1.get_ptr_mut(index as u32) {
        // SAFETY: the pointer comes from a successful per-CPU lookup and is only used on this CPU.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(len);
        }
    }
}
