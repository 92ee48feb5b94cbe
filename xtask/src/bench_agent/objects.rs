//! A synthetic cluster as manifests, at the scale the agent issue names: Services with hand-made
//! EndpointSlices (selector-less, so nothing is derived: the shape an API server delivers), pods spread
//! over many nodes, NetworkPolicies with pod, namespace and ipBlock peers. Deterministic, so two runs
//! program the same thing.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scale {
    pub services: u32,
    pub endpoints_per_service: u32,
    pub pods: u32,
    pub policies: u32,
    pub nodes: u32,
}

impl Scale {
    pub fn full() -> Self {
        Self {
            services: 10_000,
            endpoints_per_service: 10,
            pods: 10_000,
            policies: 1_000,
            nodes: 50,
        }
    }

    pub fn quick() -> Self {
        Self {
            services: 1_000,
            endpoints_per_service: 10,
            pods: 1_000,
            policies: 100,
            nodes: 10,
        }
    }
}

pub const NAMESPACES: u32 = 10;
/// The node the measured agent serves.
pub const NODE: &str = "n0";

pub fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i + 1)
}

pub fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 10)
}

/// EndpointSlices per file. A change rewrites one file, which the agent parses whole: with 1000 slices
/// a file, the change figure measured YAML parsing of 1000 slices (about 100 ms) rather than one
/// EndpointSlice change. Ten a file is what one edit costs the standalone source; with the API server
/// one change is one object.
pub const SLICES_PER_FILE: u32 = 10;

/// The file that holds the slice of Service `i`.
pub fn slice_file(i: u32) -> String {
    format!("slices-{:04}.yaml", i / SLICES_PER_FILE)
}

/// Writes `nodes.yaml`, `namespaces.yaml`, `pods.yaml`, `services.yaml`, `policies.yaml` and one slice
/// file per [`SLICES_PER_FILE`] Services into `dir`.
pub fn write(dir: &Path, s: Scale) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut nodes = String::new();
    for n in 0..s.nodes {
        let _ = write!(
            nodes,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: n{n}, labels: {{topology.kubernetes.io/zone: z{}}}}}\n\
             status: {{addresses: [{{type: InternalIP, address: 10.0.{}.{}}}]}}\n",
            n % 3,
            n / 200,
            n % 200 + 10
        );
    }
    let mut namespaces = String::new();
    for ns in 0..NAMESPACES {
        let _ = write!(
            namespaces,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{ns}}}}}\n"
        );
    }
    let mut pods = String::new();
    for i in 0..s.pods {
        let _ = write!(
            pods,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}, tier: t{}}}}}\n\
             spec: {{nodeName: n{}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{phase: Running, podIP: {}}}\n",
            i % NAMESPACES,
            i % 100,
            i % 7,
            i % s.nodes,
            pod_ip(i)
        );
    }
    let mut services = String::new();
    for i in 0..s.services {
        let _ = write!(
            services,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns{}}}\n\
             spec: {{clusterIP: {}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n",
            i % NAMESPACES,
            service_ip(i)
        );
    }
    for chunk in 0..s.services.div_ceil(SLICES_PER_FILE) {
        let first = chunk * SLICES_PER_FILE;
        std::fs::write(dir.join(slice_file(first)), slice_file_text(first, s, None))?;
    }
    let mut policies = String::new();
    for i in 0..s.policies {
        let _ = write!(
            policies,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: ns{}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    \
             - podSelector: {{matchLabels: {{tier: t{}}}}}\n      namespaceSelector: {{matchLabels: {{team: t{}}}}}\n    \
             - ipBlock: {{cidr: 192.168.{}.0/24, except: [192.168.{}.128/25]}}\n    ports: [{{port: 8080}}]\n  egress:\n  \
             - to:\n    - podSelector: {{}}\n    ports: [{{port: 53, protocol: UDP}}, {{port: 8080}}]\n",
            i % NAMESPACES,
            i % 100,
            i % 7,
            (i / 10) % NAMESPACES,
            i % 256,
            i % 256
        );
    }
    for (name, text) in [
        ("nodes.yaml", nodes),
        ("namespaces.yaml", namespaces),
        ("pods.yaml", pods),
        ("services.yaml", services),
        ("policies.yaml", policies),
    ] {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

/// The slice file that holds Service `first`'s slice and the next ones; `shifted`: one Service whose
/// slice has an endpoint moved by that much (an endpoint change).
pub fn slice_file_text(first: u32, s: Scale, shifted: Option<(u32, u32)>) -> String {
    let mut text = String::new();
    for i in first..(first + SLICES_PER_FILE).min(s.services) {
        let shift = shifted.filter(|(j, _)| *j == i).map_or(0, |(_, by)| by);
        text.push_str(&slice(i, s, shift));
    }
    text
}

/// The EndpointSlice of Service `i`; `shift` moves its first endpoint to another pod (an endpoint change).
pub fn slice(i: u32, s: Scale, shift: u32) -> String {
    let mut endpoints = String::new();
    for j in 0..s.endpoints_per_service {
        let pod = (i * s.endpoints_per_service + j + if j == 0 { shift } else { 0 }) % s.pods;
        let _ = writeln!(
            endpoints,
            "  - {{addresses: [{}], conditions: {{ready: true}}, nodeName: n{}}}",
            pod_ip(pod),
            pod % s.nodes
        );
    }
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: ns{}, \
         labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints:\n{endpoints}",
        i % NAMESPACES
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_cluster_has_the_promised_shape() {
        let dir = std::env::temp_dir().join(format!("strait-objects-{}", std::process::id()));
        let s = Scale::quick();
        write(&dir, s).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("pods.yaml").matches("kind: Pod").count(), s.pods as usize);
        assert_eq!(
            read("services.yaml").matches("kind: Service").count(),
            s.services as usize
        );
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("slices-")
            })
            .count();
        assert_eq!(files as u32, s.services / SLICES_PER_FILE);
        let slices = read(&slice_file(0));
        assert_eq!(
            slices.matches("kind: EndpointSlice").count(),
            SLICES_PER_FILE as usize
        );
        assert_eq!(
            slices.matches("ready: true").count(),
            (SLICES_PER_FILE * s.endpoints_per_service) as usize
        );
        assert_ne!(
            slice_file_text(0, s, Some((3, 1))),
            slices,
            "a shifted slice changes the file"
        );
        assert_eq!(
            read("policies.yaml").matches("kind: NetworkPolicy").count(),
            s.policies as usize
        );
        assert_ne!(slice(3, s, 0), slice(3, s, 1), "a shift changes the slice");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
