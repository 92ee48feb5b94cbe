//! Entry points of the datapath. Each one is thin: it calls a module and maps the result to an action.
#![no_std]
#![no_main]

mod ct;
mod lb;
mod maps;
mod nat;
mod parse;
mod reject;
mod sctp;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use common::stats::StatIndex;
use lb::Outcome;
use parse::Parsed;

/// tc ingress on a pod's host-side veth: everything the pod sends.
#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::FromPod, ctx.len());
    let mut flow = match parse::parse_tc(&ctx) {
        Parsed::Ipv4(flow) => flow,
        Parsed::NotIpv4 | Parsed::Malformed => return TC_ACT_OK,
    };
    match lb::from_pod(&ctx, &mut flow) {
        Outcome::Pass => TC_ACT_OK,
        Outcome::RedirectBack => redirect_back(&ctx),
        Outcome::Reject => reject::refuse(&ctx, &flow),
        Outcome::Drop => TC_ACT_SHOT,
    }
}

/// tc egress on a pod's host-side veth: everything delivered to the pod.
#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::ToPod, ctx.len());
    let mut flow = match parse::parse_tc(&ctx) {
        Parsed::Ipv4(flow) => flow,
        Parsed::NotIpv4 | Parsed::Malformed => return TC_ACT_OK,
    };
    match lb::to_pod(&ctx, &mut flow) {
        Outcome::Pass => TC_ACT_OK,
        Outcome::RedirectBack => redirect_back(&ctx),
        Outcome::Reject | Outcome::Drop => TC_ACT_SHOT,
    }
}

/// Sends the packet out of the interface it arrived on: from a pod's veth ingress that delivers it
/// back into the same pod. The pod addressed the frame to the host's MAC; delivered unchanged, the
/// pod would see a frame for another host and drop it, so the MAC addresses are swapped.
#[inline(always)]
fn redirect_back(ctx: &TcContext) -> i32 {
    if reject::swap_macs(ctx).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: reading the ifindex of the skb this program runs on; the helper has no preconditions.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// XDP on the node's devices: traffic entering the node from its network.
#[xdp]
pub fn xdp_node(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data());
    stats::count(StatIndex::XdpNode, len as u32);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panic is reachable in verified code; the loop only satisfies the type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
