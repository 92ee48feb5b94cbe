//! The upstream NetworkPolicy e2e cases (testdata/policy) checked with the reference evaluator, and the
//! compiled datapath state (through the simulator) checked against both.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use policy::scenario::{Scenario, TruthTable};
use policy::simulate::keys_are_canonical;
use policy::{
    Allocations, DirectionVerdict, Explainer, Flow, Peer, PolicyDesired, PolicyInput, Protocol, SimStep,
    compile, explain, simulate,
};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/policy")
}

fn model() -> PolicyInput {
    let text = std::fs::read_to_string(testdata().join("model.yaml")).expect("read model.yaml");
    PolicyInput::from_yaml(&text).expect("parse model.yaml")
}

fn scenarios() -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(testdata()).expect("read testdata/policy") {
        let path = entry.expect("dir entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "yaml") || file == "model.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read scenario");
        let sc = Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        out.push((file, sc));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 30,
        "expected the conformance cases in {}",
        testdata().display()
    );
    out
}

#[test]
fn model_is_the_upstream_grid() {
    let m = model();
    assert_eq!(m.namespaces.len(), 3);
    assert_eq!(m.pods.len(), 9);
    assert_eq!(m.nodes.len(), 2);
    assert!(m.policies.is_empty());
}

#[test]
fn explain_matches_every_truth_table() {
    let model = model();
    let mut failures = Vec::new();
    let mut cells = 0;
    for (file, sc) in scenarios() {
        let input = sc.apply(&model);
        for exp in &sc.expect {
            let actual = exp.table.fill(|from, to| {
                let flow = Flow {
                    from: from.clone(),
                    to: to.clone(),
                    port: exp.port,
                    protocol: exp.protocol,
                };
                explain(&input, &flow)
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
                    .allowed
            });
            cells += actual.cells().count();
            if actual != exp.table {
                failures.push(describe(
                    &file,
                    &input,
                    exp.port,
                    exp.protocol,
                    &exp.table,
                    &actual,
                ));
            }
        }
        let skipped = policy::policy_errors(&input);
        assert!(skipped.is_empty(), "{file}: invalid policies: {skipped:?}");
    }
    assert!(
        failures.is_empty(),
        "{} mismatching tables:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("checked {cells} cells");
}

fn describe(
    file: &str,
    input: &PolicyInput,
    port: u16,
    protocol: policy::Protocol,
    expected: &TruthTable,
    actual: &TruthTable,
) -> String {
    let mut s = format!("== {file} {port}/{protocol}\nexpected:\n{expected}actual:\n{actual}");
    for ((from, to, want), (_, _, got)) in expected.cells().zip(actual.cells()) {
        if want != got {
            let flow = Flow {
                from: from.clone(),
                to: to.clone(),
                port,
                protocol,
            };
            s += &format!("  {}\n", explain(input, &flow).unwrap());
        }
    }
    s
}

/// Where a flow's endpoints are: the IP of every model pod.
fn pod_ip(input: &PolicyInput, pod: &policy::PodRef) -> Ipv4Addr {
    input
        .pods
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(&pod.namespace)
                && p.metadata.name.as_deref() == Some(&pod.name)
        })
        .and_then(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .unwrap_or_else(|| panic!("no IP for {pod}"))
}

/// The datapath's verdict for a flow in the two-node cluster: egress is decided on the source's node,
/// ingress on the destination's (each simulated over that node's compiled maps).
fn cluster_verdict(
    nodes: &[PolicyDesired],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> (SimStep, SimStep, &PolicyDesired, &PolicyDesired) {
    let mut egress = (SimStep::NotLocal, &nodes[0]);
    let mut ingress = (SimStep::NotLocal, &nodes[0]);
    for d in nodes {
        let v = simulate(d, src, dst, proto, port);
        if v.egress != SimStep::NotLocal {
            egress = (v.egress, d);
        }
        if v.ingress != SimStep::NotLocal {
            ingress = (v.ingress, d);
        }
    }
    (egress.0, ingress.0, egress.1, ingress.1)
}

/// Does a simulated step say the same as explain's verdict for that direction?
fn same(step: SimStep, d: &PolicyDesired, verdict: Option<&DirectionVerdict>) -> Result<(), String> {
    match (step, verdict) {
        (SimStep::NotLocal, None)
        | (SimStep::NotIsolated, Some(DirectionVerdict::NotIsolated) | None)
        | (SimStep::HostAllowed, Some(DirectionVerdict::HostAllowed))
        | (SimStep::Denied { .. }, Some(DirectionVerdict::DefaultDeny { .. })) => Ok(()),
        (SimStep::Allowed { entry, .. }, Some(DirectionVerdict::Allowed(matches))) => {
            let policy = &d.policies[&entry.policy_ref];
            let rule = usize::from(entry.rule_index);
            if matches.iter().any(|m| &m.policy == policy && m.rule == rule) {
                Ok(())
            } else {
                Err(format!(
                    "datapath names {policy} rule {rule}, explain has {matches:?}"
                ))
            }
        }
        (s, v) => Err(format!("datapath {s:?} vs explain {v:?}")),
    }
}

#[test]
fn compiled_datapath_agrees_with_explain_on_every_flow() {
    let model = model();
    let ports = [1u16, 79, 80, 81, 82, 90, 91, 1024, 1025, 65535];
    let mut failures = Vec::new();
    let mut flows = 0usize;
    for (file, sc) in scenarios() {
        let input = sc.apply(&model);
        let explainer = Explainer::new(&input);
        let nodes: Vec<PolicyDesired> = ["node-1", "node-2"]
            .iter()
            .map(|n| compile(&input, n, &Allocations::default()).unwrap_or_else(|e| panic!("{file}: {e}")))
            .collect();
        for d in &nodes {
            assert!(d.errors.is_empty(), "{file}: {:?}", d.errors);
            assert!(
                keys_are_canonical(d),
                "{file}: {}: a key has bits set past its prefix",
                d.node
            );
        }
        // Every source of the tables (pods and bare addresses) to every pod, on every protocol and a
        // spread of ports, including the expected cells themselves.
        let sources: Vec<Peer> = sc
            .expect
            .iter()
            .flat_map(|e| e.table.rows.iter().map(|(p, _)| p.clone()))
            .collect();
        let mut sources_dedup = Vec::new();
        for s in sources {
            if !sources_dedup.contains(&s) {
                sources_dedup.push(s);
            }
        }
        let columns = &sc.expect[0].table.columns;
        let mut cases: Vec<(u16, Protocol, Option<&policy::scenario::Expectation>)> = Vec::new();
        for e in &sc.expect {
            cases.push((e.port, e.protocol, Some(e)));
        }
        for port in ports {
            for proto in Protocol::ALL {
                cases.push((port, proto, None));
            }
        }
        for (port, protocol, expectation) in cases {
            for from in &sources_dedup {
                for to in columns {
                    flows += 1;
                    let flow = Flow {
                        from: from.clone(),
                        to: to.clone(),
                        port,
                        protocol,
                    };
                    let ex = explainer.explain(&flow).unwrap();
                    let src = match from {
                        Peer::Pod(p) => pod_ip(&input, p),
                        Peer::Ip(ip) => *ip,
                    };
                    let (eg, ing, eg_node, ing_node) =
                        cluster_verdict(&nodes, src, pod_ip(&input, to), protocol.number(), port);
                    let sim_allowed = !eg.is_denied() && !ing.is_denied();
                    let mut problems = Vec::new();
                    if sim_allowed != ex.allowed {
                        problems.push(format!(
                            "datapath allowed={sim_allowed}, explain allowed={}",
                            ex.allowed
                        ));
                    }
                    if let Err(e) = same(eg, eg_node, ex.egress.as_ref()) {
                        problems.push(format!("egress: {e}"));
                    }
                    if let Err(e) = same(ing, ing_node, Some(&ex.ingress)) {
                        problems.push(format!("ingress: {e}"));
                    }
                    if let Some(want) = expectation.and_then(|e| e.table.get(from, to)) {
                        if want != sim_allowed {
                            problems.push(format!(
                                "table says allowed={want}, datapath allowed={sim_allowed}"
                            ));
                        }
                    }
                    if !problems.is_empty() {
                        failures.push(format!(
                            "{file}: {from} -> {to} {port}/{protocol}: {}\n    {ex}",
                            problems.join("; ")
                        ));
                    }
                }
            }
        }
    }
    let shown: Vec<&String> = failures.iter().take(40).collect();
    assert!(
        failures.is_empty(),
        "{} disagreements (first 40):\n{}",
        failures.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    eprintln!("{flows} flows agree");
}

/// The compiled maps of a few cases, as text (`PolicyDesired`'s dump). `UPDATE_GOLDEN=1` rewrites them.
#[test]
fn compiled_maps_match_golden_dumps() {
    let model = model();
    let all = scenarios();
    let dir = testdata().join("golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in [
        "default-deny-all",
        "end-port",
        "ingress-ip-block",
        "named-port-egress-egress-only",
        "egress-ip-block-except",
    ] {
        let (_, sc) = all
            .iter()
            .find(|(f, _)| f == &format!("{case}.yaml"))
            .expect("case exists");
        let input = sc.apply(&model);
        for node in ["node-1", "node-2"] {
            let dump = compile(&input, node, &Allocations::default())
                .unwrap()
                .to_string();
            let path = dir.join(format!("{case}.{node}.dump"));
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &dump).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
            if want != dump {
                failures.push(format!("{}:\n{dump}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "dumps differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.join("\n")
    );
}
