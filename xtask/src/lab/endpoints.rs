//! EndpointSlices for Services that have a selector but no slice in the lab file, as the EndpointSlice
//! controller would write them: one slice per distinct set of resolved ports (named target ports
//! resolve per pod, so two pods may need different slices), every selected pod ready (its responder
//! runs). Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{plan, spec::Object};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

type PortKey = Vec<(Option<String>, i32, String)>;

pub fn derive(objects: &[Object]) -> Vec<EndpointSlice> {
    let pods: Vec<&Pod> = objects
        .iter()
        .filter_map(|o| if let Object::Pod(p) = o { Some(&**p) } else { None })
        .collect();
    let mut out = Vec::new();
    for o in objects {
        let Object::Service(svc) = o else { continue };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let spec = svc.spec.as_ref();
        let Some(selector) = spec.and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
            continue;
        };
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") || has_slice(objects, &ns, &name) {
            continue;
        }
        let mut groups: BTreeMap<PortKey, Vec<&Pod>> = BTreeMap::new();
        for pod in pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            if pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).is_none() {
                continue;
            }
            groups.entry(resolve_ports(svc, pod)).or_default().push(pod);
        }
        if groups.is_empty() {
            // The controller keeps one empty slice for a selector that matches nothing.
            out.push(slice(&ns, &name, &Vec::new(), &[]));
        }
        for (ports, members) in &groups {
            out.push(slice(&ns, &name, ports, members));
        }
    }
    out
}

fn has_slice(objects: &[Object], ns: &str, svc: &str) -> bool {
    objects.iter().any(|o| match o {
        Object::EndpointSlice(s) => {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(svc)
        }
        _ => false,
    })
}

/// The service's ports as this pod serves them; a named target port the pod does not declare is left out.
fn resolve_ports(svc: &Service, pod: &Pod) -> PortKey {
    let mut out = Vec::new();
    for sp in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => named_port(pod, name, &proto),
            },
        };
        if let Some(n) = number {
            out.push((sp.name.clone(), n, proto));
        }
    }
    out
}

fn named_port(pod: &Pod, name: &str, proto: &str) -> Option<i32> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == proto)
        .map(|p| p.container_port)
}

fn slice(ns: &str, svc: &str, ports: &PortKey, pods: &[&Pod]) -> EndpointSlice {
    let id = format!("{ns}/{svc}/{ports:?}");
    let labels = [(SERVICE_NAME_LABEL, svc), (MANAGED_BY_LABEL, MANAGED_BY)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-{}", plan::hex8(&id))),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        address_type: "IPv4".to_string(),
        endpoints: pods.iter().map(|p| endpoint(ns, p)).collect(),
        ports: Some(
            ports
                .iter()
                .map(|(name, port, proto)| EndpointPort {
                    name: name.clone(),
                    port: Some(*port),
                    protocol: Some(proto.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

fn endpoint(ns: &str, pod: &Pod) -> Endpoint {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(ns.to_string()),
            name: pod.metadata.name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec::parse;

    const FILE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: other}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIP: 10.244.2.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {selector: {app: web}, ports: [{name: p, port: 80, targetPort: http}]}
";

    #[test]
    fn named_ports_resolve_per_pod() {
        let slices = derive(&parse(FILE).unwrap());
        assert_eq!(slices.len(), 2, "{slices:#?}");
        let mut seen: Vec<(i32, String)> = slices
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().unwrap()[0].port.unwrap(),
                    s.endpoints[0].addresses[0].clone(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![(8080, "10.244.1.2".into()), (9090, "10.244.2.2".into())]
        );
        let labels = slices[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    }

    #[test]
    fn given_slices_win() {
        let text = format!(
            "{FILE}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: x, \
             labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: []\n"
        );
        assert!(derive(&parse(&text).unwrap()).is_empty());
    }
}
