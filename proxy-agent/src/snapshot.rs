//! The cluster state the agent acts on, whichever source it came from (API server or manifests).
//! Everything downstream of a source sees only this type.
//!
//! Objects are shared (`Arc`): a pass that keeps most of the cluster as it was copies pointers, not
//! objects, and an unchanged object is the same allocation from one pass to the next, which is how the
//! service planner tells cheaply which Services a change touched. Pods and EndpointSlices, which every
//! node holds by the thousand, are kept in their compact forms (`crate::slim`).

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Namespace, Node},
    networking::v1::NetworkPolicy,
};

use crate::slim::{EndpointSlice, Pod, Service};

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub nodes: Vec<Arc<Node>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
}

impl Snapshot {
    /// Appends `other`'s objects (shared, not copied).
    pub fn extend_from(&mut self, other: &Snapshot) {
        self.nodes.extend(other.nodes.iter().cloned());
        self.namespaces.extend(other.namespaces.iter().cloned());
        self.pods.extend(other.pods.iter().cloned());
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices.extend(other.endpoint_slices.iter().cloned());
        self.network_policies
            .extend(other.network_policies.iter().cloned());
    }

    pub fn object_count(&self) -> usize {
        self.nodes.len()
            + self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.network_policies.len()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .map(|n| &**n)
    }
}
