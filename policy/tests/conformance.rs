//! The upstream NetworkPolicy e2e cases (testdata/policy) checked with the reference evaluator.

use std::path::{Path, PathBuf};

use policy::scenario::{Scenario, TruthTable};
use policy::{Flow, PolicyInput, explain};

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
