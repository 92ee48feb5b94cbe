//! The deployment manifests must stay valid Kubernetes objects with the settings the agent relies on.
//! Parsed with the same k8s-openapi types the agent uses; no cluster needed.

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    use serde::Deserialize;

    fn documents(file: &str) -> Vec<serde_yaml::Value> {
        let path = crate::workspace_root().join("manifests").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
            .collect()
    }

    #[test]
    fn daemonset_runs_the_agent_with_bpffs_and_node_name() {
        let docs = documents("daemonset.yaml");
        let ds: DaemonSet = serde_yaml::from_value(docs[0].clone()).expect("daemonset.yaml is a DaemonSet");
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.host_network,
            Some(true),
            "the agent must see the node's interfaces"
        );
        let c = &pod.containers[0];
        assert_eq!(c.args.as_ref().unwrap()[0], "run");
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "NODE_NAME"),
            "NODE_NAME feeds --node"
        );
        let mounts = c.volume_mounts.as_ref().unwrap();
        let bpffs = mounts
            .iter()
            .find(|m| m.mount_path == "/sys/fs/bpf")
            .expect("bpffs mounted");
        // Bidirectional is for privileged containers only (the API server refuses it otherwise); the
        // host's bpffs is shared as it is, and the agent refuses to mount one of its own.
        assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));
        assert!(
            c.args
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a == "--require-host-bpffs"),
            "the agent must not mount a bpffs that dies with its container"
        );
        let caps = c
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .add
            .as_ref()
            .unwrap();
        for cap in ["BPF", "NET_ADMIN"] {
            assert!(caps.iter().any(|c| c == cap), "capability {cap}");
        }
    }

    #[test]
    fn rbac_grants_read_on_every_watched_kind() {
        let docs = documents("rbac.yaml");
        let _: ServiceAccount = serde_yaml::from_value(docs[0].clone()).unwrap();
        let role: ClusterRole = serde_yaml::from_value(docs[1].clone()).unwrap();
        let _: ClusterRoleBinding = serde_yaml::from_value(docs[2].clone()).unwrap();
        let rules = role.rules.unwrap();
        for resource in [
            "services",
            "pods",
            "namespaces",
            "nodes",
            "endpointslices",
            "networkpolicies",
        ] {
            let rule = rules
                .iter()
                .find(|r| {
                    r.resources
                        .as_ref()
                        .is_some_and(|rs| rs.iter().any(|x| x == resource))
                })
                .unwrap_or_else(|| panic!("no rule for {resource}"));
            for verb in ["list", "watch"] {
                assert!(rule.verbs.iter().any(|v| v == verb), "{resource}: {verb}");
            }
        }
    }
}
