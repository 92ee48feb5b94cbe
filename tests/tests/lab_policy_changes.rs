//! Policy changes with real traffic: a new policy, its removal and a label change reach the datapath
//! within a second (measured with a bound), and by default (`--policy-established=revoke`) an open
//! connection the policy no longer allows loses its next packet.

use std::time::{Duration, Instant};

use tests::lab::{Lab, LongConnection, pod_netns, require_privileges};

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

    let client_ns = pod_netns(&up, "shop/client-1");
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

/// The agent's answer to a CLI command run on node n1: its JSON documents (`flows` prints one per line).
fn agent_json_lines(lab: &Lab, args: &[&str]) -> Vec<serde_json::Value> {
    let agent = tests::lab::agent_bin();
    let mut full = vec!["exec", "node/n1", "--", agent.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = lab.run(&full);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .map(|v| v.unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})")))
        .collect()
}

fn agent_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut docs = agent_json_lines(lab, args);
    assert_eq!(docs.len(), 1, "{args:?}: expected one JSON document");
    docs.remove(0)
}

#[test]
fn flows_and_explain_name_the_policy_and_rule() {
    if !require_privileges("flows_and_explain_name_the_policy_and_rule") {
        return;
    }
    let lab = Lab::new("polflows");
    lab.up_with_agents(FILE, 4);
    lab.apply_text(ALLOW_CLIENTS);
    // web-1 (on n1) is isolated: clients allowed by rule 0, another web pod denied by default deny.
    let denied = lab.wait_for("shop/web-2", "10.244.1.11:8080/tcp", 1, |p| {
        p["summary"]["timeout"] == 1
    });
    assert_eq!(denied["summary"]["timeout"], 1, "{denied:#}");
    let allowed = lab.probe("shop/client-1", "10.244.1.11:8080/tcp", 1);
    assert_eq!(allowed["summary"]["shop/web-1"], 1, "{allowed:#}");

    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut drop_seen, mut allow_seen) = (false, false);
    while Instant::now() < deadline && !(drop_seen && allow_seen) {
        for f in agent_json_lines(&lab, &["flows", "-o", "json"]) {
            let (src, dst) = (f["src"]["pod"].as_str(), f["dst"]["pod"].as_str());
            if src == Some("shop/web-2") && dst == Some("shop/web-1") && f["verdict"] == "DROPPED" {
                assert_eq!(f["reason"], "policy-ingress", "{f:#}");
                let by: Vec<_> = f["isolated_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                assert_eq!(
                    by,
                    ["shop/web-from-clients"],
                    "default deny names the isolating policy: {f:#}"
                );
                drop_seen = true;
            }
            if src == Some("shop/client-1") && dst == Some("shop/web-1") && f["verdict"] == "FORWARDED" {
                assert_eq!(f["policy"], "shop/web-from-clients", "{f:#}");
                assert_eq!(f["rule"], 0, "{f:#}");
                allow_seen = true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        drop_seen && allow_seen,
        "flows must show the drop ({drop_seen}) and the allow ({allow_seen})"
    );

    let explain = agent_json(
        &lab,
        &[
            "policy",
            "explain",
            "--from",
            "shop/web-2",
            "--to",
            "shop/web-1:8080/tcp",
            "-o",
            "json",
        ],
    );
    assert_eq!(explain["allowed"], false, "{explain:#}");
    assert!(
        explain["summary"]
            .as_str()
            .unwrap()
            .contains("shop/web-from-clients"),
        "{explain:#}"
    );
    let explain = agent_json(
        &lab,
        &[
            "policy",
            "explain",
            "--from",
            "shop/client-1",
            "--to",
            "shop/web-1:8080/tcp",
            "-o",
            "json",
        ],
    );
    assert_eq!(explain["allowed"], true, "{explain:#}");
    assert!(
        explain["summary"]
            .as_str()
            .unwrap()
            .contains("shop/web-from-clients"),
        "{explain:#}"
    );
}
