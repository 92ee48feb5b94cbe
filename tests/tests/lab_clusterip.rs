//! ClusterIP with real traffic in the lab: agents on two nodes program the service maps; clients on
//! both nodes and the nodes themselves (host network, through the socket hooks) reach all backends
//! through the VIP, replies come from the VIP, a Service without endpoints refuses at once, and a
//! backend reaching its own Service is answered (hairpin). SCTP too, from pods: real packets through
//! raw sockets (this kernel has no SCTP stack), the port rewritten 77 -> 7777 and the CRC32c redone
//! both ways by the datapath, or the packets would not verify.

use serde_json::Value;
use tests::lab::{Lab, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";
const WEB: [&str; 3] = ["shop/web-1", "shop/web-2", "shop/web-3"];

fn summary(probe: &Value) -> std::collections::BTreeMap<String, u64> {
    probe["summary"]
        .as_object()
        .expect("summary")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// Every attempt answered, by the three backends, each with at least 15%.
fn assert_spread(probe: &Value, count: u64, what: &str) {
    let s = summary(probe);
    let answered: u64 = WEB.iter().map(|w| s.get(*w).copied().unwrap_or(0)).sum();
    assert_eq!(
        answered, count,
        "{what}: every attempt answered by a backend: {s:?}"
    );
    for w in WEB {
        let n = s.get(w).copied().unwrap_or(0);
        assert!(
            n * 100 >= count * 15,
            "{what}: {w} got {n} of {count} (< 15%): {s:?}"
        );
    }
}

#[test]
fn clusterip_balances_tcp_udp_and_sctp_and_refuses_without_endpoints() {
    if !require_privileges("clusterip_balances_tcp_udp_and_sctp_and_refuses_without_endpoints") {
        return;
    }
    let lab = Lab::new("cip");
    lab.up_with_agents(FILE, 5);

    for client in ["shop/client-1", "shop/client-2"] {
        let tcp = lab.probe(client, "10.96.0.10:80/tcp", 300);
        assert_spread(&tcp, 300, &format!("{client} tcp"));
        let client_ip = if client.ends_with('1') {
            "10.244.1.21:"
        } else {
            "10.244.2.21:"
        };
        for a in tcp["attempts"].as_array().unwrap() {
            // The backend sees the client itself (no SNAT for pod clients).
            assert!(a["client_seen"].as_str().unwrap().starts_with(client_ip), "{a}");
        }
        // UDP: answered only if the reply comes from VIP:53 (the probe's socket is connected to it).
        let udp = lab.probe(client, "10.96.0.10:53/udp", 300);
        assert_spread(&udp, 300, &format!("{client} udp"));
        // SCTP: answered only by a packet from VIP:77 to the probe's port with its tag and a valid
        // CRC32c (the probe reads a raw socket connected to the VIP).
        let sctp = lab.probe(client, "10.96.0.10:77/sctp", 300);
        assert_spread(&sctp, 300, &format!("{client} sctp"));
        for a in sctp["attempts"].as_array().unwrap() {
            assert!(a["client_seen"].as_str().unwrap().starts_with(client_ip), "{a}");
        }
    }

    // Host-network clients: the socket hooks translate at connect/sendmsg; the backend sees the node.
    for node in ["node/n1", "node/n2"] {
        let tcp = lab.probe(node, "10.96.0.10:80/tcp", 300);
        assert_spread(&tcp, 300, &format!("{node} tcp"));
        let node_ip = if node.ends_with('1') {
            "10.0.0.10:"
        } else {
            "10.0.0.11:"
        };
        assert!(
            tcp["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["client_seen"].as_str().unwrap().starts_with(node_ip)),
            "{node}: backends see the node's address"
        );
        let udp = lab.probe(node, "10.96.0.10:53/udp", 300);
        assert_spread(&udp, 300, &format!("{node} udp"));
        let empty = lab.probe(node, "10.96.0.20:80/tcp", 3);
        assert_eq!(
            empty["summary"]["refused"], 3,
            "{node}: no endpoints refused: {empty:#}"
        );
    }

    for proto in ["tcp", "udp"] {
        let empty = lab.probe(
            "shop/client-1",
            &format!("10.96.0.20:{}/{proto}", if proto == "tcp" { 80 } else { 53 }),
            5,
        );
        for a in empty["attempts"].as_array().unwrap() {
            assert_eq!(
                a["outcome"], "refused",
                "{proto}: no endpoints must be refused, not time out: {empty:#}"
            );
            if let Some(ms) = a["ms"].as_f64() {
                assert!(ms < 100.0, "{proto}: refused after {ms} ms");
            }
        }
    }

    // Hairpin: a backend reaching its own Service, also when it picks itself.
    let hairpin = lab.probe("shop/web-1", "10.96.0.10:80/tcp", 60);
    assert_spread(&hairpin, 60, "hairpin tcp");
    let hairpin = lab.probe("shop/web-1", "10.96.0.10:53/udp", 60);
    assert_spread(&hairpin, 60, "hairpin udp");
    let hairpin = lab.probe("shop/web-1", "10.96.0.10:77/sctp", 60);
    assert_spread(&hairpin, 60, "hairpin sctp");

    // A named targetPort resolved per backend: api-1 serves `http` on 8081, api-2 on 9091.
    let api = lab.probe("shop/client-1", "10.96.0.30:80/tcp", 60);
    let s = summary(&api);
    assert_eq!(
        s.get("shop/api-1").copied().unwrap_or(0) + s.get("shop/api-2").copied().unwrap_or(0),
        60,
        "{s:?}"
    );
    assert!(
        s.get("shop/api-1").copied().unwrap_or(0) >= 9 && s.get("shop/api-2").copied().unwrap_or(0) >= 9,
        "{s:?}"
    );

    // The programs are where bpftool looks for them, inside the node.
    let out = lab.run(&["exec", "node/n1", "--", "bpftool", "net", "show"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    for wanted in ["clsact/ingress tc_from_pod", "clsact/egress tc_to_pod"] {
        assert!(
            shown.contains(wanted),
            "bpftool net show lacks {wanted}:\n{shown}"
        );
    }
    // bpftool lists XDP by program id only: `eth0(2) driver id N` under `xdp:`.
    let xdp = shown.split("tc:").next().unwrap_or_default();
    assert!(
        xdp.contains("eth0(") && xdp.contains(" id "),
        "no XDP program on eth0:\n{shown}"
    );

    // The datapath did it: the agent's counters saw the traffic on the clients' veths.
    let status = lab.agent_status("n1").expect("agent status on n1");
    assert!(
        status["counters"]["tc_from_pod"]["packets"].as_u64().unwrap() > 600,
        "{status:#}"
    );
}
