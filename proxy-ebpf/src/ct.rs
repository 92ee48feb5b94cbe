//! Connection tracking for translated flows (see common::ct for the entry layout).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    lb::Backend4,
    net::{Be16, Be32, proto},
};

use crate::{maps::STRAIT_CT4_V1 as CT4, parse::Ipv4Flow, parse::tcp_flags};

/// The key of a packet as it is on the wire now.
#[inline(always)]
pub fn key_of(flow: &Ipv4Flow) -> CtKey4 {
    CtKey4 {
        saddr: Be32::from_raw(flow.saddr),
        daddr: Be32::from_raw(flow.daddr),
        sport: Be16::from_raw(flow.sport),
        dport: Be16::from_raw(flow.dport),
        proto: flow.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn lookup(key: &CtKey4) -> Option<&'static mut CtEntry4> {
    // SAFETY: the pointer comes from a successful map lookup; concurrent writers only touch
    // last_seen_ns and flags, where a lost update is harmless.
    CT4.get_ptr_mut(key).map(|p| unsafe { &mut *p })
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

/// Creates both entries of a new translated connection: `forward` is the client's tuple before any
/// rewrite, `reply` the tuple the backend's answer will carry.
#[inline(always)]
pub fn create(
    forward: &CtKey4,
    reply: &CtKey4,
    backend_id: u32,
    backend: &Backend4,
    rev_nat: u16,
    snat_from: Option<u32>,
) -> Result<(), ()> {
    let now = now();
    let snat = if snat_from.is_some() { ct_flags::SNAT } else { 0 };
    let orig = Be32::from_raw(snat_from.unwrap_or(0));
    let reply_entry = CtEntry4 {
        backend_id,
        rev_nat,
        flags: ct_flags::REPLY | snat,
        last_seen_ns: now,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: 0,
        orig_saddr: orig,
        _pad2: 0,
    };
    // Reply entry first: a forward entry without its reply would translate packets whose answers
    // could not be translated back.
    CT4.insert(reply, &reply_entry, 0).map_err(|_| ())?;
    let forward_entry = CtEntry4 {
        flags: ct_flags::FORWARD | snat,
        ..reply_entry
    };
    if CT4.insert(forward, &forward_entry, 0).is_err() {
        let _ = CT4.remove(reply);
        return Err(());
    }
    Ok(())
}
