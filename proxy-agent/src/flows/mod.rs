//! Flow records: what the datapath reported (drops, and new connections it let through), with names.
//!
//! The kernel writes `common::event::FlowEvent`s to the events ring buffer; the agent reads them
//! (`datapath::events`), names them here — pods by address from the snapshot, `policy_ref` by the
//! compiled policy table, the reason by `DropReason::label`, and for a default deny the policies that
//! isolate the endpoint — and keeps the last [`DEFAULT_CAPACITY`] in memory, numbered, for `/flows` and
//! `proxy-agent flows`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use common::{
    event::{DropReason, FlowEvent, direction, verdict},
    net::{Be16, Be32},
};
use serde::{Deserialize, Serialize};

use crate::policy::view::{PodsByIp, PolicyState};

pub const DEFAULT_CAPACITY: usize = 4096;

/// One side of a flow.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowPeer {
    pub ip: String,
    pub port: u16,
    /// `namespace/name` when the address is a pod's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
}

/// A flow record, named.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowRecord {
    /// Position in the agent's record stream (1, 2, ...): `/flows?since=SEQ` returns the later ones.
    pub seq: u64,
    /// Wall-clock time of the packet, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    pub src: FlowPeer,
    pub dst: FlowPeer,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or the number.
    pub proto: String,
    /// `FORWARDED`, `DROPPED` or `REJECTED`.
    pub verdict: String,
    /// The drop reason (`DropReason::label`); absent when forwarded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// `to-pod` (ingress policy) or `from-pod` (egress policy).
    pub direction: String,
    /// The policy that allowed the flow, `namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule: Option<u16>,
    /// For a default deny: the policies that isolate the endpoint in that direction.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub isolated_by: Vec<String>,
    /// The Service frontend the client addressed, `ip:port`, when the flow was translated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
    pub ifindex: u32,
    pub endpoint_id: u32,
}

/// An answer of `/flows`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowsPage {
    pub flows: Vec<FlowRecord>,
    /// The newest sequence number handed out so far (pass it as `since` to get only newer records).
    pub last_seq: u64,
    /// Records received since start that were pushed out of the buffer before being asked for.
    pub dropped_from_buffer: u64,
    /// Events that could not be decoded (short or unknown records).
    pub undecodable: u64,
}

/// Decodes one ring-buffer record (the bytes of a `FlowEvent`, native byte order).
pub fn decode(b: &[u8]) -> Option<FlowEvent> {
    if b.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u16_at = |i: usize| u16::from_ne_bytes(b[i..i + 2].try_into().expect("2 bytes"));
    Some(FlowEvent {
        ts_ns: u64_at(0),
        saddr: Be32::from_raw(u32_at(8)),
        daddr: Be32::from_raw(u32_at(12)),
        sport: Be16::from_raw(u16_at(16)),
        dport: Be16::from_raw(u16_at(18)),
        proto: b[20],
        verdict: b[21],
        reason: b[22],
        direction: b[23],
        ifindex: u32_at(24),
        policy_ref: u16_at(28),
        rule_index: u16_at(30),
        endpoint_id: u32_at(32),
        service_addr: Be32::from_raw(u32_at(36)),
        service_port: Be16::from_raw(u16_at(40)),
        _pad: 0,
        _pad2: 0,
    })
}

/// What names a flow: refreshed by every policy reconcile.
#[derive(Debug, Clone, Default)]
pub struct FlowContext {
    pub pods_by_ip: PodsByIp,
    /// The same tables as the status's (one allocation, shared).
    pub policy: std::sync::Arc<PolicyState>,
}

fn proto_name(p: u8) -> String {
    match p {
        common::net::proto::TCP => "TCP".into(),
        common::net::proto::UDP => "UDP".into(),
        common::net::proto::SCTP => "SCTP".into(),
        1 => "ICMP".into(),
        n => format!("proto{n}"),
    }
}

/// Names an event. `time_unix_ns` is the event's wall-clock time (see [`wall_clock_ns`]).
pub fn resolve(e: &FlowEvent, time_unix_ns: u64, cx: &FlowContext) -> FlowRecord {
    let peer = |addr: Be32, port: Be16| {
        let ip = Ipv4Addr::from(addr.octets());
        FlowPeer {
            ip: ip.to_string(),
            port: port.get(),
            pod: cx.pods_by_ip.get(ip),
        }
    };
    let reason = DropReason::from_u8(e.reason);
    let verdict_text = match e.verdict {
        verdict::FORWARDED => "FORWARDED".to_owned(),
        verdict::DROPPED => "DROPPED".to_owned(),
        verdict::REJECTED => "REJECTED".to_owned(),
        n => format!("VERDICT{n}"),
    };
    let policy = (e.policy_ref != 0).then(|| {
        cx.policy
            .policies
            .get(&e.policy_ref)
            .cloned()
            .unwrap_or_else(|| format!("#{}", e.policy_ref))
    });
    let isolated_by = match (reason, e.policy_ref) {
        (Some(DropReason::PolicyIngress), 0) => cx
            .policy
            .endpoint(e.endpoint_id)
            .map(|ep| ep.ingress_isolated_by.clone())
            .unwrap_or_default(),
        (Some(DropReason::PolicyEgress), 0) => cx
            .policy
            .endpoint(e.endpoint_id)
            .map(|ep| ep.egress_isolated_by.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    FlowRecord {
        seq: 0,
        time_unix_ns,
        src: peer(e.saddr, e.sport),
        dst: peer(e.daddr, e.dport),
        proto: proto_name(e.proto),
        verdict: verdict_text,
        reason: match reason {
            Some(DropReason::None) => None,
            Some(r) => Some(r.label().to_owned()),
            None => Some(format!("reason{}", e.reason)),
        },
        direction: if e.direction == direction::FROM_POD {
            "from-pod".into()
        } else {
            "to-pod".into()
        },
        policy: policy.clone(),
        rule: policy.map(|_| e.rule_index),
        isolated_by,
        service: (e.service_addr.get() != 0).then(|| {
            format!(
                "{}:{}",
                Ipv4Addr::from(e.service_addr.octets()),
                e.service_port.get()
            )
        }),
        ifindex: e.ifindex,
        endpoint_id: e.endpoint_id,
    }
}

/// The wall-clock time of a kernel timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), given both
/// clocks read now.
pub fn wall_clock_ns(ts_ns: u64, monotonic_now_ns: u64, realtime_now_ns: u64) -> u64 {
    realtime_now_ns.saturating_sub(monotonic_now_ns.saturating_sub(ts_ns))
}

/// (CLOCK_MONOTONIC, CLOCK_REALTIME) now, in nanoseconds.
pub fn clocks_now() -> (u64, u64) {
    use nix::time::{ClockId, clock_gettime};
    let ns = |id| {
        clock_gettime(id)
            .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
            .unwrap_or(0)
    };
    (ns(ClockId::CLOCK_MONOTONIC), ns(ClockId::CLOCK_REALTIME))
}

/// The last N records, numbered.
#[derive(Debug)]
pub struct FlowStore {
    records: VecDeque<FlowRecord>,
    capacity: usize,
    last_seq: u64,
    dropped: u64,
    pub undecodable: u64,
}

impl Default for FlowStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FlowStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
            capacity: capacity.max(1),
            last_seq: 0,
            dropped: 0,
            undecodable: 0,
        }
    }

    pub fn push(&mut self, mut r: FlowRecord) {
        self.last_seq += 1;
        r.seq = self.last_seq;
        if self.records.len() == self.capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(r);
    }

    /// Records with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> FlowsPage {
        let start = self.records.partition_point(|r| r.seq <= since);
        FlowsPage {
            flows: self.records.range(start..).cloned().collect(),
            last_seq: self.last_seq,
            dropped_from_buffer: self.dropped,
            undecodable: self.undecodable,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in nanoseconds.
pub fn clock_text(unix_ns: u64) -> String {
    let ms = unix_ns / 1_000_000;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn peer_text(p: &FlowPeer) -> String {
    format!("{}:{}", p.pod.as_deref().unwrap_or(&p.ip), p.port)
}

/// One line per flow, in the Hubble style:
/// `12:00:01.123 x/a:40312 -> y/b:80 TCP DROPPED policy-ingress (default deny: isolated by y/deny-all)`.
pub fn render_line(r: &FlowRecord) -> String {
    let mut s = format!(
        "{} {} -> {} {} {}",
        clock_text(r.time_unix_ns),
        peer_text(&r.src),
        peer_text(&r.dst),
        r.proto,
        r.verdict
    );
    if let Some(reason) = &r.reason {
        let _ = write!(s, " {reason}");
    }
    match (&r.policy, r.verdict.as_str()) {
        (Some(p), "FORWARDED") => {
            let _ = write!(s, " allowed by {p} rule {}", r.rule.unwrap_or(0));
        }
        (Some(p), _) => {
            let _ = write!(s, " (policy {p} rule {})", r.rule.unwrap_or(0));
        }
        (None, _) => {}
    }
    let policy_drop = matches!(r.reason.as_deref(), Some("policy-ingress" | "policy-egress"));
    if policy_drop && r.policy.is_none() {
        if r.isolated_by.is_empty() {
            s.push_str(" (default deny)");
        } else {
            let _ = write!(s, " (default deny: isolated by {})", r.isolated_by.join(", "));
        }
    }
    if let Some(svc) = &r.service {
        let _ = write!(s, " via service {svc}");
    }
    s
}

/// `proxy-agent flows`: prints the agent's records, then (with `--follow`) polls for new ones.
pub fn print(args: &crate::cli::FlowsArgs) -> anyhow::Result<()> {
    let mut since = args.since;
    let mut first = true;
    loop {
        let page: FlowsPage = crate::status::get_json(args.admin_addr, &format!("/flows?since={since}"))?;
        let mut flows = page.flows.as_slice();
        if first {
            if let Some(n) = args.last {
                flows = &flows[flows.len().saturating_sub(n)..];
            }
            first = false;
        }
        let mut out = String::new();
        for r in flows {
            match args.output {
                crate::cli::Output::Json => out.push_str(&serde_json::to_string(r)?),
                crate::cli::Output::Table => out.push_str(&render_line(r)),
            }
            out.push('\n');
        }
        crate::cli::write_stdout(&out)?;
        // A restarted agent numbers from 1 again: start over rather than wait for the old number.
        since = if page.last_seq < since { 0 } else { page.last_seq };
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::view::EndpointRow;

    fn event() -> FlowEvent {
        FlowEvent {
            ts_ns: 5_000_000_000,
            saddr: Be32::from_octets([10, 244, 1, 11]),
            daddr: Be32::from_octets([10, 244, 1, 22]),
            sport: Be16::new(40312),
            dport: Be16::new(80),
            proto: 6,
            verdict: verdict::DROPPED,
            reason: DropReason::PolicyIngress as u8,
            direction: direction::TO_POD,
            ifindex: 7,
            policy_ref: 0,
            rule_index: 0,
            endpoint_id: 3,
            ..Default::default()
        }
    }

    /// The bytes the kernel writes for `e` (repr(C) layout, native order), built field by field.
    fn bytes(e: &FlowEvent) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(e.ts_ns.to_ne_bytes());
        b.extend(e.saddr.raw().to_ne_bytes());
        b.extend(e.daddr.raw().to_ne_bytes());
        b.extend(e.sport.raw().to_ne_bytes());
        b.extend(e.dport.raw().to_ne_bytes());
        b.extend([e.proto, e.verdict, e.reason, e.direction]);
        b.extend(e.ifindex.to_ne_bytes());
        b.extend(e.policy_ref.to_ne_bytes());
        b.extend(e.rule_index.to_ne_bytes());
        b.extend(e.endpoint_id.to_ne_bytes());
        b.extend(e.service_addr.raw().to_ne_bytes());
        b.extend(e.service_port.raw().to_ne_bytes());
        b.extend([0u8; 6]);
        assert_eq!(b.len(), std::mem::size_of::<FlowEvent>());
        b
    }

    fn context() -> FlowContext {
        let mut policy = PolicyState::default();
        policy.policies.insert(4, "y/allow-x".into());
        policy.endpoints.push(EndpointRow {
            pod: "y/b".into(),
            endpoint_id: 3,
            ingress_isolated_by: vec!["y/deny-all".into()],
            ..Default::default()
        });
        FlowContext {
            pods_by_ip: PodsByIp::new(&[
                crate::policy::view::test_pod("x", "a", "10.244.1.11"),
                crate::policy::view::test_pod("y", "b", "10.244.1.22"),
            ]),
            policy: std::sync::Arc::new(policy),
        }
    }

    #[test]
    fn decodes_what_the_kernel_writes() {
        let mut e = event();
        e.service_addr = Be32::from_octets([10, 96, 0, 10]);
        e.service_port = Be16::new(8080);
        assert_eq!(decode(&bytes(&e)), Some(e));
        assert_eq!(decode(&bytes(&e)[..20]), None);
    }

    #[test]
    fn default_deny_names_the_isolating_policies() {
        let r = resolve(&event(), 12 * 3_600_000_000_000 + 1_123_000_000, &context());
        assert_eq!(r.src.pod.as_deref(), Some("x/a"));
        assert_eq!(r.isolated_by, ["y/deny-all"]);
        assert_eq!(
            render_line(&r),
            "12:00:01.123 x/a:40312 -> y/b:80 TCP DROPPED policy-ingress (default deny: isolated by y/deny-all)"
        );
    }

    #[test]
    fn forwarded_names_the_policy_and_rule() {
        let mut e = event();
        e.verdict = verdict::FORWARDED;
        e.reason = DropReason::None as u8;
        e.policy_ref = 4;
        e.service_addr = Be32::from_octets([10, 96, 0, 10]);
        e.service_port = Be16::new(80);
        let r = resolve(&e, 0, &context());
        assert_eq!(r.reason, None);
        assert!(r.isolated_by.is_empty());
        assert_eq!(
            render_line(&r),
            "00:00:00.000 x/a:40312 -> y/b:80 TCP FORWARDED allowed by y/allow-x rule 0 via service 10.96.0.10:80"
        );
        // Unknown addresses stay addresses; other drop reasons print their label.
        let mut e = event();
        e.saddr = Be32::from_octets([192, 0, 2, 1]);
        e.reason = DropReason::Spoofed as u8;
        e.direction = direction::FROM_POD;
        let r = resolve(&e, 0, &context());
        assert_eq!(
            render_line(&r),
            "00:00:00.000 192.0.2.1:40312 -> y/b:80 TCP DROPPED spoofed-source"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<FlowRecord>(&json).unwrap(), r);
    }

    #[test]
    fn the_store_keeps_the_last_records_in_order() {
        let mut store = FlowStore::new(3);
        for i in 0..5 {
            store.push(FlowRecord {
                ifindex: i,
                ..Default::default()
            });
        }
        let page = store.since(0);
        assert_eq!(page.flows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(page.dropped_from_buffer, 2);
        assert_eq!(page.last_seq, 5);
        assert_eq!(store.since(4).flows.len(), 1);
        assert!(store.since(5).flows.is_empty());
    }

    #[test]
    fn kernel_time_becomes_wall_clock() {
        assert_eq!(wall_clock_ns(90, 100, 1_000), 990);
        assert_eq!(wall_clock_ns(200, 100, 1_000), 1_000);
        assert_eq!(clock_text(3_661_001_000_000), "01:01:01.001");
    }
}
