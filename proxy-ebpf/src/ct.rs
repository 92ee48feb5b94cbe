//! Connection tracking for translated flows (see common::ct for the entry layout).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns};
use common::{
    ct::{CtEntry4, CtKey4, ct_flags, is_avoided, nat_port},
    lb::Backend4,
    net::{Be16, Be32, proto},
};

use crate::{maps::STRAIT_CT4_V2 as CT4, parse::Ipv4Flow, parse::tcp_flags};

/// The key of a packet as it is on the wire now.
#[inline(always)]
pub fn key_of(flow: &Ipv4Flow) -> CtKey4 {
    CtKey4 {
        saddr: Be32::from_raw(flow.saddr),
        daddr: Be32::from_raw(flow.daddr),
        sport: Be16::from_raw(flow.sport),
        dport: Be16::from_raw(flow.dport),
        proto: flow.proto,
        _pad: 0,
        _pad2: 0,
    }
}

#[inline(always)]
pub fn lookup(key: &CtKey4) -> Option<&'static mut CtEntry4> {
    Shared::lookup(key).entry()
}

/// A packet's own conntrack entry, looked up once for the stages that all need it (on a pod's veth
/// egress: policy, then reverse NAT). Each stage takes it with [`Shared::entry`].
#[derive(Clone, Copy)]
pub struct Shared(Option<*mut CtEntry4>);

impl Shared {
    #[inline(always)]
    pub fn lookup(key: &CtKey4) -> Self {
        Self(CT4.get_ptr_mut(key))
    }

    /// The entry as the lookup found it (an insert under the same key since is not seen: callers
    /// use it only where such an entry would change nothing).
    #[inline(always)]
    pub fn entry(self) -> Option<&'static mut CtEntry4> {
        // SAFETY: the pointer comes from a successful map lookup; concurrent writers only touch
        // last_seen_ns and flags, where a lost update is harmless; the stages that take a shared
        // entry run one after the other.
        self.0.map(|p| unsafe { &mut *p })
    }
}

/// CLOCK_MONOTONIC at tick resolution: conntrack and affinity time out in seconds, and the coarse
/// clock is much cheaper per packet than the precise one. The sweeper compares against CLOCK_MONOTONIC.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// last_seen is rewritten at most this often per entry: timeouts are in seconds, and skipping the
/// store keeps a busy flow's entry from bouncing between CPUs.
const TOUCH_EVERY_NS: u64 = 1_000_000_000;

/// Records a packet on an existing entry: time, and TCP teardown so the sweeper can expire it early.
#[inline(always)]
pub fn touch(entry: &mut CtEntry4, flow: &Ipv4Flow, extra: u16) {
    let now = now();
    if now.saturating_sub(entry.last_seen_ns) >= TOUCH_EVERY_NS {
        entry.last_seen_ns = now;
    }
    let mut flags = entry.flags | extra;
    if flow.proto == proto::TCP {
        if flow.tcp_flags & tcp_flags::FIN != 0 {
            flags |= ct_flags::SEEN_FIN;
        }
        if flow.tcp_flags & tcp_flags::RST != 0 {
            flags |= ct_flags::SEEN_RST;
        }
    }
    if flags != entry.flags {
        entry.flags = flags;
    }
}

/// Where a reply restored through `entry` goes: the client as it sent its first packet — its own address
/// again after SNAT (hairpin, north-south with externalTrafficPolicy Cluster), its own port again after
/// a clash. Raw network order.
#[inline(always)]
pub fn reply_destination(entry: &CtEntry4, flow: &Ipv4Flow) -> (u32, u16) {
    let addr = if entry.flags & ct_flags::SNAT != 0 {
        entry.orig_saddr.raw()
    } else {
        flow.daddr
    };
    (addr, entry.client_port.raw())
}

/// What a new translated connection rewrites, as both of its entries record it.
pub struct Translation<'a> {
    pub backend_id: u32,
    pub backend: &'a Backend4,
    pub rev_nat: u32,
    /// The frontend the client addressed (raw network order): the source its answers get back.
    pub frontend_addr: u32,
    pub frontend_port: u16,
    /// Hairpin: the client's address, rewritten to the hairpin address on the way out (0: none).
    pub snat_from: u32,
    /// The client's source port as sent, and as it leaves (they differ after a clash, see PORT_SNAT).
    pub client_port: u16,
    pub wire_port: u16,
    /// Flags both entries carry besides those derived above (`NODEPORT` for north-south).
    pub extra_flags: u16,
}

/// Creates both entries of a new translated connection: `forward` is the client's tuple before any
/// rewrite, `reply` the tuple the backend's answer will carry.
#[inline(always)]
pub fn create(forward: &CtKey4, reply: &CtKey4, t: &Translation) -> Result<(), ()> {
    let now = now();
    let mut flags = t.extra_flags;
    if t.snat_from != 0 {
        flags |= ct_flags::SNAT;
    }
    if t.client_port != t.wire_port {
        flags |= ct_flags::PORT_SNAT;
    }
    let reply_entry = CtEntry4 {
        backend_id: t.backend_id,
        rev_nat: t.rev_nat,
        last_seen_ns: now,
        rewrite_addr: Be32::from_raw(t.frontend_addr),
        rewrite_port: Be16::from_raw(t.frontend_port),
        flags: ct_flags::REPLY | ct_flags::FRONTEND | flags,
        orig_saddr: Be32::from_raw(t.snat_from),
        client_port: Be16::from_raw(t.client_port),
        wire_port: Be16::from_raw(t.wire_port),
    };
    // Reply entry first: a forward entry without its reply would translate packets whose answers
    // could not be translated back.
    CT4.insert(reply, &reply_entry, 0).map_err(|_| ())?;
    let forward_entry = CtEntry4 {
        rewrite_addr: t.backend.addr,
        rewrite_port: t.backend.port,
        flags: ct_flags::FORWARD | flags,
        ..reply_entry
    };
    if CT4.insert(forward, &forward_entry, 0).is_err() {
        let _ = CT4.remove(reply);
        return Err(());
    }
    Ok(())
}

/// Whether `reply` (the tuple a new connection's answers would carry) is free for a connection of
/// `rev_nat`. An entry left by the same client port reaching the same VIP:port is that connection's
/// own past (its forward entry was evicted, or a UDP flow re-balanced) and may be overwritten; any
/// other entry is a live or lingering different connection whose replies would be taken over.
#[inline(always)]
fn reply_free(reply: &CtKey4, rev_nat: u32) -> bool {
    match lookup(reply) {
        None => true,
        Some(e) => e.flags & ct_flags::REPLY != 0 && e.rev_nat == rev_nat,
    }
}

/// Candidates tried for a clashing connection's new source port before giving up (the packet is dropped
/// then, and the client retransmits or retries).
const PORT_ATTEMPTS: u32 = 8;

/// The source port a new connection leaves with: its own when its reply tuple is free and the port is
/// outside `avoid` (host order, `nat::nat_port`), otherwise a random unprivileged port outside `avoid`
/// whose reply tuple is free. `reply.dport` is updated to match.
#[inline(always)]
pub fn wire_port(reply: &mut CtKey4, rev_nat: u32, avoid: (u16, u16)) -> Option<u16> {
    if !is_avoided(reply.dport.get(), avoid.0, avoid.1) && reply_free(reply, rev_nat) {
        return Some(reply.dport.raw());
    }
    for _ in 0..PORT_ATTEMPTS {
        // SAFETY: helper without preconditions.
        let r = unsafe { bpf_get_prandom_u32() };
        reply.dport = Be16::new(nat_port(r, avoid.0, avoid.1));
        if lookup(reply).is_none() {
            return Some(reply.dport.raw());
        }
    }
    None
}
