//! Changing a running lab: `lab apply` adds, moves and relabels pods and adds policies and services;
//! `lab delete` removes them; the wiring follows (new pods answer, removed pods leave no netns or
//! routes) and the manifests the agents read follow too.
//!
//! Needs root and network namespaces; run with `cargo test --release -p tests --test lab_apply`
//! after `cargo build --release -p xtask`.

use std::process::Output;

use tests::lab::{Lab, require_privileges};

const SIX_PODS: &str = "testdata/lab/two-nodes-six-pods.yaml";

/// x/a relabelled (same ports: no rebuild), x/d new on n2, y/b moved to n2 with a new address, a
/// policy, and a LoadBalancer service whose address the external client routes to a node.
const CHANGES: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a, role: changed}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: serve-8080-tcp, containerPort: 8080, protocol: TCP}
    - {name: serve-8080-udp, containerPort: 8080, protocol: UDP}
    - {name: serve-81, containerPort: 81}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {pod: d}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.244.2.20}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.244.2.30}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: x}
spec: {type: LoadBalancer, clusterIP: 10.96.0.20, selector: {pod: d}, ports: [{port: 80, targetPort: 8080}]}
status: {loadBalancer: {ingress: [{ip: 192.168.100.10}]}}
";

const REMOVALS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
";

fn stdout(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn apply_and_delete_follow_through_to_wiring_and_manifests() {
    if !require_privileges("apply_and_delete_follow_through_to_wiring_and_manifests") {
        return;
    }
    let lab = Lab::new("a");
    lab.up_without_agents(SIX_PODS);
    let dir = std::env::temp_dir();
    let changes = dir.join(format!("strait-{}-changes.yaml", lab.name));
    let removals = dir.join(format!("strait-{}-removals.yaml", lab.name));
    std::fs::write(&changes, CHANGES).unwrap();
    std::fs::write(&removals, REMOVALS).unwrap();

    let r = lab.json(&["apply", changes.to_str().unwrap(), "--json"]);
    assert_eq!(names(&r["pods_added"]), ["x/d"], "{r:#}");
    assert_eq!(
        names(&r["pods_rebuilt"]),
        ["y/b"],
        "a relabelled pod is not rebuilt: {r:#}"
    );
    assert!(names(&r["pods_removed"]).is_empty(), "{r:#}");

    let m = lab.json(&["matrix", "--port", "8080", "--json"]);
    assert_eq!(m["pods"].as_array().unwrap().len(), 7, "{m:#}");
    for src in names(&m["sources"]) {
        for dst in names(&m["pods"]) {
            assert_eq!(m["results"][src][dst], "allowed", "{src} -> {dst}: {m:#}");
            assert_eq!(m["answered_by"][src][dst], dst);
        }
    }
    let p = lab.json(&["probe", "--from", "x/a", "--to", "y/b:8080", "--json"]);
    assert_eq!(
        p["attempts"][0]["client_seen"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("10.244.1.10")
    );
    assert_eq!(lab.netns().len(), 11, "{:?}", lab.netns());

    // The external client's router sends the LB address to the first node, and to each node in
    // that node's table (`--via`).
    let lb_route = stdout(lab.run(&["exec", "external", "--", "ip", "route", "show", "192.168.100.10"]));
    assert!(lb_route.contains("via 10.0.0.10"), "{lb_route}");
    let via_n2 = stdout(lab.run(&[
        "exec",
        "external",
        "--",
        "ip",
        "route",
        "show",
        "192.168.100.10",
        "table",
        "101",
    ]));
    assert!(via_n2.contains("via 10.0.0.11"), "{via_n2}");
    let objects =
        std::fs::read_to_string(format!("/run/strait/labs/{}/manifests/objects.yaml", lab.name)).unwrap();
    assert!(
        objects.contains("name: deny-all") && objects.contains("role: changed"),
        "{objects}"
    );
    // The agents, not the lab, derive EndpointSlices (standalone mode): the lab writes none of its own.
    assert!(!objects.contains("kind: EndpointSlice"), "{objects}");

    let r = lab.json(&["delete", removals.to_str().unwrap(), "--json"]);
    assert_eq!(names(&r["pods_removed"]), ["x/d"], "{r:#}");
    assert_eq!(lab.netns().len(), 10, "{:?}", lab.netns());
    let routes = stdout(lab.run(&["exec", "node/n1", "--", "ip", "route"]));
    assert!(
        !routes.contains("10.244.2.20"),
        "the route to a removed pod stays: {routes}"
    );
    assert!(
        !routes.contains("10.244.1.12"),
        "the route to a moved pod's old address stays: {routes}"
    );
    let objects =
        std::fs::read_to_string(format!("/run/strait/labs/{}/manifests/objects.yaml", lab.name)).unwrap();
    assert!(!objects.contains("name: deny-all"), "{objects}");

    // Refused changes change nothing: a pod on a node that does not exist.
    std::fs::write(
        &changes,
        CHANGES.replace("nodeName: n2, containers", "nodeName: n9, containers"),
    )
    .unwrap();
    let out = lab.run(&["apply", changes.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.nodeName \"n9\""));
    assert_eq!(lab.netns().len(), 10);

    let _ = std::fs::remove_file(&changes);
    let _ = std::fs::remove_file(&removals);
    lab.down();
    assert!(lab.leftovers().is_empty(), "left behind: {:?}", lab.leftovers());
}
