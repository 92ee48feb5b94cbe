//! Prometheus `/metrics` (OpenMetrics text, which Prometheus scrapes natively).
//!
//! Kernel counters (drops, verdicts, packets) are read at scrape time and exposed as they are; the
//! agent's own counters live in [`AgentCounters`]. A fresh registry is encoded per scrape from a
//! [`MetricsSnapshot`], so the output is a pure function of the numbers (and unit-tested as such).
//! Cardinality is bounded: drop reasons are a fixed set, policies only those that exist.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Counters the agent keeps itself.
#[derive(Debug, Clone, Default)]
pub struct AgentCounters {
    /// Map operations performed, by pinned map name.
    pub reconcile_ops: BTreeMap<&'static str, u64>,
    /// Objects reported and skipped, by kind (counted once per distinct problem).
    pub rejected: BTreeMap<String, u64>,
    /// API-server source: failed lists and watches (each retried), by kind.
    pub source_watch_errors: BTreeMap<&'static str, u64>,
    /// API-server source: objects in each kind's store.
    pub source_objects: BTreeMap<&'static str, u64>,
    /// Every object has been read once (the API-server source: every kind listed).
    pub source_synced: bool,
    /// Service health checks that could not listen on their port (each distinct failure once).
    pub health_check_listen_errors: u64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Drop reason label → drops (summed over CPUs).
    pub drops: Vec<(String, u64)>,
    /// `namespace/name` → new connections the policy allowed.
    pub verdicts: Vec<(String, u64)>,
    /// Program name → packets seen.
    pub packets: Vec<(String, u64)>,
    pub counters: AgentCounters,
    pub frontends: u64,
    pub policy_endpoints: u64,
    pub identities: u64,
    /// The agent's allocator: bytes in live allocations and bytes it holds resident.
    pub heap: Option<crate::memory::HeapStats>,
    /// Flow records the datapath could not write (events ring full).
    pub flow_records_lost: u64,
}

type Labels = Vec<(String, String)>;

fn family(registry: &mut Registry, name: &str, help: &str, label: &str, values: &[(String, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in values {
        f.get_or_create(&vec![(label.to_owned(), l.clone())]).inc_by(*v);
    }
    registry.register(name, help, f);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The exposition text (`name_total` for counters, `# EOF` at the end).
pub fn render(s: &MetricsSnapshot) -> String {
    let mut r = Registry::default();
    family(
        &mut r,
        "strait_datapath_drops",
        "Packets dropped by the datapath, by reason",
        "reason",
        &s.drops,
    );
    let verdicts = Family::<Labels, Counter>::default();
    for (policy, v) in &s.verdicts {
        verdicts
            .get_or_create(&vec![
                ("policy".to_owned(), policy.clone()),
                ("verdict".to_owned(), "allowed".to_owned()),
            ])
            .inc_by(*v);
    }
    r.register(
        "strait_policy_verdicts",
        "New connections allowed, by the NetworkPolicy that allowed them",
        verdicts,
    );
    family(
        &mut r,
        "strait_datapath_packets",
        "Packets seen by each datapath program",
        "program",
        &s.packets,
    );
    let ops: Vec<(String, u64)> = s
        .counters
        .reconcile_ops
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    family(
        &mut r,
        "strait_reconcile_operations",
        "Map operations performed by the reconcilers, by map",
        "map",
        &ops,
    );
    let rejected: Vec<(String, u64)> = s.counters.rejected.iter().map(|(k, v)| (k.clone(), *v)).collect();
    family(
        &mut r,
        "strait_objects_rejected",
        "Objects reported as unusable and skipped, by kind",
        "kind",
        &rejected,
    );
    let watch_errors: Vec<(String, u64)> = s
        .counters
        .source_watch_errors
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    family(
        &mut r,
        "strait_source_watch_errors",
        "Failed lists and watches of the API-server source, by kind (each is retried with backoff)",
        "kind",
        &watch_errors,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(s.flow_records_lost);
    r.register(
        "strait_flow_records_lost",
        "Flow records (drops, new connections through isolated pods) the events ring had no room for; the packets themselves are unaffected",
        lost,
    );
    let listen_errors = Counter::<u64>::default();
    listen_errors.inc_by(s.counters.health_check_listen_errors);
    r.register(
        "strait_health_check_listen_errors",
        "Service health checks (spec.healthCheckNodePort) that could not listen on their port",
        listen_errors,
    );
    let objects = Family::<Labels, Gauge>::default();
    for (kind, n) in &s.counters.source_objects {
        objects
            .get_or_create(&vec![("kind".to_owned(), (*kind).to_owned())])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    r.register(
        "strait_source_objects",
        "Objects held by the API-server source, by kind",
        objects,
    );
    gauge(
        &mut r,
        "strait_source_synced",
        "1 once every object has been read (the API-server source: every kind listed)",
        u64::from(s.counters.source_synced),
    );
    gauge(
        &mut r,
        "strait_services_frontends",
        "Service frontends programmed",
        s.frontends,
    );
    gauge(
        &mut r,
        "strait_policy_endpoints",
        "Local pods known to the policy datapath",
        s.policy_endpoints,
    );
    gauge(
        &mut r,
        "strait_identities",
        "Pod identities (distinct label sets) in use",
        s.identities,
    );
    if let Some(heap) = s.heap {
        gauge(
            &mut r,
            "strait_agent_heap_allocated_bytes",
            "Bytes in the agent's live heap allocations",
            heap.allocated,
        );
        gauge(
            &mut r,
            "strait_agent_heap_resident_bytes",
            "Bytes of memory the agent's allocator holds resident (live allocations, its metadata, free pages not yet returned)",
            heap.resident,
        );
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_with_its_labels() {
        let mut s = MetricsSnapshot {
            drops: vec![("policy-ingress".into(), 7), ("spoofed-source".into(), 0)],
            verdicts: vec![("y/allow-x".into(), 3)],
            packets: vec![("tc_to_pod".into(), 42)],
            frontends: 2,
            policy_endpoints: 3,
            identities: 4,
            heap: Some(crate::memory::HeapStats {
                allocated: 5,
                resident: 6,
            }),
            flow_records_lost: 11,
            ..Default::default()
        };
        s.counters.reconcile_ops.insert("STRAIT_POLICY_V1", 9);
        s.counters.rejected.insert("NetworkPolicy".into(), 1);
        s.counters.source_watch_errors.insert("Pod", 2);
        s.counters.source_objects.insert("Pod", 10);
        s.counters.source_synced = true;
        let text = render(&s);
        for line in [
            "strait_datapath_drops_total{reason=\"policy-ingress\"} 7",
            "strait_datapath_drops_total{reason=\"spoofed-source\"} 0",
            "strait_policy_verdicts_total{policy=\"y/allow-x\",verdict=\"allowed\"} 3",
            "strait_datapath_packets_total{program=\"tc_to_pod\"} 42",
            "strait_reconcile_operations_total{map=\"STRAIT_POLICY_V1\"} 9",
            "strait_objects_rejected_total{kind=\"NetworkPolicy\"} 1",
            "strait_source_watch_errors_total{kind=\"Pod\"} 2",
            "strait_source_objects{kind=\"Pod\"} 10",
            "strait_source_synced 1",
            "strait_services_frontends 2",
            "strait_policy_endpoints 3",
            "strait_identities 4",
            "strait_agent_heap_allocated_bytes 5",
            "strait_agent_heap_resident_bytes 6",
            "strait_flow_records_lost_total 11",
            "# TYPE strait_datapath_drops counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
