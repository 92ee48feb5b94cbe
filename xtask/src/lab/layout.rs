//! From a validated cluster to the lab's layout (the `State` to build): netns, veth and cgroup names,
//! the external client's address. Pure apart from the `Paths` it is given, so it is unit-tested.
//! Given the previous state (on `apply`), pods that stay keep their names and the external client keeps
//! its address.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{Result, bail};

use super::{
    plan,
    spec::{Cluster, Object},
    state::{ExternalState, NodeState, Paths, PodState, State},
};

pub fn layout(paths: &Paths, cluster: &Cluster, previous: Option<&State>) -> Result<State> {
    let lab = paths.lab.as_str();
    let nodes: Vec<NodeState> = cluster
        .nodes
        .iter()
        .map(|n| {
            let old = previous.and_then(|p| p.node(&n.name));
            NodeState {
                name: n.name.clone(),
                ip: n.ip,
                netns: plan::node_netns(lab, &n.name),
                pod_cidr: n.pod_cidr.map(|c| c.to_string()),
                addresses: n.addresses.clone(),
                cgroup: paths.node_cgroup(&node_dir(&n.name)),
                bpffs_root: paths.bpffs_root(&node_dir(&n.name)),
                agent_pid: old.and_then(|o| o.agent_pid),
                proxy: old.map(|o| o.proxy).unwrap_or_default(),
                kube_proxy_pid: old.and_then(|o| o.kube_proxy_pid),
            }
        })
        .collect();

    // Pods that stay keep their key; new pods must not take a key in use (see plan::pod_key).
    let old_keys: HashMap<&str, &PodState> = previous
        .map(|p| p.pods.iter().map(|s| (s.name.as_str(), s)).collect())
        .unwrap_or_default();
    let mut taken: HashSet<String> = cluster
        .pods
        .iter()
        .filter_map(|p| old_keys.get(p.full_name().as_str()).map(|s| s.key.clone()))
        .collect();
    let mut pods = Vec::new();
    let mut veths: HashMap<(&str, String), String> = HashMap::new();
    for p in &cluster.pods {
        let full = p.full_name();
        let old = old_keys.get(full.as_str());
        let key = match old {
            Some(o) => o.key.clone(),
            None => {
                let k = plan::pod_key(lab, &p.namespace, &p.name, &|k| taken.contains(k));
                if taken.contains(&k) {
                    bail!("Pod {full}: no unique short name left for metadata.name (hash {k} is taken)");
                }
                taken.insert(k.clone());
                k
            }
        };
        let host_veth = plan::host_veth(&p.namespace, &p.name);
        if let Some(other) = veths.insert((p.node.as_str(), host_veth.clone()), full.clone()) {
            bail!(
                "Pod {full}: its host veth name {host_veth} collides with Pod {other} on node {}",
                p.node
            );
        }
        let same_pod = old.filter(|o| o.ip == p.ip && o.node == p.node && o.ports == p.ports);
        pods.push(PodState {
            name: full,
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            node: p.node.clone(),
            ip: p.ip,
            netns: plan::pod_netns(lab, &key),
            host_veth,
            cgroup: paths.pod_cgroup(&node_dir(&p.node), &key),
            key,
            ports: p.ports.clone(),
            responder_pid: same_pod.and_then(|o| o.responder_pid),
        });
    }

    let control_plane = previous.and_then(|p| p.control_plane.clone());
    let cp_ip = control_plane.as_ref().map(|c| c.ip);
    let used = |ip| {
        nodes.iter().any(|n| n.ip == ip || n.addresses.contains(&ip))
            || pods.iter().any(|p| p.ip == ip)
            || cp_ip == Some(ip)
    };
    if let Some(p) = pods.iter().find(|p| Some(p.ip) == cp_ip) {
        bail!(
            "Pod {}: status.podIP {} is the control plane's segment address",
            p.name,
            p.ip
        );
    }
    let external_ip = match previous
        .map(|p| p.external.ip)
        .filter(|ip| cluster.subnet.contains(*ip) && !used(*ip))
    {
        Some(ip) => ip,
        None => match plan::external_ip(cluster.subnet, &used) {
            Some(ip) => ip,
            None => bail!(
                "the node subnet {} has no free address for the external client",
                cluster.subnet
            ),
        },
    };
    let default_via = nodes.first().map(|n| n.name.clone());
    Ok(State {
        name: lab.to_string(),
        state_dir: paths.dir.clone(),
        segment_netns: plan::segment_netns(lab),
        subnet: cluster.subnet.to_string(),
        nodes,
        pods,
        external: ExternalState {
            netns: plan::external_netns(lab),
            ip: external_ip,
            service_ips: external_service_ips(&cluster.objects),
            cluster_ips: cluster_ips(&cluster.objects),
            addresses: cluster.external_addresses.clone(),
            default_via,
        },
        agent_bin: previous.and_then(|p| p.agent_bin.clone()),
        agent_args: previous.map(|p| p.agent_args.clone()).unwrap_or_default(),
        control_plane,
    })
}

/// Addresses of Services that outside clients use, sorted and without duplicates.
pub fn external_service_ips(objects: &[Object]) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    for o in objects {
        let Object::Service(svc) = o else { continue };
        let spec = svc.spec.as_ref();
        let lb = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        let candidates = spec
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.load_balancer_ip.clone()))
            .chain(lb.into_iter().flatten().filter_map(|i| i.ip.clone()));
        ips.extend(candidates.filter_map(|s| s.parse::<Ipv4Addr>().ok()));
    }
    ips.sort();
    ips.dedup();
    ips
}

/// ClusterIPs of every Service (headless ones have none), sorted and without duplicates.
pub fn cluster_ips(objects: &[Object]) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(svc) => svc.spec.as_ref(),
            _ => None,
        })
        .flat_map(|spec| {
            spec.cluster_ips
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(spec.cluster_ip.clone())
        })
        .filter_map(|s| s.parse::<Ipv4Addr>().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// A node's directory name (cgroup, bpffs): the node name when it is plain, else the netns' hash suffix.
pub fn node_dir(node: &str) -> String {
    plan::node_netns("x", node)
        .trim_start_matches("strait-x-node-")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec;

    const FILE: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-c, namespace: a}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: a-b}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIP: 10.244.2.2}
";

    #[test]
    fn names_and_addresses() {
        let cluster = spec::validate(spec::parse(FILE).unwrap()).unwrap();
        let paths = Paths::new("t1");
        let s = layout(&paths, &cluster, None).unwrap();
        assert_eq!(s.segment_netns, "strait-t1-seg");
        assert_eq!(s.nodes[0].netns, "strait-t1-node-n1");
        assert_eq!(
            s.nodes[1].cgroup.to_str().unwrap(),
            "/sys/fs/cgroup/unified/strait-t1/n2/host"
        );
        assert_eq!(
            s.nodes[0].bpffs_root.to_str().unwrap(),
            "/sys/fs/bpf/strait/t1-n1"
        );
        assert_eq!(s.pods[0].netns, "strait-t1-pod-a-b-c");
        // `a-b/c` reads the same as `a/b-c`: the second one is hashed.
        assert!(s.pods[1].key.starts_with('h'), "{}", s.pods[1].key);
        assert!(s.pods[0].host_veth.starts_with("lxc"));
        assert_eq!(s.external.ip.to_string(), "10.0.0.254");
        assert_eq!(s.external.netns, "strait-t1-external");

        // Re-layout with the previous state keeps keys even when the order changes.
        let mut objects = cluster.objects.clone();
        objects.swap(2, 3);
        let again = spec::validate(objects).unwrap();
        let s2 = layout(&paths, &again, Some(&s)).unwrap();
        let key = |st: &State, n: &str| st.pods.iter().find(|p| p.name == n).unwrap().key.clone();
        assert_eq!(key(&s, "a-b/c"), key(&s2, "a-b/c"));
        assert_eq!(key(&s, "a/b-c"), key(&s2, "a/b-c"));
    }
}
