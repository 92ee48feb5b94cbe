//! `plan`: Services + EndpointSlices → frontends and backends, by kube-proxy's rules.
//!
//! References are to kubernetes/kubernetes `pkg/proxy` (v1.33): `serviceport.go` (which addresses a
//! Service port is reachable on, traffic policies), `topology.go` (`CategorizeEndpoints`), and the
//! iptables proxier's use of them (REJECT without endpoints, DROP without local endpoints).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use common::lb::{SCOPE_EXTERNAL, SCOPE_INTERNAL, svc_flags};
use k8s_openapi::api::core::v1::Node;

use policy::net::Ipv4Net;

use crate::slim::{EndpointSlice, Service};

use super::{
    DEFAULT_AFFINITY_TIMEOUT, Frontend, FrontendKind, HealthCheck, LbPlan, PlannedBackend, Proto, Rejected,
    ServiceName, ServicePortRef, ZONE_LABEL,
    endpoints::{Endpoint, ServiceSlice, categorize, merged_endpoints},
    source_ranges,
};
use crate::snapshot::Snapshot;

/// The load-balancing plan of node `node_name`: every Service's IPv4 frontends with the backends
/// kube-proxy would use for them on this node. Objects that cannot be used are listed in
/// `LbPlan::rejected` and skipped; everything else is planned.
pub fn plan(snapshot: &Snapshot, node_name: &str) -> LbPlan {
    plan_with_derived(snapshot, &[], node_name)
}

/// [`plan`] with EndpointSlices derived for selector Services (standalone mode), kept apart from the
/// snapshot so that it is not copied to add them. The daemon keeps a [`super::PlanCache`] instead,
/// which gives the same plan while re-planning only the Services whose inputs changed.
pub fn plan_with_derived(snapshot: &Snapshot, derived: &[Arc<EndpointSlice>], node_name: &str) -> LbPlan {
    super::PlanCache::default().plan(snapshot, derived, node_name)
}

/// What the planner needs of this node; everything that changes when the Node object does.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    pub name: String,
    pub zone: String,
    /// Where NodePorts are served.
    pub ips: Vec<Ipv4Addr>,
    pub snat_addr: Option<Ipv4Addr>,
    /// The Node's own unusable fields.
    pub rejected: Vec<Rejected>,
}

impl NodeView {
    pub fn new(node: Option<&Node>, node_name: &str) -> Self {
        let mut rejected = Vec::new();
        let zone = node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned()
            .unwrap_or_default();
        let ips = node.map(|n| node_ipv4s(n, &mut rejected)).unwrap_or_default();
        let snat_addr = node.and_then(snat_address).or_else(|| ips.first().copied());
        Self {
            name: node_name.to_string(),
            zone,
            ips,
            snat_addr,
            rejected,
        }
    }
}

/// One Service's part of the plan, which depends on nothing but the Service, its EndpointSlices and the
/// node: the frontends it claims, in the order it claims them. Whether it gets them is decided when
/// all Services are put together ([`Assembly`]), since two Services may claim one address.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServicePlan {
    pub service: ServiceName,
    pub claims: Vec<Claim>,
    /// `spec.healthCheckNodePort` and the node's ready local endpoints it reports.
    pub health_check: Option<(u16, usize)>,
    /// The Service's own problems (the Service rejected whole, or fields ignored).
    pub rejected: Vec<Rejected>,
}

/// A frontend a Service asks for; `internal` (the internal-scope twin of an externalTrafficPolicy
/// Local frontend) is added only when `frontend` is.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub frontend: Arc<Frontend>,
    pub internal: Option<Arc<Frontend>>,
    /// The Service field the frontend comes from, for a conflict report.
    pub field: String,
}

/// Plans one Service against its EndpointSlices (in slice-name order).
/// `name` is the Service's namespace and name ([`namespaced`]), shared.
pub(crate) fn plan_service(
    service: &Service,
    name: &ServiceName,
    slices: &[&ServiceSlice],
    node: &NodeView,
) -> ServicePlan {
    let mut out = ServicePlan {
        service: name.clone(),
        ..ServicePlan::default()
    };
    match ServiceInfo::parse(service, name) {
        Ok(Some(info)) => {
            out.rejected.extend(info.ignored.iter().cloned());
            let mut planner = Planner {
                node,
                slices,
                claims: Vec::new(),
            };
            let mut local_ready = BTreeSet::new();
            for port in &info.ports {
                planner.service_port(&info, port, &mut local_ready);
            }
            out.claims = planner.claims;
            // Kept for the life of the Service's cache entry: at its length, not the four a first
            // push makes room for (160 bytes for one claim, 10k Services at the agent bench's scale).
            out.claims.shrink_to_fit();
            out.health_check = info.health_check_node_port.map(|port| (port, local_ready.len()));
        }
        Ok(None) => {}
        Err(r) => out.rejected.push(r),
    }
    out
}

/// The frontends and health checks of all Services, added in namespace/name order: the first Service
/// to claim an address:port/proto (or a health-check port) keeps it, a later one is reported.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    pub frontends: BTreeMap<FrontendKey, Arc<Frontend>>,
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// Claims refused because another Service had them first (a Service's own problems are in its
    /// [`ServicePlan::rejected`]).
    pub conflicts: Vec<Rejected>,
}

impl Assembly {
    pub fn add(&mut self, service: &ServicePlan) {
        for claim in &service.claims {
            if self.insert(&claim.frontend, &claim.field)
                && let Some(internal) = &claim.internal
            {
                self.insert(internal, &claim.field);
            }
        }
        if let Some((port, local_endpoints)) = service.health_check {
            self.health_check(service, port, local_endpoints);
        }
    }

    /// Adds a frontend unless another Service already has its address:port/proto (possible with
    /// externalIPs, which the API does not keep unique): the first Service in namespace/name order
    /// keeps it, the later one is reported.
    fn insert(&mut self, frontend: &Arc<Frontend>, field: &str) -> bool {
        let key = frontend_key(frontend);
        if let Some(existing) = self.frontends.get(&key) {
            if existing.service != frontend.service {
                self.conflicts.push(Rejected {
                    kind: "Service",
                    namespace: frontend.service.namespace().to_owned(),
                    name: frontend.service.name().to_owned(),
                    field: field.to_string(),
                    reason: format!(
                        "{}:{}/{} is already a frontend of {}",
                        frontend.addr, frontend.port, frontend.proto, existing.service
                    ),
                });
            }
            return false;
        }
        self.frontends.insert(key, frontend.clone());
        true
    }

    /// kube-proxy keeps one health check per port; the API server allocates them from the NodePort
    /// range, so two Services on one port is bad input: the first in namespace/name order keeps it.
    fn health_check(&mut self, service: &ServicePlan, port: u16, local_endpoints: usize) {
        if let Some(existing) = self.health_checks.get(&port) {
            self.conflicts.push(Rejected {
                kind: "Service",
                namespace: service.service.0.clone(),
                name: service.service.1.clone(),
                field: "spec.healthCheckNodePort".into(),
                reason: format!(
                    "port {port} is already the health check of {}/{}",
                    existing.namespace, existing.name
                ),
            });
            return;
        }
        self.health_checks.insert(
            port,
            HealthCheck {
                namespace: service.service.0.clone(),
                name: service.service.1.clone(),
                port,
                local_endpoints,
            },
        );
    }
}

pub(crate) fn frontend_key(f: &Frontend) -> FrontendKey {
    (f.addr, f.port, f.proto, f.scope)
}

/// The node's first IPv4 InternalIP: the address other nodes route back to (an ExternalIP may be NATed
/// by the cloud and unknown on the node's own segment).
fn snat_address(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

pub(crate) fn namespaced(service: &Service) -> (String, String) {
    (
        service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

/// This node's IPv4 addresses (InternalIP and ExternalIP), where NodePorts are served.
fn node_ipv4s(node: &Node, rejected: &mut Vec<Rejected>) -> Vec<Ipv4Addr> {
    let mut ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, address) in addresses.into_iter().flatten().enumerate() {
        if !matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => rejected.push(Rejected {
                kind: "Node",
                namespace: String::new(),
                name: node.metadata.name.clone().unwrap_or_default(),
                field: format!("status.addresses[{i}].address"),
                reason: format!("{:?} is not an IP address", address.address),
            }),
        }
    }
    ips
}

#[derive(Debug)]
struct PortInfo {
    index: usize,
    name: String,
    port: u16,
    proto: Proto,
    node_port: u16,
}

/// The parts of a Service the planner uses, validated.
#[derive(Debug)]
struct ServiceInfo {
    service: ServiceName,
    cluster_ips: Vec<Ipv4Addr>,
    external_ips: Vec<(usize, Ipv4Addr)>,
    lb_ips: Vec<Ipv4Addr>,
    ports: Vec<PortInfo>,
    affinity_timeout: u32,
    internal_local: bool,
    external_local: bool,
    /// `spec.healthCheckNodePort` when kube-proxy serves it (`apiservice.NeedsHealthCheck`).
    health_check_node_port: Option<u16>,
    /// Parsed `spec.loadBalancerSourceRanges` (see `source_ranges::parse`).
    source_ranges: Option<Vec<Ipv4Net>>,
    /// Fields left out of an otherwise planned Service; reported like rejected objects.
    ignored: Vec<Rejected>,
}

impl ServiceInfo {
    /// `Ok(None)` for a Service kube-proxy does not proxy (`ShouldSkipService`): ExternalName, headless
    /// (`clusterIP: None`) or without a cluster IP; or one its informers never see: labelled for
    /// another proxy ([`super::NOT_OURS_LABELS`]).
    fn parse(service: &Service, name: &ServiceName) -> Result<Option<Self>, Rejected> {
        if let Some(labels) = &service.metadata.labels
            && super::NOT_OURS_LABELS.iter().any(|l| labels.contains_key(*l))
        {
            return Ok(None);
        }
        let reject = |field: String, reason: String| Rejected {
            kind: "Service",
            namespace: name.0.clone(),
            name: name.1.clone(),
            field,
            reason,
        };
        let Some(spec) = service.spec.as_ref() else {
            return Ok(None);
        };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        match type_ {
            "ExternalName" => return Ok(None),
            "ClusterIP" | "NodePort" | "LoadBalancer" => {}
            other => {
                return Err(reject(
                    "spec.type".into(),
                    format!("unknown Service type {other:?}"),
                ));
            }
        }
        let (cluster_ips, ips_field): (Vec<String>, &str) = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => (ips.to_vec(), "spec.clusterIPs"),
            _ => (
                spec.cluster_ip.iter().map(|ip| ip.to_string()).collect(),
                "spec.clusterIP",
            ),
        };
        match cluster_ips.first().map(String::as_str) {
            None | Some("" | "None") => return Ok(None),
            Some(_) => {}
        }
        let mut v4_cluster_ips = Vec::new();
        for (i, ip) in cluster_ips.iter().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => v4_cluster_ips.push(ip),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => {
                    let field = if ips_field == "spec.clusterIP" {
                        ips_field.to_string()
                    } else {
                        format!("{ips_field}[{i}]")
                    };
                    return Err(reject(field, format!("{ip:?} is not an IP address")));
                }
            }
        }
        let mut external_ips = Vec::new();
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => external_ips.push((i, v4)),
                Ok(IpAddr::V6(_)) => {}
                Err(_) => {
                    return Err(reject(
                        format!("spec.externalIPs[{i}]"),
                        format!("{ip:?} is not an IP address"),
                    ));
                }
            }
        }
        let mut lb_ips = Vec::new();
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            // ipMode Proxy (KEP-1860): the load balancer delivers to the node, kube-proxy does not
            // capture the VIP.
            if !matches!(ing.ip_mode.as_deref(), None | Some("VIP")) {
                continue;
            }
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if !lb_ips.contains(&v4) => lb_ips.push(v4),
                Ok(_) => {}
                Err(_) => {
                    return Err(reject(
                        format!("status.loadBalancer.ingress[{i}].ip"),
                        format!("{ip:?} is not an IP address"),
                    ));
                }
            }
        }
        let mut ports = Vec::new();
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let proto = Proto::parse(port.protocol.as_deref())
                .map_err(|e| reject(format!("spec.ports[{i}].protocol"), e))?;
            let number = u16::try_from(port.port).ok().filter(|p| *p != 0).ok_or_else(|| {
                reject(
                    format!("spec.ports[{i}].port"),
                    format!("{} is not a valid port", port.port),
                )
            })?;
            let node_port = u16::try_from(port.node_port.unwrap_or(0)).map_err(|_| {
                reject(
                    format!("spec.ports[{i}].nodePort"),
                    format!("{} is not a valid port", port.node_port.unwrap_or(0)),
                )
            })?;
            ports.push(PortInfo {
                index: i,
                name: port.name.clone().unwrap_or_default(),
                port: number,
                proto,
                node_port,
            });
        }
        let affinity_timeout = match spec.session_affinity.as_deref() {
            None | Some("None") => 0,
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match timeout {
                    None => DEFAULT_AFFINITY_TIMEOUT,
                    // API validation: 0 < timeoutSeconds <= 86400.
                    Some(t @ 1..=86_400) => t as u32,
                    Some(t) => {
                        return Err(reject(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                            format!("{t} is not within 1..=86400"),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(reject(
                    "spec.sessionAffinity".into(),
                    format!("unknown sessionAffinity {other:?}"),
                ));
            }
        };
        let policy_local = |value: Option<&str>, field: &str| match value {
            None | Some("Cluster") => Ok(false),
            Some("Local") => Ok(true),
            Some(other) => Err(reject(field.into(), format!("unknown traffic policy {other:?}"))),
        };
        let internal_local = policy_local(
            spec.internal_traffic_policy.as_deref(),
            "spec.internalTrafficPolicy",
        )?;
        // apiservice.ExternalPolicyLocal: only NodePort and LoadBalancer Services have an external policy.
        let external_local = policy_local(
            spec.external_traffic_policy.as_deref(),
            "spec.externalTrafficPolicy",
        )? && matches!(type_, "NodePort" | "LoadBalancer");
        let mut ignored = Vec::new();
        // A bad health-check port must not take the Service's traffic down with it: the port is
        // reported and not served (the load balancer then sees the node as unhealthy).
        let health_check_node_port = if type_ == "LoadBalancer" && external_local {
            match spec.health_check_node_port {
                None | Some(0) => None,
                Some(p @ 1..=65_535) => Some(p as u16),
                Some(p) => {
                    ignored.push(reject(
                        "spec.healthCheckNodePort".into(),
                        format!("{p} is not a valid port"),
                    ));
                    None
                }
            }
        } else {
            None
        };
        let (source_ranges, bad_ranges) = source_ranges::parse(spec.load_balancer_source_ranges.as_deref());
        ignored.extend(
            bad_ranges
                .into_iter()
                .map(|(field, reason)| reject(field, reason)),
        );
        Ok(Some(Self {
            service: name.clone(),
            cluster_ips: v4_cluster_ips,
            external_ips,
            lb_ips,
            ports,
            affinity_timeout,
            internal_local,
            external_local,
            health_check_node_port,
            source_ranges,
            ignored,
        }))
    }
}

pub(crate) type FrontendKey = (Ipv4Addr, u16, Proto, u8);

/// Plans the ports of one Service.
struct Planner<'a> {
    node: &'a NodeView,
    slices: &'a [&'a ServiceSlice],
    claims: Vec<Claim>,
}

fn backends(endpoints: &[Endpoint]) -> Vec<PlannedBackend> {
    // `endpoints` come sorted by (addr, port) from the slice merge; filtering keeps the order.
    endpoints
        .iter()
        .map(|e| PlannedBackend {
            addr: e.addr,
            port: e.port,
            local: e.local,
            // Only a serving+terminating fallback endpoint can be in a set without being ready.
            terminating: !e.ready,
            node_name: e.node_name.clone(),
        })
        .collect()
}

impl Planner<'_> {
    /// Plans one Service port; adds the addresses of its ready endpoints on this node to `local_ready`
    /// (the health check's count, taken from the same endpoint set the frontends use).
    fn service_port(&mut self, info: &ServiceInfo, port: &PortInfo, local_ready: &mut BTreeSet<Ipv4Addr>) {
        let node_name = self.node.name.as_str();
        let endpoints = merged_endpoints(self.slices.iter().copied(), &port.name, port.proto, node_name);
        local_ready.extend(endpoints.iter().filter(|e| e.local && e.ready).map(|e| e.addr));
        // serviceport.go: ExternallyAccessible, UsesClusterEndpoints, UsesLocalEndpoints.
        let externally_accessible =
            port.node_port != 0 || !info.lb_ips.is_empty() || !info.external_ips.is_empty();
        let uses_cluster = !info.internal_local || externally_accessible;
        let uses_local = info.internal_local || (info.external_local && externally_accessible);
        let cat = categorize(&endpoints, uses_cluster, uses_local, node_name, &self.node.zone);

        let affinity = if info.affinity_timeout > 0 {
            svc_flags::AFFINITY
        } else {
            0
        };
        // The iptables proxier: no usable endpoint anywhere → REJECT on every address of the port; a
        // Local policy with none on this node → DROP for that kind of traffic ("has no local endpoints").
        let verdict = |set: &[Endpoint]| match (cat.has_any, set.is_empty()) {
            (false, _) => svc_flags::REJECT,
            (true, true) => svc_flags::DROP,
            (true, false) => 0,
        };
        let internal = if info.internal_local {
            &cat.local
        } else {
            &cat.cluster
        };
        let external = if info.external_local {
            &cat.local
        } else {
            &cat.cluster
        };
        let service = ServicePortRef {
            service: info.service.clone(),
            port_name: port.name.clone(),
        };
        // kube-proxy's firewall for loadBalancerSourceRanges guards the LoadBalancer IPs only, for
        // every client (outside, pods, the node), hence on both scopes.
        let lb_source_ranges = info
            .source_ranges
            .as_ref()
            .map(|r| source_ranges::for_frontend(r, &info.lb_ips, &self.node.ips));
        let make =
            |kind: FrontendKind, addr: Ipv4Addr, number: u16, scope: u8, flags: u16, set: &[Endpoint]| {
                let mut flags = flags | kind.flag() | affinity | verdict(set);
                if kind == FrontendKind::LoadBalancer && lb_source_ranges.is_some() {
                    flags |= svc_flags::SOURCE_RANGES;
                }
                Frontend {
                    service: service.clone(),
                    kind,
                    addr,
                    port: number,
                    proto: port.proto,
                    scope,
                    flags,
                    affinity_timeout: info.affinity_timeout,
                    backends: if flags & (svc_flags::REJECT | svc_flags::DROP) != 0 {
                        Vec::new()
                    } else {
                        backends(set)
                    },
                    source_ranges: if kind == FrontendKind::LoadBalancer {
                        lb_source_ranges.clone()
                    } else {
                        None
                    },
                }
            };

        let field = format!("spec.ports[{}]", port.index);
        for &ip in &info.cluster_ips {
            let frontend = make(
                FrontendKind::ClusterIp,
                ip,
                port.port,
                SCOPE_EXTERNAL,
                0,
                internal,
            );
            self.claim(frontend, None, field.clone());
        }
        let mut external_frontends: Vec<(FrontendKind, Ipv4Addr, u16, String)> = Vec::new();
        if port.node_port != 0 {
            for &ip in &self.node.ips {
                external_frontends.push((
                    FrontendKind::NodePort,
                    ip,
                    port.node_port,
                    format!("{field}.nodePort"),
                ));
            }
        }
        for &(i, ip) in &info.external_ips {
            external_frontends.push((
                FrontendKind::ExternalIp,
                ip,
                port.port,
                format!("spec.externalIPs[{i}]"),
            ));
        }
        for &ip in &info.lb_ips {
            external_frontends.push((
                FrontendKind::LoadBalancer,
                ip,
                port.port,
                "status.loadBalancer.ingress".into(),
            ));
        }
        for (kind, ip, number, field) in external_frontends {
            if info.external_local {
                // externalTrafficPolicy Local: outside clients get local endpoints only; traffic that
                // starts on this node is short-circuited to the cluster endpoints (the iptables
                // proxier's "pod traffic for external destinations" / "route LOCAL traffic" rules),
                // through a second, internal-scope entry.
                // Both entries carry the flags, so a lookup knows which scope it holds.
                let flags = svc_flags::EXT_POLICY_LOCAL | svc_flags::HAS_INTERNAL_SCOPE;
                let twin = make(kind, ip, number, SCOPE_INTERNAL, flags, &cat.cluster);
                self.claim(
                    make(kind, ip, number, SCOPE_EXTERNAL, flags, external),
                    Some(twin),
                    field,
                );
            } else {
                self.claim(make(kind, ip, number, SCOPE_EXTERNAL, 0, external), None, field);
            }
        }
    }

    fn claim(&mut self, frontend: Frontend, internal: Option<Frontend>, field: String) {
        self.claims.push(Claim {
            frontend: Arc::new(frontend),
            internal: internal.map(Arc::new),
            field,
        });
    }
}
