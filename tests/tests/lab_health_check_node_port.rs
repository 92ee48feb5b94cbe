//! kube-proxy's per-Service health check, asked over real HTTP on each node: for a LoadBalancer
//! Service with externalTrafficPolicy Local, `spec.healthCheckNodePort` answers 200 with the count of
//! local ready endpoints where the Service has some (n1) and 503 with 0 where it has none (n2), in
//! kube-proxy's JSON; when the last local backend goes away, n1 turns 503 as well.

use serde_json::Value;
use tests::lab::{Lab, require_privileges};

const FILE: &str = "testdata/lab/health-check-node-port.yaml";
const CHECK: &str = "127.0.0.1:32100/";

const WEB_1: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: web
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
status: {podIP: 10.244.1.11}
";

fn get(lab: &Lab, node: &str) -> Value {
    lab.json(&[
        "http",
        "--from",
        &format!("node/{node}:127.0.0.1"),
        "--to",
        CHECK,
        "--json",
    ])
}

/// Asks `node` until it answers `status` (bounded: 10 s; the agent reacts within a pass).
fn wait_status(lab: &Lab, node: &str, status: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = get(lab, node);
        if r["status"] == status || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn body_json(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {r:#}"))
}

fn assert_answer(r: &Value, status: u64, local_endpoints: u64) {
    assert_eq!(r["status"], status, "{r:#}");
    assert_eq!(r["headers"]["content-type"], "application/json", "{r:#}");
    assert_eq!(r["headers"]["x-content-type-options"], "nosniff", "{r:#}");
    let b = body_json(r);
    assert_eq!(b["service"]["namespace"], "shop", "{b:#}");
    assert_eq!(b["service"]["name"], "web", "{b:#}");
    assert_eq!(b["localEndpoints"], local_endpoints, "{b:#}");
    assert_eq!(b["serviceProxyHealthy"], true, "{b:#}");
}

#[test]
fn health_check_node_port_follows_local_endpoints() {
    if !require_privileges("health_check_node_port_follows_local_endpoints") {
        return;
    }
    let lab = Lab::new("hcnp");
    // ClusterIP, NodePort (n1: 2 scopes) and LoadBalancer (2 scopes): at least 5 frontends per node.
    lab.up_with_agents(FILE, 5);

    assert_answer(&wait_status(&lab, "n1", 200), 200, 1);
    assert_answer(&wait_status(&lab, "n2", 503), 503, 0);

    // The only backend goes: n1 has no local endpoint left and fails the check too.
    lab.delete_text(WEB_1);
    assert_answer(&wait_status(&lab, "n1", 503), 503, 0);
    assert_answer(&get(&lab, "n2"), 503, 0);

    // And back.
    lab.apply_text(WEB_1);
    assert_answer(&wait_status(&lab, "n1", 200), 200, 1);
}
