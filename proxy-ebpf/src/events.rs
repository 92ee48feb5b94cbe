//! Verdicts as data: every drop is counted by reason and reported with what caused it; new
//! connections through an isolated pod are reported with the policy and rule that allowed them.

use common::{
    event::{DropReason, FlowEvent},
    net::{Be16, Be32},
    stats::EVENTS_LOST_SLOT,
};

use crate::{
    maps::{
        STRAIT_DROP_STATS_V1 as DROP_STATS, STRAIT_EVENTS_V2 as EVENTS,
        STRAIT_POLICY_STATS_V1 as POLICY_STATS, STRAIT_PROG_STATS_V1 as PROG_STATS,
    },
    parse::Ipv4Flow,
};

/// What the hook knows about the packet beyond its headers.
#[derive(Clone, Copy)]
pub struct Context {
    pub ifindex: u32,
    pub direction: u8,
    /// The frontend the client addressed, when the flow was translated (raw network order).
    pub service_addr: u32,
    pub service_port: u16,
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(slot) = DROP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_policy_allow(policy_ref: u16) {
    if let Some(slot) = POLICY_STATS.get_ptr_mut(u32::from(policy_ref)) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn report(
    flow: &Ipv4Flow,
    cx: &Context,
    verdict: u8,
    reason: DropReason,
    policy_ref: u16,
    rule_index: u16,
    endpoint_id: u32,
) {
    let event = FlowEvent {
        // SAFETY: helper without preconditions. Precise time: records are few and ordered by it.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        saddr: Be32::from_raw(flow.saddr),
        daddr: Be32::from_raw(flow.daddr),
        sport: Be16::from_raw(flow.sport),
        dport: Be16::from_raw(flow.dport),
        proto: flow.proto,
        verdict,
        reason: reason as u8,
        direction: cx.direction,
        ifindex: cx.ifindex,
        policy_ref,
        rule_index,
        endpoint_id,
        service_addr: Be32::from_raw(cx.service_addr),
        service_port: Be16::from_raw(cx.service_port),
        _pad: 0,
        _pad2: 0,
    };
    // A full ring drops the record, never the packet: the counters above stay exact, and the lost
    // record is counted.
    if EVENTS.output::<FlowEvent>(&event, 0).is_err()
        && let Some(slot) = PROG_STATS.get_ptr_mut(EVENTS_LOST_SLOT)
    {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { (*slot).packets += 1 };
    }
}
