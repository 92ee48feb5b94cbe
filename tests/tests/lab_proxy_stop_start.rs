//! `lab proxy stop NODE --cleanup` and `lab proxy start NODE` with our agent (the kube-proxy side is
//! in lab_real_control_plane.rs, which needs the Kubernetes build): after the stop and the cleanup
//! the node's clients reach no backend through the ClusterIP and nothing of the datapath is left in
//! the node; after the start they are served again. The end-to-end benchmark times programming from
//! cold with these two commands.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::lab::{Lab, require_privileges};

const FILE: &str = "testdata/lab/clusterip.yaml";
const WEB: [&str; 3] = ["shop/web-1", "shop/web-2", "shop/web-3"];

fn answered_by_web(probe: &Value) -> u64 {
    WEB.iter()
        .map(|w| probe["summary"][w].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_stopped_and_cleaned_agent_leaves_no_datapath_and_serves_again_once_started() {
    if !require_privileges("a_stopped_and_cleaned_agent_leaves_no_datapath_and_serves_again_once_started") {
        return;
    }
    let lab = Lab::new("pss");
    let up = lab.up_with_agents(FILE, 6);
    let n1 = up["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "n1")
        .expect("node n1");
    let pin_dir = n1["bpffs_root"].as_str().expect("bpffs_root").to_string();
    let before = lab.probe("shop/client-1", "10.96.0.10:80/tcp", 6);
    assert_eq!(answered_by_web(&before), 6, "served before the stop: {before:#}");

    let stop = lab.json(&["proxy", "stop", "n1", "--cleanup", "--json"]);
    assert_eq!(stop["pid"], n1["agent_pid"], "{stop:#}");
    let pid = stop["pid"].as_i64().expect("pid");
    // Gone, or a zombie its parent has not reaped yet.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')),
        "the agent (pid {pid}) still runs: {stat}"
    );
    let report: Value =
        serde_json::from_str(stop["cleanup"].as_str().expect("cleanup output")).expect("cleanup JSON");
    assert!(
        report["tc_interfaces"]
            .as_array()
            .is_some_and(|v| v.iter().any(|i| i == "eth0")),
        "{report:#}"
    );
    assert!(
        report["maps"].as_array().is_some_and(|v| !v.is_empty()),
        "{report:#}"
    );
    assert!(!std::path::Path::new(&pin_dir).exists(), "{pin_dir} left");
    let net = lab.run(&["exec", "node/n1", "--", "bpftool", "-j", "net", "show"]);
    let net: Value = serde_json::from_slice(&net.stdout).expect("bpftool JSON");
    for kind in ["xdp", "tc"] {
        assert_eq!(net[0][kind], serde_json::json!([]), "{kind} left: {net:#}");
    }
    let stopped = lab.json(&[
        "probe",
        "--from",
        "shop/client-1",
        "--to",
        "10.96.0.10:80/tcp",
        "--count",
        "3",
        "--timeout-ms",
        "300",
        "--json",
    ]);
    assert_eq!(answered_by_web(&stopped), 0, "served with no proxy: {stopped:#}");

    let start = lab.json(&["proxy", "start", "n1", "--json"]);
    let new_pid = start["pid"].as_i64().expect("pid");
    assert_ne!(new_pid, pid);
    assert!(start["started_unix_ms"].as_u64().is_some(), "{start:#}");
    let again = lab.run(&["proxy", "start", "n1"]);
    assert!(
        !again.status.success(),
        "a second start while the agent runs must fail"
    );
    // Loading and verifying the programs takes seconds on a busy machine: bounded at 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = lab.probe("shop/client-1", "10.96.0.10:80/tcp", 3);
    while answered_by_web(&last) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        last = lab.probe("shop/client-1", "10.96.0.10:80/tcp", 3);
    }
    assert_eq!(answered_by_web(&last), 3, "not served after the start: {last:#}");
    let status = lab.json(&["status", "--json"]);
    let n1 = status["state"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "n1")
        .expect("node n1");
    assert_eq!(n1["agent_pid"].as_i64(), Some(new_pid), "{n1:#}");

    let down = lab.down();
    assert!(down["killed"].is_null(), "killed instead of stopped: {down:#}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
}
