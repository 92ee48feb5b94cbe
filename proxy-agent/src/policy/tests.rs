//! Policy reconcile on [`FakePolicyMaps`]: golden dump, idempotence, numbers kept across a restart,
//! recovery from a failed write, and the ordering invariant (checked with the datapath's own lookup,
//! `policy::simulate`, after every single operation of every transition between the conformance cases).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use policy::scenario::Scenario;
use policy::{Peer, PolicyInput, simulate};

use super::*;
use crate::lb::tests::check_golden;

const NODE: &str = "node-1";

fn policy_testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/policy")
        .join(file)
}

fn model() -> PolicyInput {
    let text = std::fs::read_to_string(policy_testdata("model.yaml")).unwrap();
    PolicyInput::from_yaml(&text).unwrap()
}

fn scenario(name: &str) -> Scenario {
    let text = std::fs::read_to_string(policy_testdata(&format!("{name}.yaml"))).unwrap();
    Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn case(name: &str) -> PolicyInput {
    scenario(name).apply(&model())
}

/// Every conformance case, by file name.
fn all_cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(policy_testdata(""))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".yaml")?.to_owned();
            (stem != "model").then_some(stem)
        })
        .collect();
    names.sort();
    names
}

fn reconcile(r: &mut PolicyReconciler, input: &PolicyInput, maps: &mut FakePolicyMaps) -> PolicyOutcome {
    r.reconcile(input, NODE, maps).unwrap()
}

#[test]
fn golden_dump_of_a_small_case() {
    let input = case("pod-selector");
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    let out = reconcile(&mut r, &input, &mut maps);
    assert_eq!(
        out.ops.len(),
        maps.maps.len(),
        "one upsert per entry from empty maps"
    );
    check_golden("../policy/pod-selector.node-1.maps", &render::render(&maps.maps));
    // The dump agrees with what the compiler asked for.
    let (wanted, unfit) = PolicyMapsState::from_desired(r.last().unwrap());
    assert!(unfit.is_empty());
    assert_eq!(maps.maps, wanted);
}

#[test]
fn reconciling_twice_performs_no_operation() {
    for name in [
        "pod-selector",
        "ingress-ip-block",
        "named-port-egress",
        "updated-pod-labels",
    ] {
        let input = case(name);
        let mut maps = FakePolicyMaps::new();
        let mut r = PolicyReconciler::new();
        assert!(!reconcile(&mut r, &input, &mut maps).ops.is_empty(), "{name}");
        let again = reconcile(&mut r, &input, &mut maps);
        assert!(again.ops.is_empty(), "{name}: {:?}", again.ops);
    }
}

#[test]
fn a_restart_keeps_every_number() {
    // Run through a few states, so numbers are not simply the ones a fresh compile would pick.
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    for name in [
        "ingress-ip-block",
        "egress-ip-block-except-overlap",
        "named-port-egress",
    ] {
        reconcile(&mut r, &case(name), &mut maps);
    }
    let before = maps.maps.clone();
    let allocations = r.allocations().clone();
    // A new agent over the same maps and the same objects: nothing to write.
    let mut restarted = PolicyReconciler::new();
    let out = reconcile(&mut restarted, &case("named-port-egress"), &mut maps);
    assert!(out.ops.is_empty(), "restart rewrote: {:#?}", out.ops);
    assert_eq!(maps.maps, before);
    assert_eq!(restarted.allocations().identities, allocations.identities);
    assert_eq!(restarted.allocations().endpoints, allocations.endpoints);
    assert_eq!(restarted.allocations().policies, allocations.policies);
    // CIDR classes in use are restored (the allocations may also remember released ones).
    for (net, class) in &restarted.allocations().cidr_classes {
        assert_eq!(allocations.cidr_classes.get(net), Some(class), "{net}");
    }
    // And after a change during the downtime, the restarted agent writes what the one that kept running
    // would have written.
    let next = case("egress-ip-block-except");
    let mut kept = maps.clone();
    reconcile(&mut r, &next, &mut kept);
    let mut restarted = PolicyReconciler::new();
    reconcile(&mut restarted, &next, &mut maps);
    assert_eq!(render::render(&maps.maps), render::render(&kept.maps));
}

#[test]
fn restore_reads_numbers_from_the_maps() {
    let input = case("egress-ip-block-except-overlap");
    let d = policy::compile(&input, NODE, &Allocations::default()).unwrap();
    let (state, _) = PolicyMapsState::from_desired(&d);
    let restored = restore_allocations(&state, &input, NODE);
    assert_eq!(restored.identities, d.allocations.identities);
    assert_eq!(restored.endpoints, d.allocations.endpoints);
    assert_eq!(restored.cidr_classes, d.allocations.cidr_classes);
    // Policies that name nothing on this node are still in the names table (the whole cluster's).
    assert_eq!(restored.policies, d.allocations.policies);
}

#[test]
fn a_failed_write_is_finished_by_the_next_pass() {
    let input = case("stacked-policies");
    let mut maps = FakePolicyMaps::new();
    maps.fail_after = Some(5);
    let mut r = PolicyReconciler::new();
    assert!(r.reconcile(&input, NODE, &mut maps).is_err());
    let out = reconcile(&mut r, &input, &mut maps);
    assert!(!out.ops.is_empty());
    assert!(reconcile(&mut r, &input, &mut maps).ops.is_empty());
    let (wanted, _) = PolicyMapsState::from_desired(r.last().unwrap());
    assert_eq!(maps.maps, wanted);
}

#[test]
fn invalid_policies_are_reported_once_and_the_rest_is_enforced() {
    let mut input = case("pod-selector");
    let bad: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}\n",
    )
    .unwrap();
    input.policies.push(bad.into());
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    let out = reconcile(&mut r, &input, &mut maps);
    assert_eq!(out.new_errors.len(), 1);
    assert_eq!(out.new_errors[0].policy.to_string(), "x/bad");
    assert_eq!(out.new_errors[0].field, "spec.ingress[0].ports[0].protocol");
    assert!(reconcile(&mut r, &input, &mut maps).new_errors.is_empty());
    // The valid policy is programmed: x/a is isolated and allows x/b.
    let d = maps.maps.as_desired();
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let a = pod_ip(&input, "x/a");
    assert!(simulate(&d, pod_ip(&input, "x/b"), a, 6, 80).allowed());
    assert!(!simulate(&d, pod_ip(&input, "y/b"), a, 6, 80).allowed());
    assert!(!simulate(&d, ip("192.0.2.1"), a, 6, 80).allowed());
}

fn pod_ip(input: &PolicyInput, pod: &str) -> Ipv4Addr {
    view::PodsByIp::new(&input.pods)
        .iter()
        .find(|(_, p)| p == pod)
        .map(|(ip, _)| ip)
        .unwrap_or_else(|| panic!("no pod {pod}"))
}

/// Flows to check: every pod pair and every bare address of the cases, both ways, on two ports and
/// two protocols.
fn probe_flows(inputs: &[&PolicyInput], extra: &BTreeSet<Ipv4Addr>) -> Vec<(Ipv4Addr, Ipv4Addr, u8, u16)> {
    let mut addrs: BTreeSet<Ipv4Addr> = extra.clone();
    for i in inputs {
        addrs.extend(view::PodsByIp::new(&i.pods).iter().map(|(ip, _)| ip));
    }
    addrs.insert("10.0.0.11".parse().unwrap());
    let mut flows = Vec::new();
    for s in &addrs {
        for d in &addrs {
            if s == d {
                continue;
            }
            for (proto, port) in [(6, 80), (17, 81)] {
                flows.push((*s, *d, proto, port));
            }
        }
    }
    flows
}

fn allowed(state: &PolicyDesired, f: &(Ipv4Addr, Ipv4Addr, u8, u16)) -> bool {
    simulate(state, f.0, f.1, f.2, f.3).allowed()
}

#[test]
fn no_operation_order_denies_what_both_states_allow() {
    let cases = all_cases();
    let mut extra = BTreeSet::new();
    for name in &cases {
        for e in &scenario(name).expect {
            for (p, _) in &e.table.rows {
                if let Peer::Ip(ip) = p {
                    extra.insert(*ip);
                }
            }
        }
    }
    // A walk through every case (each one a transition from the previous), then back to no policy.
    let mut walk: Vec<PolicyInput> = cases.iter().map(|c| case(c)).collect();
    walk.push(model());
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    reconcile(&mut r, &model(), &mut maps);
    let mut checked = 0usize;
    for (step, next) in walk.iter().enumerate() {
        let before = maps.maps.as_desired();
        maps.record = true;
        maps.history.clear();
        let out = reconcile(&mut r, next, &mut maps);
        let after = maps.maps.as_desired();
        let name = cases.get(step).map_or("model", String::as_str);
        let flows = probe_flows(&[next], &extra);
        let both: Vec<_> = flows
            .iter()
            .filter(|f| allowed(&before, f) && allowed(&after, f))
            .collect();
        for (i, state) in maps.history.iter().enumerate() {
            assert!(
                !state.skips_an_isolated_endpoint(),
                "{name}: after operation {} ({}) the datapath would skip an isolated endpoint",
                i + 1,
                out.ops[i]
            );
            let mid = state.as_desired();
            for f in &both {
                checked += 1;
                assert!(
                    allowed(&mid, f),
                    "{name}: after operation {} ({}) the flow {f:?} is denied though both states allow it",
                    i + 1,
                    out.ops[i]
                );
            }
        }
        // Ends where the compiler wanted.
        let (wanted, _) = PolicyMapsState::from_desired(r.last().unwrap());
        assert_eq!(maps.maps, wanted, "{name}");
    }
    assert!(checked > 10_000, "only {checked} checks");
}

#[test]
fn a_label_change_never_denies_in_between() {
    // x/a isolated, allowing pod=b; then x/b's labels change (new identity) while the policy now
    // allows the new label too: the flow x/b -> x/a is allowed before and after, and must be allowed
    // after every single operation — also when isolation is dropped in the same pass.
    let with = |policy: &str, b_labels: &str| {
        let mut input = model();
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(policy).unwrap();
        input.policies.push(np.into());
        for p in &mut input.pods {
            if p.metadata.namespace.as_deref() == Some("x") && p.metadata.name.as_deref() == Some("b") {
                std::sync::Arc::make_mut(p).labels =
                    serde_yaml::from_str::<std::collections::BTreeMap<String, String>>(b_labels)
                        .unwrap()
                        .into();
            }
        }
        input
    };
    let p1 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
              spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}\n";
    let p2 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
              spec: {podSelector: {matchLabels: {pod: nobody}}}\n";
    let a = with(p1, "{pod: b}");
    let b = with(p2, "{pod: b, extra: yes}");
    for (from, to) in [(&a, &b), (&b, &a)] {
        let mut maps = FakePolicyMaps::new();
        let mut r = PolicyReconciler::new();
        reconcile(&mut r, from, &mut maps);
        let before = maps.maps.as_desired();
        maps.record = true;
        let out = reconcile(&mut r, to, &mut maps);
        let (xb, xa) = (pod_ip(from, "x/b"), pod_ip(from, "x/a"));
        assert!(simulate(&before, xb, xa, 6, 80).allowed());
        for (i, s) in maps.history.iter().enumerate() {
            assert!(
                simulate(&s.as_desired(), xb, xa, 6, 80).allowed(),
                "after {}",
                out.ops[i]
            );
        }
    }
}

#[test]
fn operations_come_in_the_documented_phases() {
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    reconcile(&mut r, &case("ingress-ip-block"), &mut maps);
    let out = reconcile(&mut r, &case("egress-ip-block-except"), &mut maps);
    let phase = |op: &PolicyOp| match op {
        PolicyOp::UpsertName { .. } => 1,
        PolicyOp::UpsertPolicy { .. } => 2,
        PolicyOp::UpsertEndpoint { .. } => 0, // relax (3) or upsert (6): checked below
        PolicyOp::UpsertIpCache { .. } => 4,
        PolicyOp::DeleteIpCache { .. } => 5,
        PolicyOp::DeleteEndpoint { .. } => 7,
        PolicyOp::DeletePolicy { .. } => 8,
        PolicyOp::DeleteName { .. } => 9,
        PolicyOp::SetState { .. } => unreachable!("both cases isolate"),
    };
    let phases: Vec<u8> = out.ops.iter().map(phase).filter(|p| *p != 0).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
    assert!(phases.contains(&5) && phases.contains(&8), "{phases:?}");
    // ipcache upserts longest prefix first, deletes shortest first.
    let lens = |want: u8| -> Vec<u32> {
        out.ops
            .iter()
            .filter(|op| phase(op) == want)
            .map(|op| match op {
                PolicyOp::UpsertIpCache { key, .. } | PolicyOp::DeleteIpCache { key } => key.prefix_len,
                _ => unreachable!(),
            })
            .collect()
    };
    assert!(lens(4).windows(2).all(|w| w[0] >= w[1]));
    assert!(lens(5).windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn policy_list_names_isolating_policies() {
    let input = case("stacked-policies");
    let d = policy::compile(&input, NODE, &Allocations::default()).unwrap();
    let state = view::PolicyState::build(&d, &input, &view::PodsByIp::new(&input.pods));
    assert!(!state.endpoints.is_empty());
    for e in &state.endpoints {
        let info = d.endpoint_table.get(&e.endpoint_id).unwrap();
        let ingress = info.flags & common::policy::endpoint_flags::INGRESS_ISOLATED != 0;
        assert_eq!(!e.ingress_isolated_by.is_empty(), ingress, "{}", e.pod);
        let egress = info.flags & common::policy::endpoint_flags::EGRESS_ISOLATED != 0;
        assert_eq!(!e.egress_isolated_by.is_empty(), egress, "{}", e.pod);
    }
    let table = view::render_policy_list(&state);
    assert!(table.lines().count() > state.endpoints.len());
    // Every identity of the node's maps is listed with its pods.
    let ids = view::render_identity_list(&state);
    assert!(ids.contains("reserved:world"));
    assert!(
        state
            .identities
            .iter()
            .any(|i| i.pods.contains(&"x/a".to_string()))
    );
}

#[test]
fn explain_parses_command_line_flows() {
    let f = view::parse_flow("x/a", "y/b:80/UDP").unwrap();
    assert_eq!(f.port, 80);
    assert_eq!(f.protocol, policy::Protocol::Udp);
    let f = view::parse_flow("192.0.2.1", "y/b:81").unwrap();
    assert_eq!(f.from, Peer::Ip("192.0.2.1".parse().unwrap()));
    assert!(view::parse_flow("x/a", "y/b").is_err());
    assert!(view::parse_flow("x/a", "y/b:0").is_err());
    let input = case("default-deny-ingress");
    let e = policy::explain(&input, &view::parse_flow("y/a", "x/b:80").unwrap()).unwrap();
    let v = view::ExplainView::from(&e);
    assert!(!v.allowed);
    assert_eq!(v.ingress.isolated_by, ["x/deny-ingress"]);
    let text = view::render_explain(&v);
    assert!(
        text.contains("DENIED") && text.contains("isolated by x/deny-ingress"),
        "{text}"
    );
}

#[test]
fn changing_nested_prefixes_never_exposes_a_third_one() {
    // Before: x/a allows 10/8 except 10.1/16, and 10.1.2/24 (three declared prefixes, the middle one
    // denied). After: x/a allows 10/8 (one prefix). 10.1.2.5 is allowed before (class of /24) and after
    // (class of /8); had /24 been deleted before /16, it would have resolved to /16 in between: denied.
    let np = |name: &str, from: &str| -> k8s_openapi::api::networking::v1::NetworkPolicy {
        serde_yaml::from_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{from}]}}]}}\n"
        ))
        .unwrap()
    };
    let mut before = model();
    before
        .policies
        .push(np("p1", "{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}").into());
    before
        .policies
        .push(np("p2", "{ipBlock: {cidr: 10.1.2.0/24}}").into());
    let mut after = model();
    after
        .policies
        .push(np("p1", "{ipBlock: {cidr: 10.0.0.0/8}}").into());
    let xa = pod_ip(&before, "x/a");
    let srcs: Vec<Ipv4Addr> = ["10.1.2.5", "10.1.3.5", "10.2.0.1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    // And the other way round: adding them (longest prefix first) exposes no third one either.
    for (before, after) in [(&before, &after), (&after, &before)] {
        let mut maps = FakePolicyMaps::new();
        let mut r = PolicyReconciler::new();
        reconcile(&mut r, before, &mut maps);
        let old = maps.maps.as_desired();
        maps.record = true;
        let out = reconcile(&mut r, after, &mut maps);
        let new = maps.maps.as_desired();
        assert!(simulate(&old, srcs[0], xa, 6, 80).allowed() && simulate(&new, srcs[0], xa, 6, 80).allowed());
        for (i, s) in maps.history.iter().enumerate() {
            for src in &srcs {
                let both =
                    simulate(&old, *src, xa, 6, 80).allowed() && simulate(&new, *src, xa, 6, 80).allowed();
                if both {
                    assert!(
                        simulate(&s.as_desired(), *src, xa, 6, 80).allowed(),
                        "{src} denied after {}",
                        out.ops[i]
                    );
                }
            }
        }
    }
}

#[test]
fn passes_trust_the_state_written_until_a_resync_or_a_failure_asks_for_a_dump() {
    let input = case("pod-selector");
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    reconcile(&mut r, &input, &mut maps);
    let clean = maps.maps.clone();
    assert_eq!(r.dumps(), 1);
    // An entry written behind the agent's back stays until the resync dumps the maps.
    let k = *maps.maps.policy.keys().next().unwrap();
    maps.maps.policy.remove(&k);
    assert!(reconcile(&mut r, &input, &mut maps).ops.is_empty());
    assert_eq!(r.dumps(), 1);
    let compiles = r.compiles();
    r.require_dump();
    let resync = reconcile(&mut r, &input, &mut maps);
    assert_eq!(resync.ops.len(), 1, "{:?}", resync.ops);
    assert_eq!(maps.maps, clean);
    assert_eq!(r.dumps(), 2);
    // The same objects: the dump was diffed against the last compile's state, not a new compile.
    assert!(!resync.compiled);
    assert_eq!(r.compiles(), compiles);
    // A resync after an object changed (a new allocation, even with equal content) compiles.
    let mut changed = input.clone();
    changed.pods[0] = std::sync::Arc::new((*changed.pods[0]).clone());
    r.require_dump();
    let resync = reconcile(&mut r, &changed, &mut maps);
    assert!(resync.compiled && resync.ops.is_empty(), "{:?}", resync.ops);
    assert_eq!(r.compiles(), compiles + 1);
    // A failed write: the next pass dumps and finishes the job.
    let other = case("ingress-ip-block");
    maps.fail_after = Some(0);
    assert!(r.reconcile(&other, NODE, &mut maps).is_err());
    let retry = reconcile(&mut r, &other, &mut maps);
    assert!(!retry.ops.is_empty());
    assert_eq!(r.dumps(), 4);
    let (wanted, _) = PolicyMapsState::from_desired(r.last().unwrap());
    assert_eq!(maps.maps, wanted);
    assert!(reconcile(&mut r, &other, &mut maps).ops.is_empty());
}

#[test]
fn a_resync_takes_only_a_dump_read_with_nothing_written_since() {
    let first = case("pod-selector");
    let second = case("ingress-ip-block");
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    reconcile(&mut r, &first, &mut maps);
    let (old, at) = (maps.maps.clone(), r.writes());
    reconcile(&mut r, &second, &mut maps);
    // The dump was read before the second input was written: not a picture of the maps now.
    assert!(!r.resync_from(old, at), "a dump from before a write is refused");
    // One read with nothing written since is taken; an entry removed behind our back comes back.
    let (wanted, _) = PolicyMapsState::from_desired(r.last().unwrap());
    let k = *maps.maps.policy.keys().next().unwrap();
    maps.maps.policy.remove(&k);
    assert!(r.resync_from(maps.maps.clone(), r.writes()));
    let resync = reconcile(&mut r, &second, &mut maps);
    assert!(!resync.compiled, "the same objects: no compile");
    assert_eq!(resync.ops.len(), 1);
    assert_eq!(maps.maps, wanted);
    assert!(reconcile(&mut r, &second, &mut maps).ops.is_empty());
}

#[test]
fn a_pass_over_the_same_objects_with_the_maps_as_written_neither_compiles_nor_writes() {
    let input = case("pod-selector");
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    reconcile(&mut r, &input, &mut maps);
    assert_eq!(r.compiles(), 1);
    let again = reconcile(&mut r, &input, &mut maps);
    assert!(again.ops.is_empty() && !again.compiled);
    assert_eq!((r.compiles(), r.dumps()), (1, 1));
}

#[test]
fn policy_is_skipped_only_while_no_endpoint_is_isolated() {
    let mut maps = FakePolicyMaps::new();
    let mut r = PolicyReconciler::new();
    let open = reconcile(&mut r, &model(), &mut maps);
    assert!(maps.maps.none_isolated, "no policy: the datapath may skip it");
    assert_eq!(open.ops.last(), Some(&PolicyOp::SetState { none_isolated: true }));
    maps.record = true;
    let isolating = reconcile(&mut r, &case("pod-selector"), &mut maps);
    assert_eq!(
        isolating.ops.first(),
        Some(&PolicyOp::SetState { none_isolated: false }),
        "enforcement comes back before any endpoint is isolated"
    );
    assert!(!maps.maps.none_isolated);
    let back = reconcile(&mut r, &model(), &mut maps);
    assert_eq!(
        back.ops.last(),
        Some(&PolicyOp::SetState { none_isolated: true }),
        "skipped again only after the last isolation is gone"
    );
    assert!(maps.history.iter().all(|s| !s.skips_an_isolated_endpoint()));
    assert!(reconcile(&mut r, &model(), &mut maps).ops.is_empty());
}
