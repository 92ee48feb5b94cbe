//! ClusterIP behaviour across endpoint and Service changes, with real traffic in the lab: an open TCP
//! connection keeps its backend when that endpoint turns not-ready while new connections avoid it;
//! a Service whose endpoints all went is refused at once; sessionAffinity pins a client to one backend.

use serde_json::Value;
use tests::lab::{Lab, LongConnection, pod_netns, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";

/// An EndpointSlice for shop/web (TCP http 8080, UDP dns 5353) with the given (pod, ip, ready).
fn web_slice(endpoints: &[(&str, &str, bool)]) -> String {
    let mut lines = vec![
        "apiVersion: discovery.k8s.io/v1".to_string(),
        "kind: EndpointSlice".into(),
        "metadata:".into(),
        "  name: web-manual".into(),
        "  namespace: shop".into(),
        "  labels: {kubernetes.io/service-name: web}".into(),
        "addressType: IPv4".into(),
        "ports:".into(),
        "- {name: http, port: 8080, protocol: TCP}".into(),
        "- {name: dns, port: 5353, protocol: UDP}".into(),
    ];
    if endpoints.is_empty() {
        lines.push("endpoints: []".into());
    } else {
        lines.push("endpoints:".into());
    }
    for (pod, ip, ready) in endpoints {
        lines.push(format!("- addresses: [\"{ip}\"]"));
        lines.push(format!(
            "  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}"
        ));
        lines.push(format!(
            "  targetRef: {{kind: Pod, namespace: shop, name: {}}}",
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

fn ip_of(pod: &str) -> &'static str {
    match pod {
        "shop/web-1" => "10.244.1.11",
        "shop/web-2" => "10.244.2.11",
        "shop/web-3" => "10.244.2.12",
        other => panic!("unexpected backend {other}"),
    }
}

#[test]
fn open_connection_survives_not_ready_and_empty_service_is_refused() {
    if !require_privileges("open_connection_survives_not_ready_and_empty_service_is_refused") {
        return;
    }
    let lab = Lab::new("cipchg");
    let up = lab.up_with_agents(FILE, 4);
    let client_ns = pod_netns(&up, "shop/client-1");

    let mut conn = LongConnection::open(&client_ns, "10.96.0.10:80");
    let pinned = conn.ask().expect("first answer on the open connection");

    // The endpoint of that backend turns not-ready; the other two stay.
    let all = ["shop/web-1", "shop/web-2", "shop/web-3"];
    let slice: Vec<(&str, &str, bool)> = all
        .iter()
        .map(|p| (*p, ip_of(p), *p != pinned.as_str()))
        .collect();
    lab.apply_text(&web_slice(&slice));
    let after = lab.wait_for("shop/client-1", "10.96.0.10:80/tcp", 30, |p| {
        answered_by(p).len() == 30 && !answered_by(p).contains(&pinned)
    });
    assert!(
        !answered_by(&after).contains(&pinned),
        "new connections avoid the not-ready {pinned}: {after:#}"
    );
    assert_eq!(answered_by(&after).len(), 30, "and all are answered: {after:#}");
    assert_eq!(
        conn.ask().as_deref(),
        Ok(pinned.as_str()),
        "the open connection keeps its backend"
    );

    // Every endpoint gone: refused at once (not a timeout), TCP and UDP.
    lab.apply_text(&web_slice(&[]));
    for to in ["10.96.0.10:80/tcp", "10.96.0.10:53/udp"] {
        let p = lab.wait_for("shop/client-2", to, 5, |p| p["summary"]["refused"] == 5);
        assert_eq!(p["summary"]["refused"], 5, "{to}: {p:#}");
        for a in p["attempts"].as_array().unwrap() {
            let ms = a["ms"].as_f64().unwrap_or(0.0);
            assert!(ms < 100.0, "{to}: refused after {ms} ms");
        }
    }
}

#[test]
fn session_affinity_pins_a_client_to_one_backend() {
    if !require_privileges("session_affinity_pins_a_client_to_one_backend") {
        return;
    }
    let lab = Lab::new("cipaff");
    lab.up_with_agents(FILE, 4);
    lab.apply_text(
        &[
            "apiVersion: v1",
            "kind: Service",
            "metadata: {name: web, namespace: shop}",
            "spec:",
            "  clusterIP: 10.96.0.10",
            "  selector: {app: web}",
            "  sessionAffinity: ClientIP",
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}",
            "  ports:",
            "  - {name: http, port: 80, targetPort: http, protocol: TCP}",
        ]
        .join("\n"),
    );
    let p = lab.wait_for("shop/client-1", "10.96.0.10:80/tcp", 50, |p| {
        let by = answered_by(p);
        by.len() == 50 && by.iter().all(|b| *b == by[0])
    });
    let by = answered_by(&p);
    assert_eq!(by.len(), 50, "{p:#}");
    assert!(
        by.iter().all(|b| *b == by[0]),
        "50 connections from one client reach one backend: {p:#}"
    );
    // Another client is free to land elsewhere, but also sticks.
    let other = lab.probe("shop/client-2", "10.96.0.10:80/tcp", 20);
    let by2 = answered_by(&other);
    assert!(by2.iter().all(|b| *b == by2[0]), "{other:#}");
}
