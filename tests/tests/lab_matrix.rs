//! The lab without agents: plain routing must let every pod reach every pod (TCP, UDP and SCTP, across
//! nodes and namespaces), answers must name the right pod, and `lab down` must leave nothing behind.
//! Bad input is refused before anything is built.
//!
//! Needs root and network namespaces; run with `cargo test --release -p tests --test lab_matrix`
//! after `cargo build --release -p xtask`.

use serde_json::Value;
use tests::lab::{Lab, require_privileges, text};

const SIX_PODS: &str = "testdata/lab/two-nodes-six-pods.yaml";

fn pod_ip(up: &Value, pod: &str) -> String {
    let pods = up["pods"].as_array().expect("pods");
    let p = pods
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap_or_else(|| panic!("no pod {pod} in {up:#}"));
    text(p, &["ip"]).to_string()
}

fn assert_full_matrix(lab: &Lab, proto: &str) {
    let m = lab.json(&["matrix", "--port", "8080", "--proto", proto, "--json"]);
    assert_eq!(m["port"], 8080);
    assert_eq!(m["protocol"], proto);
    let pods: Vec<&str> = m["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pods, ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"], "{m:#}");
    for src in &pods {
        for dst in &pods {
            assert_eq!(m["results"][src][dst], "allowed", "{proto} {src} -> {dst}: {m:#}");
            assert_eq!(
                m["answered_by"][src][dst], *dst,
                "{proto} {src} -> {dst} answered by the wrong pod"
            );
        }
    }
}

#[test]
fn six_pods_reach_each_other_and_down_leaves_nothing() {
    if !require_privileges("six_pods_reach_each_other_and_down_leaves_nothing") {
        return;
    }
    let lab = Lab::new("m");
    let up = lab.up_without_agents(SIX_PODS);
    assert_eq!(up["name"], lab.name.as_str());
    assert_eq!(up["nodes"].as_array().unwrap().len(), 2, "{up:#}");
    assert_eq!(up["pods"].as_array().unwrap().len(), 6, "{up:#}");
    assert_eq!(text(&up, &["segment_netns"]), format!("strait-{}-seg", lab.name));
    for p in up["pods"].as_array().unwrap() {
        assert!(
            text(p, &["netns"]).starts_with(&format!("strait-{}-pod-", lab.name)),
            "{p}"
        );
        let veth = text(p, &["host_veth"]);
        assert!(veth.starts_with("lxc") && veth.len() == 11, "{veth}");
    }
    assert_eq!(
        lab.netns().len(),
        2 + 6 + 2,
        "nodes, pods, segment, external: {:?}",
        lab.netns()
    );

    assert_full_matrix(&lab, "tcp");
    assert_full_matrix(&lab, "udp");
    // SCTP through raw sockets (this kernel has no SCTP stack): answered on every declared port number.
    assert_full_matrix(&lab, "sctp");

    // The external client reaches pods (routed through their node) and is seen with its own address.
    let external_ip = text(&up, &["external", "ip"]).to_string();
    let to = format!("{}:8080/tcp", pod_ip(&up, "y/c"));
    let p = lab.json(&["probe", "--from", "external", "--to", &to, "--json"]);
    assert_eq!(p["attempts"][0]["outcome"], "answered", "{p:#}");
    assert_eq!(p["attempts"][0]["answered_by"], "y/c");
    assert!(
        text(&p, &["attempts", "0", "client_seen"]).starts_with(&format!("{external_ip}:")),
        "{p:#}"
    );

    // A node's host process reaches a pod on the other node from the node IP; named ports resolve.
    let p = lab.json(&[
        "probe",
        "--from",
        "node/n1",
        "--to",
        "x/b:serve-81/tcp",
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(p["summary"]["x/b"], 3, "{p:#}");
    assert!(
        text(&p, &["attempts", "0", "client_seen"]).starts_with("10.0.0.10:"),
        "{p:#}"
    );

    // Nothing listens on 9999: refused, not a timeout (RST / ICMP port unreachable).
    for proto in ["tcp", "udp"] {
        let to = format!("x/a:9999/{proto}");
        let p = lab.json(&["probe", "--from", "y/c", "--to", &to, "--json"]);
        assert_eq!(p["attempts"][0]["outcome"], "refused", "{p:#}");
    }
    // SCTP from the external client, across the segment; a port nobody serves stays silent (the
    // responder has no SCTP stack to ABORT with): a timeout.
    let to = format!("{}:8080/sctp", pod_ip(&up, "x/a"));
    let p = lab.json(&["probe", "--from", "external", "--to", &to, "--json"]);
    assert_eq!(p["attempts"][0]["outcome"], "answered", "{p:#}");
    assert_eq!(p["attempts"][0]["answered_by"], "x/a");
    assert!(
        text(&p, &["attempts", "0", "client_seen"]).starts_with(&format!("{external_ip}:")),
        "{p:#}"
    );
    let p = lab.json(&[
        "probe",
        "--from",
        "y/c",
        "--to",
        "x/a:9999/sctp",
        "--timeout-ms",
        "300",
        "--json",
    ]);
    assert_eq!(p["attempts"][0]["outcome"], "timeout", "{p:#}");

    let down = lab.down();
    assert_eq!(down["existed"], true);
    assert!(lab.leftovers().is_empty(), "left behind: {:?}", lab.leftovers());
    let again = lab.down();
    assert_eq!(again["existed"], false, "down must be idempotent");
}

#[test]
fn duplicate_pod_ip_is_refused_and_nothing_is_built() {
    if !require_privileges("duplicate_pod_ip_is_refused_and_nothing_is_built") {
        return;
    }
    let lab = Lab::new("d");
    let text = std::fs::read_to_string(tests::lab::workspace().join(SIX_PODS)).expect("test data");
    // y/c takes x/a's address.
    let bad = text.replace("podIP: 10.244.2.12", "podIP: 10.244.1.10");
    assert_ne!(bad, text, "the test data changed: pick another pod to clash");
    let file = std::env::temp_dir().join(format!("strait-{}-dup.yaml", lab.name));
    std::fs::write(&file, bad).unwrap();

    let out = lab.run(&["up", file.to_str().unwrap(), "--no-agent", "--json"]);
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a duplicate pod IP must be refused");
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    for needle in ["Pod y/c", "Pod x/a", "status.podIP", "10.244.1.10"] {
        assert!(
            stderr.contains(needle),
            "the refusal should name {needle:?}:\n{stderr}"
        );
    }
    assert!(
        lab.leftovers().is_empty(),
        "a refused file must build nothing: {:?}",
        lab.leftovers()
    );
}
