//! One client port, two VIPs, one backend, real traffic: a client pod sends UDP from a fixed source
//! port to two Services whose only endpoint is the same pod. Both must be answered (the client's
//! connected socket accepts an answer only from the VIP it sent to), and the backend sees the second
//! flow on another source port — the datapath's answer to the reply-tuple clash.

use serde_json::Value;
use tests::lab::{Lab, agent_bin, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";
const PORT: &str = "40099";

/// Two selector-less Services, each with a hand-made slice naming web-1's DNS port.
const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: one-a, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: one-a-1, namespace: shop, labels: {kubernetes.io/service-name: one-a}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.11], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: one-b, namespace: shop}
spec:
  clusterIP: 10.96.0.41
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: one-b-1, namespace: shop, labels: {kubernetes.io/service-name: one-b}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.11], conditions: {ready: true}}]
";

fn probe(lab: &Lab, to: &str) -> Value {
    lab.json(&[
        "probe",
        "--from",
        "shop/client-1",
        "--to",
        to,
        "--source-port",
        PORT,
        "--count",
        "3",
        "--json",
    ])
}

/// The source ports web-1 saw, one per attempt; every attempt must have been answered by web-1.
fn seen_ports(p: &Value, what: &str) -> Vec<String> {
    p["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            assert_eq!(a["outcome"], "answered", "{what}: {p:#}");
            assert_eq!(a["answered_by"], "shop/web-1", "{what}: {p:#}");
            let seen = a["client_seen"].as_str().expect("client_seen");
            assert!(
                seen.starts_with("10.244.1.21:"),
                "{what}: the backend sees the pod: {p:#}"
            );
            seen.rsplit(':').next().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn one_client_port_through_two_vips_to_one_backend_is_answered_on_both() {
    if !require_privileges("one_client_port_through_two_vips_to_one_backend_is_answered_on_both") {
        return;
    }
    let lab = Lab::new("clash");
    lab.up_with_agents(FILE, 6);
    lab.apply_text(SERVICES);
    let ready = lab.wait_for("shop/client-1", "10.96.0.41:53/udp", 1, |p| {
        p["summary"].get("shop/web-1").is_some()
    });
    assert!(
        ready["summary"].get("shop/web-1").is_some(),
        "one-b never served: {ready:#}"
    );

    // The flow to one-b exists now (from the wait above, on an ephemeral port); the fixed-port flows
    // start here: first one-a, then one-b from the same port, then both again.
    let a = seen_ports(&probe(&lab, "10.96.0.40:53/udp"), "one-a");
    let b = seen_ports(&probe(&lab, "10.96.0.41:53/udp"), "one-b");
    let a_again = seen_ports(&probe(&lab, "10.96.0.40:53/udp"), "one-a again");
    let b_again = seen_ports(&probe(&lab, "10.96.0.41:53/udp"), "one-b again");
    assert!(
        a.iter().chain(&a_again).all(|p| p == PORT),
        "one-a keeps the client's port: {a:?} {a_again:?}"
    );
    assert!(
        b.iter().chain(&b_again).all(|p| p != PORT && p == &b[0]),
        "one-b leaves on one other port: {b:?} {b_again:?}"
    );

    // `ct list` and `backend list` read the pinned maps and show the same story.
    let pins = format!("/sys/fs/bpf/strait/{}-n1", lab.name);
    let list = |what: &[&str]| -> Value {
        let agent = agent_bin();
        let mut args = vec!["exec", "node/n1", "--", agent.to_str().expect("utf-8")];
        args.extend(what);
        args.extend(["--bpffs-root", &pins, "-o", "json"]);
        let out = lab.run(&args);
        assert!(
            out.status.success(),
            "{what:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let ct = list(&["ct", "list"]);
    let moved = ct
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| {
            r["direction"] == "forward"
                && r["source"] == format!("10.244.1.21:{PORT}")
                && r["destination"] == "10.96.0.41:53"
        })
        .unwrap_or_else(|| panic!("no forward entry for the one-b flow: {ct:#}"));
    assert!(
        moved["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == "port-snat"),
        "the reallocated flow is marked: {moved:#}"
    );
    assert_eq!(moved["ports"][0], 40099, "{moved:#}");
    assert_eq!(
        moved["ports"][1].as_u64().map(|p| p.to_string()),
        Some(b[0].clone()),
        "{moved:#}"
    );
    let count = list(&["ct", "list", "--count"]);
    assert_eq!(
        count["entries"].as_u64(),
        Some(ct.as_array().expect("rows").len() as u64)
    );
    let backends = list(&["backend", "list"]);
    assert!(
        backends
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["address"] == "10.244.1.11:5353" && r["proto"] == "UDP"),
        "web-1's DNS port is a backend: {backends:#}"
    );
}
