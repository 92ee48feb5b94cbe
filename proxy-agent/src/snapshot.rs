//! The cluster state the agent acts on, whichever source it came from (API server or manifests).
//! Everything downstream of a source sees only this type.

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub network_policies: Vec<NetworkPolicy>,
}

impl Snapshot {
    /// Appends copies of `other`'s objects (the standalone source joins its files this way).
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
    }
}
