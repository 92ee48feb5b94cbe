//! Address and port rewrites with incremental checksum fixes. The kernel helpers are used for the
//! checksums because they handle every skb checksum state: packets from a local socket through a veth are
//! CHECKSUM_PARTIAL (the L4 field holds only the pseudo-header sum), which hand arithmetic would corrupt.

use aya_ebpf::programs::TcContext;
use common::net::proto;

use crate::parse::{ETH_HLEN, Ipv4Flow};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Offset of the L4 checksum and the flags its updates need, or `None` for protocols whose checksum
/// does not cover addresses or ports in a way these helpers can fix (SCTP's CRC32c is redone separately).
#[inline(always)]
fn l4_csum(flow: &Ipv4Flow) -> Option<(usize, u64)> {
    match flow.proto {
        proto::TCP => Some((flow.l4 + 16, 0)),
        // A zero UDP checksum means "none" and must stay zero.
        proto::UDP => Some((flow.l4 + 6, BPF_F_MARK_MANGLED_0)),
        _ => None,
    }
}

/// Rewrites one end's address and port (both raw network order). Returns Err when a helper fails; the
/// caller drops the packet then, since it may be half-rewritten.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &mut Ipv4Flow, end: End, addr: u32, port: u16) -> Result<(), ()> {
    let (addr_off, port_off, old_addr, old_port) = match end {
        End::Source => (IP_SADDR_OFF, flow.l4, flow.saddr, flow.sport),
        End::Destination => (IP_DADDR_OFF, flow.l4 + 2, flow.daddr, flow.dport),
    };
    if old_addr != addr {
        ctx.store(addr_off, &addr, 0).map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(addr), 4)
            .map_err(|_| ())?;
        if let Some((off, flags)) = l4_csum(flow) {
            ctx.l4_csum_replace(
                off,
                u64::from(old_addr),
                u64::from(addr),
                flags | BPF_F_PSEUDO_HDR | 4,
            )
            .map_err(|_| ())?;
        }
    }
    if old_port != port && has_ports(flow.proto) {
        ctx.store(port_off, &port, 0).map_err(|_| ())?;
        if let Some((off, flags)) = l4_csum(flow) {
            ctx.l4_csum_replace(off, u64::from(old_port), u64::from(port), flags | 2)
                .map_err(|_| ())?;
        }
    }
    if flow.proto == proto::SCTP && old_port != port {
        flow.crc_stale = true;
    }
    match end {
        End::Source => {
            flow.saddr = addr;
            flow.sport = port;
        }
        End::Destination => {
            flow.daddr = addr;
            flow.dport = port;
        }
    }
    Ok(())
}

/// Completes a packet's rewrites: SCTP's CRC32c covers the whole packet, so it is redone once, after
/// every rewrite, rather than per rewrite (each pass is a loop over the packet the verifier walks too).
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
