//! Address and port rewrites with incremental checksum fixes.
//!
//! Fields and the IPv4 header checksum are written directly: the IP header checksum is always complete,
//! whatever the skb's checksum state. The L4 checksum goes through the kernel helper, because it
//! handles every skb checksum state: packets from a local socket through a veth are CHECKSUM_PARTIAL
//! (the L4 field holds only the pseudo-header sum, which a port change must leave alone), which hand
//! arithmetic would corrupt. The helper takes a whole difference, so a rewrite costs at most two calls
//! (addresses, which are in the pseudo-header, and ports, which are not) whatever changes. Per field,
//! a store and its checksum helpers made five calls for an established flow's DNAT and eight for a
//! reply's reverse NAT; going to two took the established flow from 252 to 198 ns on the bench's
//! machine (bench-results/2026-12-07-nat).

use aya_ebpf::programs::TcContext;
use common::{
    csum::{diff16, diff32, updated},
    net::proto,
};

use crate::parse::{ETH_HLEN, Ipv4Flow, ptr_at};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

/// A flow's addressing after translation, raw network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub sport: u16,
    pub daddr: u32,
    pub dport: u16,
}

/// Offset of the L4 checksum and the flags its updates need, or `None` for protocols whose checksum
/// does not cover addresses or ports in a way the helper can fix (SCTP's CRC32c is redone separately).
#[inline(always)]
fn l4_csum(flow: &Ipv4Flow) -> Option<(usize, u64)> {
    match flow.proto {
        proto::TCP => Some((flow.l4 + 16, 0)),
        // A zero UDP checksum means "none" and must stay zero.
        proto::UDP => Some((flow.l4 + 6, BPF_F_MARK_MANGLED_0)),
        _ => None,
    }
}

/// The one's-complement differences rewriting `flow` to `to` makes: (addresses, ports). The first
/// changes the IPv4 header checksum and, through the pseudo-header, the L4 one; both change the L4 one.
#[inline(always)]
pub fn diffs(flow: &Ipv4Flow, to: &Tuple) -> (u64, u64) {
    (
        diff32(flow.saddr, to.saddr) + diff32(flow.daddr, to.daddr),
        diff16(flow.sport, to.sport) + diff16(flow.dport, to.dport),
    )
}

/// A one's-complement difference as the 32-bit partial sum the helper takes.
#[inline(always)]
fn wsum(diff: u64) -> u64 {
    let d = (diff & 0xffff_ffff) + (diff >> 32);
    (d & 0xffff_ffff) + (d >> 32)
}

/// Rewrites the flow to `to` (fields equal to the packet's are left alone) and fixes the IP and L4
/// checksums; SCTP's CRC32c is left to [`finish`]. Returns Err when the headers cannot be reached or a
/// helper fails; the caller drops the packet then, since it may be half-rewritten.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &mut Ipv4Flow, to: &Tuple) -> Result<(), ()> {
    let addrs_change = flow.saddr != to.saddr || flow.daddr != to.daddr;
    let ports_change = has_ports(flow.proto) && (flow.sport != to.sport || flow.dport != to.dport);
    if !addrs_change && !ports_change {
        return Ok(());
    }
    let (addr_diff, port_diff) = diffs(flow, to);
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = ptr_at::<[u8; 20]>(start, end, ETH_HLEN).ok_or(())?;
    let l4 = flow.l4;
    // A bound the verifier can see on the variable offset (IP options make it vary).
    if l4 > ETH_HLEN + 60 {
        return Err(());
    }
    let ports = ptr_at::<[u16; 2]>(start, end, l4).ok_or(())?;
    // SAFETY: both pointers were bounds-checked against data_end above, and nothing between here and
    // the last write moves the packet.
    unsafe {
        if addrs_change {
            let ip = &mut *ip;
            let csum = updated(u16::from_ne_bytes([ip[10], ip[11]]), addr_diff).to_ne_bytes();
            ip[10] = csum[0];
            ip[11] = csum[1];
            ip[12..16].copy_from_slice(&to.saddr.to_ne_bytes());
            ip[16..20].copy_from_slice(&to.daddr.to_ne_bytes());
        }
        if ports_change {
            core::ptr::write_unaligned(ports, [to.sport, to.dport]);
        }
    }
    if let Some((off, flags)) = l4_csum(flow) {
        // Size 0: `to` is a difference. The helpers invalidate packet pointers; none is used after.
        if addrs_change {
            ctx.l4_csum_replace(off, 0, wsum(addr_diff), flags | BPF_F_PSEUDO_HDR)
                .map_err(|_| ())?;
        }
        if ports_change {
            ctx.l4_csum_replace(off, 0, wsum(port_diff), flags)
                .map_err(|_| ())?;
        }
    }
    flow.saddr = to.saddr;
    flow.daddr = to.daddr;
    if has_ports(flow.proto) {
        flow.sport = to.sport;
        flow.dport = to.dport;
    }
    if flow.proto == proto::SCTP && ports_change {
        flow.crc_stale = true;
    }
    Ok(())
}

/// Completes a packet's rewrites: SCTP's CRC32c covers the whole packet, so it is redone once, after
/// every rewrite, rather than in `rewrite`: each pass is a loop over the packet the verifier walks
/// too, and walked inside `rewrite` it took tc_from_pod past the verifier's limit.
#[inline(always)]
pub fn finish(ctx: &TcContext, flow: &mut Ipv4Flow) -> Result<(), ()> {
    if flow.crc_stale {
        crate::sctp::fix_crc32c(ctx, flow.l4)?;
        flow.crc_stale = false;
    }
    Ok(())
}

#[inline(always)]
pub fn has_ports(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}
