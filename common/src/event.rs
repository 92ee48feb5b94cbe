//! Verdicts as data: why the datapath dropped (or let through) a packet, one definition for the kernel
//! (which returns and reports it), the agent (metrics labels, `flows`) and the tests.

use crate::net::{Be16, Be32};

/// Why a packet was dropped. The value is both the event's `reason` and the index into the drop
/// counters, so metrics and flow records always agree.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    None = 0,
    /// Ingress to an isolated pod that no rule allows.
    PolicyIngress = 1,
    /// Egress from an isolated pod that no rule allows.
    PolicyEgress = 2,
    /// A pod sent a packet with a source address that is not its own.
    Spoofed = 3,
    /// Truncated or malformed headers where policy needs them.
    Malformed = 4,
    /// A later IP fragment of a flow policy must see the ports of.
    Fragment = 5,
    /// A Service without a usable endpoint that is not answered with a rejection.
    NoBackend = 6,
    /// A Service without endpoints: the client was answered with RST / ICMP unreachable.
    ServiceRejected = 7,
    /// Conntrack could not take the new connection.
    ConntrackFull = 8,
    /// A rewrite helper failed.
    NatFailed = 9,
    /// A client outside a LoadBalancer Service's loadBalancerSourceRanges.
    SourceRange = 10,
}

pub const DROP_REASON_SLOTS: u32 = 16;

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::None,
        DropReason::PolicyIngress,
        DropReason::PolicyEgress,
        DropReason::Spoofed,
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::NoBackend,
        DropReason::ServiceRejected,
        DropReason::ConntrackFull,
        DropReason::NatFailed,
        DropReason::SourceRange,
    ];

    /// The metric label and the word `flows` prints.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::None => "none",
            DropReason::PolicyIngress => "policy-ingress",
            DropReason::PolicyEgress => "policy-egress",
            DropReason::Spoofed => "spoofed-source",
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::NoBackend => "no-backend",
            DropReason::ServiceRejected => "service-rejected",
            DropReason::ConntrackFull => "conntrack-full",
            DropReason::NatFailed => "nat-failed",
            DropReason::SourceRange => "source-range",
        }
    }

    pub const fn from_u8(v: u8) -> Option<DropReason> {
        match v {
            0 => Some(DropReason::None),
            1 => Some(DropReason::PolicyIngress),
            2 => Some(DropReason::PolicyEgress),
            3 => Some(DropReason::Spoofed),
            4 => Some(DropReason::Malformed),
            5 => Some(DropReason::Fragment),
            6 => Some(DropReason::NoBackend),
            7 => Some(DropReason::ServiceRejected),
            8 => Some(DropReason::ConntrackFull),
            9 => Some(DropReason::NatFailed),
            10 => Some(DropReason::SourceRange),
            _ => None,
        }
    }
}

/// `FlowEvent::verdict`.
pub mod verdict {
    /// A new connection let through (first packet only; established traffic is not reported).
    pub const FORWARDED: u8 = 0;
    pub const DROPPED: u8 = 1;
    /// Refused with RST / ICMP unreachable.
    pub const REJECTED: u8 = 2;
}

/// `FlowEvent::direction`: which side of a pod the packet was seen on.
pub mod direction {
    /// Delivered to the pod (tc egress of its host veth): ingress policy.
    pub const TO_POD: u8 = 0;
    /// Sent by the pod (tc ingress of its host veth): egress policy.
    pub const FROM_POD: u8 = 1;
}

/// One record in the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub ts_ns: u64,
    /// The packet's addresses as seen at the hook (after DNAT for service traffic).
    pub saddr: Be32,
    pub daddr: Be32,
    pub sport: Be16,
    pub dport: Be16,
    pub proto: u8,
    pub verdict: u8,
    pub reason: u8,
    pub direction: u8,
    /// Interface of the hook (the pod's host veth).
    pub ifindex: u32,
    /// Policy and rule that allowed the flow (`policy_ref` 0 = none: default deny or not isolated).
    pub policy_ref: u16,
    pub rule_index: u16,
    /// The policy endpoint the verdict was taken for (its isolating policies explain a default deny).
    pub endpoint_id: u32,
    /// Service frontend the client addressed, when the flow was translated (0 otherwise).
    pub service_addr: Be32,
    pub service_port: Be16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// 256 KiB: ~4.7k records. The agent reads records as they arrive, so the ring only has to cover a
/// burst between two wake-ups; a record it has no room for is counted (`stats::EVENTS_LOST_SLOT`).
/// The agent maps the ring's data twice (the kernel's wrap-around mapping), so each byte here is two
/// of the agent's resident size: at 1 MiB the ring was 2 MiB of it.
pub const EVENTS_RING_BYTES: u32 = 256 << 10;

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);

#[cfg(feature = "user")]
mod pod_impls {
    #![allow(
        unsafe_code,
        reason = "aya::Pod for repr(C) types whose padding is spelled out"
    )]
    use super::*;
    unsafe impl aya::Pod for FlowEvent {}
}
