//! Service load balancing, the pure part: cluster objects in, the frontends and their ordered backends
//! out, following kube-proxy's rules (see [`plan`]). No I/O and no maps here: `crate::reconcile` turns an
//! [`LbPlan`] into map contents and map operations.
//!
//! - [`plan()`] (and [`PlanCache`], its incremental form): every Service's IPv4 frontends (ClusterIPs, NodePorts on this node's IPs, externalIPs,
//!   LoadBalancer ingress IPs) with the backends kube-proxy would use on this node.
//! - [`derive_endpoint_slices`]: standalone mode's stand-in for the EndpointSlice controller.
//! - [`render_plan`]: a stable text form of a plan, for golden tests and debugging.

mod derive;
mod endpoints;
pub mod maglev;
mod plan;
mod plan_cache;
pub(crate) mod render;
pub mod source_ranges;
#[cfg(test)]
pub(crate) mod tests;

use std::net::Ipv4Addr;

pub use derive::{any_selector_service, derive_endpoint_slices, keep_unchanged};
pub use plan::{plan, plan_with_derived};
pub use plan_cache::PlanCache;
pub use render::render_plan;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service labels that make kube-proxy leave a Service to another proxy (its informers select
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`): present with any
/// value, the Service is not proxied here either.
pub const NOT_OURS_LABELS: [&str; 2] = [
    "service.kubernetes.io/service-proxy-name",
    "service.kubernetes.io/headless",
];
/// The node label kube-proxy and the EndpointSlice controller read the zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// sessionAffinity ClientIP timeout when the Service gives none (the API default: 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// An L4 protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Parses a Kubernetes `protocol` field; absent means TCP (the API default).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)")),
        }
    }

    /// The IP protocol number, as the datapath sees it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => common::net::proto::TCP,
            Self::Udp => common::net::proto::UDP,
            Self::Sctp => common::net::proto::SCTP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            common::net::proto::TCP => Some(Self::Tcp),
            common::net::proto::UDP => Some(Self::Udp),
            common::net::proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a frontend address is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    /// A node IP of this node with the Service port's nodePort.
    NodePort,
    ExternalIp,
    /// A `status.loadBalancer.ingress[].ip` (ipMode VIP or unset).
    LoadBalancer,
}

impl FrontendKind {
    /// The `svc_flags` bit for this kind (ClusterIP has none).
    pub const fn flag(self) -> u16 {
        use common::lb::svc_flags;
        match self {
            Self::ClusterIp => 0,
            Self::NodePort => svc_flags::NODEPORT,
            Self::ExternalIp => svc_flags::EXTERNAL_IP,
            Self::LoadBalancer => svc_flags::LOADBALANCER,
        }
    }
}

/// A Service's namespace and name, one allocation shared by the plan cache, the Service's plan and
/// every frontend of it (each held a copy of both strings before).
pub type ServiceName = std::sync::Arc<(String, String)>;

/// One Service port: `namespace/name:port-name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortRef {
    pub service: ServiceName,
    /// The Service port's name ("" for a single unnamed port).
    pub port_name: String,
}

impl ServicePortRef {
    pub fn namespace(&self) -> &str {
        &self.service.0
    }

    pub fn name(&self) -> &str {
        &self.service.1
    }
}

impl std::fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// One map frontend: (addr, port, proto, scope) and the backends its traffic is spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServicePortRef,
    pub kind: FrontendKind,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// `common::lb::SCOPE_EXTERNAL` (the primary entry) or `SCOPE_INTERNAL` (see `HAS_INTERNAL_SCOPE`).
    pub scope: u8,
    /// `common::lb::svc_flags`.
    pub flags: u16,
    /// sessionAffinity ClientIP timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    /// Sorted by (addr, port); empty with `REJECT` or `DROP` set.
    pub backends: Vec<PlannedBackend>,
    /// LoadBalancer frontends of a Service with `spec.loadBalancerSourceRanges`: the only client
    /// prefixes let in (an empty list lets none in). `None`: open to every client.
    pub source_ranges: Option<Vec<policy::net::Ipv4Net>>,
}

/// A backend of a frontend; its protocol is the frontend's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBackend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The endpoint's nodeName is this node.
    pub local: bool,
    /// Not ready but serving and terminating: chosen only because no ready endpoint exists (KEP-1669).
    pub terminating: bool,
    /// Shared with the stored endpoint (one pointer: a backend is 16 bytes, 100k of them).
    pub node_name: Option<crate::slim::NodeName>,
}

/// An object (or one field of it) the planner could not use; reported, the object skipped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    pub kind: &'static str,
    /// Empty for cluster-scoped objects (Node).
    pub namespace: String,
    pub name: String,
    /// A JSON-path-like field, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}: {}: {}", self.kind, self.name, self.field, self.reason)
        } else {
            write!(
                f,
                "{} {}/{}: {}: {}",
                self.kind, self.namespace, self.name, self.field, self.reason
            )
        }
    }
}

/// A Service's `spec.healthCheckNodePort` as kube-proxy serves it on this node: LoadBalancer Services
/// with externalTrafficPolicy Local only, answering with the number of this node's ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// Distinct addresses of ready endpoints on this node, over all the Service's ports (kube-proxy
    /// counts a pod serving two ports once; terminating endpoints do not count, so a node with only
    /// terminating ones fails the check and the load balancer drains it).
    pub local_endpoints: usize,
}

/// A plan's frontends, shared whole: the reconciler, the status and the next pass each hold the same
/// list (at 10k frontends, a copy is 10k reference counts touched, one cache miss apiece).
pub type Frontends = std::sync::Arc<Vec<std::sync::Arc<Frontend>>>;

/// The desired load-balancing state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbPlan {
    /// Sorted by (addr, port, proto, scope); at most one per key. Shared: a frontend that did not
    /// change since the last plan is the same allocation (see [`PlanCache`]), which is how the map
    /// reconciler finds what to rewrite without comparing everything.
    pub frontends: Frontends,
    /// Sorted by port; at most one per port.
    pub health_checks: Vec<HealthCheck>,
    /// Objects skipped whole, and fields ignored in objects that are still planned.
    pub rejected: Vec<Rejected>,
    /// The address external traffic is SNATed to (externalTrafficPolicy Cluster): the node's first
    /// InternalIP, else its first address; `None` while the Node is unknown.
    pub snat_addr: Option<std::net::Ipv4Addr>,
}
