//! Direct server return with real packets (testdata/lab/nodeport.yaml, every agent run with
//! `--nodeport-mode=dsr`): the `external` client reaches the NodePort on n1's address; a backend on n2
//! sees the client's own address, and its answer — accepted by the client's connected socket, so it came
//! from n1's address and the NodePort — leaves n2 straight for the client: n1's conntrack holds the
//! connection's reply entry but never saw a reply on it, while n2's DSR entry did. A backend on n1
//! itself is reached as in SNAT mode.

use std::collections::BTreeSet;

use serde_json::Value;
use tests::lab::{Lab, agent_bin, answers, require_privileges};

const FILE: &str = "testdata/lab/nodeport.yaml";
/// As lab_nodeport: per node, web-cluster 3 ClusterIP + 3 NodePort, web-local 1 + 2, web-lb 1 + 1 + 1.
const FRONTENDS: u64 = 12;
const N1: &str = "10.0.0.10";
const CLIENT: &str = "10.0.0.254";
const ON_N2: [&str; 2] = ["shop/web-2", "shop/web-3"];

fn probe(lab: &Lab, to: &str, count: u32) -> Value {
    let count = count.to_string();
    lab.json(&[
        "probe",
        "--from",
        "external",
        "--via",
        "n1",
        "--to",
        to,
        "--count",
        &count,
        "--timeout-ms",
        "500",
        "--json",
    ])
}

/// `ct list -o json` of a node, read from its pinned maps.
fn conntrack(lab: &Lab, node: &str) -> Vec<Value> {
    let agent = agent_bin();
    let pins = format!("/sys/fs/bpf/strait/{}-{node}", lab.name);
    let out = lab.run(&[
        "exec",
        &format!("node/{node}"),
        "--",
        agent.to_str().expect("utf-8"),
        "ct",
        "list",
        "--bpffs-root",
        &pins,
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "ct list on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("JSON")
        .as_array()
        .expect("rows")
        .clone()
}

fn has_flag(row: &Value, flag: &str) -> bool {
    row["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

#[test]
fn dsr_backends_elsewhere_see_the_client_and_answer_it_directly() {
    if !require_privileges("dsr_backends_elsewhere_see_the_client_and_answer_it_directly") {
        return;
    }
    let lab = Lab::new("npdsr");
    lab.up_with_agents_and(FILE, &["--agent-arg=--nodeport-mode=dsr"], FRONTENDS);
    for node in ["n1", "n2"] {
        let status = lab.agent_status(node).expect("status");
        assert_eq!(status["lb"]["nodeport_mode"], "dsr", "{node}: {status:#}");
    }

    for (proto, port) in [("tcp", 30080), ("udp", 30053), ("sctp", 30077)] {
        let v = probe(&lab, &format!("{N1}:{port}/{proto}"), 30);
        let got = answers(&v);
        assert!(
            got.iter().all(|(b, _)| b.starts_with("shop/web-")),
            "{proto}: every attempt answered: {v:#}"
        );
        let backends: BTreeSet<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
        assert!(
            ON_N2.iter().any(|b| backends.contains(b)),
            "{proto}: some attempts reached n2's backends: {v:#}"
        );
        for (by, seen) in &got {
            let expected = if ON_N2.contains(&by.as_str()) { CLIENT } else { N1 };
            assert_eq!(seen, expected, "{proto}: {by} sees {seen}: {v:#}");
        }
    }

    // n1 translated every connection to n2's backends but never saw one of their answers.
    let n1 = conntrack(&lab, "n1");
    let to_n2 = |r: &&Value| {
        r["direction"] == "reply" && r["source"].as_str().is_some_and(|s| s.starts_with("10.244.2."))
    };
    let n1_replies: Vec<&Value> = n1.iter().filter(to_n2).collect();
    assert!(!n1_replies.is_empty(), "n1 tracks the connections to n2: {n1:#?}");
    for r in &n1_replies {
        assert!(
            has_flag(r, "dsr") && !has_flag(r, "seen-reply"),
            "n1, no reply seen: {r:#}"
        );
    }
    // n2 restored the answers itself, from n1's NodePorts.
    let n2 = conntrack(&lab, "n2");
    let n2_dsr: Vec<&Value> = n2.iter().filter(|r| has_flag(r, "dsr")).collect();
    let frontends: BTreeSet<&str> = n2_dsr.iter().filter_map(|r| r["frontend"].as_str()).collect();
    assert_eq!(
        frontends,
        [
            format!("{N1}:30053"),
            format!("{N1}:30077"),
            format!("{N1}:30080")
        ]
        .iter()
        .map(String::as_str)
        .collect(),
        "n2's DSR entries: {n2_dsr:#?}"
    );
    assert!(
        n2_dsr.iter().all(
            |r| r["destination"].as_str().is_some_and(|d| d.starts_with(CLIENT)) && has_flag(r, "seen-reply")
        ),
        "n2 answered the client directly: {n2_dsr:#?}"
    );
}
