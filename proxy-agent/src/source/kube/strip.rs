//! What the agent keeps of each object it watches. Every node watches every Pod and EndpointSlice of
//! the cluster, so whatever is stored is paid for once per object per node; an object is cut down to
//! the fields its readers use (the service planner in `lb/`, the policy compiler, `endpoints.rs`,
//! flow naming) before the source stores it. Adding a reader of a new field means keeping it here;
//! the tests below name every field that is read today.

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeSpec, NodeStatus, ServiceStatus},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::slim::{self, EndpointSlice, Pod, Service};

/// A kind the source watches, and how it is cut down.
pub trait Strip {
    fn strip(&mut self);
}

/// Identity and labels only: managedFields and annotations (kubectl's last-applied-configuration
/// alone is a second copy of the object) are the bulk of most objects' metadata and nothing reads
/// them.
fn strip_meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        ..Default::default()
    };
}

/// [`strip_meta`] for the compact kinds, whose metadata holds only what some kind reads.
fn strip_slim_meta(meta: &mut slim::ObjectMeta) {
    meta.uid = None;
    meta.deletion_timestamp = None;
}

/// Pods: labels (selectors, identities), uid (slice targetRef when slices are derived) and
/// deletionTimestamp (terminating) of the metadata, which is all the compact metadata holds; the spec
/// and status were cut down when the object was read into its compact form (`policy::slim::Pod`: node,
/// host network, container ports, phase, addresses, the Ready condition).
pub fn strip_pod(pod: &mut Pod) {
    pod.read_labels();
}

/// Services: the labels that leave a Service to another proxy (no other is read: a chart's half-dozen
/// labels cost a B-tree node and their strings per Service), the spec as read into its compact form
/// (`crate::slim::ServiceSpec`: type, cluster IPs, ports, affinity, traffic policies, external IPs,
/// source ranges, health-check port, selector for derived slices) and the load balancer ingress of the
/// status; status conditions are dropped.
pub fn strip_service(service: &mut Service) {
    strip_slim_meta(&mut service.metadata);
    if let Some(labels) = service.metadata.labels.as_mut() {
        labels.retain(|k, _| crate::lb::NOT_OURS_LABELS.contains(&k.as_str()));
    }
    if service.metadata.labels.as_ref().is_some_and(|l| l.is_empty()) {
        service.metadata.labels = None;
    }
    // A status without a load balancer says nothing the agent reads: no box kept for it.
    service.status = service
        .status
        .take()
        .and_then(|mut status| status.load_balancer.take())
        .map(|load_balancer| {
            Box::new(ServiceStatus {
                load_balancer: Some(load_balancer),
                ..Default::default()
            })
        });
}

/// EndpointSlices: identity; the rest was cut down when the object was read into its compact form
/// (`crate::slim::EndpointSlice`: the Service it belongs to, address type, ports, and per endpoint the
/// addresses, conditions, node and hints; not its other labels, zone, targetRef, hostname or
/// deprecatedTopology).
pub fn strip_endpoint_slice(slice: &mut EndpointSlice) {
    slice.read_labels();
    strip_slim_meta(&mut slice.metadata);
}

/// Namespaces: name and labels (namespaceSelector).
pub fn strip_namespace(namespace: &mut Namespace) {
    strip_meta(&mut namespace.metadata);
    namespace.spec = None;
    namespace.status = None;
}

/// Nodes: labels (topology zone) and addresses (XDP devices, node identity in policy). Images,
/// conditions, capacity and node info — the bulk of a Node — are dropped.
pub fn strip_node(node: &mut Node) {
    // A node being deleted or drained (`endpoints::node_eligible`) fails its proxy health check.
    let deletion_timestamp = node.metadata.deletion_timestamp.take();
    strip_meta(&mut node.metadata);
    node.metadata.deletion_timestamp = deletion_timestamp;
    node.spec = node.spec.take().map(|spec| NodeSpec {
        taints: spec.taints,
        ..Default::default()
    });
    if let Some(status) = node.status.as_mut() {
        *status = NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

/// NetworkPolicies: the whole spec; every field of it is compiled.
pub fn strip_network_policy(policy: &mut NetworkPolicy) {
    strip_meta(&mut policy.metadata);
}

/// A shared object is cut down in place when nothing else holds it, else on a copy.
impl<T: Strip + Clone> Strip for std::sync::Arc<T> {
    fn strip(&mut self) {
        std::sync::Arc::make_mut(self).strip();
    }
}

impl Strip for Pod {
    fn strip(&mut self) {
        strip_pod(self);
    }
}
impl Strip for Service {
    fn strip(&mut self) {
        strip_service(self);
    }
}
impl Strip for EndpointSlice {
    fn strip(&mut self) {
        strip_endpoint_slice(self);
    }
}
impl Strip for Namespace {
    fn strip(&mut self) {
        strip_namespace(self);
    }
}
impl Strip for Node {
    fn strip(&mut self) {
        strip_node(self);
    }
}
impl Strip for NetworkPolicy {
    fn strip(&mut self) {
        strip_network_policy(self);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::{snapshot::Snapshot, source::manifests};

    /// Objects as the API server returns them: every field the agent reads, plus the usual bulk.
    const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/zone: z1, kubernetes.io/os: linux}
  annotations: {node.alpha.kubernetes.io/ttl: "0"}
  managedFields: [{manager: kubelet, operation: Update}]
  deletionTimestamp: "2026-01-01T00:00:00Z"
spec: {podCIDR: 10.244.1.0/24, taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}
status:
  addresses: [{type: InternalIP, address: 192.168.50.10}, {type: Hostname, address: n1}]
  images: [{names: [registry/app:1], sizeBytes: 1000}]
  conditions: [{type: Ready, status: "True"}]
  nodeInfo: {machineID: m, systemUUID: s, bootID: b, kernelVersion: k, osImage: o, containerRuntimeVersion: c, kubeletVersion: v, kubeProxyVersion: p, operatingSystem: linux, architecture: amd64}
---
apiVersion: v1
kind: Namespace
metadata:
  name: app
  labels: {team: a, kubernetes.io/metadata.name: app}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec: {finalizers: [kubernetes]}
status: {phase: Active}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: app
  uid: 0b7c
  labels: {app: web}
  deletionTimestamp: "2026-01-01T00:00:00Z"
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: r1}]
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
  managedFields: [{manager: kubectl, operation: Apply}]
spec:
  nodeName: n1
  hostNetwork: false
  volumes: [{name: data, emptyDir: {}}]
  initContainers:
    - {name: setup, image: busybox}
    - name: proxy
      image: envoy
      restartPolicy: Always
      ports: [{name: admin, containerPort: 9901, protocol: TCP, hostPort: 9901}]
  containers:
    - name: app
      image: registry/app:1
      env: [{name: A, value: b}]
      ports: [{name: http, containerPort: 8080, protocol: TCP}, {name: dns, containerPort: 53, protocol: UDP}]
      readinessProbe: {tcpSocket: {port: 8080}}
    - {name: logger, image: fluent}
status:
  phase: Running
  podIP: 10.244.1.2
  podIPs: [{ip: 10.244.1.2}, {ip: "fd00::2"}]
  hostIP: 192.168.50.10
  conditions:
    - {type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: "2026-01-01T00:00:00Z"}
    - {type: PodScheduled, status: "True"}
  containerStatuses: [{name: app, image: registry/app:1, imageID: x, ready: false, restartCount: 3}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: app
  labels: {app: web}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec:
  type: LoadBalancer
  selector: {app: web}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [203.0.113.5]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  publishNotReadyAddresses: true
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP, nodePort: 30080}]
status:
  loadBalancer: {ingress: [{ip: 198.51.100.7, ipMode: VIP}]}
  conditions: [{type: LoadBalancerReady, status: "True", reason: r, message: m, lastTransitionTime: "2026-01-01T00:00:00Z"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: app
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io, app: web}
  ownerReferences: [{apiVersion: v1, kind: Service, name: web, uid: s1}]
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: n1
    zone: z1
    hostname: web-1
    hints: {forZones: [{name: z1}], forNodes: [{name: n1}]}
    targetRef: {kind: Pod, namespace: app, name: web-1, uid: 0b7c}
    deprecatedTopology: {a: b}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow
  namespace: app
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
      ports: [{port: http, protocol: TCP}, {port: 1000, endPort: 2000, protocol: UDP}]
  egress:
    - to: [{podSelector: {}}]
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parsed() -> Snapshot {
        let mut s = Snapshot::default();
        let mut rejected = Vec::new();
        manifests::parse_into_whole(OBJECTS, Path::new("t.yaml"), &mut s, &mut rejected);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(s.object_count(), 6);
        s
    }

    fn stripped() -> Snapshot {
        let mut s = parsed();
        s.nodes.iter_mut().for_each(Strip::strip);
        s.namespaces.iter_mut().for_each(Strip::strip);
        s.pods.iter_mut().for_each(Strip::strip);
        s.services.iter_mut().for_each(Strip::strip);
        s.endpoint_slices.iter_mut().for_each(Strip::strip);
        s.network_policies.iter_mut().for_each(Strip::strip);
        s
    }

    #[test]
    fn pods_keep_what_endpoints_policy_and_slices_read() {
        let pod = &stripped().pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("app"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("0b7c"));
        assert_eq!(pod.labels.to_map(), labels(&[("app", "web")]));
        assert_eq!(pod.metadata.labels, None, "read into labels");
        assert!(pod.metadata.deletion_timestamp.is_some());

        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.host_network, Some(false));
        // Volumes, images, env, probes, container statuses are not in the stored type at all
        // (`policy::slim::Pod`); what is there is checked here.
        // The port-less container goes; the other keeps name, number and protocol of each port.
        assert_eq!(spec.containers.len(), 1);
        let app = &spec.containers[0];
        assert_eq!(app.name, "app");
        let ports: Vec<_> = app
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port, p.protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [(Some("http"), 8080, Some("TCP")), (Some("dns"), 53, Some("UDP"))]
        );
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        let admin = &init[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (admin.name.as_deref(), admin.container_port),
            (Some("admin"), 9901)
        );

        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(status.pod_ips.as_ref().unwrap().len(), 2);
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            (conditions[0].type_.as_str(), conditions[0].status.as_str()),
            ("Ready", "False")
        );
    }

    #[test]
    fn services_keep_spec_and_load_balancer_ingress() {
        let before = parsed().services[0].clone();
        let service = &stripped().services[0];
        assert_eq!(service.spec, before.spec);
        assert!(before.metadata.labels.is_some());
        assert_eq!(service.metadata.labels, None, "no label of it is read");
        let status = service.status.as_ref().unwrap();
        assert_eq!(
            status.load_balancer,
            before.status.as_ref().unwrap().load_balancer
        );
        assert!(status.conditions.is_none());
    }

    #[test]
    fn a_service_keeps_the_labels_that_leave_it_to_another_proxy() {
        let mut service: Service = serde_yaml::from_str(
            "metadata: {name: web, labels: {app: web, service.kubernetes.io/service-proxy-name: other}}",
        )
        .unwrap();
        strip_service(&mut service);
        assert_eq!(
            service.metadata.labels,
            Some(labels(&[("service.kubernetes.io/service-proxy-name", "other")]))
        );
    }

    #[test]
    fn endpoint_slices_keep_service_ports_and_endpoint_state() {
        let before = parsed().endpoint_slices[0].clone();
        let slice = &stripped().endpoint_slices[0];
        assert_eq!(slice.service_name.as_deref(), Some("web"));
        assert_eq!(
            slice.metadata.labels, None,
            "the Service's labels the controller copies"
        );
        assert_eq!(&*slice.address_type, "IPv4");
        assert_eq!(slice.ports, before.ports);
        let (a, b) = (&slice.endpoints[0], &before.endpoints[0]);
        assert_eq!(a.address, b.address);
        assert_eq!(a.conditions, b.conditions);
        assert_eq!(a.node_name, b.node_name);
        assert_eq!(a.hints, b.hints);
    }

    #[test]
    fn namespaces_nodes_and_policies_keep_what_is_read() {
        let before = parsed();
        let after = stripped();
        let ns = &after.namespaces[0];
        assert_eq!(ns.metadata.labels, before.namespaces[0].metadata.labels);
        assert!(ns.spec.is_none() && ns.status.is_none() && ns.metadata.annotations.is_none());

        let node = &after.nodes[0];
        assert_eq!(node.metadata.labels, before.nodes[0].metadata.labels);
        let status = node.status.as_ref().unwrap();
        assert_eq!(
            status.addresses,
            before.nodes[0].status.as_ref().unwrap().addresses
        );
        assert!(status.images.is_none() && status.node_info.is_none() && status.conditions.is_none());
        assert!(node.metadata.managed_fields.is_none());
        // What `endpoints::node_eligible` reads.
        assert!(node.metadata.deletion_timestamp.is_some());
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.taints, before.nodes[0].spec.as_ref().unwrap().taints);
        assert!(spec.pod_cidr.is_none());

        let np = &after.network_policies[0];
        assert_eq!(np.spec, before.network_policies[0].spec);
        assert_eq!(np.metadata.name.as_deref(), Some("allow"));
        assert!(np.metadata.annotations.is_none());
    }

    /// The consumers themselves see no difference: the service plan, the policy compile and the local
    /// endpoints come out the same from stripped objects as from the originals.
    #[test]
    fn plan_policy_and_endpoints_are_the_same_after_stripping() {
        let (before, after) = (parsed(), stripped());
        let plan = |s: &Snapshot| format!("{:?}", crate::lb::plan(s, "n1"));
        assert_eq!(plan(&before), plan(&after));
        let lb = crate::lb::plan(&after, "n1");
        assert!(!lb.frontends.is_empty() && lb.rejected.is_empty(), "{lb:?}");
        assert!(
            plan(&after).contains("10.244.1.2"),
            "the slice's endpoint is a backend"
        );
        let derived = |s: &Snapshot| format!("{:?}", crate::lb::derive_endpoint_slices(s));
        assert_eq!(derived(&before), derived(&after));
        let compile = |s: &Snapshot| {
            let input = crate::policy::input_from_snapshot(s);
            format!("{:?}", policy::compile(&input, "n1", &Default::default()))
        };
        assert_eq!(compile(&before), compile(&after));
        assert!(
            compile(&after).contains("10.244.1.2"),
            "the pod is a policy endpoint"
        );
        let addrs = |s: &Snapshot| crate::endpoints::node_addresses(s, "n1");
        assert_eq!(addrs(&before), addrs(&after));
        assert_eq!(
            crate::endpoints::local_endpoints(&before, "n1", &[]),
            crate::endpoints::local_endpoints(&after, "n1", &[])
        );
        assert_eq!(
            crate::policy::view::PodsByIp::new(&before.pods)
                .iter()
                .collect::<Vec<_>>(),
            crate::policy::view::PodsByIp::new(&after.pods)
                .iter()
                .collect::<Vec<_>>()
        );
    }
}
