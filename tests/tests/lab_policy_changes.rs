//! Policy changes with real traffic: a new policy, its removal and a label change reach the datapath
//! within a second (measured with a bound), and by default (`--policy-established=revoke`) an open
//! connection the policy no longer allows loses its next packet.

use std::time::{Duration, Instant};

use tests::lab::{Lab, LongConnection, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";
/// The agent's propagation target (issue: "within 1 second").
const WITHIN: Duration = Duration::from_secs(1);

const DENY_WEB: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
";

const ALLOW_CLIENTS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
";

/// Probes (100 ms timeout each) until `allowed` is what the probe sees; returns how long that took.
/// Bounded: gives up after 5 s and returns that.
fn time_until(lab: &Lab, allowed: bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let p = lab.json(&[
            "probe",
            "--from",
            "shop/client-1",
            "--to",
            "10.244.1.11:8080/tcp",
            "--timeout-ms",
            "100",
            "--json",
        ]);
        if (p["summary"]["shop/web-1"] == 1) == allowed {
            return start.elapsed();
        }
    }
    start.elapsed()
}

#[test]
fn policy_changes_reach_the_datapath_within_a_second() {
    if !require_privileges("policy_changes_reach_the_datapath_within_a_second") {
        return;
    }
    let lab = Lab::new("polchg");
    let up = lab.up_with_agents(FILE, 4);
    assert!(
        time_until(&lab, true) < WITHIN,
        "web-1 reachable before any policy"
    );

    let client_ns = up["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "shop/client-1")
        .and_then(|p| p["netns"].as_str())
        .expect("client-1 netns")
        .to_string();
    let mut open = LongConnection::open(&client_ns, "10.244.1.11:8080");
    assert_eq!(open.ask().as_deref(), Ok("shop/web-1"));

    lab.apply_text(DENY_WEB);
    let took = time_until(&lab, false);
    assert!(took < WITHIN, "a new deny policy took {took:?}");
    assert!(
        open.ask().is_err(),
        "revoke (default): the open connection's next packet is dropped"
    );

    lab.apply_text(ALLOW_CLIENTS);
    let took = time_until(&lab, true);
    assert!(took < WITHIN, "an allow policy took {took:?}");

    // The client loses the label the policy selects it by.
    lab.apply_text(
        "apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop, labels: {app: visitor}}
spec:
  nodeName: n1
  containers:
  - name: client
    ports:
    - {name: probe, containerPort: 9000, protocol: TCP}
status: {podIP: 10.244.1.21}
",
    );
    let took = time_until(&lab, false);
    assert!(took < WITHIN, "a pod label change took {took:?}");

    lab.delete_text(&format!("{DENY_WEB}---\n{ALLOW_CLIENTS}"));
    let took = time_until(&lab, true);
    assert!(took < WITHIN, "deleting the policies took {took:?}");
}
