//! A stable, readable text dump of the load-balancing maps (in the style of Cilium's `lbmaps.dump`),
//! for golden tests and `proxy-agent` debug output:
//!
//! ```text
//! SVC 10.96.0.10:53/UDP slot=0 count=2 revnat=1 flags=ClusterIP
//! SVC 10.96.0.10:53/UDP slot=1 backend=1
//! BE 1 10.244.1.5:53/UDP flags=local
//! REVNAT 1 10.96.0.10:53
//! ```
//!
//! Lines are ordered by address (numerically), port, protocol, scope and slot; backends and rev-NAT
//! entries by id.

use std::{fmt::Write, net::Ipv4Addr};

use common::lb::{Backend4, Lb4Key, Lb4Service, RevNat4, SCOPE_EXTERNAL, SCOPE_INTERNAL, backend_flags};

use super::DesiredMaps;
use crate::lb::{Proto, render::svc_flag_names};

pub fn proto_name(proto: u8) -> String {
    Proto::from_number(proto).map_or_else(|| format!("proto{proto}"), |p| p.as_str().to_string())
}

/// `10.96.0.10:53/UDP`, plus ` scope=internal` for the internal-scope entry.
pub fn key_text(key: &Lb4Key) -> String {
    let mut out = format!(
        "{}:{}/{}",
        Ipv4Addr::from(key.addr.octets()),
        key.port.get(),
        proto_name(key.proto)
    );
    match key.scope {
        SCOPE_EXTERNAL => {}
        SCOPE_INTERNAL => out.push_str(" scope=internal"),
        other => {
            let _ = write!(out, " scope={other}");
        }
    }
    let _ = write!(out, " slot={}", key.slot);
    out
}

pub fn service_line(key: &Lb4Key, svc: &Lb4Service) -> String {
    let mut out = format!("SVC {}", key_text(key));
    if key.slot == 0 {
        let _ = write!(
            out,
            " count={} revnat={} flags={}",
            svc.count,
            svc.rev_nat,
            svc_flag_names(svc.flags)
        );
        if svc.affinity_timeout != 0 {
            let _ = write!(out, " affinity={}s", svc.affinity_timeout);
        }
    } else {
        let _ = write!(out, " backend={}", svc.backend_id);
    }
    out
}

pub fn backend_line(id: u32, be: &Backend4) -> String {
    let mut flags = Vec::new();
    if be.flags & backend_flags::LOCAL != 0 {
        flags.push("local".to_string());
    }
    if be.flags & backend_flags::TERMINATING != 0 {
        flags.push("terminating".to_string());
    }
    let unknown = be.flags & !(backend_flags::LOCAL | backend_flags::TERMINATING);
    if unknown != 0 {
        flags.push(format!("0x{unknown:x}"));
    }
    let mut out = format!(
        "BE {id} {}:{}/{}",
        Ipv4Addr::from(be.addr.octets()),
        be.port.get(),
        proto_name(be.proto)
    );
    if !flags.is_empty() {
        let _ = write!(out, " flags={}", flags.join("+"));
    }
    out
}

pub fn revnat_line(id: u32, rn: &RevNat4) -> String {
    format!(
        "REVNAT {id} {}:{}",
        Ipv4Addr::from(rn.addr.octets()),
        rn.port.get()
    )
}

/// The whole dump, one entry a line.
pub fn render(maps: &DesiredMaps) -> String {
    let mut services: Vec<(&Lb4Key, &Lb4Service)> = maps.services.iter().collect();
    services.sort_by_key(|(k, _)| (k.addr.get(), k.port.get(), k.proto, k.scope, k.slot));
    let mut out = String::new();
    for (key, svc) in services {
        out.push_str(&service_line(key, svc));
        out.push('\n');
    }
    for (&id, be) in &maps.backends {
        out.push_str(&backend_line(id, be));
        out.push('\n');
    }
    for (&id, rn) in &maps.revnat {
        out.push_str(&revnat_line(id, rn));
        out.push('\n');
    }
    out
}
