//! Long-lived clients through a ClusterIP, with agents and real traffic: a TCP connection held open by
//! `lab conn` keeps answering from its backend across an EndpointSlice change that keeps that backend
//! and across `lab apply` of new objects, and breaks when its backend pod goes; a UDP flow with a
//! fixed source port stays on one backend and moves when that backend is removed; `lab http` reaches
//! the agent's admin endpoint on a node's loopback.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::lab::{Lab, require_privileges, text};

const FILE: &str = "testdata/lab/probes.yaml";
const WEB: [(&str, &str); 3] = [
    ("shop/web-1", "10.244.1.11"),
    ("shop/web-2", "10.244.2.11"),
    ("shop/web-3", "10.244.2.12"),
];

/// A manual EndpointSlice for shop/web (http 8080/TCP, dns 5353/UDP) listing `pods`, all ready.
fn web_slice(pods: &[&str]) -> String {
    let mut lines = vec![
        "apiVersion: discovery.k8s.io/v1".to_string(),
        "kind: EndpointSlice".into(),
        "metadata: {name: web-manual, namespace: shop, labels: {kubernetes.io/service-name: web}}".into(),
        "addressType: IPv4".into(),
        "ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]".into(),
        "endpoints:".into(),
    ];
    for (pod, ip) in WEB.iter().filter(|(p, _)| pods.contains(p)) {
        lines.push(format!(
            "- {{addresses: [\"{ip}\"], conditions: {{ready: true, serving: true, terminating: false}}, \
             targetRef: {{kind: Pod, namespace: shop, name: {}}}}}",
            pod.trim_start_matches("shop/")
        ));
    }
    lines.join("\n") + "\n"
}

fn answered_by(p: &Value) -> Vec<String> {
    p["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["answered_by"].as_str().map(String::from))
        .collect()
}

fn others(pod: &str) -> Vec<&'static str> {
    WEB.iter().map(|(p, _)| *p).filter(|p| *p != pod).collect()
}

#[test]
fn open_connection_keeps_its_backend_across_endpoint_changes_and_applies() {
    if !require_privileges("open_connection_keeps_its_backend_across_endpoint_changes_and_applies") {
        return;
    }
    let lab = Lab::new("conn");
    lab.up_with_agents(FILE, 2);

    // The agent's admin endpoint, from the node's own loopback.
    let h = lab.json(&[
        "http",
        "--from",
        "node/n1:127.0.0.1",
        "--to",
        "127.0.0.1:9970/healthz",
        "--json",
    ]);
    assert_eq!(
        (h["outcome"].as_str(), h["status"].as_u64()),
        (Some("answered"), Some(200)),
        "{h:#}"
    );
    assert_eq!(h["body"], "ok\n", "{h:#}");
    assert!(text(&h, &["local"]).starts_with("127.0.0.1:"), "{h:#}");

    // Connections through the ClusterIP from a client-only pod and from a node (socket hooks).
    let mut pinned = Vec::new();
    for (label, from) in [("pod", "ops/client"), ("node", "node/n2:10.0.0.11")] {
        let open = lab.json(&[
            "conn",
            "open",
            "--from",
            from,
            "--to",
            "10.96.0.10:80",
            "--label",
            label,
            "--json",
        ]);
        assert_eq!(open["state"], "open", "{open:#}");
        let first = lab.json(&["conn", "check", label, "--json"]);
        assert_eq!(first["outcome"], "answered", "{first:#}");
        assert_eq!(first["connection"], "open", "{first:#}");
        pinned.push((
            label,
            text(&first, &["answered_by"]).to_string(),
            text(&first, &["client_seen"]).to_string(),
        ));
    }
    let client_seen = &pinned[0].2;
    assert_eq!(
        client_seen,
        text(&lab.json(&["conn", "check", "pod", "--json"]), &["local"]),
        "the backend sees the pod's own address and port"
    );

    // An EndpointSlice change that keeps the pod connection's backend and drops another one, and
    // new objects applied next to it.
    let backend = pinned[0].1.clone();
    let dropped = others(&backend)[0];
    let kept: Vec<&str> = WEB.iter().map(|(p, _)| *p).filter(|p| *p != dropped).collect();
    lab.apply_text(&web_slice(&kept));
    let p = lab.wait_for("ops/client", "10.96.0.10:80/tcp", 30, |p| {
        answered_by(p).len() == 30 && !answered_by(p).iter().any(|b| b == dropped)
    });
    assert!(
        answered_by(&p).len() == 30 && !answered_by(&p).iter().any(|b| b == dropped),
        "new connections avoid the removed {dropped}: {p:#}"
    );
    lab.apply_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: ops}\n\
         spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 8080}]}]}\nstatus: {podIP: 10.244.2.60}\n",
    );
    let c = lab.json(&["conn", "check", "pod", "--json"]);
    assert_eq!(
        (
            c["outcome"].as_str(),
            c["answered_by"].as_str(),
            c["client_seen"].as_str()
        ),
        (
            Some("answered"),
            Some(backend.as_str()),
            Some(client_seen.as_str())
        ),
        "the open connection still answers from its backend: {c:#}"
    );
    let (_, node_backend, node_seen) = &pinned[1];
    if node_backend != dropped {
        let c = lab.json(&["conn", "check", "node", "--json"]);
        assert_eq!(c["answered_by"], node_backend.as_str(), "{c:#}");
        assert_eq!(c["client_seen"], node_seen.as_str(), "{c:#}");
    }
    let list = lab.json(&["conn", "list", "--json"]);
    assert_eq!(list["connections"].as_array().unwrap().len(), 2, "{list:#}");

    // Its backend pod goes: the connection breaks (whatever the way), it never answers from elsewhere.
    lab.delete_text(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: shop}}\n",
        backend.trim_start_matches("shop/")
    ));
    let c = lab.json(&["conn", "check", "pod", "--timeout-ms", "500", "--json"]);
    assert_ne!(c["outcome"], "answered", "{c:#}");
    let closed = lab.json(&["conn", "close", "pod", "--json"]);
    assert_eq!(closed["closed"], true, "{closed:#}");
    let closed = lab.json(&["conn", "close", "node", "--json"]);
    assert_eq!(closed["closed"], true, "{closed:#}");
    let out = lab.run(&["conn", "check", "pod"]);
    assert!(!out.status.success(), "a closed connection cannot be checked");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no conn labelled pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lab flow check` until `done` (bounded: 10 s), with a window of `window_ms`.
fn flow_until(lab: &Lab, label: &str, window_ms: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = lab.json(&[
            "flow",
            "check",
            label,
            "--window-ms",
            &window_ms.to_string(),
            "--json",
        ]);
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backends(c: &Value) -> Vec<String> {
    c["backends"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn udp_flow_with_a_fixed_source_port_keeps_its_backend_and_moves_when_it_goes() {
    if !require_privileges("udp_flow_with_a_fixed_source_port_keeps_its_backend_and_moves_when_it_goes") {
        return;
    }
    let lab = Lab::new("flow");
    lab.up_with_agents(FILE, 2);
    let start = lab.json(&[
        "flow",
        "start",
        "--from",
        "ops/client",
        "--to",
        "10.96.0.10:53",
        "--source-port",
        "40053",
        "--interval-ms",
        "50",
        "--label",
        "dns",
        "--json",
    ]);
    assert_eq!(start["local"], "10.244.1.50:40053", "{start:#}");

    // Two seconds of datagrams on one 5-tuple: one backend answers them all.
    let c = flow_until(&lab, "dns", 2000, |c| c["answered"].as_u64().unwrap_or(0) >= 30);
    assert!(c["answered"].as_u64().unwrap() >= 30, "{c:#}");
    assert_eq!(c["refused"], 0, "{c:#}");
    let first = backends(&c);
    assert_eq!(first.len(), 1, "one 5-tuple, one backend: {c:#}");
    assert_eq!(
        c["client_seen"],
        serde_json::json!(["10.244.1.50:40053"]),
        "{c:#}"
    );
    let backend = first[0].clone();

    // That backend leaves the Service: the flow moves to another one, and stays there.
    let remaining = others(&backend);
    lab.apply_text(&web_slice(&remaining));
    let moved = flow_until(&lab, "dns", 500, |c| {
        let b = backends(c);
        b.len() == 1 && b[0] != backend && c["answered"].as_u64().unwrap_or(0) >= 5
    });
    let now = backends(&moved);
    assert!(
        now.len() == 1 && now[0] != backend && remaining.contains(&now[0].as_str()),
        "the flow moved off {backend}: {moved:#}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let later = lab.json(&["flow", "check", "dns", "--window-ms", "1000", "--json"]);
    assert_eq!(backends(&later), now, "and stays on its new backend: {later:#}");
    assert!(later["answered"].as_u64().unwrap() >= 10, "{later:#}");
    assert_eq!(
        later["client_seen"],
        serde_json::json!(["10.244.1.50:40053"]),
        "{later:#}"
    );

    let stop = lab.json(&["flow", "stop", "dns", "--json"]);
    assert_eq!(stop["stopped"], true, "{stop:#}");
    assert!(stop["answered"].as_u64().unwrap() >= 40, "{stop:#}");
}
