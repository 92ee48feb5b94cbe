//! Every kind of client `lab probe` and `lab http` can start from, with real traffic and no agents
//! (plain routing): the external client from each of its addresses, a node from its node IP and a
//! secondary address, a pod that backs nothing, fixed source ports; and external traffic to a
//! service address going through the node the client picked (`--via`), one route per socket.

use serde_json::{Value, json};
use tests::lab::{Lab, require_privileges, text};

const FILE: &str = "testdata/lab/probes.yaml";

fn attempts(p: &Value) -> &Vec<Value> {
    p["attempts"].as_array().expect("attempts")
}

/// Every attempt answered by `pod`, which saw a client address starting with `client` (`ip:` or
/// `ip:port`).
fn assert_all(p: &Value, pod: &str, client: &str) {
    assert!(!attempts(p).is_empty(), "{p:#}");
    for a in attempts(p) {
        assert_eq!(a["outcome"], "answered", "{p:#}");
        assert_eq!(a["answered_by"], pod, "{p:#}");
        let seen = a["client_seen"].as_str().expect("client_seen");
        assert!(
            seen.starts_with(client),
            "{pod} saw {seen}, expected {client}…: {p:#}"
        );
    }
}

/// Runs a lab command that must fail; returns its stderr.
fn refused(lab: &Lab, args: &[&str]) -> String {
    let out = lab.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "xtask lab {} should fail: {stderr}",
        args.join(" ")
    );
    stderr
}

#[test]
fn clients_of_every_kind_send_from_the_address_they_chose() {
    if !require_privileges("clients_of_every_kind_send_from_the_address_they_chose") {
        return;
    }
    let lab = Lab::new("src");
    let up = lab.up_without_agents(FILE);
    assert_eq!(
        up["external"]["addresses"],
        json!(["203.0.113.2", "203.0.113.130"]),
        "{up:#}"
    );
    let external_ip = text(&up, &["external", "ip"]).to_string();

    // The external client: its segment address by default, or any of its client addresses; pods on
    // both nodes see that address, so the nodes route the client addresses back.
    for (from, seen) in [
        ("external".to_string(), format!("{external_ip}:")),
        ("external:203.0.113.2".into(), "203.0.113.2:".into()),
        ("external:203.0.113.130".into(), "203.0.113.130:".into()),
    ] {
        for (to, pod) in [
            ("shop/web-1:8080/tcp", "shop/web-1"),
            ("shop/web-2:8080/tcp", "shop/web-2"),
            ("shop/web-3:dns/udp", "shop/web-3"),
        ] {
            let p = lab.probe(&from, to, 3);
            assert_eq!(p["from"], from.as_str(), "{p:#}");
            assert_all(&p, pod, &seen);
        }
    }

    // A node's host network, bound to its node IP, to its secondary address, or left to the route.
    for (from, seen) in [
        ("node/n1", "10.0.0.10:"),
        ("node/n1:10.0.0.10", "10.0.0.10:"),
        ("node/n1:10.0.0.20", "10.0.0.20:"),
        ("node/n2:10.0.0.11", "10.0.0.11:"),
    ] {
        assert_all(&lab.probe(from, "shop/web-2:8080/tcp", 3), "shop/web-2", seen);
        assert_all(&lab.probe(from, "shop/web-1:5353/udp", 3), "shop/web-1", seen);
    }

    // A pod that backs nothing (no ports, no Service) is a client like any other, and its (idle)
    // responder runs, so the lab does not report it dead.
    assert_all(
        &lab.probe("ops/client", "shop/web-1:8080/tcp", 3),
        "shop/web-1",
        "10.244.1.50:",
    );
    let status = lab.json(&["status", "--json"]);
    assert!(
        status["responders_running"]
            .as_array()
            .unwrap()
            .contains(&json!("ops/client")),
        "{status:#}"
    );
    assert_eq!(status["dead"], json!([]), "{status:#}");

    // A fixed source port: every attempt (a new socket each, TCP and UDP) has the same 5-tuple.
    for (from, to, seen) in [
        ("ops/client", "shop/web-2:8080/tcp", "10.244.1.50:40001"),
        ("ops/client", "shop/web-2:5353/udp", "10.244.1.50:40001"),
        ("external:203.0.113.2", "shop/web-3:8080/tcp", "203.0.113.2:40002"),
        ("node/n1:10.0.0.20", "shop/web-3:5353/udp", "10.0.0.20:40003"),
    ] {
        let port = seen.rsplit(':').next().unwrap();
        let p = lab.json(&[
            "probe",
            "--from",
            from,
            "--to",
            to,
            "--count",
            "5",
            "--source-port",
            port,
            // A SYN that overtakes the previous attempt's reset is retransmitted after 1 s; the
            // 5-tuple is what this checks, not the latency.
            "--timeout-ms",
            "3000",
            "--json",
        ]);
        assert_eq!(p["source_port"], port.parse::<u64>().unwrap(), "{p:#}");
        let pod = to.split(':').next().unwrap();
        for a in attempts(&p) {
            assert_eq!(a["answered_by"], pod, "{p:#}");
            assert_eq!(a["client_seen"], seen, "{p:#}");
        }
    }

    // SCTP (raw packets) from a client address with a fixed port too.
    let p = lab.json(&[
        "probe",
        "--from",
        "external:203.0.113.130",
        "--to",
        "shop/web-1:8080/sctp",
        "--count",
        "2",
        "--source-port",
        "40004",
        "--json",
    ]);
    for a in attempts(&p) {
        assert_eq!(a["client_seen"], "203.0.113.130:40004", "{p:#}");
    }

    // HTTP to a responder: status, headers and body, who answered and the client it saw.
    let h = lab.json(&[
        "http",
        "--from",
        "external:203.0.113.130",
        "--to",
        "shop/web-2:http/status/503",
        "--json",
    ]);
    assert_eq!(h["outcome"], "answered", "{h:#}");
    assert_eq!(h["status"], 503, "{h:#}");
    assert_eq!(h["reason"], "Service Unavailable", "{h:#}");
    assert_eq!(h["answered_by"], "shop/web-2", "{h:#}");
    assert_eq!(h["headers"]["x-strait-pod"], "shop/web-2", "{h:#}");
    assert_eq!(h["headers"]["content-type"], "application/json", "{h:#}");
    let seen = text(&h, &["client_seen"]);
    assert!(seen.starts_with("203.0.113.130:"), "{h:#}");
    assert_eq!(h["local"], seen, "no translation on the way: {h:#}");
    let body: Value = serde_json::from_str(text(&h, &["body"])).expect("JSON body");
    assert_eq!(body["path"], "/status/503", "{h:#}");
    assert_eq!(body["client"], seen, "{h:#}");
    let h = lab.json(&[
        "http",
        "--from",
        "node/n1:10.0.0.20",
        "--to",
        "10.244.1.11:8080",
        "--json",
    ]);
    assert_eq!(
        (h["status"].as_u64(), h["path"].as_str()),
        (Some(200), Some("/")),
        "{h:#}"
    );
    assert!(text(&h, &["client_seen"]).starts_with("10.0.0.20:"), "{h:#}");
    let h = lab.json(&[
        "http",
        "--from",
        "ops/client",
        "--to",
        "shop/web-1:9999/x",
        "--json",
    ]);
    assert_eq!(h["outcome"], "refused", "nobody listens on 9999: {h:#}");
    assert!(h.get("status").is_none(), "{h:#}");

    // Client addresses change with `lab apply`: a new one answers at once, a dropped one is refused.
    lab.apply_text(
        "apiVersion: lab.strait.dev/v1\nkind: ExternalClient\nmetadata: {name: external}\n\
         spec: {addresses: [203.0.113.2, 198.18.0.7]}\n",
    );
    assert_all(
        &lab.probe("external:198.18.0.7", "shop/web-3:8080/tcp", 2),
        "shop/web-3",
        "198.18.0.7:",
    );
    assert_all(
        &lab.probe("external:203.0.113.2", "shop/web-3:8080/tcp", 2),
        "shop/web-3",
        "203.0.113.2:",
    );
    let e = refused(
        &lab,
        &[
            "probe",
            "--from",
            "external:203.0.113.130",
            "--to",
            "shop/web-1:8080",
        ],
    );
    assert!(e.contains("10.0.0.254, 203.0.113.2, 198.18.0.7"), "{e}");
    let routes = lab.run(&["exec", "node/n2", "--", "ip", "route"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("198.18.0.7 via 10.0.0.254") && !routes.contains("203.0.113.130"),
        "{routes}"
    );

    // Wrong sources say what is accepted.
    let e = refused(
        &lab,
        &[
            "probe",
            "--from",
            "external:203.0.113.3",
            "--to",
            "shop/web-1:8080",
        ],
    );
    assert!(
        e.contains("no address 203.0.113.3") && e.contains("10.0.0.254, 203.0.113.2, 198.18.0.7"),
        "{e}"
    );
    let e = refused(
        &lab,
        &["probe", "--from", "node/n1:10.0.0.11", "--to", "shop/web-1:8080"],
    );
    assert!(e.contains("node n1 has no address 10.0.0.11"), "{e}");
    let e = refused(
        &lab,
        &["probe", "--from", "pod-that-is-not", "--to", "shop/web-1:8080"],
    );
    assert!(e.contains("node/NAME[:IP] or external[:IP]"), "{e}");
    let e = refused(
        &lab,
        &[
            "probe",
            "--from",
            "ops/client",
            "--via",
            "n2",
            "--to",
            "shop/web-1:8080",
        ],
    );
    assert!(e.contains("only the external client"), "{e}");
}

#[test]
fn external_service_traffic_goes_through_the_chosen_node() {
    if !require_privileges("external_service_traffic_goes_through_the_chosen_node") {
        return;
    }
    let lab = Lab::new("via");
    lab.up_without_agents(FILE);
    // No agents here: each node stands in for a service proxy with one DNAT rule that sends the
    // Service's externalIP to a backend on that node, so the answering pod says which node the
    // traffic went through.
    for (node, backend) in [("n1", "10.244.1.11"), ("n2", "10.244.2.11")] {
        for (proto, port, target) in [("tcp", "80", "8080"), ("udp", "53", "5353")] {
            let out = lab.run(&[
                "exec",
                &format!("node/{node}"),
                "--",
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                "198.51.100.10",
                "-p",
                proto,
                "--dport",
                port,
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{backend}:{target}"),
            ]);
            assert!(
                out.status.success(),
                "iptables in node/{node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let by_node = |via: Option<&str>, to: &str| {
        let mut args = vec![
            "probe",
            "--from",
            "external:203.0.113.130",
            "--to",
            to,
            "--count",
            "3",
        ];
        if let Some(v) = via {
            args.extend(["--via", v]);
        }
        args.push("--json");
        lab.json(&args)
    };
    for to in ["198.51.100.10:80/tcp", "198.51.100.10:53/udp"] {
        // Default: the first node, as a router in front of the cluster would send it.
        let p = by_node(None, to);
        assert_eq!(p["via"], "n1", "{p:#}");
        assert_all(&p, "shop/web-1", "203.0.113.130:");
        assert_all(&by_node(Some("n1"), to), "shop/web-1", "203.0.113.130:");
        let p = by_node(Some("n2"), to);
        assert_eq!(p["via"], "n2", "{p:#}");
        assert_all(&p, "shop/web-2", "203.0.113.130:");
    }
    let route = lab.run(&["exec", "external", "--", "ip", "route", "show", "198.51.100.10"]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("via 10.0.0.10"), "main table via n1: {route}");

    // The choice is per socket: a flow via n2 stays on n2 while probes via n1 run next to it.
    let f = lab.json(&[
        "flow",
        "start",
        "--from",
        "external:203.0.113.2",
        "--via",
        "n2",
        "--to",
        "198.51.100.10:53",
        "--label",
        "vian2",
        "--interval-ms",
        "50",
        "--json",
    ]);
    assert_eq!(
        (f["state"].as_str(), f["via"].as_str()),
        (Some("running"), Some("n2")),
        "{f:#}"
    );
    assert_all(
        &by_node(Some("n1"), "198.51.100.10:80/tcp"),
        "shop/web-1",
        "203.0.113.130:",
    );
    let h = lab.json(&[
        "http",
        "--from",
        "external:203.0.113.2",
        "--via",
        "n1",
        "--to",
        "198.51.100.10:80/x",
        "--json",
    ]);
    assert_eq!(
        (h["status"].as_u64(), h["answered_by"].as_str()),
        (Some(200), Some("shop/web-1")),
        "{h:#}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let check = loop {
        let c = lab.json(&["flow", "check", "vian2", "--window-ms", "3000", "--json"]);
        if c["answered"].as_u64().unwrap_or(0) >= 10 || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(check["answered"].as_u64().unwrap() >= 10, "{check:#}");
    assert_eq!(check["backends"].as_object().unwrap().len(), 1, "{check:#}");
    assert!(
        check["backends"]["shop/web-2"].as_u64().unwrap() >= 10,
        "{check:#}"
    );
    let seen = check["client_seen"].as_array().unwrap();
    assert_eq!(seen.len(), 1, "one socket, one 5-tuple: {check:#}");
    assert!(seen[0].as_str().unwrap().starts_with("203.0.113.2:"), "{check:#}");
    let stop = lab.json(&["flow", "stop", "vian2", "--json"]);
    assert_eq!(stop["stopped"], true, "{stop:#}");
    assert_eq!(lab.json(&["flow", "list", "--json"])["flows"], json!([]));

    // Background clients left running are `lab down`'s to stop: nothing of them stays.
    let conn = lab.json(&[
        "conn",
        "open",
        "--from",
        "external:203.0.113.2",
        "--via",
        "n2",
        "--to",
        "198.51.100.10:80",
        "--label",
        "left",
        "--json",
    ]);
    let c = lab.json(&["conn", "check", "left", "--json"]);
    assert_eq!(c["answered_by"], "shop/web-2", "{c:#}");
    let flow = lab.json(&[
        "flow",
        "start",
        "--from",
        "node/n1",
        "--to",
        "shop/web-3:5353",
        "--label",
        "left",
        "--json",
    ]);
    let pids: Vec<u64> = [&conn, &flow]
        .iter()
        .map(|v| v["pid"].as_u64().expect("pid"))
        .collect();
    lab.down();
    for pid in pids {
        // A daemon that just died may stay a zombie until its new parent (init) reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        assert!(
            matches!(state, None | Some("Z")),
            "daemon {pid} outlived lab down: {stat}"
        );
    }
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
