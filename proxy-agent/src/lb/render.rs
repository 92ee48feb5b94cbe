//! A stable, readable text form of an [`LbPlan`] (golden tests, debugging).

use std::fmt::Write;

use common::lb::{SCOPE_INTERNAL, svc_flags};

use super::{FrontendKind, LbPlan};

/// Names of the set `svc_flags` bits, `+`-joined; a frontend without a kind bit is a ClusterIP.
pub fn svc_flag_names(flags: u16) -> String {
    let mut names = Vec::new();
    if flags & (svc_flags::NODEPORT | svc_flags::EXTERNAL_IP | svc_flags::LOADBALANCER) == 0 {
        names.push("ClusterIP");
    }
    for (bit, name) in [
        (svc_flags::NODEPORT, "NodePort"),
        (svc_flags::EXTERNAL_IP, "ExternalIP"),
        (svc_flags::LOADBALANCER, "LoadBalancer"),
        (svc_flags::AFFINITY, "affinity"),
        (svc_flags::EXT_POLICY_LOCAL, "eTP=Local"),
        (svc_flags::HAS_INTERNAL_SCOPE, "two-scopes"),
        (svc_flags::REJECT, "reject"),
        (svc_flags::DROP, "drop"),
        (svc_flags::SOURCE_RANGES, "source-ranges"),
    ] {
        if flags & bit != 0 {
            names.push(name);
        }
    }
    let unknown = flags
        & !(svc_flags::NODEPORT
            | svc_flags::EXTERNAL_IP
            | svc_flags::LOADBALANCER
            | svc_flags::AFFINITY
            | svc_flags::EXT_POLICY_LOCAL
            | svc_flags::HAS_INTERNAL_SCOPE
            | svc_flags::REJECT
            | svc_flags::DROP
            | svc_flags::SOURCE_RANGES);
    let mut out = names.join("+");
    if unknown != 0 {
        let _ = write!(out, "+0x{unknown:x}");
    }
    out
}

/// One line per frontend and per backend, then one per health check, then one per rejected object.
pub fn render_plan(plan: &LbPlan) -> String {
    let mut out = String::new();
    for f in plan.frontends.iter() {
        let kind = match f.kind {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        };
        let scope = if f.scope == SCOPE_INTERNAL {
            " scope=internal"
        } else {
            ""
        };
        let _ = write!(
            out,
            "{}:{}/{}{scope} {kind} {} flags={}",
            f.addr,
            f.port,
            f.proto,
            f.service,
            svc_flag_names(f.flags)
        );
        if f.affinity_timeout != 0 {
            let _ = write!(out, " affinity={}s", f.affinity_timeout);
        }
        if let Some(ranges) = &f.source_ranges {
            let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            let _ = write!(out, " source-ranges=[{}]", ranges.join(","));
        }
        let _ = writeln!(out, " backends={}", f.backends.len());
        for b in &f.backends {
            let _ = write!(out, "  -> {}:{}", b.addr, b.port);
            if let Some(node) = &b.node_name {
                let _ = write!(out, " node={node}");
            }
            if b.local {
                out.push_str(" local");
            }
            if b.terminating {
                out.push_str(" terminating");
            }
            out.push('\n');
        }
    }
    for h in &plan.health_checks {
        let _ = writeln!(
            out,
            "HEALTHCHECK :{} {}/{} local-endpoints={}",
            h.port, h.namespace, h.name, h.local_endpoints
        );
    }
    for r in &plan.rejected {
        let _ = writeln!(out, "REJECTED {r}");
    }
    out
}
