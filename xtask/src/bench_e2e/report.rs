//! The end-to-end part of the report: every metric per size and proxy, ratios of our agent to
//! each kube-proxy mode measured in the same run, the targets judged, and the charts.

use std::fmt::Write as _;

use super::{E2eBench, SizeResult, plot};

const STRAIT: &str = "strait";
const IPTABLES: &str = "kube-proxy-iptables";
const NFTABLES: &str = "kube-proxy-nftables";
const CONN_VS_IPTABLES: f64 = 2.0;
const CONN_VS_NFTABLES: f64 = 1.3;
const P99_FLAT: f64 = 1.1;
/// Issue 8: 10k Services programmed in under a second.
const COLD_10K_MS: f64 = 1000.0;
/// Issue 8: an endpoint change reaches the datapath in under 5 ms, p99.
const CHANGE_P99_MS: f64 = 5.0;

/// Median, min, max of the values (NaN when empty).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

/// The `q` quantile (0 < q ≤ 1) by nearest rank: a value that was measured, the smallest with at
/// least q of the values at or below it; with fewer than 100 values, p99 is the largest.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (q * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// A metric of one proxy over the rounds of a size.
fn per_round(size: &SizeResult, mode: &str, f: impl Fn(&super::RoundResult) -> Option<f64>) -> Vec<f64> {
    size.rounds
        .iter()
        .filter_map(|r| r.get(mode).and_then(&f))
        .collect()
}

/// Per-round ratio ours / theirs of a metric (the rounds interleave the proxies, so drift of the
/// machine hits both sides of a ratio alike).
fn round_ratios(size: &SizeResult, other: &str, f: impl Fn(&super::RoundResult) -> Option<f64>) -> Vec<f64> {
    size.rounds
        .iter()
        .filter_map(|r| Some(f(r.get(STRAIT)?)? / f(r.get(other)?)?))
        .filter(|x| x.is_finite())
        .collect()
}

fn conn(r: &super::RoundResult) -> Option<f64> {
    Some(r.conn_per_s)
}
fn p50(r: &super::RoundResult) -> Option<f64> {
    r.latency_p50_ms
}
fn p99(r: &super::RoundResult) -> Option<f64> {
    r.latency_p99_ms
}
fn cpu(r: &super::RoundResult) -> Option<f64> {
    r.proxy_cpu_ms_per_1k
}
fn nodeport(r: &super::RoundResult) -> Option<f64> {
    r.nodeport_conn_per_s
}

fn cell(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = stats(v);
    if m.is_nan() {
        return "–".into();
    }
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn ratio_cell(v: &[f64]) -> String {
    let (m, lo, hi) = stats(v);
    if m.is_nan() {
        return "–".into();
    }
    format!("{m:.2}× ({lo:.2}–{hi:.2})")
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn programming(size: &SizeResult, mode: &str) -> Option<f64> {
    size.programming.get(mode)?.from_created_ms
}

fn cold(size: &SizeResult, mode: &str) -> Vec<f64> {
    size.cold
        .get(mode)
        .map(|c| c.serving_ms.clone())
        .unwrap_or_default()
}

/// Cold-start times of a proxy, and how many starts did not serve the sample within the bound.
fn cold_cell(size: &SizeResult, mode: &str) -> String {
    let base = cell(&cold(size, mode), 0);
    let Some(c) = size.cold.get(mode) else {
        return base;
    };
    let mut out = base;
    if c.missed > 0 {
        let _ = write!(out, "; {} more not serving within the bound", c.missed);
    }
    if c.invalid > 0 {
        let _ = write!(out, "; {} left out (answered before the start)", c.invalid);
    }
    out
}

fn median(v: &[f64]) -> Option<f64> {
    Some(stats(v).0).filter(|m| !m.is_nan())
}

/// The change figures of a proxy: from the change being visible on the API where the run has
/// them, else (a run before that clock) from kubectl's return.
fn change(size: &SizeResult, mode: &str) -> Vec<f64> {
    let from = if size.change_visible_ms.is_empty() {
        &size.change_ms
    } else {
        &size.change_visible_ms
    };
    from.get(mode).cloned().unwrap_or_default()
}

fn change_p(size: &SizeResult, mode: &str, q: f64) -> Option<f64> {
    percentile(&change(size, mode), q)
}

/// Change times of a proxy, and how many changes never reached it within the bound.
fn change_cell(size: &SizeResult, mode: &str) -> String {
    let v = change(size, mode);
    let mut out = if size.change_visible_ms.is_empty() {
        cell(&v, 0)
    } else {
        let (_, lo, hi) = stats(&v);
        let window = size.change_window_ms.get(mode).map_or(&[][..], Vec::as_slice);
        match (percentile(&v, 0.5), percentile(&v, 0.99)) {
            (Some(p50), Some(p99)) => format!(
                "{p50:.1} / {p99:.1} ({lo:.1}–{hi:.1}, {} changes; window {:.1})",
                v.len(),
                stats(window).0
            ),
            _ => "–".into(),
        }
    };
    if let Some(&k) = size.change_missed.get(mode).filter(|&&k| k > 0) {
        let _ = write!(out, "; {k} more never within the bound");
    }
    if let Some(&k) = size.change_left_out.get(mode).filter(|&&k| k > 0) {
        let _ = write!(out, "; {k} left out (client late)");
    }
    out
}

fn verdict(ok: bool, miss: String) -> String {
    if ok {
        "met".into()
    } else {
        format!("**missed** ({miss})")
    }
}

/// How the EndpointSlice change figures were taken: the API-visible clock, or (runs before it)
/// kubectl's return.
fn change_method(b: &E2eBench) -> String {
    if b.sizes.iter().all(|z| z.change_visible_ms.is_empty()) {
        return "EndpointSlice change: a selectorless Service (`churn/echo`) whose slice the bench \
                writes holds one endpoint; it is rewritten to another backend (`kubectl apply`) \
                while each client connects to it 200 times a second; the time is from kubectl's \
                return to the first answer from the new backend through each proxy. That is a \
                lower bound: the write happened at most kubectl's run time earlier (given per \
                size). A value below 0 means the datapath had changed before kubectl exited.\n\n"
            .into();
    }
    let offsets: Vec<String> = b
        .sizes
        .iter()
        .map(|z| format!("{} ms at {}", cell(&z.change_watch_vs_kubectl_ms, 0), z.services))
        .collect();
    format!(
        "EndpointSlice change: a selectorless Service (`churn/echo`) whose slice the bench writes \
         holds one endpoint; it is rewritten to another backend (`kubectl apply`, changes over a \
         second apart) while each proxy's client connects to it about 1000 times a second (250 \
         above 2000 Services). The clock starts when the bench's own watch on the slice (a \
         `?watch=true` stream from the apiserver, as the proxies' informers have) receives the \
         resourceVersion the write returned: the moment the change is visible to watchers of the \
         API. It stops when the client sent the first connection the new backend answered: the \
         datapath led there by then. Times of separate processes are lined up on the machine's \
         wall clock in microseconds. The switch lies between the last connection the old backend \
         answered and that first one; their gap (median, `window`) is a figure's resolution. A \
         negative value means the proxy's datapath changed before the bench's watch woke up (the \
         proxies watch the same API). Shown: p50 / p99 (nearest rank: with fewer than 100 changes \
         p99 is the slowest), min–max, count; ratios are of the p50s and of the p99s. Changes \
         repeat up to {} per size within {:.0} s. The watch received each change this long after \
         kubectl returned (negative: before), the offset of the earlier clock (kubectl's return, \
         kept as `change_ms` in e2e.json): {}.\n\n",
        b.params.change_reps,
        b.params.change_budget_s,
        offsets.join("; ")
    )
}

pub fn markdown(b: &E2eBench, charts: &[(String, String)]) -> String {
    let mut s = String::new();
    s.push_str("\n## End to end: our agent vs upstream kube-proxy (iptables and nftables)\n\n");
    let _ = writeln!(
        s,
        "One lab with the real control plane (etcd, kube-apiserver, kube-controller-manager v1.34.4, \
         the EndpointSlice controller writes the slices), four nodes: `strait` runs our agent, \
         `iptables` runs upstream kube-proxy `--proxy-mode=iptables`, `nftables` runs it with \
         `--proxy-mode=nftables` (upstream defaults otherwise, e.g. a 1 s minimum between syncs), and \
         `backends` (our agent) holds the ten backend pods every Service selects. Each proxy node has \
         a client pod; every packet of a measurement crosses exactly one proxy's datapath on the way \
         out and the backends' node on the way in, the same for all three. Sizes add Services to the \
         previous ones ({} here), each with 10 endpoints. `lab up` took {:.0} s; this part {:.0} s; \
         load average {} at its start, {} at its end (2 cores shared with other work). \
         IPVS mode is not compared: this kernel has no IPVS (no kernel modules, `ip_vs` not built in), \
         and upstream deprecates it.\n",
        b.params
            .sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" → "),
        b.lab_up_s,
        b.wall_seconds,
        b.loadavg.first().map_or("?", String::as_str),
        b.loadavg.last().map_or("?", String::as_str),
    );
    let _ = writeln!(
        s,
        "Method: per size, {} rounds; in each round every proxy (order rotated by round) gets a \
         saturating run (`lab load`, 4 workers, requested {} new connections/s for {} s: each \
         connection is connect, one request line, the answer, close; the figure is answered \
         connections per second reached) and then a latency run at a fixed {} connections/s for {} s \
         (exchange time of each connection: connect + request + answer, p50 / p99). Each round uses \
         another ClusterIP. North-south: a saturating run from the lab's external client to the \
         proxy node's address and the NodePort of one Service over the same backends \
         (externalTrafficPolicy Cluster: SNAT to the proxy node, backends on the `backends` node; \
         our path is XDP on the node device, generic XDP on the lab's veth). The proxy's CPU is its own process's user + system time over the \
         saturating run (/proc/PID/stat): work in user space per connection; the datapath's work in \
         the kernel (netfilter, tc programs) runs in softirq context and is not in it. Values are medians over rounds with min–max; ratios are medians of the \
         per-round ratios strait ÷ kube-proxy, with min–max. The client, the responders and all \
         proxies share the machine's cores, so connection rates measure the whole exchange on this \
         machine, of which the datapath is a part.\n",
        b.params.rounds,
        b.params.saturate_rate,
        b.params.load_seconds,
        b.params.latency_rate,
        b.params.load_seconds
    );
    s.push_str(
        "| services | metric | strait | kube-proxy iptables | kube-proxy nftables | strait ÷ iptables | strait ÷ nftables |\n\
         |---:|---|---:|---:|---:|---:|---:|\n",
    );
    type Metric = fn(&super::RoundResult) -> Option<f64>;
    let metrics: [(&str, Metric, usize); 5] = [
        ("new TCP connections/s (higher is better)", conn, 0),
        (
            "NodePort from outside: new TCP connections/s through the proxy node (higher is better)",
            nodeport,
            0,
        ),
        ("latency p50, ms", p50, 3),
        ("latency p99, ms", p99, 3),
        (
            "proxy process CPU during the saturating run, ms per 1000 connections",
            cpu,
            1,
        ),
    ];
    for size in &b.sizes {
        for (name, f, digits) in metrics {
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {} | {} | {} | {} |",
                size.services,
                cell(&per_round(size, STRAIT, f), digits),
                cell(&per_round(size, IPTABLES, f), digits),
                cell(&per_round(size, NFTABLES, f), digits),
                ratio_cell(&round_ratios(size, IPTABLES, f)),
                ratio_cell(&round_ratios(size, NFTABLES, f)),
            );
        }
    }
    s.push_str("\n### Control plane\n\n");
    s.push_str(
        "Programming: the Services of a size but one are created with concurrent `kubectl create` \
         (one multi-document file per process, `--validate=false`); then, while each proxy's client \
         connects to the last one ~100 times a second (`lab load --until-answered-by any`, 100 ms \
         per attempt), that last Service is created alone. The time is from its `kubectl create` \
         returning until a connection through the proxy was answered: until a packet reached a \
         backend, not until the proxy says it synced, and it includes the EndpointSlice \
         controller writing the slice (common to all three). So this is the time to program one \
         new Service (10 endpoints) when N exist, after the N−1 others were created at the \
         apiserver's pace, which every proxy kept up with. \
         At the first size the proxies start with no Services. After each size, three Services \
         spread over the range (first, middle, last) are probed through every proxy.\n\n",
    );
    s.push_str(&change_method(b));
    let _ = writeln!(
        s,
        "Programming from cold: after the changes of a size, each proxy in turn (order rotated by \
         round, {} rounds) is stopped (SIGTERM), its datapath removed by its own cleanup \
         (`proxy-agent cleanup`; `kube-proxy --cleanup --proxy-mode=…`; `lab proxy stop \
         --cleanup`, which then checks that no kube-proxy chain or table and no tc or XDP program \
         is left in the node), and started again (`lab proxy start`) with all the size's Services \
         and slices in the API. Its client connects ~100 times a second to each of three Services \
         (the last created, the middle, the first) from 1.5 s before the start; the time is from \
         the process's start until all three had answered through it: it includes the process \
         starting, listing the API, and for our agent loading and verifying its BPF programs. A \
         first answer before the start leaves the round out (said in the notes).\n",
        b.params.cold_rounds
    );
    s.push_str(
        "| services | created (kubectl) | every slice written (controller) | metric | strait | kube-proxy iptables | kube-proxy nftables | strait ÷ iptables | strait ÷ nftables |\n\
         |---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for size in &b.sizes {
        let prog = |mode: &str| programming(size, mode);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | +{} in {:.1} s ({} kubectl runs; the last Service alone {:.0} ms) | {} | new Service → first answer, ms | {} | {} | {} | {} | {} |",
            size.services,
            size.added,
            size.create_ms / 1000.0,
            size.create_processes,
            size.last_create_ms,
            size.slices_ms
                .map_or("not all".into(), |m| format!("{:.1} s later", m / 1000.0)),
            opt_ms(prog(STRAIT)),
            opt_ms(prog(IPTABLES)),
            opt_ms(prog(NFTABLES)),
            ratio(prog(STRAIT), prog(IPTABLES)),
            ratio(prog(STRAIT), prog(NFTABLES)),
        );
        if size.change_visible_ms.is_empty() {
            let med = |mode: &str| Some(stats(&change(size, mode)).0).filter(|m| !m.is_nan());
            let _ = writeln!(
                s,
                "| | | | EndpointSlice change → new backend answers, ms, median (min–max) of {} (kubectl ran {} ms) | {} | {} | {} | {} | {} |",
                size.change_kubectl_ms.len(),
                cell(&size.change_kubectl_ms, 0),
                change_cell(size, STRAIT),
                change_cell(size, IPTABLES),
                change_cell(size, NFTABLES),
                ratio(med(STRAIT), med(IPTABLES)),
                ratio(med(STRAIT), med(NFTABLES)),
            );
        } else {
            let both = |other: &str| {
                format!(
                    "{} / {}",
                    ratio(change_p(size, STRAIT, 0.5), change_p(size, other, 0.5)),
                    ratio(change_p(size, STRAIT, 0.99), change_p(size, other, 0.99))
                )
            };
            let _ = writeln!(
                s,
                "| | | | EndpointSlice change visible on the API → first connection to the new backend, ms: p50 / p99 (min–max, count; window) | {} | {} | {} | {} | {} |",
                change_cell(size, STRAIT),
                change_cell(size, IPTABLES),
                change_cell(size, NFTABLES),
                both(IPTABLES),
                both(NFTABLES),
            );
        }
        if !size.cold.is_empty() {
            let cold_med = |mode: &str| median(&cold(size, mode));
            let _ = writeln!(
                s,
                "| | | | start from cold (after cleanup) → all sampled Services answer, ms, median (min–max) of {}; ratio of medians | {} | {} | {} | {} | {} |",
                b.params.cold_rounds,
                cold_cell(size, STRAIT),
                cold_cell(size, IPTABLES),
                cold_cell(size, NFTABLES),
                ratio(cold_med(STRAIT), cold_med(IPTABLES)),
                ratio(cold_med(STRAIT), cold_med(NFTABLES)),
            );
        }
    }
    s.push_str("\nFor times, a ratio below 1 means our agent is faster.\n\n");
    s.push_str(&targets(b));
    for (file, title) in charts {
        let _ = writeln!(s, "![{title}]({file})\n");
    }
    if !b.checks.is_empty() {
        s.push_str("Checks:\n\n");
        for c in &b.checks {
            let _ = writeln!(s, "- {c}");
        }
        s.push('\n');
    }
    if !b.notes.is_empty() {
        s.push_str("Notes from the run:\n\n");
        for n in &b.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    s
}

/// The end-to-end targets against this run.
fn targets(b: &E2eBench) -> String {
    let mut s = String::from("### Targets (issue 8)\n\n");
    let (Some(small), Some(large)) = (
        b.sizes.iter().find(|z| z.services == 10),
        b.sizes.iter().max_by_key(|z| z.services),
    ) else {
        s.push_str("Not judged: the run has no 10-Service size.\n\n");
        return s;
    };
    if large.services < 10_000 {
        let _ = writeln!(
            s,
            "This run's largest size is {} Services, not the 10k the targets name: the verdicts \
             below are judged at {} and are an indication only (`cargo xtask bench` without \
             `--quick` measures 10k).\n",
            large.services, large.services
        );
    }
    let n = large.services;
    let (vs_ipt, ..) = stats(&round_ratios(large, IPTABLES, conn));
    let (vs_nft, ..) = stats(&round_ratios(large, NFTABLES, conn));
    let _ = writeln!(
        s,
        "- New connections/s at {n} Services ≥ {CONN_VS_IPTABLES}× kube-proxy iptables: {vs_ipt:.2}× — {}",
        verdict(
            vs_ipt >= CONN_VS_IPTABLES,
            format!(
                "by {:.2}×: {vs_ipt:.2}× instead of {CONN_VS_IPTABLES}×",
                CONN_VS_IPTABLES / vs_ipt
            )
        )
    );
    let _ = writeln!(
        s,
        "- New connections/s at {n} Services ≥ {CONN_VS_NFTABLES}× kube-proxy nftables: {vs_nft:.2}× — {}",
        verdict(
            vs_nft >= CONN_VS_NFTABLES,
            format!(
                "by {:.2}×: {vs_nft:.2}× instead of {CONN_VS_NFTABLES}×",
                CONN_VS_NFTABLES / vs_nft
            )
        )
    );
    for (name, other) in [("iptables", IPTABLES), ("nftables", NFTABLES)] {
        let (r, lo, hi) = stats(&round_ratios(small, other, conn));
        let _ = writeln!(
            s,
            "- New connections/s at 10 Services not below kube-proxy {name}: {r:.2}× (rounds {lo:.2}–{hi:.2}) — {}",
            verdict(r >= 1.0, format!("{:.0} % slower", (1.0 - r) * 100.0))
        );
    }
    let (p99_large, ..) = stats(&per_round(large, STRAIT, p99));
    let (p99_small, ..) = stats(&per_round(small, STRAIT, p99));
    let flat = p99_large / p99_small;
    let _ = writeln!(
        s,
        "- Our p99 latency at {n} Services ≤ {P99_FLAT}× that at 10: {p99_large:.3} ms vs {p99_small:.3} ms = {flat:.2}× — {}",
        verdict(flat <= P99_FLAT, format!("by {:.2}×", flat / P99_FLAT))
    );
    for (name, other) in [("iptables", IPTABLES), ("nftables", NFTABLES)] {
        let (a, ..) = stats(&per_round(large, other, p99));
        let (z, ..) = stats(&per_round(small, other, p99));
        let _ = writeln!(
            s,
            "- For comparison, kube-proxy {name}'s p99 at {n} is {:.2}× its p99 at 10.",
            a / z
        );
    }
    for z in b.sizes.iter().filter(|z| !z.change_visible_ms.is_empty()) {
        let Some(ours) = change_p(z, STRAIT, 0.99) else {
            continue;
        };
        let theirs = |other: &str| change_p(z, other, 0.99).map_or("–".into(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            s,
            "- Endpoint change < {CHANGE_P99_MS} ms p99 at {} Services (API-visible → datapath): \
             {ours:.1} ms over {} changes (kube-proxy iptables {}, nftables {}) — {}",
            z.services,
            change(z, STRAIT).len(),
            theirs(IPTABLES),
            theirs(NFTABLES),
            verdict(
                ours < CHANGE_P99_MS,
                format!("by {:.1} ms, {:.1}×", ours - CHANGE_P99_MS, ours / CHANGE_P99_MS)
            )
        );
    }
    if let Some(ours) = median(&cold(large, STRAIT)) {
        let vs =
            |other: &str| median(&cold(large, other)).map_or("–".into(), |m| format!("{:.2}×", ours / m));
        let _ = writeln!(
            s,
            "- {n} Services programmed from cold in < {COLD_10K_MS:.0} ms (start → sampled Services \
             answer): {ours:.0} ms, {} kube-proxy iptables, {} kube-proxy nftables — {}",
            vs(IPTABLES),
            vs(NFTABLES),
            verdict(ours < COLD_10K_MS, format!("by {:.2}×", ours / COLD_10K_MS))
        );
    }
    s.push('\n');
    s
}

/// The charts: (file name, title, SVG).
pub fn charts(b: &E2eBench) -> Vec<(String, String, String)> {
    type Value = Box<dyn Fn(&SizeResult, &str) -> Option<f64>>;
    let round_median = |f: fn(&super::RoundResult) -> Option<f64>| -> Value {
        Box::new(move |z, mode| Some(stats(&per_round(z, mode, f)).0).filter(|m| !m.is_nan()))
    };
    let metrics: Vec<(&str, &str, &str, Value)> = vec![
        (
            "e2e-conn-per-s.svg",
            "New TCP connections per second (median of rounds)",
            "connections/s",
            round_median(conn),
        ),
        (
            "e2e-latency-p50.svg",
            "Exchange latency p50 at a fixed rate",
            "ms",
            round_median(p50),
        ),
        (
            "e2e-latency-p99.svg",
            "Exchange latency p99 at a fixed rate",
            "ms",
            round_median(p99),
        ),
        (
            "e2e-programming.svg",
            "New Service created → first answer through the proxy",
            "ms",
            Box::new(programming),
        ),
        (
            "e2e-cold-start.svg",
            "Start from cold → the Services answer (median)",
            "ms",
            Box::new(|z, mode| median(&cold(z, mode))),
        ),
        (
            "e2e-endpoint-change.svg",
            "EndpointSlice change → new backend answers (p50)",
            "ms",
            Box::new(|z, mode| change_p(z, mode, 0.5)),
        ),
        (
            "e2e-endpoint-change-p99.svg",
            "EndpointSlice change → new backend answers (p99)",
            "ms",
            Box::new(|z, mode| change_p(z, mode, 0.99)),
        ),
    ];
    metrics
        .into_iter()
        .filter_map(|(file, title, unit, value)| {
            let series: Vec<plot::Series> = b
                .proxies
                .iter()
                .zip(plot::COLORS)
                .map(|(mode, color)| plot::Series {
                    label: mode.clone(),
                    color,
                    points: b
                        .sizes
                        .iter()
                        .filter_map(|z| Some((z.services, value(z, mode)?)))
                        .collect(),
                })
                .collect();
            Some((
                file.to_string(),
                title.to_string(),
                plot::chart(title, unit, &series)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_measured_values_by_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.5), Some(50.0));
        assert_eq!(percentile(&hundred, 0.99), Some(99.0));
        assert_eq!(percentile(&hundred, 1.0), Some(100.0));
        // Fewer than 100 values: p99 is the slowest.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 0.99), Some(20.0));
        assert_eq!(percentile(&twenty, 0.5), Some(10.0));
        assert_eq!(percentile(&[-1.5], 0.99), Some(-1.5));
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(stats(&[]).0.is_nan());
    }
}
