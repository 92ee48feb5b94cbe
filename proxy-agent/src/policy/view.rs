//! What is programmed for policy, for people and tools: `policy list`, `identity list`, `policy
//! explain` (JSON shapes served by the admin endpoint, and their tables), and the names flow records
//! need (which policies isolate an endpoint, which pod an address is).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::slim::Pod;
use policy::{
    DirectionVerdict, Explainer, Explanation, Flow, Peer, PodRef, PolicyDesired, PolicyInput, PolicyRef,
    Protocol,
};
use serde::{Deserialize, Serialize};

use super::render::flags_text;

/// The policy state of the node after the last compile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyState {
    pub node: String,
    pub endpoints: Vec<EndpointRow>,
    pub identities: Vec<IdentityRow>,
    /// `policy_ref` → `namespace/name`.
    pub policies: BTreeMap<u16, String>,
    /// Invalid policies (skipped): `policy ns/name: field: message`.
    pub errors: Vec<String>,
    pub ipcache_entries: usize,
    pub policy_entries: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRow {
    pub pod: String,
    pub ip: String,
    pub endpoint_id: u32,
    pub identity: u32,
    /// `ingress-isolated,egress-isolated` or `none`.
    pub flags: String,
    /// Policies that select the pod and list Ingress (empty: ingress not isolated).
    pub ingress_isolated_by: Vec<String>,
    pub egress_isolated_by: Vec<String>,
    /// Policy entries (LPM keys) programmed for this endpoint.
    pub entries: usize,
}

impl EndpointRow {
    /// Every policy selecting the pod.
    pub fn policies(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .ingress_isolated_by
            .iter()
            .chain(&self.egress_isolated_by)
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityRow {
    pub id: u32,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Named ports, `name=port/PROTO,...` (part of the identity).
    pub named_ports: String,
    pub pods: Vec<String>,
}

/// Pod names by address, for naming flow records and identities: the pods themselves (shared with the
/// snapshot, not copied) and their addresses sorted. A map of `ns/name` strings held 10k names at the
/// agent bench's scale (~0.6 MiB); this holds two words per pod and formats a name when asked.
#[derive(Debug, Clone, Default)]
pub struct PodsByIp {
    pods: Vec<Arc<Pod>>,
    /// (address, index into `pods`), sorted by address, one per address.
    by_ip: Vec<(Ipv4Addr, u32)>,
}

impl PodsByIp {
    /// Live pods that own their address (not host-network, not finished); of two with one address,
    /// the first listed names it.
    pub fn new(pods: &[Arc<Pod>]) -> Self {
        let mut kept = Vec::with_capacity(pods.len());
        let mut by_ip = Vec::with_capacity(pods.len());
        for p in pods {
            let Some(ip) = own_address(p) else {
                continue;
            };
            let at = u32::try_from(kept.len()).expect("fewer than 2^32 pods");
            by_ip.push((ip, at));
            kept.push(p.clone());
        }
        // Sorted by address, then by listing position: the first pod listed comes first among equal
        // addresses whatever the sort, and dedup keeps it.
        by_ip.sort_unstable();
        by_ip.dedup_by_key(|&mut (ip, _)| ip);
        Self { pods: kept, by_ip }
    }

    /// `namespace/name` of the pod with address `ip`.
    pub fn get(&self, ip: Ipv4Addr) -> Option<String> {
        let at = self.by_ip.binary_search_by_key(&ip, |&(a, _)| a).ok()?;
        Some(pod_name(&self.pods[self.by_ip[at].1 as usize]))
    }

    /// Every (address, `namespace/name`), by address.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, String)> + '_ {
        self.by_ip
            .iter()
            .map(|&(ip, at)| (ip, pod_name(&self.pods[at as usize])))
    }
}

/// A running pod with an address, for tests that name flows.
#[cfg(test)]
pub fn test_pod(namespace: &str, name: &str, ip: &str) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: policy::slim::ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(policy::slim::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pod's address when it owns one: live (not finished) and not on the host network.
fn own_address(p: &Pod) -> Option<Ipv4Addr> {
    let spec_host = p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    let status = p.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if spec_host || finished {
        return None;
    }
    status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
}

/// Policies isolating each of `pods`, per direction (ingress, egress).
///
/// `explain` names the isolating policies of a direction only when it denies, so this asks it about a
/// copy of the input whose policies keep their selectors and (explicit) policy types but lose their
/// rules: then every isolated direction denies, and names its policies. Invalid policies are left out,
/// as compile and explain leave them out.
pub fn isolating_policies(
    input: &PolicyInput,
    pods: &[PodRef],
) -> BTreeMap<PodRef, (Vec<PolicyRef>, Vec<PolicyRef>)> {
    let invalid: Vec<PolicyRef> = policy::policy_errors(input)
        .into_iter()
        .map(|e| e.policy)
        .collect();
    let mut stripped = PolicyInput {
        namespaces: input.namespaces.clone(),
        pods: input.pods.clone(),
        policies: Vec::new(),
        nodes: Vec::new(),
    };
    for np in &input.policies {
        let id = PolicyRef::new(
            np.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            np.metadata.name.clone().unwrap_or_default(),
        );
        if invalid.contains(&id) {
            continue;
        }
        let mut np = (**np).clone();
        let spec = np.spec.get_or_insert_with(Default::default);
        if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
            let mut types = vec!["Ingress".to_owned()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                types.push("Egress".to_owned());
            }
            spec.policy_types = Some(types);
        }
        spec.ingress = None;
        spec.egress = None;
        stripped.policies.push(std::sync::Arc::new(np));
    }
    let explainer = Explainer::new(&stripped);
    let mut out = BTreeMap::new();
    for pod in pods {
        let flow = Flow {
            from: Peer::Pod(pod.clone()),
            to: pod.clone(),
            port: 1,
            protocol: Protocol::Tcp,
        };
        let Ok(e) = explainer.explain(&flow) else {
            continue;
        };
        let by = |v: Option<&DirectionVerdict>| match v {
            Some(DirectionVerdict::DefaultDeny { isolated_by }) => isolated_by.clone(),
            _ => Vec::new(),
        };
        out.insert(pod.clone(), (by(Some(&e.ingress)), by(e.egress.as_ref())));
    }
    out
}

impl PolicyState {
    /// `by_ip` is `PodsByIp::new(&input.pods)`, built by the caller, which keeps it to name flows.
    pub fn build(d: &PolicyDesired, input: &PolicyInput, by_ip: &PodsByIp) -> Self {
        let local: Vec<PodRef> = d.endpoint_table.values().map(|e| e.pod.clone()).collect();
        let isolation = isolating_policies(input, &local);
        let names = |v: &[PolicyRef]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut entries: BTreeMap<u32, usize> = BTreeMap::new();
        for k in d.policy.keys() {
            *entries.entry(k.endpoint_id).or_default() += 1;
        }
        let endpoints = d
            .endpoint_table
            .iter()
            .map(|(id, e)| {
                let (ing, eg) = isolation.get(&e.pod).cloned().unwrap_or_default();
                EndpointRow {
                    pod: e.pod.to_string(),
                    ip: e.ip.to_string(),
                    endpoint_id: *id,
                    identity: e.identity,
                    flags: flags_text(e.flags),
                    ingress_isolated_by: names(&ing),
                    egress_isolated_by: names(&eg),
                    entries: entries.get(id).copied().unwrap_or(0),
                }
            })
            .collect();
        let mut pods_of: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (k, v) in &d.ipcache {
            if k.prefix_len != 32 {
                continue;
            }
            if let Some(pod) = by_ip.get(Ipv4Addr::from(k.addr.octets())) {
                pods_of.entry(v.identity).or_default().push(pod);
            }
        }
        let identities = d
            .identities
            .iter()
            .map(|(id, k)| IdentityRow {
                id: *id,
                namespace: k.namespace.clone(),
                labels: k.labels.clone(),
                named_ports: k.named_ports.to_string(),
                pods: pods_of.remove(id).unwrap_or_default(),
            })
            .collect();
        Self {
            node: d.node.clone(),
            endpoints,
            identities,
            policies: d.policies.iter().map(|(r, p)| (*r, p.to_string())).collect(),
            errors: d.errors.iter().map(ToString::to_string).collect(),
            ipcache_entries: d.ipcache.len(),
            policy_entries: d.policy.len(),
        }
    }

    pub fn endpoint(&self, id: u32) -> Option<&EndpointRow> {
        self.endpoints.iter().find(|e| e.endpoint_id == id)
    }
}

/// `policy list` for people.
pub fn render_policy_list(s: &PolicyState) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>9} {:<9} {:<9} {:>7}  POLICIES",
        "POD", "ENDPOINT", "IDENTITY", "INGRESS", "EGRESS", "ENTRIES"
    );
    let iso = |by: &[String]| if by.is_empty() { "open" } else { "isolated" };
    for e in &s.endpoints {
        let policies = e.policies();
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>9} {:<9} {:<9} {:>7}  {}",
            e.pod,
            e.endpoint_id,
            e.identity,
            iso(&e.ingress_isolated_by),
            iso(&e.egress_isolated_by),
            e.entries,
            if policies.is_empty() {
                "-".to_owned()
            } else {
                policies.join(",")
            }
        );
    }
    for err in &s.errors {
        let _ = writeln!(out, "skipped: {err}");
    }
    out
}

/// `identity list` for people.
pub fn render_identity_list(s: &PolicyState) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>9}  {:<12} {:<40} PODS", "ID", "NAMESPACE", "LABELS");
    let _ = writeln!(out, "{:>9}  {:<12} {:<40} -", 1, "-", "reserved:host");
    let _ = writeln!(out, "{:>9}  {:<12} {:<40} -", 2, "-", "reserved:world");
    for i in &s.identities {
        let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut labels = if labels.is_empty() {
            "-".to_owned()
        } else {
            labels.join(",")
        };
        if !i.named_ports.is_empty() {
            let _ = write!(labels, " ports={}", i.named_ports);
        }
        let _ = writeln!(
            out,
            "{:>9}  {:<12} {:<40} {}",
            i.id,
            i.namespace,
            labels,
            if i.pods.is_empty() {
                "-".to_owned()
            } else {
                i.pods.join(",")
            }
        );
    }
    out
}

/// An explanation as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainView {
    pub from: String,
    pub from_pod: Option<String>,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
    /// Absent when the source is not a pod.
    pub egress: Option<DirectionView>,
    pub ingress: DirectionView,
    pub skipped: Vec<String>,
    /// The one-line summary (`allowed: ingress to y/b allowed by y/allow-x rule 0 ...`).
    pub summary: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectionView {
    /// `not-isolated`, `host-allowed`, `allowed` or `default-deny`.
    pub verdict: String,
    /// Rules that allow the flow, the first one the primary: `ns/name rule N (peer P, port Q)`.
    pub allowed_by: Vec<RuleView>,
    pub isolated_by: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleView {
    pub policy: String,
    pub rule: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
}

fn direction_view(v: &DirectionVerdict) -> DirectionView {
    match v {
        DirectionVerdict::NotIsolated => DirectionView {
            verdict: "not-isolated".into(),
            ..Default::default()
        },
        DirectionVerdict::HostAllowed => DirectionView {
            verdict: "host-allowed".into(),
            ..Default::default()
        },
        DirectionVerdict::Allowed(rules) => DirectionView {
            verdict: "allowed".into(),
            allowed_by: rules
                .iter()
                .map(|r| RuleView {
                    policy: r.policy.to_string(),
                    rule: r.rule,
                    peer: r.peer,
                    port: r.port,
                })
                .collect(),
            isolated_by: Vec::new(),
        },
        DirectionVerdict::DefaultDeny { isolated_by } => DirectionView {
            verdict: "default-deny".into(),
            allowed_by: Vec::new(),
            isolated_by: isolated_by.iter().map(ToString::to_string).collect(),
        },
    }
}

impl From<&Explanation> for ExplainView {
    fn from(e: &Explanation) -> Self {
        Self {
            from: e.flow.from.to_string(),
            from_pod: e.from_pod.as_ref().map(ToString::to_string),
            to: e.flow.to.to_string(),
            port: e.flow.port,
            protocol: e.flow.protocol.to_string(),
            allowed: e.allowed,
            egress: e.egress.as_ref().map(direction_view),
            ingress: direction_view(&e.ingress),
            skipped: e.skipped.iter().map(ToString::to_string).collect(),
            summary: e.to_string(),
        }
    }
}

/// `--from NS/POD|IP --to NS/POD:PORT[/PROTO]` → a flow.
pub fn parse_flow(from: &str, to: &str) -> Result<Flow, String> {
    let from = match from.parse::<Ipv4Addr>() {
        Ok(ip) => Peer::Ip(ip),
        Err(_) => Peer::Pod(from.parse()?),
    };
    let (pod, port) = to
        .rsplit_once(':')
        .ok_or_else(|| format!("--to {to:?}: want NS/POD:PORT[/PROTO]"))?;
    let (port, proto) = match port.split_once('/') {
        Some((p, proto)) => (p, proto.parse::<Protocol>()?),
        None => (port, Protocol::Tcp),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("--to {to:?}: {port:?} is not a port (1-65535)"))?;
    Ok(Flow {
        from,
        to: pod.parse()?,
        port,
        protocol: proto,
    })
}

/// `policy explain` for people: the summary, then each direction.
pub fn render_explain(v: &ExplainView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {}:{}/{}: {}",
        v.from_pod.as_ref().map_or_else(
            || v.from.clone(),
            |p| if *p == v.from {
                p.clone()
            } else {
                format!("{} ({p})", v.from)
            }
        ),
        v.to,
        v.port,
        v.protocol,
        if v.allowed { "ALLOWED" } else { "DENIED" }
    );
    let mut dir = |name: &str, d: &DirectionView| {
        let detail = match d.verdict.as_str() {
            "allowed" => {
                let rules: Vec<String> = d
                    .allowed_by
                    .iter()
                    .map(|r| {
                        let peer = r.peer.map_or("any peer".to_owned(), |i| format!("peer {i}"));
                        let port = r.port.map_or("any port".to_owned(), |i| format!("port {i}"));
                        format!("{} rule {} ({peer}, {port})", r.policy, r.rule)
                    })
                    .collect();
                format!("allowed by {}", rules.join("; "))
            }
            "default-deny" => format!("default deny: isolated by {}", d.isolated_by.join(", ")),
            "host-allowed" => "allowed: from the pod's own node".to_owned(),
            _ => "not isolated".to_owned(),
        };
        let _ = writeln!(out, "  {name:<8} {detail}");
    };
    if let Some(e) = &v.egress {
        dir("egress", e);
    }
    dir("ingress", &v.ingress);
    for s in &v.skipped {
        let _ = writeln!(out, "  skipped: {s}");
    }
    out
}

fn policy_state(args: &crate::cli::StatusArgs) -> anyhow::Result<PolicyState> {
    crate::status::get_json(args.admin_addr, "/policy")
}

pub fn print_policy_list(args: &crate::cli::StatusArgs) -> anyhow::Result<()> {
    let s = policy_state(args)?;
    crate::cli::write_stdout(&match args.output {
        crate::cli::Output::Json => serde_json::to_string_pretty(&s.endpoints)? + "\n",
        crate::cli::Output::Table => render_policy_list(&s),
    })
}

pub fn print_identity_list(args: &crate::cli::StatusArgs) -> anyhow::Result<()> {
    let s = policy_state(args)?;
    crate::cli::write_stdout(&match args.output {
        crate::cli::Output::Json => serde_json::to_string_pretty(&s.identities)? + "\n",
        crate::cli::Output::Table => render_identity_list(&s),
    })
}

/// Percent-encodes a query value (pod names and addresses need little, but `/` and `:` are escaped).
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn print_explain(args: &crate::cli::ExplainArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let view = match &args.manifests {
        Some(path) => {
            let (snapshot, rejected) = crate::source::manifests::load(path)?;
            for r in &rejected {
                eprintln!("skipped: {r}");
            }
            let input = super::input_from_snapshot(&snapshot);
            let flow = parse_flow(&args.from, &args.to).map_err(anyhow::Error::msg)?;
            let e = policy::explain(&input, &flow).context("explaining the flow")?;
            ExplainView::from(&e)
        }
        None => crate::status::get_json(
            args.admin_addr,
            &format!(
                "/policy/explain?from={}&to={}",
                query_value(&args.from),
                query_value(&args.to)
            ),
        )?,
    };
    crate::cli::write_stdout(&match args.output {
        crate::cli::Output::Json => serde_json::to_string_pretty(&view)? + "\n",
        crate::cli::Output::Table => render_explain(&view),
    })
}

#[cfg(test)]
mod pods_by_ip_tests {
    use super::*;

    #[test]
    fn names_pods_that_own_their_address_the_first_listed_winning() {
        let mut host = (*test_pod("kube-system", "proxy", "10.0.0.1")).clone();
        host.spec = Some(policy::slim::PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        let mut done = (*test_pod("x", "job", "10.244.1.9")).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [
            test_pod("y", "b", "10.244.1.22"),
            Arc::new(host),
            Arc::new(done),
            test_pod("x", "a", "10.244.1.11"),
            // The same address listed again (a pod replaced, the old one not yet gone).
            test_pod("x", "a-old", "10.244.1.11"),
            test_pod("x", "no-ip", "not an address"),
        ];
        let index = PodsByIp::new(&pods);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            index.iter().collect::<Vec<_>>(),
            vec![
                (ip("10.244.1.11"), "x/a".to_owned()),
                (ip("10.244.1.22"), "y/b".to_owned())
            ]
        );
        assert_eq!(index.get(ip("10.244.1.22")).as_deref(), Some("y/b"));
        for absent in ["10.0.0.1", "10.244.1.9", "10.244.1.12"] {
            assert_eq!(index.get(ip(absent)), None, "{absent}");
        }
        assert_eq!(PodsByIp::default().get(ip("10.244.1.11")), None);
    }
}
