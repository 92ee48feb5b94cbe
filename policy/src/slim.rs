//! The Pod as policy (and the agent) keep it: the fields their readers use, with the API's names and
//! shapes, deserialized through k8s-openapi's `Pod` (`#[serde(from = ...)]`). Every node holds every
//! Pod of the cluster; k8s-openapi's `Pod` is ~2 KB inline and each container another ~2 KB, whatever
//! is set, which at 10k pods was ~48 MB of an agent's memory.
//!
//! Kept: identity, labels (out of the metadata, in `Pod::labels`), uid and deletionTimestamp (the
//! metadata is [`ObjectMeta`], the fields of the API's that anything reads; the agent's source cuts it
//! down further, see its `strip.rs`); spec.nodeName, hostNetwork, and the
//! containers and init containers that declare ports, with their name, ports and restartPolicy;
//! status.phase, podIP, podIPs and the Ready condition.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{self as core, PodIP},
    apimachinery::pkg::apis::meta::v1::{self as meta, Time},
};

/// An object's metadata as the agent keeps it: the API's fields that something reads, with their
/// names and shapes. The API's `ObjectMeta` holds fifteen fields inline (336 bytes) whatever is set;
/// this is a third of that, for each of the tens of thousands of Pods, Services and EndpointSlices
/// every node holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub deletion_timestamp: Option<Time>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl From<meta::ObjectMeta> for ObjectMeta {
    fn from(m: meta::ObjectMeta) -> Self {
        Self {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            deletion_timestamp: m.deletion_timestamp,
            labels: m.labels,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "core::Pod")]
pub struct Pod {
    /// Without labels: they are in `labels`.
    pub metadata: ObjectMeta,
    /// `metadata.labels`, as a list: a Rust `BTreeMap` of even one entry allocates a whole node
    /// (~540 bytes), for every Pod of the cluster.
    pub labels: PodLabels,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub host_network: Option<bool>,
    /// Only those that declare ports (named ports, named targetPorts).
    pub containers: Vec<Container>,
    pub init_containers: Option<Vec<Container>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Container {
    pub name: String,
    pub ports: Option<Vec<ContainerPort>>,
    /// `Always` on an init container: a sidecar, whose ports a Service may name.
    pub restart_policy: Option<String>,
}

/// A container port: no hostPort or hostIP, which nothing reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: i32,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodStatus {
    pub phase: Option<String>,
    pub pod_ip: Option<String>,
    /// Boxed to their length, like `conditions`: with them a Pod is one allocation of 320 bytes
    /// (jemalloc's size classes), not 384, 10k times at the agent bench's scale.
    pub pod_ips: Option<Box<[PodIP]>>,
    /// The Ready conditions only (one, unless written by hand).
    pub conditions: Option<Box<[PodCondition]>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodCondition {
    pub type_: String,
    pub status: String,
}

/// A Pod's labels sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLabels(Box<[(Box<str>, Box<str>)]>);

impl PodLabels {
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// As the API type has them, for selectors.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

impl From<BTreeMap<String, String>> for PodLabels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // A map iterates in key order: the list is sorted.
        Self(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl Pod {
    /// Moves the labels out of the metadata into `labels`. Also called by the agent's API source,
    /// which sets the metadata after the rest of the object is read.
    pub fn read_labels(&mut self) {
        if let Some(labels) = self.metadata.labels.take() {
            self.labels = labels.into();
        }
    }
}

impl From<core::Pod> for Pod {
    fn from(pod: core::Pod) -> Self {
        let mut slim = Self {
            metadata: pod.metadata.into(),
            labels: PodLabels::default(),
            spec: pod.spec.map(|spec| PodSpec {
                node_name: spec.node_name,
                host_network: spec.host_network,
                containers: with_ports_only(spec.containers),
                init_containers: spec
                    .init_containers
                    .map(with_ports_only)
                    .filter(|c| !c.is_empty()),
            }),
            status: pod.status.map(|status| PodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status.pod_ips.map(Vec::into_boxed_slice),
                conditions: ready_conditions(status.conditions.unwrap_or_default()),
            }),
        };
        slim.read_labels();
        slim
    }
}

/// The Ready conditions, in a new vector (see `with_ports_only`); `None` without any.
fn ready_conditions(conditions: Vec<core::PodCondition>) -> Option<Box<[PodCondition]>> {
    let mut kept = Vec::new();
    for c in conditions {
        if c.type_ == "Ready" {
            kept.push(PodCondition {
                type_: c.type_,
                status: c.status,
            });
        }
    }
    (!kept.is_empty()).then(|| kept.into_boxed_slice())
}

/// The containers that declare ports, in a new vector: `collect()` would reuse the API type's
/// allocation in place (~2 KB a container) for elements a tenth as big. Vectors here are shrunk to
/// their length: a first push reserves room for four, and most pods have one container with one port
/// (~380 bytes a pod otherwise, 10k pods at the bench's scale).
fn with_ports_only(containers: Vec<core::Container>) -> Vec<Container> {
    let mut kept = Vec::new();
    for c in containers {
        kept.extend(with_ports(c));
    }
    kept.shrink_to_fit();
    kept
}

/// A container with its name, ports (name, number, protocol) and restart policy; `None` when it
/// declares no port.
fn with_ports(c: core::Container) -> Option<Container> {
    let mut ports = Vec::new();
    for p in c.ports? {
        ports.push(ContainerPort {
            name: p.name,
            container_port: p.container_port,
            protocol: p.protocol,
        });
    }
    ports.shrink_to_fit();
    (!ports.is_empty()).then_some(Container {
        name: c.name,
        ports: Some(ports),
        restart_policy: c.restart_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}, uid: u1}
spec:
  nodeName: n1
  hostNetwork: false
  initContainers:
  - {name: proxy, restartPolicy: Always, ports: [{name: admin, containerPort: 9901}]}
  - {name: setup, image: busybox}
  containers:
  - name: web
    image: nginx
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 8080, protocol: TCP, hostPort: 80}]
  - {name: logger, image: fluentd}
status:
  phase: Running
  podIP: 10.244.1.10
  podIPs: [{ip: 10.244.1.10}]
  hostIP: 192.168.0.1
  conditions:
  - {type: Ready, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: PodScheduled, status: "True"}
"#;

    #[test]
    fn what_the_readers_use_is_kept_and_the_rest_is_not() {
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.host_network, Some(false));
        assert_eq!(spec.containers.len(), 1, "the port-less logger is dropped");
        let ports = spec.containers[0].ports.as_ref().unwrap();
        assert_eq!(
            (spec.containers.capacity(), ports.capacity()),
            (1, 1),
            "no room held for more"
        );
        let port = &ports[0];
        assert_eq!(
            (
                port.name.as_deref(),
                port.container_port,
                port.protocol.as_deref()
            ),
            (Some("http"), 8080, Some("TCP"))
        );
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.10"));
        assert_eq!(status.pod_ips.as_ref().unwrap().len(), 1);
        assert_eq!(
            status.conditions.as_deref(),
            Some(
                &[PodCondition {
                    type_: "Ready".into(),
                    status: "True".into()
                }][..]
            )
        );
        assert!(size_of::<Pod>() + 16 <= 320, "{} bytes", size_of::<Pod>());
    }

    #[test]
    fn a_pod_without_ports_or_conditions_keeps_no_empty_lists() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: p}\nspec: {containers: [{name: c}], initContainers: [{name: i}]}\nstatus: {conditions: []}\n",
        )
        .unwrap();
        let spec = pod.spec.unwrap();
        assert!(spec.containers.is_empty() && spec.init_containers.is_none());
        assert!(pod.status.unwrap().conditions.is_none());
    }

    #[test]
    fn a_pod_is_a_fraction_of_the_api_type() {
        let (slim, full) = (
            std::mem::size_of::<ObjectMeta>(),
            std::mem::size_of::<meta::ObjectMeta>(),
        );
        assert!(slim * 5 / 2 < full, "metadata: {slim} bytes against {full}");
        let slim = std::mem::size_of::<Pod>() + std::mem::size_of::<Container>();
        let full = std::mem::size_of::<core::Pod>() + std::mem::size_of::<core::Container>();
        assert!(slim * 4 < full, "{slim} bytes against {full}");
    }
}
