//! Golden tests: `testdata/lb/<name>.yaml` (standard Kubernetes objects) → plan → reconcile on
//! [`FakeMaps`] → `testdata/lb/<name>.dump` (plan, derived slices in standalone mode, map dump).
//! `UPDATE_GOLDEN=1 cargo test ...` rewrites the dumps; review the diff.
//!
//! A scenario's first comment lines may say `# node: <name>` (the node planned for, default node-a)
//! and `# standalone: true` (derive EndpointSlices from selectors first).

use std::{fmt::Write, path::PathBuf};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;
use crate::{
    reconcile::{FakeMaps, Reconciler, dump},
    snapshot::Snapshot,
    source::manifests::parse_into,
};

pub(crate) fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/lb")
        .join(name)
}

/// A scenario: its snapshot (with derived slices in standalone mode), the node, the derived slices.
pub(crate) fn load(name: &str) -> (Snapshot, String, Vec<EndpointSlice>) {
    let path = testdata(&format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = |key: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&format!("# {key}:")).map(|v| v.trim().to_string()))
    };
    let node = header("node").unwrap_or_else(|| "node-a".into());
    let mut snapshot = Snapshot::default();
    let mut rejected = Vec::new();
    parse_into(&text, &path, &mut snapshot, &mut rejected);
    assert!(
        rejected.is_empty(),
        "{name}: the manifests parser rejected {rejected:?}"
    );
    let mut derived = Vec::new();
    if header("standalone").as_deref() == Some("true") {
        derived = derive_endpoint_slices(&snapshot);
        snapshot
            .endpoint_slices
            .extend(derived.iter().cloned().map(|s| std::sync::Arc::new(s.into())));
    }
    (snapshot, node, derived)
}

fn render_slices(slices: &[EndpointSlice]) -> String {
    let mut out = String::new();
    for s in slices {
        let ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}={}/{}",
                    p.name.as_deref().unwrap_or(""),
                    p.port.unwrap_or(0),
                    p.protocol.as_deref().unwrap_or("")
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{}/{} ports=[{}]",
            s.metadata.namespace.as_deref().unwrap_or(""),
            s.metadata.name.as_deref().unwrap_or(""),
            ports.join(" ")
        );
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            let flag = |v: Option<bool>| match v {
                Some(true) => "1",
                Some(false) => "0",
                None => "-",
            };
            let _ = write!(
                out,
                "  {} node={} zone={} ready={} serving={} terminating={}",
                e.addresses.join(","),
                e.node_name.as_deref().unwrap_or("-"),
                e.zone.as_deref().unwrap_or("-"),
                flag(c.ready),
                flag(c.serving),
                flag(c.terminating)
            );
            if let Some(h) = &e.hints {
                let zones: Vec<&str> = h.for_zones.iter().flatten().map(|z| z.name.as_str()).collect();
                let nodes: Vec<&str> = h.for_nodes.iter().flatten().map(|n| n.name.as_str()).collect();
                let _ = write!(out, " hints=zones:{},nodes:{}", zones.join("+"), nodes.join("+"));
            }
            out.push('\n');
        }
    }
    out
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN=1.
pub(crate) fn check_golden(file: &str, actual: &str) {
    let path = testdata(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(5)
            .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
            .collect();
        panic!(
            "{} differs from the golden file ({} vs {} lines; UPDATE_GOLDEN=1 rewrites it):\n{}\n--- actual ---\n{actual}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

fn golden(name: &str) {
    let (snapshot, node, derived) = load(name);
    let plan = plan(&snapshot, &node);
    let mut maps = FakeMaps::new();
    let mut reconciler = Reconciler::default();
    let outcome = reconciler.reconcile(&plan, &mut maps).expect("first reconcile");
    assert!(outcome.unfit.is_empty(), "{:?}", outcome.unfit);
    let again = reconciler.reconcile(&plan, &mut maps).expect("second reconcile");
    assert!(
        again.ops.is_empty(),
        "{name}: a second pass changed {:?}",
        again.ops
    );

    let mut text = format!("# {name}.yaml planned for {node}\n");
    if !derived.is_empty() {
        text.push_str("\n## derived endpoint slices\n");
        text.push_str(&render_slices(&derived));
    }
    text.push_str("\n## plan\n");
    text.push_str(&render_plan(&plan));
    text.push_str("\n## maps\n");
    text.push_str(&dump::render(&maps.maps));
    check_golden(&format!("{name}.dump"), &text);
}

#[test]
fn golden_clusterip() {
    golden("clusterip");
}

#[test]
fn golden_conditions() {
    golden("conditions");
}

#[test]
fn golden_slices() {
    golden("slices");
}

#[test]
fn golden_skipped() {
    golden("skipped");
}

#[test]
fn golden_traffic_policy() {
    golden("traffic-policy");
}

#[test]
fn golden_topology() {
    golden("topology");
}

#[test]
fn golden_external() {
    golden("external");
}

#[test]
fn golden_north_south() {
    golden("north-south");
}

#[test]
fn golden_standalone() {
    golden("standalone");
}

/// One Service document with `spec` → the field reported, or `None` if planned.
fn rejected_field(spec: &str) -> Option<String> {
    let text = format!("kind: Service\napiVersion: v1\nmetadata: {{name: s, namespace: n}}\nspec: {spec}\n");
    let mut snapshot = Snapshot::default();
    let mut parse_rejected = Vec::new();
    parse_into(
        &text,
        std::path::Path::new("t.yaml"),
        &mut snapshot,
        &mut parse_rejected,
    );
    assert!(parse_rejected.is_empty(), "{parse_rejected:?}");
    let plan = plan(&snapshot, "node-a");
    match plan.rejected.as_slice() {
        [] => None,
        [r] => {
            assert_eq!(
                (r.kind, r.namespace.as_str(), r.name.as_str()),
                ("Service", "n", "s")
            );
            assert!(plan.frontends.is_empty(), "a rejected Service is skipped whole");
            Some(r.field.clone())
        }
        more => panic!("{more:?}"),
    }
}

#[test]
fn bad_service_fields_are_reported_by_name() {
    let cases = [
        ("{clusterIP: 10.96.0.1, ports: [{port: 80}]}", None),
        (
            "{clusterIP: 10.96.0.1, ports: [{port: 0}]}",
            Some("spec.ports[0].port"),
        ),
        (
            "{clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 65536}]}",
            Some("spec.ports[1].port"),
        ),
        (
            "{clusterIP: 10.96.0.1, ports: [{port: 80, protocol: tcp}]}",
            Some("spec.ports[0].protocol"),
        ),
        (
            "{clusterIP: 10.96.0.1, type: NodePort, ports: [{port: 80, nodePort: -1}]}",
            Some("spec.ports[0].nodePort"),
        ),
        (
            "{clusterIP: 10.96.0.x, ports: [{port: 80}]}",
            Some("spec.clusterIP"),
        ),
        (
            "{clusterIPs: [10.96.0.1, 'fd00::z'], ports: [{port: 80}]}",
            Some("spec.clusterIPs[1]"),
        ),
        (
            "{clusterIP: 10.96.0.1, externalIPs: [1.2.3], ports: [{port: 80}]}",
            Some("spec.externalIPs[0]"),
        ),
        (
            "{clusterIP: 10.96.0.1, type: Magic, ports: [{port: 80}]}",
            Some("spec.type"),
        ),
        (
            "{clusterIP: 10.96.0.1, internalTrafficPolicy: Nearby, ports: [{port: 80}]}",
            Some("spec.internalTrafficPolicy"),
        ),
        (
            "{clusterIP: 10.96.0.1, sessionAffinity: Cookie, ports: [{port: 80}]}",
            Some("spec.sessionAffinity"),
        ),
        (
            "{clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
            Some("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        ),
        // IPv6-only and headless Services are not bad input, just not planned for IPv4.
        ("{clusterIP: 'fd00::1', ports: [{port: 80}]}", None),
        ("{clusterIP: None, ports: [{port: 80, protocol: ICMP}]}", None),
    ];
    for (spec, expected) in cases {
        assert_eq!(rejected_field(spec).as_deref(), expected, "{spec}");
    }
}

#[test]
fn protocols_round_trip_through_their_numbers() {
    for p in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
        assert_eq!(Proto::from_number(p.number()), Some(p));
        assert_eq!(Proto::parse(Some(p.as_str())), Ok(p));
    }
    assert_eq!(Proto::parse(None), Ok(Proto::Tcp));
    assert!(Proto::parse(Some("ICMP")).is_err());
}

#[test]
fn health_checks_count_ready_local_endpoint_addresses_per_node() {
    let (snapshot, _, _) = load("north-south");
    let checks = |node: &str| -> Vec<(u16, String, usize)> {
        plan(&snapshot, node)
            .health_checks
            .into_iter()
            .map(|h| (h.port, format!("{}/{}", h.namespace, h.name), h.local_endpoints))
            .collect()
    };
    // node-a: web has two ready pods (each on two ports: counted once) and a terminating one (not
    // counted); elsewhere has none here.
    assert_eq!(
        checks("node-a"),
        [(32001, "shop/web".into(), 2), (32002, "shop/elsewhere".into(), 0)]
    );
    assert_eq!(
        checks("node-b"),
        [(32001, "shop/web".into(), 1), (32002, "shop/elsewhere".into(), 1)]
    );
    // Only LoadBalancer + externalTrafficPolicy Local get one; a Cluster policy or a NodePort Service
    // with the field set is not served (kube-proxy's NeedsHealthCheck).
    let ports: Vec<u16> = checks("node-c").iter().map(|c| c.0).collect();
    assert_eq!(ports, [32001, 32002]);
}
