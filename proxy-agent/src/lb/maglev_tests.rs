use super::*;
use crate::lb::tests::{check_golden, load};

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1))
        .collect()
}

/// Flow hashes independent of the backend hash (the datapath will hash the 5-tuple its own way).
fn flows(count: u64) -> impl Iterator<Item = u64> {
    (0..count).map(|i| {
        // splitmix64
        let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

const FLOWS: u64 = 200_000;

#[test]
fn table_size_must_be_a_prime_in_range_and_errors_name_the_flag() {
    assert_eq!(TableSize::default().get(), 16_381);
    for ok in [251, 1021, 8191, 16_381] {
        assert_eq!(TableSize::new(ok).map(TableSize::get), Ok(ok));
    }
    for bad in [0, 2, 100, 250, 16_380, 16_411, 65_521, 131_071, u32::MAX] {
        let e = TableSize::new(bad).unwrap_err();
        assert!(e.starts_with("--maglev-table-size "), "{e}");
        assert!(e.contains(&bad.to_string()), "{e}");
    }
    assert!("16381".parse::<TableSize>().is_ok());
    assert!(
        "many"
            .parse::<TableSize>()
            .unwrap_err()
            .contains("--maglev-table-size")
    );
    let size = TableSize::default();
    assert!(size.check_backends(163).is_ok());
    let w = size.check_backends(164).unwrap_err();
    assert!(
        w.contains("164 backends") && w.contains("--maglev-table-size"),
        "{w}"
    );
}

#[test]
fn the_hash_is_pinned() {
    // Cross-checked with an independent implementation of the same definition. Every node, whatever
    // its build, must compute these; a change here reshuffles
    // every table in a mixed-version cluster.
    assert_eq!(stable_hash(0, b""), 0x7bd3_144f_29c0_cc9e);
    assert_eq!(
        stable_hash(OFFSET_SEED, b"10.244.1.11:8080"),
        0xdf68_ce79_3c19_9848
    );
    assert_eq!(stable_hash(SKIP_SEED, b"10.244.1.11:8080"), 0xadef_ec6d_eace_69bc);
    assert_ne!(stable_hash(1, b"a"), stable_hash(2, b"a"));
}

#[test]
fn identical_input_in_any_order_gives_identical_tables() {
    let size = TableSize::new(4093).unwrap();
    let sorted = names(7);
    let a = build(size, &sorted);
    let mut reversed = sorted.clone();
    reversed.reverse();
    let mut rotated = sorted.clone();
    rotated.rotate_left(3);
    let mut duplicated = sorted.clone();
    duplicated.extend(sorted[..2].iter().cloned());
    for other in [&reversed, &rotated, &duplicated] {
        assert_eq!(build(size, other), a);
    }
    assert_eq!(a.entries.len(), 4093);
    assert_eq!(a.backends, sorted);
}

#[test]
fn no_backends_no_table() {
    let t = build::<String>(TableSize::default(), &[]);
    assert!(t.entries.is_empty());
    assert_eq!(t.pick(42), None);
}

#[test]
fn every_backend_gets_its_share_within_one_entry() {
    for m in [251, 16_381] {
        let size = TableSize::new(m).unwrap();
        for n in 1..=20 {
            let t = build(size, &names(n));
            let counts = t.counts();
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            assert!(max - min <= 1, "M={m} N={n}: {counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), m as usize);
        }
    }
}

/// Fraction of `flows` whose backend differs between `a` and `b`, among those `keep` says count.
fn moved(a: &MaglevTable, b: &MaglevTable, keep: impl Fn(&str) -> bool) -> (f64, u64) {
    let (mut considered, mut changed) = (0u64, 0u64);
    for h in flows(FLOWS) {
        let before = a.pick(h).unwrap();
        if !keep(before) {
            continue;
        }
        considered += 1;
        if b.pick(h).unwrap() != before {
            changed += 1;
        }
    }
    (changed as f64 / considered as f64, considered)
}

#[test]
fn removing_a_backend_moves_few_of_the_other_backends_flows() {
    let size = TableSize::default();
    for n in 3..=10 {
        let all = names(n);
        let before = build(size, &all);
        for gone in 0..n {
            let rest: Vec<String> = all.iter().filter(|b| **b != all[gone]).cloned().collect();
            let after = build(size, &rest);
            // Flows of the removed backend all move, by necessity; count only the others'.
            let (fraction, considered) = moved(&before, &after, |b| b != all[gone]);
            assert!(considered > FLOWS / 2, "{considered}");
            // Ideal is 0; Maglev trades a little of it for balance. Observed: 0.04–0.07% at N=3, up to
            // 2% at N=10 (M=16381); the bound leaves room for other names, not for a regression.
            let bound = 0.03_f64.min(1.0 / n as f64);
            assert!(
                fraction <= bound,
                "N={n}, removing {}: {:.2}% of the other flows moved (bound {:.2}%)",
                all[gone],
                fraction * 100.0,
                bound * 100.0
            );
        }
    }
}

#[test]
fn adding_a_backend_moves_about_its_share() {
    let size = TableSize::default();
    for n in 3..=10 {
        let all = names(n + 1);
        let before = build(size, &all[..n]);
        let after = build(size, &all);
        let (fraction, _) = moved(&before, &after, |_| true);
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            (fraction - ideal).abs() <= 0.03,
            "N={n}→{}: {:.2}% of flows moved, ideal {:.2}%",
            n + 1,
            fraction * 100.0,
            ideal * 100.0
        );
        // And the flows that moved went, nearly all, to the new backend.
        let to_new = flows(FLOWS)
            .filter(|&h| before.pick(h) != after.pick(h) && after.pick(h) == Some(all[n].as_str()))
            .count() as f64;
        let all_moved = fraction * FLOWS as f64;
        assert!(
            to_new / all_moved >= 0.9,
            "N={n}: {to_new} of {all_moved} to the new backend"
        );
    }
}

#[test]
fn desired_tables_cover_external_frontends_only() {
    let (snapshot, node, _) = load("external");
    let plan = crate::lb::plan(&snapshot, &node);
    let size = TableSize::new(251).unwrap();
    let d = desired(&plan, size);
    assert!(!d.tables.is_empty());
    for ((addr, port, proto), table) in &d.tables {
        let f = plan
            .frontends
            .iter()
            .find(|f| (f.addr, f.port, f.proto, f.scope) == (*addr, *port, *proto, SCOPE_EXTERNAL))
            .expect("a table belongs to a frontend");
        assert_ne!(f.kind, FrontendKind::ClusterIp);
        let mut expected: Vec<String> = f.backends.iter().map(|b| backend_name(b.addr, b.port)).collect();
        expected.sort();
        assert_eq!(table.backends, expected, "{addr}:{port}");
    }
    let external_with_backends = plan
        .frontends
        .iter()
        .filter(|f| f.kind != FrontendKind::ClusterIp && f.scope == SCOPE_EXTERNAL && !f.backends.is_empty())
        .count();
    assert_eq!(d.tables.len(), external_with_backends);
    check_golden("external.maglev", &render(&d));
}

#[test]
fn too_many_backends_for_the_table_is_a_warning_naming_the_service() {
    let (snapshot, node, _) = load("external");
    let plan = crate::lb::plan(&snapshot, &node);
    let d = desired(&plan, TableSize::new(MIN_TABLE_SIZE).unwrap());
    // 251 entries hold 2 backends at 100 each; external.yaml's two-backend frontends fit, so no warning.
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let mut big = plan.clone();
    let f = std::sync::Arc::make_mut(&mut big.frontends)
        .iter_mut()
        .find(|f| f.kind == FrontendKind::NodePort && f.scope == SCOPE_EXTERNAL && !f.backends.is_empty())
        .map(std::sync::Arc::make_mut)
        .unwrap();
    let template = f.backends[0].clone();
    f.backends = (0..3)
        .map(|i| crate::lb::PlannedBackend {
            addr: Ipv4Addr::new(10, 9, 9, i),
            ..template.clone()
        })
        .collect();
    let d = desired(&big, TableSize::new(MIN_TABLE_SIZE).unwrap());
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(d.warnings[0].starts_with("Service app/"), "{}", d.warnings[0]);
}
