//! The agent's kube-proxy-compatible health endpoint on :10256 and its metrics, asked over real HTTP
//! from the node: `/healthz` answers like kube-proxy's (200, JSON with lastUpdated / currentTime /
//! nodeEligible), `/readyz` and `/livez` too; a Node the cluster autoscaler is removing turns `/healthz`
//! into 503 with nodeEligible false, so load balancers stop sending to it; `/metrics` on the admin
//! endpoint is Prometheus text that a parser accepts.

use serde_json::Value;
use tests::lab::{Lab, agent_bin, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";

const N1_DRAINING: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1764559200', effect: NoSchedule}]}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
";

fn get(lab: &Lab, to: &str) -> Value {
    lab.json(&["http", "--from", "node/n1:127.0.0.1", "--to", to, "--json"])
}

fn body_json(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {r:#}"))
}

#[test]
fn healthz_answers_like_kube_proxy_and_follows_the_node() {
    if !require_privileges("healthz_answers_like_kube_proxy_and_follows_the_node") {
        return;
    }
    let lab = Lab::new("hz");
    lab.up_with_agents(FILE, 6);

    let r = get(&lab, "127.0.0.1:10256/healthz");
    assert_eq!(r["status"], 200, "{r:#}");
    assert_eq!(r["headers"]["content-type"], "application/json", "{r:#}");
    let b = body_json(&r);
    assert_eq!(b["nodeEligible"], true, "{b:#}");
    for key in ["lastUpdated", "currentTime"] {
        let t = b[key].as_str().unwrap_or_default();
        assert!(
            t.ends_with(" +0000 UTC") && t.len() >= 25,
            "{key} in Go's time format: {b:#}"
        );
    }
    assert_eq!(get(&lab, "127.0.0.1:10256/readyz")["status"], 200);
    assert_eq!(get(&lab, "127.0.0.1:10256/livez")["status"], 200);

    // Prometheus text: every sample line is `name{labels} value`, and the families we document exist.
    let m = get(&lab, "127.0.0.1:9970/metrics");
    assert_eq!(m["status"], 200, "{m:#}");
    let text = m["body"].as_str().unwrap_or_default();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a Prometheus sample: {line:?}"
        );
    }
    assert!(
        text.ends_with("# EOF\n") || text.contains("# TYPE"),
        "no metric families:\n{text}"
    );

    // The log filter changes at run time, and a bad one is refused with the reason.
    let agent = agent_bin();
    let agent = agent.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let mut all = vec!["exec", "node/n1", "--", agent, "log-level"];
        all.extend(args);
        lab.run(&all)
    };
    let out = run(&[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "info");
    let out = run(&["info,proxy_agent=debug"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&run(&[]).stdout).trim(),
        "info,proxy_agent=debug"
    );
    let out = run(&["proxy_agent=loud"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy_agent=loud"));

    lab.apply_text(N1_DRAINING);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = Value::Null;
    while std::time::Instant::now() < deadline {
        last = get(&lab, "127.0.0.1:10256/healthz");
        if last["status"] == 503 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        last["status"], 503,
        "a draining node must fail /healthz: {last:#}"
    );
    assert_eq!(body_json(&last)["nodeEligible"], false, "{last:#}");
    assert_eq!(
        get(&lab, "127.0.0.1:10256/livez")["status"],
        200,
        "the proxy itself is still live"
    );
}
