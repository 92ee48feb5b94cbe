//! `cargo xtask bench [--quick]`: builds and runs `strait-bench` (per-packet datapath cost through
//! BPF_PROG_TEST_RUN, as ratios to bare programs measured in the same run), then writes
//! `bench-results/<date>-<quick|full>/` with `report.md`, `results.json` and `clusterip.svg`, and prints
//! the tables. The agent at scale (`bench_agent`) and the end-to-end comparison with kube-proxy in
//! the lab (`bench_e2e`) follow, each adding its section, JSON and plots.

use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{cargo, target_dir, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer rounds, repetitions and sizes (datapath 10 / 1k / 10k services, end to end 10 / 1k):
    /// about 3 minutes in all.
    #[arg(long)]
    pub quick: bool,
    /// Where the results folder goes (default: bench-results/ in the workspace).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Leave out the agent at scale (first sync, memory, endpoint-change latency).
    #[arg(long)]
    pub skip_agent: bool,
    /// Measure the agent at scale alone: `agent.md` and `agent.json` in the results folder, the
    /// datapath's report left as it is.
    #[arg(long, conflicts_with_all = ["skip_agent", "from_json"])]
    pub skip_datapath: bool,
    /// Leave out the end-to-end comparison with kube-proxy in the lab (real control plane).
    #[arg(long)]
    pub skip_e2e: bool,
    /// Service counts of the end-to-end part instead of the mode's (`--e2e-sizes 10000`: one size,
    /// all its Services created at once).
    #[arg(long, value_delimiter = ',', conflicts_with = "skip_e2e")]
    pub e2e_sizes: Vec<usize>,
    /// Do not measure: write the report from a results.json of an earlier run.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub from_json: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Report {
    params: Params,
    machine: Machine,
    checks: Vec<String>,
    notes: Vec<String>,
    measurements: Vec<Measurement>,
    wall_seconds: f64,
}

#[derive(Deserialize)]
struct Params {
    mode: String,
    rounds: usize,
    repeat: u32,
    shots: usize,
}

#[derive(Deserialize)]
struct Machine {
    kernel: String,
    cpu_model: String,
    cores: usize,
    memory_mib: u64,
    #[serde(default)]
    loadavg_at_start: String,
}

#[derive(Deserialize)]
struct Measurement {
    group: String,
    case: String,
    method: String,
    services: Option<u32>,
    policy_entries: Option<u32>,
    baseline: Option<String>,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    ratio: Option<f64>,
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
}

const ESTABLISHED: &str = "tc_from_pod, ClusterIP established";
const NOT_SERVICE: &str = "tc_from_pod, not a service";
const REPLY: &str = "tc_to_pod, ClusterIP reply (reverse NAT)";
const NEW_CONN: &str = "tc_from_pod, ClusterIP new connection (single-shot)";
const CT_FLOOR: &str =
    "parse + one conntrack lookup (hit), nothing else: the floor under an established flow";
const CLUSTERIP_TARGET: f64 = 2.0;
/// The forwarding group (tests/src/forwarding.rs): its cases' names as strait-bench writes them.
const FORWARDING: &str = "nodeport-forwarding";
const FWD_OURS: &str = "xdp_node (conntrack hit, DNAT + SNAT, XDP_TX)";
const FWD_NFT: &str = "kube-proxy nftables rules (skb, conntrack, filter, forward)";
const FWD_PLAIN: &str = "the stack forwarding, no rules, no NAT (frame addressed to the backend)";
const FWD_BOUNCE: &str = "the loop alone (bare XDP_TX on the node's device)";
/// NodePort packets/s against kube-proxy iptables (issue 6).
const NODEPORT_TARGET: f64 = 3.0;
const FLAT_TARGET: f64 = 1.1;

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.skip_datapath {
        let dir = results_dir(args, if args.quick { "quick" } else { "full" });
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let section = bench_agent(args, &dir)?;
        std::fs::write(dir.join("agent.md"), section.trim_start())?;
        eprintln!("xtask bench: written to {}", dir.join("agent.md").display());
        return Ok(());
    }
    let (json, mode) = match &args.from_json {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let report: Report = serde_json::from_str(&text).context("parsing the results")?;
            let mode = report.params.mode.clone();
            (text, mode)
        }
        None => (
            measure(args.quick)?,
            if args.quick { "quick" } else { "full" }.to_string(),
        ),
    };
    let report: Report = serde_json::from_str(&json).context("parsing strait-bench's output")?;
    let dir = results_dir(args, &mode);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), &json)?;
    let svg = plot(&report);
    let has_plot = svg.is_some();
    if let Some(svg) = svg {
        std::fs::write(dir.join("clusterip.svg"), svg)?;
    }
    let mut md = markdown(&report, has_plot);
    if args.from_json.is_none() && !args.skip_agent {
        md.push_str(&bench_agent(args, &dir)?);
    }
    let e2e_failed = if args.from_json.is_none() && !args.skip_e2e {
        let (section, failed) = crate::bench_e2e::write(&dir, args.quick, &args.e2e_sizes)?;
        println!("{section}");
        md.push_str(&section);
        failed
    } else {
        None
    };
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{}", tables(&report));
    eprintln!(
        "xtask bench: report written to {}",
        dir.join("report.md").display()
    );
    if let Some(e) = e2e_failed {
        bail!("the end-to-end part failed (the report says so): {e:#}");
    }
    Ok(())
}

fn results_dir(args: &BenchArgs, mode: &str) -> PathBuf {
    args.out_dir
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench-results"))
        .join(format!("{}-{mode}", today()))
}

/// Builds the agent, measures it at scale, writes `agent.json` into `dir`; returns the report section.
fn bench_agent(args: &BenchArgs, dir: &std::path::Path) -> Result<String> {
    eprintln!("xtask bench: the agent at scale (building proxy-agent)");
    let status = cargo()
        .args(["build", "--release", "-p", "proxy-agent"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building proxy-agent failed");
    }
    let agent = crate::target_dir().join("release/proxy-agent");
    let scale = crate::bench_agent::run(&agent, args.quick)?;
    std::fs::write(dir.join("agent.json"), serde_json::to_string_pretty(&scale)?)?;
    let section = crate::bench_agent::markdown(&scale);
    println!("{section}");
    Ok(section)
}

/// Builds `strait-bench`, runs it, returns its JSON.
fn measure(quick: bool) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        bail!("xtask bench runs BPF programs with BPF_PROG_TEST_RUN and needs root");
    }
    eprintln!("xtask bench: building strait-bench (release)");
    let status = cargo()
        .args(["build", "--release", "-p", "tests", "--bin", "strait-bench"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build failed ({status})");
    let bin = target_dir().join("release/strait-bench");
    let tmp = std::env::temp_dir().join(format!("strait-bench-{}.json", std::process::id()));
    eprintln!(
        "xtask bench: running {} ({} mode)",
        bin.display(),
        if quick { "quick" } else { "full" }
    );
    let mut cmd = Command::new(&bin);
    cmd.arg(if quick { "--quick" } else { "--full" })
        .arg("--out")
        .arg(&tmp);
    let status = cmd
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(status.success(), "strait-bench failed ({status})");
    let json = std::fs::read_to_string(&tmp)?;
    let _ = std::fs::remove_file(&tmp);
    Ok(json)
}

/// UTC date, YYYY-MM-DD (days-from-civil inverse, H. Hinnant's algorithm).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "baseline".into(), |r| format!("{r:.2}×"))
}

fn fmt_spread(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}"),
        _ => String::new(),
    }
}

/// The issue's target for a case, with whether this run meets it.
fn target_of(m: &Measurement, flat: Option<f64>) -> String {
    if m.case == ESTABLISHED {
        let r = m.ratio.unwrap_or(f64::NAN);
        let mut s = if r <= CLUSTERIP_TARGET {
            format!("≤ {CLUSTERIP_TARGET:.1}× bare: met")
        } else {
            format!(
                "≤ {CLUSTERIP_TARGET:.1}× bare: **missed**, {:.2}× the target",
                r / CLUSTERIP_TARGET
            )
        };
        if let Some(f) = flat {
            let verdict = if f <= FLAT_TARGET { "met" } else { "**missed**" };
            let _ = write!(
                s,
                "; {f:.2}× the 10-service ratio (flat ≤ {FLAT_TARGET}×: {verdict})"
            );
        }
        s
    } else if m.group == FORWARDING && m.case == FWD_OURS {
        let speedup = 1.0 / m.ratio.unwrap_or(f64::NAN);
        if speedup >= NODEPORT_TARGET {
            format!("≥ {NODEPORT_TARGET:.0}× iptables' packets/s: met ({speedup:.2}×)")
        } else {
            format!(
                "≥ {NODEPORT_TARGET:.0}× iptables' packets/s: **missed** ({speedup:.2}×, {:.2}× short)",
                NODEPORT_TARGET / speedup
            )
        }
    } else {
        String::new()
    }
}

/// ratio(established at N) / ratio(established at 10).
fn flatness(r: &Report) -> Vec<(u32, f64)> {
    let est: Vec<&Measurement> = r.measurements.iter().filter(|m| m.case == ESTABLISHED).collect();
    let Some(base) = est.iter().find(|m| m.services == Some(10)).and_then(|m| m.ratio) else {
        return Vec::new();
    };
    est.iter()
        .filter_map(|m| Some((m.services?, m.ratio? / base)))
        .collect()
}

fn group_title(m: &Measurement) -> String {
    if m.group == "policy-compile" {
        "NetworkPolicy compile for one node (control plane; ns are wall-clock per compile)".into()
    } else if m.group == "conntrack-sweep" {
        "Conntrack sweeper, one pass over the pinned table (agent; ns are wall-clock per pass)".into()
    } else if m.group == FORWARDING {
        "NodePort forwarding against the rules kube-proxy writes: frames circulating between the \
         node and the wire's end (ns are wall-clock per forwarded frame, one CPU; ratios to iptables)"
            .into()
    } else if let Some(n) = m.services {
        format!("ClusterIP, {n} services × 3 backends")
    } else if let Some(p) = m.policy_entries {
        format!("NetworkPolicy, isolated endpoint with {p} entries")
    } else {
        "XDP (NodePort path)".into()
    }
}

/// One Markdown table per group.
fn tables(r: &Report) -> String {
    let flat = flatness(r);
    let mut out = String::new();
    let mut groups: Vec<&str> = Vec::new();
    for m in &r.measurements {
        if !groups.contains(&m.group.as_str()) {
            groups.push(&m.group);
        }
    }
    for g in groups {
        let rows: Vec<&Measurement> = r.measurements.iter().filter(|m| m.group == g).collect();
        let _ = writeln!(out, "### {} (`{g}`)\n", group_title(rows[0]));
        out.push_str(
            "| case | method | ns/pkt median | spread (min–max) | ratio | ratio spread | relative to | target |\n",
        );
        out.push_str("|---|---|---:|---|---:|---|---|---|\n");
        for m in rows {
            let f = m
                .services
                .and_then(|n| flat.iter().find(|(s, _)| *s == n).map(|x| x.1))
                .filter(|_| m.services != Some(10));
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0}–{:.0} | {} | {} | {} | {} |",
                m.case,
                m.method,
                m.median_ns,
                m.min_ns,
                m.max_ns,
                fmt_ratio(m.ratio),
                fmt_spread(m.ratio_min, m.ratio_max),
                m.baseline.as_deref().unwrap_or(""),
                target_of(m, f),
            );
        }
        out.push('\n');
    }
    out
}

fn find<'a>(
    r: &'a Report,
    case: &str,
    services: Option<u32>,
    policy: Option<u32>,
) -> Option<&'a Measurement> {
    r.measurements
        .iter()
        .find(|m| m.case == case && m.services == services && m.policy_entries == policy)
}

/// The measurement `m` is divided by (same group).
fn baseline_of<'a>(r: &'a Report, m: &Measurement) -> Option<&'a Measurement> {
    let name = m.baseline.as_deref()?;
    r.measurements
        .iter()
        .find(|b| b.group == m.group && b.case == name)
}

fn markdown(r: &Report, has_plot: bool) -> String {
    let mut s = String::new();
    let p = &r.params;
    let _ = writeln!(s, "# Datapath benchmarks: {} run of {}\n", p.mode, today());
    let _ = writeln!(
        s,
        "Machine: {}, {} ({} cores), {} MiB RAM; load average at the start: {}. `cargo xtask bench{}` \
         took {:.0} s of measuring.\n",
        r.machine.kernel,
        r.machine.cpu_model,
        r.machine.cores,
        r.machine.memory_mib,
        r.machine.loadavg_at_start,
        if p.mode == "quick" { " --quick" } else { "" },
        r.wall_seconds
    );
    s.push_str("## Summary against the targets\n\n");
    let sizes: Vec<u32> = r
        .measurements
        .iter()
        .filter(|m| m.case == ESTABLISHED)
        .filter_map(|m| m.services)
        .collect();
    let flat = flatness(r);
    for n in &sizes {
        if let Some(m) = find(r, ESTABLISHED, Some(*n), None) {
            let ratio = m.ratio.unwrap_or(f64::NAN);
            let bare = baseline_of(r, m).map_or(f64::NAN, |b| b.median_ns);
            let verdict = if ratio <= CLUSTERIP_TARGET {
                "met".to_string()
            } else {
                format!(
                    "missed by {:.2}× ({ratio:.2}× instead of ≤ {CLUSTERIP_TARGET}×)",
                    ratio / CLUSTERIP_TARGET
                )
            };
            let _ = writeln!(
                s,
                "- ClusterIP per packet (established flow), {n} services: {ratio:.2}× bare tc \
                 (spread {}, {:.0} ns vs {:.0} ns bare) — target ≤ {CLUSTERIP_TARGET}×: {verdict}.",
                fmt_spread(m.ratio_min, m.ratio_max),
                m.median_ns,
                bare,
            );
        }
    }
    if let (Some(n), Some(est), Some(miss)) = (
        sizes.last(),
        sizes.last().and_then(|n| find(r, ESTABLISHED, Some(*n), None)),
        sizes.last().and_then(|n| find(r, NOT_SERVICE, Some(*n), None)),
    ) {
        let bare = baseline_of(r, est).map_or(f64::NAN, |b| b.median_ns);
        let _ = writeln!(
            s,
            "- Where the established-flow cost goes ({n} services): a packet that is no service already \
             costs {:.0} ns ({} bare: parse, per-CPU counter, veth address, conntrack miss, service miss; \
             on a node where no pod is isolated, policy is skipped, as in these cases: see the \
             \"policy enforced on the node\" row for the cost when some pod is); the translation \
             (conntrack hit and refresh, DNAT, checksum updates) adds {:.0} ns. Meeting 2× means the \
             whole path within ~{:.0} ns on this machine.",
            miss.median_ns,
            fmt_ratio(miss.ratio),
            est.median_ns - miss.median_ns,
            2.0 * bare,
        );
        if let Some(floor) = find(r, CT_FLOOR, Some(*n), None) {
            let _ = writeln!(
                s,
                "- The floor ({n} services): parsing the packet and one conntrack lookup that hits, and \
                 nothing else, cost {:.0} ns, {} bare on their own — the ≤ 2× target is below what a \
                 datapath that consults conntrack for every packet can reach here; the established \
                 flow is {:.1}× that floor.",
                floor.median_ns,
                fmt_ratio(floor.ratio),
                est.median_ns / floor.median_ns,
            );
        }
    }
    if let Some(&(n, f)) = flat.iter().max_by_key(|x| x.0) {
        let verdict = if f <= FLAT_TARGET { "met" } else { "missed" };
        let _ = writeln!(
            s,
            "- Flatness: the ratio at {n} services is {f:.2}× the ratio at 10 — target ≤ {FLAT_TARGET}×: \
             {verdict}{}.",
            if r.measurements.iter().any(|m| m.group.contains("(for ")) {
                " (the largest size the maps hold: 100k services do not fit, see Notes)"
            } else if n < 100_000 {
                " (this run's largest size)"
            } else {
                ""
            }
        );
    }
    for n in &sizes {
        if let Some(m) = find(r, REPLY, Some(*n), None) {
            let _ = writeln!(
                s,
                "- ClusterIP reply (reverse NAT, tc_to_pod), {n} services: {} bare tc (spread {}).",
                fmt_ratio(m.ratio),
                fmt_spread(m.ratio_min, m.ratio_max)
            );
        }
    }
    if let (Some(n10), Some(nmax)) = (sizes.first(), sizes.last())
        && let (Some(a), Some(b)) = (
            find(r, NEW_CONN, Some(*n10), None),
            find(r, NEW_CONN, Some(*nmax), None),
        )
    {
        let _ = writeln!(
            s,
            "- First packet of a new connection (service lookup, backend pick, two conntrack inserts, DNAT): \
             {:.1}× a bare program run the same way at {n10} services, {:.1}× at {nmax} (no target in the \
             issue; run one packet per syscall, a bare program measures {:.0} ns).",
            a.ratio.unwrap_or(f64::NAN),
            b.ratio.unwrap_or(f64::NAN),
            baseline_of(r, a).map_or(f64::NAN, |b| b.median_ns),
        );
    }
    for m in r
        .measurements
        .iter()
        .filter(|m| m.policy_entries.is_some() && m.case.contains("isolated, allowed"))
    {
        let open = baseline_of(r, m).map_or(f64::NAN, |b| b.median_ns);
        let _ = writeln!(
            s,
            "- Policy, {} entries, {}: {} the same program into a pod without isolation (spread {}): \
             {:.0} ns against {open:.0} ns, +{:.0} ns per packet.",
            m.policy_entries.unwrap_or(0),
            m.case.trim_start_matches("tc_to_pod, "),
            fmt_ratio(m.ratio),
            fmt_spread(m.ratio_min, m.ratio_max),
            m.median_ns,
            m.median_ns - open,
        );
    }
    for m in r
        .measurements
        .iter()
        .filter(|m| m.group == "xdp" && m.ratio.is_some() && m.case.contains("NodePort"))
    {
        let _ = writeln!(
            s,
            "- XDP {}: {} bare XDP ({:.0} ns per packet, single-shot; the kernel reports whole ns).",
            m.case
                .trim_start_matches("xdp_node, ")
                .trim_end_matches(" (single-shot)"),
            fmt_ratio(m.ratio),
            m.median_ns
        );
    }
    if let Some(ours) = r
        .measurements
        .iter()
        .find(|m| m.group == FORWARDING && m.case == FWD_OURS)
    {
        let of = |case: &str| {
            r.measurements
                .iter()
                .find(|m| m.group == FORWARDING && m.case == case)
        };
        let ipt = baseline_of(r, ours).map_or(f64::NAN, |b| b.median_ns);
        let ns = |case: &str| of(case).map_or(f64::NAN, |m| m.median_ns);
        let speedup = 1.0 / ours.ratio.unwrap_or(f64::NAN);
        let vs_nft = of(FWD_NFT).and_then(|n| Some(n.ratio? / ours.ratio?));
        let verdict = if speedup >= NODEPORT_TARGET {
            "met".to_string()
        } else {
            format!("**missed**, {:.2}× short", NODEPORT_TARGET / speedup)
        };
        let _ = writeln!(
            s,
            "- NodePort forwarding (one UDP flow kept circulating between the node and the wire's \
             end, no sender; one CPU): xdp_node {:.0} ns a frame ({:.2} Mpps), kube-proxy iptables \
             rules {ipt:.0} ns ({:.2} Mpps): {speedup:.2}× iptables' packets/s (per-round spread {}), \
             {} nftables' — target ≥ {NODEPORT_TARGET:.0}× iptables: {verdict}. The stack forwarding \
             the same frame with no rules and no NAT takes {:.0} ns (kube-proxy's rules and conntrack \
             add {:.0} ns to it); the loop alone (bare XDP_TX on the node's device) {:.0} ns. On a \
             veth pair: the frame reaches the node as a driver would hand it over, but the stack's \
             cases also pay the far end turning their skb back into an XDP frame (the plain-forwarding \
             figure includes that too).",
            ours.median_ns,
            1e3 / ours.median_ns,
            1e3 / ipt,
            fmt_spread(ours.ratio_max.map(|x| 1.0 / x), ours.ratio_min.map(|x| 1.0 / x)),
            vs_nft.map_or("–".into(), |x| format!("{x:.2}×")),
            ns(FWD_PLAIN),
            ipt - ns(FWD_PLAIN),
            ns(FWD_BOUNCE),
        );
    }
    s.push_str(
        "\nThe end-to-end comparison against upstream kube-proxy in iptables and nftables modes \
         (connections/s, latency p50/p99, control-plane programming time) is its own section below \
         (unless `--skip-e2e`). IPVS mode is not compared: this kernel has no IPVS (and upstream \
         deprecates it).\n\n",
    );
    if has_plot {
        s.push_str("![cost vs services](clusterip.svg)\n\n");
    }
    s.push_str("## Method\n\n");
    let bare = |case: &str| {
        let v: Vec<f64> = r
            .measurements
            .iter()
            .filter(|m| m.case == case)
            .map(|m| m.median_ns)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (single_bare, repeat_bare) = (bare("tc bare (single-shot)"), bare("tc bare"));
    let _ = writeln!(
        s,
        "Every program runs through BPF_PROG_TEST_RUN on the real object, loaded as the agent loads it, with \
         maps seeded the way the agent lays them out. Each case is measured in {} rounds, interleaved with \
         its baseline in the same process (one discarded warm-up round, then round 1 of every case, round 2, \
         ...), so drift of this noisy machine hits both alike. Figures are medians over rounds, spread is \
         min–max over rounds; a ratio is the median of the per-round ratios (case / its baseline in the \
         same round) and its spread their min–max.\n",
        p.rounds
    );
    let _ = writeln!(
        s,
        "The kernel runs `repeat` repetitions on ONE copy of the packet (net/bpf/test_run.c: `data_in` is \
         copied once, `bpf_prog_run` loops on the same skb), so a program that rewrites the packet sees \
         its own output from the second repetition on. Verified here: with the maps below, one run \
         translates client→VIP to client→backend and two runs give the original packet back. Hence two \
         methods:\n\n\
         - **repeat** (`repeat = {}`, the kernel's average per run): only where every repetition takes \
         the intended path. For the established ClusterIP flow the conntrack map holds a cycle: the real \
         entry (client→VIP ⇒ backend, created by the program on a first packet) plus one more \
         (client→backend ⇒ VIP), so every repetition is an established-flow lookup + DNAT + checksum \
         update; checked before measuring (1, 2 and 3 runs; no conntrack entry created by the \
         repetitions). The reply (reverse NAT) likewise: a reply entry for VIP:port → client, copied from \
         the one the program wrote for the connection, names the backend as its frontend. Policy cases do not rewrite packets; the XDP NodePort cases do, and are measured \
         single-shot.\n\
         - **single-shot** (`repeat = 1`, {} runs per round, each on a new source port, i.e. a new \
         connection; the round's figure is the median of the kernel-reported durations): first packets \
         of connections, which `repeat` cannot measure. Each run includes the kernel's per-run \
         overhead (timer, bottom-half toggling: a bare program measures {single_bare:.0} ns this way \
         against {repeat_bare:.0} ns with `repeat`), and so does the bare program measured the same way, \
         which is its baseline.\n",
        p.repeat, p.shots
    );
    s.push_str(
        "Caveats: one hot flow means warm caches (a real node with many flows misses more); the kernel \
         reports whole nanoseconds; the baseline includes the harness's per-run loop overhead, so ratios \
         are if anything slightly flattering. In the default `--policy-established=revoke` mode every \
         packet into an isolated pod is judged again, so the policy \"allowed flow\" case is the \
         per-packet cost of an established connection, not only of its first packet.\n\n",
    );
    s.push_str("## Results\n\n");
    s.push_str(&tables(r));
    s.push_str("## Checks made before measuring\n\n");
    for c in &r.checks {
        let _ = writeln!(s, "- {c}");
    }
    if !r.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s.push_str(
        "\nReproduce: `cargo xtask bench` (full) or `cargo xtask bench --quick`, as root; the raw figures of \
         every round are in `results.json`.\n",
    );
    s
}

/// A plotted line: label, colour, (services, ratio) points.
type Series = (&'static str, &'static str, Vec<(u32, f64)>);

/// Ratio to bare against the number of services (log scale), as a small hand-written SVG.
fn plot(r: &Report) -> Option<String> {
    let series: Vec<Series> = [
        (ESTABLISHED, "#1f77b4", "established flow (repeat)"),
        (REPLY, "#ff7f0e", "reply, reverse NAT (repeat)"),
        (NOT_SERVICE, "#7f7f7f", "not a service (repeat)"),
        (NEW_CONN, "#d62728", "new connection (single-shot)"),
    ]
    .into_iter()
    .map(|(case, color, label)| {
        let pts: Vec<(u32, f64)> = r
            .measurements
            .iter()
            .filter(|m| m.case == case)
            .filter_map(|m| Some((m.services?, m.ratio?)))
            .collect();
        (label, color, pts)
    })
    .filter(|s| s.2.len() >= 2)
    .collect();
    if series.is_empty() {
        return None;
    }
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 60.0, 230.0, 40.0, 50.0);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| f64::from(p.0).log10()))
        .collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(CLUSTERIP_TARGET, f64::max)
        * 1.15;
    let px = |x: f64| left + (x.log10() - xmin) / (xmax - xmin).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - y / ymax * (h - top - bottom);
    let frame = crate::svg_chart::Frame {
        w,
        h,
        left,
        right,
        bottom,
    };
    let mut s = String::new();
    crate::svg_chart::open(
        &mut s,
        frame,
        &format!(
            "ClusterIP path cost as a ratio to a bare tc program, same run ({} mode)",
            r.params.mode
        ),
    );
    // Axes, y grid and labels.
    let step = if ymax > 12.0 { 2.0 } else { 1.0 };
    let mut y = 0.0;
    while y <= ymax {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{y}×</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0
        );
        y += step;
    }
    let ty = py(CLUSTERIP_TARGET);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#2ca02c" stroke-dasharray="6,4"/>"##,
        w - right
    );
    let mut sizes: Vec<u32> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    crate::svg_chart::x_axis(
        &mut s,
        frame,
        sizes.iter().map(|n| (px(f64::from(*n)), n.to_string())),
        "services (3 backends each, log scale)",
    );
    for (label, color, pts) in &series {
        let path: Vec<String> = pts
            .iter()
            .map(|(n, r)| format!("{:.1},{:.1}", px(f64::from(*n)), py(*r)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (n, r) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{label}, {n} services: {r:.2}×</title></circle>"#,
                px(f64::from(*n)),
                py(*r)
            );
        }
    }
    let lx = w - right + 15.0;
    let entries = series
        .iter()
        .map(|s| (s.0, s.1, false))
        .chain([("target: ≤ 2× bare", "#2ca02c", true)]);
    for (i, (label, color, dashed)) in entries.enumerate() {
        let ly = top + 20.0 + i as f64 * 22.0;
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}
