//! Address and port rewrites at XDP, where no skb helpers exist: checksums are updated by hand
//! (RFC 1624). Packets at XDP come from the network with complete checksums, which is what this
//! arithmetic assumes (a CHECKSUM_PARTIAL packet from a local socket never reaches a node device's XDP).

use aya_ebpf::programs::XdpContext;
use common::{csum::updated, net::proto};

use crate::{
    nat::{self, Tuple},
    parse::{ETH_HLEN, Ipv4Flow, ptr_at},
};

/// Rewrites addresses, ports, checksums and MAC addresses. Every bound is checked before the first
/// write, so an error leaves the packet untouched.
#[inline(always)]
pub fn apply(
    ctx: &XdpContext,
    flow: &Ipv4Flow,
    to: &Tuple,
    smac: &[u8; 6],
    dmac: &[u8; 6],
) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let eth = ptr_at::<[u8; 12]>(start, end, 0).ok_or(())?;
    let ip = ptr_at::<[u8; 20]>(start, end, ETH_HLEN).ok_or(())?;
    let l4 = flow.l4;
    if l4 > ETH_HLEN + 60 {
        return Err(());
    }
    let ports = ptr_at::<[u16; 2]>(start, end, l4).ok_or(())?;
    let csum_off = match flow.proto {
        proto::TCP => l4 + 16,
        proto::UDP => l4 + 6,
        _ => return Err(()),
    };
    let l4_csum = ptr_at::<u16>(start, end, csum_off).ok_or(())?;

    let (addr_diff, port_diff) = nat::diffs(flow, to);
    // SAFETY: every pointer was bounds-checked against data_end above.
    unsafe {
        let ip = &mut *ip;
        let ip_csum = u16::from_ne_bytes([ip[10], ip[11]]);
        let ip_csum = updated(ip_csum, addr_diff).to_ne_bytes();
        ip[10] = ip_csum[0];
        ip[11] = ip_csum[1];
        ip[12..16].copy_from_slice(&to.saddr.to_ne_bytes());
        ip[16..20].copy_from_slice(&to.daddr.to_ne_bytes());

        let old = core::ptr::read_unaligned(l4_csum);
        // A zero UDP checksum means "none" and stays zero; a computed zero is sent as all ones.
        if !(flow.proto == proto::UDP && old == 0) {
            let mut new = updated(old, addr_diff + port_diff);
            if flow.proto == proto::UDP && new == 0 {
                new = 0xffff;
            }
            core::ptr::write_unaligned(l4_csum, new);
        }
        core::ptr::write_unaligned(ports, [to.sport, to.dport]);

        let eth = &mut *eth;
        eth[..6].copy_from_slice(dmac);
        eth[6..].copy_from_slice(smac);
    }
    Ok(())
}
