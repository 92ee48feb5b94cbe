//! The upstream NetworkPolicy e2e cases (testdata/policy/*.yaml, restated from
//! kubernetes/test/e2e/network/netpol) with real traffic: the model's 9 pods in the lab, one agent per
//! node, each case's policies and label changes applied through `lab apply`, and `lab matrix` compared
//! with the expected truth table. The same files are checked against the pure evaluator and the
//! datapath simulator in `policy/tests/conformance.rs`.
//!
//! SCTP tables are checked too: this kernel has no SCTP stack, so the lab's probes and responders speak
//! SCTP through raw sockets (one DATA chunk each way), which the datapath sees as real SCTP packets.
//!
//! Not covered here, and why: rows from bare addresses outside the cluster (the lab's clients are pods
//! and nodes), and the diagonal (a pod to itself never leaves the pod, as upstream ignores it).

use std::collections::BTreeMap;

use policy::{Peer, Protocol, scenario::Scenario};
use serde_json::Value;
use tests::lab::{Lab, require_privileges, workspace};

const MODEL: &str = "testdata/policy/model.yaml";

/// The model's objects by `Kind ns/name`, as YAML values (to re-apply with changed labels).
fn model_objects() -> BTreeMap<String, serde_yaml::Value> {
    let text = std::fs::read_to_string(workspace().join(MODEL)).expect("model.yaml");
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("model document");
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let key = if ns.is_empty() {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        out.insert(key, v);
    }
    out
}

fn to_yaml(docs: &[serde_yaml::Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The objects a case changes (namespaces and pods with merged labels) and its policies.
fn case_objects(
    case: &Scenario,
    model: &BTreeMap<String, serde_yaml::Value>,
) -> (Vec<serde_yaml::Value>, Vec<serde_yaml::Value>) {
    let mut relabelled = Vec::new();
    for (ns, labels) in &case.namespace_labels {
        let mut obj = model[&format!("Namespace {ns}")].clone();
        for (k, v) in labels {
            obj["metadata"]["labels"][k.as_str()] = v.clone().into();
        }
        relabelled.push(obj);
    }
    for (pod, labels) in &case.pod_labels {
        let mut obj = model[&format!("Pod {pod}")].clone();
        for (k, v) in labels {
            obj["metadata"]["labels"][k.as_str()] = v.clone().into();
        }
        relabelled.push(obj);
    }
    let policies = case
        .policies
        .iter()
        .map(|p| serde_yaml::to_value(p).expect("policy to yaml"))
        .collect();
    (relabelled, policies)
}

/// Off-diagonal pod-to-pod cells where the matrix differs from the expectation.
fn mismatches(matrix: &Value, case: &Scenario, expect: &policy::scenario::Expectation) -> Vec<String> {
    let mut out = Vec::new();
    for (from, to, allowed) in expect.table.cells() {
        let Peer::Pod(from) = from else { continue };
        if from == to {
            continue;
        }
        let (f, t) = (
            format!("{}/{}", from.namespace, from.name),
            format!("{}/{}", to.namespace, to.name),
        );
        let got = &matrix["results"][&f][&t];
        let want = if allowed { "allowed" } else { "denied" };
        if got != want {
            out.push(format!(
                "{}: {f} -> {t} port {}/{:?}: expected {want}, got {got}",
                case.name, expect.port, expect.protocol
            ));
        }
    }
    out
}

#[test]
fn upstream_network_policy_cases_hold_with_real_traffic() {
    if !require_privileges("upstream_network_policy_cases_hold_with_real_traffic") {
        return;
    }
    let model = model_objects();
    let lab = Lab::new("netpol");
    lab.up_with_agents(MODEL, 0);

    let mut files: Vec<_> = std::fs::read_dir(workspace().join("testdata/policy"))
        .expect("testdata/policy")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("model.yaml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let (mut checked, mut sctp) = (0, 0);
    for file in files {
        let case = Scenario::from_yaml(&std::fs::read_to_string(&file).expect("case file"))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (relabelled, policies) = case_objects(&case, &model);
        let mut docs = relabelled.clone();
        docs.extend(policies.iter().cloned());
        lab.apply_text(&to_yaml(&docs));
        for expect in &case.expect {
            let proto = match expect.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => {
                    sctp += 1;
                    "sctp"
                }
            };
            let port = expect.port.to_string();
            let args = [
                "matrix",
                "--port",
                &port,
                "--proto",
                proto,
                "--timeout-ms",
                "300",
                "--json",
            ];
            // Bounded wait for the agents to program the change: the last answer is what is judged.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
            let bad = loop {
                let m = lab.json(&args);
                let bad = mismatches(&m, &case, expect);
                if bad.is_empty() || std::time::Instant::now() > deadline {
                    break bad;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            checked += 1;
            failures.extend(bad);
        }
        // Back to the bare model, and wait until every pod reaches every pod again, so one case's
        // policies can never be mistaken for the next one's.
        if !policies.is_empty() {
            lab.delete_text(&to_yaml(&policies));
        }
        if !relabelled.is_empty() {
            let originals: Vec<_> = relabelled
                .iter()
                .map(|o| {
                    let kind = o["kind"].as_str().unwrap_or_default();
                    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                    let name = o["metadata"]["name"].as_str().unwrap_or_default();
                    let key = if ns.is_empty() {
                        format!("{kind} {name}")
                    } else {
                        format!("{kind} {ns}/{name}")
                    };
                    model[&key].clone()
                })
                .collect();
            lab.apply_text(&to_yaml(&originals));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
        loop {
            let m = lab.json(&[
                "matrix",
                "--port",
                "80",
                "--proto",
                "tcp",
                "--timeout-ms",
                "300",
                "--json",
            ]);
            let open = m["results"].as_object().is_some_and(|rows| {
                rows.values()
                    .all(|r| r.as_object().is_some_and(|c| c.values().all(|v| v == "allowed")))
            });
            if open {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: policies still enforced after delete: {m:#}",
                case.name
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    eprintln!("netpol conformance in the lab: {checked} tables checked, {sctp} of them SCTP");
    assert!(checked >= 40, "only {checked} tables were checked");
    assert!(sctp >= 5, "only {sctp} SCTP tables were checked");
    assert!(
        failures.is_empty(),
        "{} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
