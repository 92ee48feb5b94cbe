//! The lab on a real control plane (`lab up --control-plane real`): etcd, kube-apiserver and
//! kube-controller-manager built from upstream, the objects created through the API, EndpointSlices
//! written by the EndpointSlice controller, the agents watching with the ServiceAccount of
//! manifests/rbac.yaml. Checked with real traffic: the ClusterIP scenario, a NetworkPolicy applied
//! with `kubectl apply -f`, an apiserver outage (the datapath keeps serving, the agent catches up
//! afterwards), one agent cut off from the apiserver while a Service is created (it catches up when the
//! link heals), and upstream kube-proxy in iptables and nftables mode on the same lab, stopped with its
//! own cleanup and started again (`lab proxy stop --cleanup`, `lab proxy start`).
//!
//! Needs the binaries of `cargo xtask k8s build` in its cache; without them each test says so in
//! one line and passes (see docs/control-plane.md for why CI runs them only with a warm cache).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::lab::{Lab, require_k8s, text};

const FILE: &str = "testdata/lab/clusterip.yaml";
const WEB: [&str; 3] = ["shop/web-1", "shop/web-2", "shop/web-3"];

/// web-3 of the file with another `app` label: it leaves Services web and web2.
const WEB_3_RETIRED: &str = "apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: retired}}
spec:
  nodeName: n2
  containers:
  - name: web
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    - {name: dns, containerPort: 5353, protocol: UDP}
    - {name: sctp, containerPort: 7777, protocol: SCTP}
status: {podIP: 10.244.2.12}
";

const WEB2: &str = "apiVersion: v1
kind: Service
metadata: {name: web2, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP}
";

/// A Service created while n1's agent cannot reach the apiserver.
const WEB3: &str = "apiVersion: v1
kind: Service
metadata: {name: web3, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP}
";

/// Drops (`-I`) or lets through again (`-D`) everything between node n1 and the control plane's
/// address: n1's agent keeps its watch connections open but hears nothing, and nothing tells it.
fn partition_n1(lab: &Lab, op: &str, cp_ip: &str) {
    for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
        let out = lab.run(&[
            "exec", "node/n1", "--", "iptables", op, chain, side, cp_ip, "-j", "DROP",
        ]);
        assert!(
            out.status.success(),
            "iptables {op} {chain} in node/n1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Whether `pid` still runs; a zombie (exited, not yet reaped by whoever adopted it) does not.
fn running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn summary(probe: &Value) -> BTreeMap<String, u64> {
    probe["summary"]
        .as_object()
        .expect("summary")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// Every attempt answered, and by each of `backends` at least once.
fn assert_served_by(probe: &Value, count: u64, backends: &[&str], what: &str) {
    let s = summary(probe);
    let answered: u64 = backends.iter().map(|b| s.get(*b).copied().unwrap_or(0)).sum();
    assert_eq!(
        answered, count,
        "{what}: every attempt answered by {backends:?}: {s:?}"
    );
    for b in backends {
        assert!(
            s.get(*b).copied().unwrap_or(0) > 0,
            "{what}: {b} never answered: {s:?}"
        );
    }
}

/// `lab kubectl -- ARGS` (kubectl in the control plane's netns with the admin kubeconfig).
fn kubectl(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["kubectl", "--"];
    all.extend_from_slice(args);
    let out = lab.run(&all);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Repeats a probe of 12 attempts (300 ms timeout each, so one probe takes at most 3.6 s) until
/// `done` accepts it; bounded by `limit` (the agent's watch backoff after an outage reaches 30 s).
/// Returns the last probe.
fn until(lab: &Lab, from: &str, to: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let p = lab.json(&[
            "probe",
            "--from",
            from,
            "--to",
            to,
            "--count",
            "12",
            "--timeout-ms",
            "300",
            "--json",
        ]);
        if done(&p) || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn real_control_plane_serves_clusterip_applies_policy_and_survives_an_apiserver_restart() {
    let name = "real_control_plane_serves_clusterip_applies_policy_and_survives_an_apiserver_restart";
    if !require_k8s(name) {
        return;
    }
    let lab = Lab::new("rcp");
    let up = lab.up_with_agents_and(FILE, &["--control-plane", "real"], 5);
    let kubeconfig = text(&up, &["control_plane", "kubeconfig"]).to_string();
    let out = lab.run(&["kubeconfig"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), kubeconfig);

    // The agents watch the apiserver, as the ServiceAccount manifests/rbac.yaml binds.
    let status = lab.agent_status("n1").expect("agent status on n1");
    assert!(
        status["sync"]["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("api-server https://"),
        "{status:#}"
    );
    let whoami = std::fs::read_to_string(text(&up, &["control_plane", "agent_kubeconfig"])).unwrap();
    assert!(
        whoami.contains("system:serviceaccount:kube-system:strait"),
        "{whoami}"
    );
    // The EndpointSlice controller, not the lab, wrote the slice of shop/web.
    let slices: Value = serde_json::from_str(&kubectl(
        &lab,
        &[
            "-n",
            "shop",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let items = slices["items"].as_array().unwrap();
    assert!(!items.is_empty(), "no EndpointSlice for shop/web");
    let mut addresses: Vec<&str> = Vec::new();
    for s in items {
        assert_eq!(
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io",
            "{s:#}"
        );
        for e in s["endpoints"].as_array().unwrap() {
            addresses.push(e["addresses"][0].as_str().unwrap());
        }
    }
    addresses.sort();
    assert_eq!(addresses, ["10.244.1.11", "10.244.2.11", "10.244.2.12"]);

    // The ClusterIP from a pod on each node and from a node's host network.
    for from in ["shop/client-1", "shop/client-2", "node/n1"] {
        let tcp = lab.probe(from, "10.96.0.10:80/tcp", 60);
        assert_served_by(&tcp, 60, &WEB, &format!("{from} tcp"));
        let udp = lab.probe(from, "10.96.0.10:53/udp", 60);
        assert_served_by(&udp, 60, &WEB, &format!("{from} udp"));
    }

    // A NetworkPolicy through `kubectl apply -f` of standard YAML: only app=client may reach web.
    let policy = std::env::temp_dir().join(format!("strait-{}-policy.yaml", lab.name));
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-clients, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: client}}\n",
    )
    .unwrap();
    kubectl(&lab, &["apply", "-f", policy.to_str().unwrap()]);
    let denied = until(
        &lab,
        "shop/api-1",
        "10.96.0.10:80/tcp",
        Duration::from_secs(10),
        |p| summary(p).get("timeout") == Some(&12),
    );
    assert_eq!(
        summary(&denied).get("timeout"),
        Some(&12),
        "api-1 must be denied: {denied:#}"
    );
    let allowed = lab.probe("shop/client-1", "10.96.0.10:80/tcp", 30);
    assert_served_by(&allowed, 30, &WEB, "client-1 under the policy");
    kubectl(&lab, &["delete", "-f", policy.to_str().unwrap()]);
    let _ = std::fs::remove_file(&policy);
    until(
        &lab,
        "shop/api-1",
        "10.96.0.10:80/tcp",
        Duration::from_secs(10),
        |p| !summary(p).contains_key("timeout"),
    );
    // Every backend at least once: over 12 attempts one of three misses out 2 % of the time, over
    // 60 practically never.
    let back = lab.probe("shop/api-1", "10.96.0.10:80/tcp", 60);
    assert_served_by(&back, 60, &WEB, "api-1 after the policy's deletion");

    // The apiserver goes away: the datapath keeps serving from what the agents hold.
    let stop = lab.json(&["control-plane", "stop", "apiserver", "--json"]);
    assert_eq!(stop["stopped_cleanly"], true, "{stop:#}");
    let during = lab.probe("shop/client-2", "10.96.0.10:80/tcp", 60);
    assert_served_by(&during, 60, &WEB, "during the apiserver outage");
    std::thread::sleep(Duration::from_secs(3));
    let during = lab.probe("node/n2", "10.96.0.10:53/udp", 30);
    assert_served_by(&during, 30, &WEB, "3 s into the outage");
    let start = lab.json(&["control-plane", "start", "apiserver", "--json"]);
    assert!(start["new_pid"].as_i64().is_some(), "{start:#}");

    // Changes made as soon as the apiserver is back, while the agents' watches may still be in
    // their backoff, through `lab apply` (kubectl apply inside): web-3 leaves the Service (its
    // label) and a new Service appears. The agents must catch up with both.
    lab.apply_text(&format!("{WEB_3_RETIRED}---\n{WEB2}"));
    let two = [WEB[0], WEB[1]];
    // Caught up: every attempt answered, by web-1 and web-2 only, each at least once.
    let only_two = |p: &Value| {
        let s = summary(p);
        s.len() == 2 && two.iter().all(|w| s.get(*w).is_some_and(|n| *n > 0))
    };
    for from in ["shop/client-1", "shop/client-2"] {
        let after = until(&lab, from, "10.96.0.10:80/tcp", Duration::from_secs(45), only_two);
        assert_served_by(&after, 12, &two, &format!("{from}: web-3 left after the restart"));
        let new = until(&lab, from, "10.96.0.40:80/tcp", Duration::from_secs(45), only_two);
        assert_served_by(
            &new,
            12,
            &two,
            &format!("{from}: Service web2 created after the restart"),
        );
    }

    // n1's agent cut off from the apiserver while a Service is created: n2 (in touch) serves it, n1
    // cannot know of it; once the link heals, n1's watch delivers what it missed.
    let cp_ip = lab.json(&["status", "--json"])["state"]["control_plane"]["ip"]
        .as_str()
        .expect("control plane address")
        .to_string();
    partition_n1(&lab, "-I", &cp_ip);
    lab.apply_text(WEB3);
    let n2 = until(
        &lab,
        "shop/client-2",
        "10.96.0.50:80/tcp",
        Duration::from_secs(30),
        only_two,
    );
    assert_served_by(
        &n2,
        12,
        &two,
        "client-2 (n2): Service web3 created during n1's partition",
    );
    let n1 = lab.json(&[
        "probe",
        "--from",
        "shop/client-1",
        "--to",
        "10.96.0.50:80/tcp",
        "--count",
        "3",
        "--timeout-ms",
        "300",
        "--json",
    ]);
    assert!(
        summary(&n1).keys().all(|k| !k.starts_with("shop/web")),
        "n1's agent cannot have heard of web3 yet: {n1:#}"
    );
    partition_n1(&lab, "-D", &cp_ip);
    let n1 = until(
        &lab,
        "shop/client-1",
        "10.96.0.50:80/tcp",
        Duration::from_secs(60),
        only_two,
    );
    assert_served_by(&n1, 12, &two, "client-1 (n1): web3 after the partition healed");

    // Every process stops on its own, nothing is left.
    let pids: Vec<i64> = {
        let st = lab.json(&["status", "--json"]);
        st["state"]["control_plane"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["pid"].as_i64())
            .collect()
    };
    assert_eq!(pids.len(), 3, "etcd, kube-apiserver, kube-controller-manager run");
    let down = lab.down();
    assert!(down["killed"].is_null(), "killed instead of stopped: {down:#}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
    for pid in pids {
        assert!(
            !running(pid),
            "pid {pid} survived lab down: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
}

#[test]
fn upstream_kube_proxy_in_iptables_and_nftables_mode_serves_the_clusterip_scenario() {
    let name = "upstream_kube_proxy_in_iptables_and_nftables_mode_serves_the_clusterip_scenario";
    if !require_k8s(name) {
        return;
    }
    let lab = Lab::new("kp");
    let up = lab.json(&[
        "up",
        FILE,
        "--control-plane",
        "real",
        "--proxy",
        "n1=kube-proxy-iptables",
        "--proxy",
        "n2=kube-proxy-nftables",
        "--json",
    ]);
    for n in up["nodes"].as_array().unwrap() {
        assert!(n["agent_pid"].is_null(), "no agent where kube-proxy runs: {n:#}");
        assert!(n["kube_proxy_pid"].as_i64().is_some(), "{n:#}");
    }
    // Each kube-proxy wrote its own kind of rules for the Service.
    let ipt = lab.run(&["exec", "node/n1", "--", "iptables-save", "-t", "nat"]);
    let ipt = String::from_utf8_lossy(&ipt.stdout);
    assert!(
        ipt.contains("-d 10.96.0.10/32") && ipt.contains("KUBE-SVC-"),
        "{ipt}"
    );
    let nft = lab.run(&[
        "exec",
        "node/n2",
        "--",
        "nft",
        "list",
        "table",
        "ip",
        "kube-proxy",
    ]);
    let nft = String::from_utf8_lossy(&nft.stdout);
    assert!(nft.contains("10.96.0.10"), "{nft}");
    assert!(
        !lab.run(&["exec", "node/n2", "--", "iptables-save", "-t", "nat"])
            .stdout
            .windows(8)
            .any(|w| w == b"KUBE-SVC"),
        "nftables mode writes no iptables rules"
    );

    // n1's clients go through iptables, n2's through nftables; pods and host network alike.
    for from in ["shop/client-1", "node/n1", "shop/client-2", "node/n2"] {
        let tcp = lab.probe(from, "10.96.0.10:80/tcp", 60);
        assert_served_by(&tcp, 60, &WEB, &format!("{from} tcp"));
        let udp = lab.probe(from, "10.96.0.10:53/udp", 60);
        assert_served_by(&udp, 60, &WEB, &format!("{from} udp"));
        // A Service without endpoints is rejected by kube-proxy, not left to time out.
        let empty = lab.probe(from, "10.96.0.20:80/tcp", 3);
        assert_eq!(summary(&empty).get("refused"), Some(&3), "{from}: {empty:#}");
    }
    // The named targetPort resolves per backend (8081 and 9091) in both modes.
    for from in ["shop/client-1", "shop/client-2"] {
        let api = lab.probe(from, "10.96.0.30:80/tcp", 30);
        assert_served_by(&api, 30, &["shop/api-1", "shop/api-2"], &format!("{from} api"));
    }

    // `lab proxy stop --cleanup` runs kube-proxy --cleanup: no rules of either mode stay and the
    // ClusterIP goes unanswered; `lab proxy start` brings kube-proxy back and it serves again
    // (what the end-to-end benchmark's cold start does).
    for (node, client) in [("n1", "shop/client-1"), ("n2", "shop/client-2")] {
        let stop = lab.json(&["proxy", "stop", node, "--cleanup", "--json"]);
        let pid = stop["pid"].as_i64().expect("pid");
        assert!(!running(pid), "kube-proxy of {node} (pid {pid}) still runs");
        assert!(stop["cleanup_ms"].as_f64().is_some(), "{stop:#}");
        let ipt = lab.run(&["exec", &format!("node/{node}"), "--", "iptables-save"]);
        let ipt = String::from_utf8_lossy(&ipt.stdout).into_owned();
        assert!(!ipt.contains("KUBE-SVC-"), "{node}: iptables rules left:\n{ipt}");
        let nft = lab.run(&["exec", &format!("node/{node}"), "--", "nft", "list", "tables"]);
        let nft = String::from_utf8_lossy(&nft.stdout).into_owned();
        assert!(!nft.contains("kube-proxy"), "{node}: nftables table left:\n{nft}");
        let none = lab.json(&[
            "probe",
            "--from",
            client,
            "--to",
            "10.96.0.10:80/tcp",
            "--count",
            "3",
            "--timeout-ms",
            "300",
            "--json",
        ]);
        let web: u64 = WEB
            .iter()
            .map(|w| summary(&none).get(*w).copied().unwrap_or(0))
            .sum();
        assert_eq!(web, 0, "{node}: served with kube-proxy stopped: {none:#}");
        let start = lab.json(&["proxy", "start", node, "--json"]);
        assert_ne!(start["pid"].as_i64(), Some(pid), "{start:#}");
        until(&lab, client, "10.96.0.10:80/tcp", Duration::from_secs(60), |p| {
            WEB.iter()
                .map(|w| summary(p).get(*w).copied().unwrap_or(0))
                .sum::<u64>()
                == 12
        });
        // Served again; every backend at least once over 60 attempts (over 12, one of three
        // misses out 2 % of the time, as it did once in CI).
        let back = lab.probe(client, "10.96.0.10:80/tcp", 60);
        assert_served_by(
            &back,
            60,
            &WEB,
            &format!("{client} after kube-proxy of {node} restarted"),
        );
    }

    let down = lab.down();
    assert!(down["killed"].is_null(), "killed instead of stopped: {down:#}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
}
