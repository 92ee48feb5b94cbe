//! Entry points of the datapath. Each one is thin: it calls a module and maps the result to an action.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use common::stats::StatIndex;

/// tc ingress on a pod's host-side veth: everything the pod sends.
#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::FromPod, ctx.len());
    TC_ACT_OK
}

/// tc egress on a pod's host-side veth: everything delivered to the pod.
#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    stats::count(StatIndex::ToPod, ctx.len());
    TC_ACT_OK
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
