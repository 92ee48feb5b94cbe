//! The reference evaluator: NetworkPolicy semantics straight from the API documentation, one flow at a
//! time, with the reasons. `simulate(compile(..))` must agree with it on every flow.

use std::fmt;
use std::net::Ipv4Addr;

use crate::model::{
    Cluster, Direction, NamedPorts, PodRef, PodView, PolicyError, PolicyInput, PolicyRef, Protocol,
};

/// The source of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pod(PodRef),
    /// An address; if it is a pod's IP, the flow is from that pod.
    Ip(Ipv4Addr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod(p) => p.fmt(f),
            Peer::Ip(ip) => ip.fmt(f),
        }
    }
}

/// A connection attempt to a pod (after service DNAT: the backend pod and its target port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub from: Peer,
    pub to: PodRef,
    pub port: u16,
    pub protocol: Protocol,
}

/// One rule that allows a flow: indexes into the policy's `spec.ingress`/`spec.egress`, its
/// `from`/`to` and its `ports` (`None` when the rule lists no peers / no ports, i.e. matches all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub policy: PolicyRef,
    pub rule: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
}

/// The verdict of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectionVerdict {
    /// No policy selecting the pod lists this direction.
    NotIsolated,
    /// Ingress from the destination's own node (kubelet probes): always allowed.
    HostAllowed,
    /// Every rule that allows the flow; the first is the primary one.
    Allowed(Vec<RuleMatch>),
    /// Isolated and no rule allows the flow.
    DefaultDeny { isolated_by: Vec<PolicyRef> },
}

impl DirectionVerdict {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, DirectionVerdict::DefaultDeny { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub flow: Flow,
    /// The source pod, when the source is (or resolves to) a pod.
    pub from_pod: Option<PodRef>,
    pub allowed: bool,
    /// Egress at the source; `None` when the source is not a pod (nothing to isolate).
    pub egress: Option<DirectionVerdict>,
    pub ingress: DirectionVerdict,
    /// Policies that were skipped because they are invalid (they isolate nothing and allow nothing).
    pub skipped: Vec<PolicyError>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no pod {0}")]
    UnknownPod(PodRef),
}

/// Explains whether `flow` is allowed by the NetworkPolicies of `input`.
pub fn explain(input: &PolicyInput, flow: &Flow) -> Result<Explanation, ExplainError> {
    explain_in(&Cluster::new(input), flow)
}

/// `explain` for many flows over one input: validates the input once.
pub struct Explainer {
    cluster: Cluster,
}

impl Explainer {
    pub fn new(input: &PolicyInput) -> Self {
        Self {
            cluster: Cluster::new(input),
        }
    }

    pub fn explain(&self, flow: &Flow) -> Result<Explanation, ExplainError> {
        explain_in(&self.cluster, flow)
    }
}

/// The source as policy sees it: a pod (selectable, if not host-network) and/or an address.
struct Source<'a> {
    pod: Option<&'a PodView>,
    ip: Option<Ipv4Addr>,
}

pub(crate) fn explain_in(cluster: &Cluster, flow: &Flow) -> Result<Explanation, ExplainError> {
    let dst = cluster
        .pod(&flow.to)
        .ok_or_else(|| ExplainError::UnknownPod(flow.to.clone()))?;
    let src = match &flow.from {
        Peer::Pod(r) => {
            let p = cluster
                .pod(r)
                .ok_or_else(|| ExplainError::UnknownPod(r.clone()))?;
            if p.is_policy_pod() {
                Source {
                    pod: Some(p),
                    ip: p.ip,
                }
            } else {
                Source { pod: None, ip: p.ip }
            }
        }
        Peer::Ip(ip) => Source {
            pod: cluster.pod_by_ip(*ip),
            ip: Some(*ip),
        },
    };

    let egress = src.pod.map(|s| {
        direction(
            cluster,
            s,
            Direction::Egress,
            flow,
            |peer| {
                peer.matches_pod(&dst.id.namespace, &dst.ns_labels, &dst.labels)
                    || dst.ip.is_some_and(|ip| peer.matches_ip(ip))
            },
            &dst.named_ports,
        )
    });

    let from_host = src.pod.is_none()
        && src.ip.is_some_and(|ip| {
            dst.node
                .as_ref()
                .and_then(|n| cluster.node_addrs.get(n))
                .is_some_and(|a| a.contains(&ip))
        });
    let ingress = if !dst.is_policy_pod() {
        DirectionVerdict::NotIsolated
    } else {
        let v = direction(
            cluster,
            dst,
            Direction::Ingress,
            flow,
            |peer| {
                src.pod
                    .is_some_and(|s| peer.matches_pod(&s.id.namespace, &s.ns_labels, &s.labels))
                    || src.ip.is_some_and(|ip| peer.matches_ip(ip))
            },
            &dst.named_ports,
        );
        // As the datapath: the node's own traffic passes before any rule is consulted.
        match v {
            DirectionVerdict::DefaultDeny { .. } | DirectionVerdict::Allowed(_) if from_host => {
                DirectionVerdict::HostAllowed
            }
            v => v,
        }
    };
    let allowed = ingress.is_allowed() && egress.as_ref().is_none_or(DirectionVerdict::is_allowed);
    Ok(Explanation {
        flow: flow.clone(),
        from_pod: src.pod.map(|p| p.id.clone()),
        allowed,
        egress,
        ingress,
        skipped: cluster.errors.clone(),
    })
}

/// The verdict for `dir` at `pod` (the source for egress, the destination for ingress); `peer_matches`
/// says whether a peer entry matches the other end; named ports resolve against `dst_ports`.
fn direction(
    cluster: &Cluster,
    pod: &PodView,
    dir: Direction,
    flow: &Flow,
    peer_matches: impl Fn(&crate::model::PeerSpec) -> bool,
    dst_ports: &NamedPorts,
) -> DirectionVerdict {
    let mut isolated_by = Vec::new();
    let mut allowed = Vec::new();
    for policy in cluster.isolating(pod, dir) {
        isolated_by.push(policy.id.clone());
        for (ri, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
            let peer = match &rule.peers {
                None => Some(None),
                Some(peers) => peers.iter().position(&peer_matches).map(Some),
            };
            let port = match &rule.ports {
                None => Some(None),
                Some(ports) => ports
                    .iter()
                    .position(|p| p.matches(flow.port, flow.protocol, dst_ports))
                    .map(Some),
            };
            if let (Some(peer), Some(port)) = (peer, port) {
                allowed.push(RuleMatch {
                    policy: policy.id.clone(),
                    rule: ri,
                    peer,
                    port,
                });
            }
        }
    }
    if isolated_by.is_empty() {
        DirectionVerdict::NotIsolated
    } else if allowed.is_empty() {
        DirectionVerdict::DefaultDeny { isolated_by }
    } else {
        DirectionVerdict::Allowed(allowed)
    }
}

fn join(refs: &[PolicyRef]) -> String {
    refs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for RuleMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.policy, self.rule)?;
        let peer = self.peer.map_or("any peer".to_owned(), |i| format!("peer {i}"));
        let port = self.port.map_or("any port".to_owned(), |i| format!("port {i}"));
        write!(f, " ({peer}, {port})")
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fl = &self.flow;
        let from = match (&fl.from, &self.from_pod) {
            (Peer::Ip(ip), Some(pod)) => format!("{ip} ({pod})"),
            (from, _) => from.to_string(),
        };
        let port = format!("port {}/{}", fl.port, fl.protocol);
        let mut parts = Vec::new();
        if let Some(e) = &self.egress {
            parts.push(match e {
                DirectionVerdict::NotIsolated | DirectionVerdict::HostAllowed => {
                    format!("egress from {from} not isolated")
                }
                DirectionVerdict::Allowed(m) => format!("egress from {from} allowed by {}", m[0]),
                DirectionVerdict::DefaultDeny { isolated_by } => format!(
                    "egress from {from} isolated by {} (no rule allows to {} {port})",
                    join(isolated_by),
                    fl.to
                ),
            });
        }
        parts.push(match &self.ingress {
            DirectionVerdict::NotIsolated => format!("ingress to {} not isolated", fl.to),
            DirectionVerdict::HostAllowed => {
                format!("ingress to {} from its own node (always allowed)", fl.to)
            }
            DirectionVerdict::Allowed(m) => format!("ingress to {} allowed by {}", fl.to, m[0]),
            DirectionVerdict::DefaultDeny { isolated_by } => format!(
                "ingress to {} isolated by {} (no rule allows from {from} {port})",
                fl.to,
                join(isolated_by)
            ),
        });
        if !self.allowed {
            // Lead with the reasons for the denial.
            parts.retain(|p| p.contains("isolated by"));
        }
        write!(
            f,
            "{}: {}",
            if self.allowed { "allowed" } else { "denied" },
            parts.join("; ")
        )?;
        if !self.skipped.is_empty() {
            write!(f, " [{} invalid policies skipped]", self.skipped.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjRef;

    const MODEL: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

    fn flow(from: &str, to: &str, port: u16) -> Flow {
        let from = from
            .parse()
            .map(Peer::Ip)
            .unwrap_or_else(|_| Peer::Pod(from.parse().unwrap()));
        Flow {
            from,
            to: to.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn with(extra: &str) -> PolicyInput {
        PolicyInput::from_yaml(&format!("{MODEL}---\n{extra}")).unwrap()
    }

    #[test]
    fn denial_names_the_isolating_policy() {
        let input = PolicyInput::from_yaml(MODEL).unwrap();
        let e = explain(&input, &flow("x/a", "y/b", 80)).unwrap();
        assert!(!e.allowed);
        assert_eq!(e.egress, Some(DirectionVerdict::NotIsolated));
        assert_eq!(
            e.ingress,
            DirectionVerdict::DefaultDeny {
                isolated_by: vec![ObjRef::new("y", "deny-all")]
            }
        );
        assert_eq!(
            e.to_string(),
            "denied: ingress to y/b isolated by y/deny-all (no rule allows from x/a port 80/TCP)"
        );
        // The node itself always reaches its pods; another address does not.
        let host = explain(&input, &flow("10.0.0.1", "y/b", 80)).unwrap();
        assert!(host.allowed);
        assert_eq!(host.ingress, DirectionVerdict::HostAllowed);
        assert_eq!(host.egress, None);
        assert!(!explain(&input, &flow("10.0.0.9", "y/b", 80)).unwrap().allowed);
        // An address that is a pod's IP is that pod.
        let by_ip = explain(&input, &flow("10.1.0.1", "y/b", 80)).unwrap();
        assert_eq!(by_ip.from_pod, Some(ObjRef::new("x", "a")));
        assert_eq!(
            by_ip.to_string(),
            "denied: ingress to y/b isolated by y/deny-all (no rule allows from 10.1.0.1 (x/a) port 80/TCP)"
        );
        assert_eq!(
            explain(&input, &flow("x/nope", "y/b", 80)),
            Err(ExplainError::UnknownPod(ObjRef::new("x", "nope")))
        );
    }

    #[test]
    fn allowed_lists_every_matching_rule() {
        let input = with(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24}}, {namespaceSelector: {}}]
    ports: [{port: 443}, {port: http}]
  - {}
",
        );
        let e = explain(&input, &flow("x/a", "y/b", 9090)).unwrap();
        let allow = |rule, peer, port| RuleMatch {
            policy: ObjRef::new("y", "allow-x"),
            rule,
            peer,
            port,
        };
        assert_eq!(
            e.ingress,
            DirectionVerdict::Allowed(vec![allow(0, Some(1), Some(1)), allow(1, None, None)])
        );
        assert_eq!(
            e.to_string(),
            "allowed: egress from x/a not isolated; ingress to y/b allowed by y/allow-x rule 0 (peer 1, port 1)"
        );
        // `http` is 9090 on y/b (the destination), not x/a's 8080: only the catch-all rule allows 8080.
        let e = explain(&input, &flow("x/a", "y/b", 8080)).unwrap();
        assert_eq!(e.ingress, DirectionVerdict::Allowed(vec![allow(1, None, None)]));
    }

    #[test]
    fn egress_named_ports_resolve_at_the_destination() {
        let input = with(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out-http, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
",
        );
        // y/b names 9090 `http`; x/a's own `http` (8080) is irrelevant for egress.
        assert!(
            !explain(&input, &flow("x/a", "y/b", 8080))
                .unwrap()
                .egress
                .unwrap()
                .is_allowed()
        );
        let e = explain(&input, &flow("x/a", "y/b", 9090)).unwrap();
        assert!(e.egress.as_ref().unwrap().is_allowed());
        assert!(!e.allowed, "still denied by y's ingress isolation");
        assert_eq!(
            e.to_string(),
            "denied: ingress to y/b isolated by y/deny-all (no rule allows from x/a port 9090/TCP)"
        );
    }

    #[test]
    fn invalid_policies_are_skipped_and_reported() {
        let input = with(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/33}}]}]
",
        );
        let e = explain(&input, &flow("y/b", "x/a", 80)).unwrap();
        assert!(e.allowed, "the broken policy isolates nothing");
        assert_eq!(e.skipped.len(), 1);
        assert_eq!(
            e.skipped[0].to_string(),
            "policy x/broken: spec.ingress[0].from[1].ipBlock.cidr: \"10.0.0.0/33\": bad prefix length"
        );
    }
}
