//! End to end, side by side (part of `cargo xtask bench`): our agent, upstream kube-proxy in iptables
//! mode and in nftables mode, each on its own node of ONE lab with the real control plane, so all
//! three see the same Services and EndpointSlices at the same moment (the EndpointSlice controller
//! writes them). At each size (Services added to the ones before, all selecting the same ten
//! backends on a fourth node): how long until the new Services carry traffic through each proxy,
//! new TCP connections per second and the exchange time from each proxy node's client pod to a
//! ClusterIP (rounds interleaved over the proxies), and how long one EndpointSlice change takes to
//! reach each datapath, and how long each proxy takes from a start after its own cleanup until it
//! serves the size's Services (`cold`). Every figure comes from the lab's own commands (`lab load`, `lab probe`).

pub mod change;
pub mod cold;
pub mod lab_cli;
pub mod objects;
pub mod plot;
pub mod report;
pub mod slice_watch;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lab::load::{LoadReport, unix_ms};
use lab_cli::{Kubectl, Load, lab, strings};
use objects::{PROXIES, Proxy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub sizes: Vec<usize>,
    /// Interleaved rounds of the connection-rate and latency runs per size.
    pub rounds: usize,
    /// Length of each connection-rate run and each latency run.
    pub load_seconds: f64,
    /// Requested rate of the saturating runs (over 4 workers; the machine decides what is reached).
    pub saturate_rate: u32,
    /// Fixed rate of the latency runs, well below saturation, so latency is not queueing.
    pub latency_rate: u32,
    /// EndpointSlice changes per size, at most (see `change_budget_s`).
    pub change_reps: usize,
    /// Time the changes of one size may take in all: no change starts after it.
    #[serde(default)]
    pub change_budget_s: f64,
    /// Cold starts of each proxy per size (rounds interleaved over the proxies).
    #[serde(default)]
    pub cold_rounds: usize,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                sizes: vec![10, 1_000],
                rounds: 3,
                load_seconds: 2.0,
                saturate_rate: 20_000,
                latency_rate: 300,
                change_reps: 20,
                change_budget_s: 60.0,
                cold_rounds: 3,
            }
        } else {
            Params {
                sizes: vec![10, 1_000, 10_000],
                rounds: 5,
                load_seconds: 3.0,
                saturate_rate: 20_000,
                latency_rate: 300,
                change_reps: 40,
                change_budget_s: 150.0,
                cold_rounds: 3,
            }
        }
    }
}

/// One proxy in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub target: String,
    /// Answered connections per second of the saturating run.
    pub conn_per_s: f64,
    pub conn_failed: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_failed: u64,
    /// CPU time (user + system) of the proxy's own process on the client's node during the
    /// saturating run, per 1000 answered connections. Kernel work in softirq context (netfilter,
    /// tc programs) is not in it: this shows work a proxy does in user space per connection.
    #[serde(default)]
    pub proxy_cpu_ms_per_1k: Option<f64>,
    /// Answered connections per second of a saturating run from the lab's external client to this
    /// proxy node's address and the NodePort (north-south: through the node's own datapath to the
    /// backends' node, SNATed to the proxy node).
    #[serde(default)]
    pub nodeport_conn_per_s: Option<f64>,
}

/// Time until the last Service of a size carries traffic through one proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Programming {
    /// From the moment its `kubectl create` returned (a lower bound: the object existed a little
    /// earlier, at most `last_create_ms` before).
    pub from_created_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeResult {
    pub services: usize,
    /// Services created for this size (on top of the previous size's).
    pub added: usize,
    /// Concurrent `kubectl create` of the added Services, wall time.
    pub create_ms: f64,
    pub create_processes: usize,
    /// The `kubectl create` of the size's last Service alone (made after the others returned).
    pub last_create_ms: f64,
    /// From the creation until the EndpointSlice controller had written a slice for every Service.
    pub slices_ms: Option<f64>,
    /// Proxy mode → programming time (the probe target: the last Service of the batch).
    pub programming: BTreeMap<String, Programming>,
    /// One map per round, proxy mode → result; rounds run the proxies in rotated order.
    pub rounds: Vec<BTreeMap<String, RoundResult>>,
    /// Proxy mode → from the writing kubectl's return to the end of the first exchange the new
    /// backend answered, one per change (the earlier, coarser clock; `change_visible_ms` is the
    /// figure the report uses).
    pub change_ms: BTreeMap<String, Vec<f64>>,
    /// Proxy mode → from the change being visible on the API (the bench's watch received the
    /// write's resourceVersion) to the sending of the first connection the new backend answered.
    #[serde(default)]
    pub change_visible_ms: BTreeMap<String, Vec<f64>>,
    /// Proxy mode → per change, the gap between the last connection the old backend answered and
    /// the first the new one did: the switch happened within it (the resolution of a figure).
    #[serde(default)]
    pub change_window_ms: BTreeMap<String, Vec<f64>>,
    /// Per change, when the watch received it relative to kubectl's return (negative: before).
    #[serde(default)]
    pub change_watch_vs_kubectl_ms: Vec<f64>,
    /// Proxy mode → changes left out because its client began sending after the change was
    /// visible (said in the notes).
    #[serde(default)]
    pub change_left_out: BTreeMap<String, usize>,
    /// How long each change's `kubectl apply` ran: the write happened within that window before
    /// the time the change figures start from.
    pub change_kubectl_ms: Vec<f64>,
    /// Proxy mode → changes whose new backend never answered within the bound (`change::probe`);
    /// they are in no change figure, whose median therefore flatters that proxy.
    #[serde(default)]
    pub change_missed: BTreeMap<String, usize>,
    /// Proxy mode → its starts from cold with the size's Services in the API.
    #[serde(default)]
    pub cold: BTreeMap<String, cold::Cold>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eBench {
    pub params: Params,
    pub proxies: Vec<String>,
    pub lab_up_s: f64,
    pub sizes: Vec<SizeResult>,
    pub checks: Vec<String>,
    pub notes: Vec<String>,
    pub wall_seconds: f64,
    /// /proc/loadavg when the part started and ended: other work on the machine shows here.
    pub loadavg: Vec<String>,
}

/// `lab down` when the bench ends, however it ends.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        eprintln!("xtask bench e2e: lab down");
        if let Err(e) = lab(&strings(&["down"])) {
            eprintln!("xtask bench e2e: lab down failed: {e:#}");
        }
    }
}

/// Whether the Kubernetes binaries the lab's real control plane runs are cached (the bench never
/// starts their 12-minute build).
pub fn kubernetes_cached() -> Result<bool> {
    let root = match std::env::var_os("STRAIT_K8S_CACHE") {
        Some(dir) => dir.into(),
        None => crate::k8s::default_cache_root()?,
    };
    let version =
        std::env::var("STRAIT_K8S_VERSION").unwrap_or_else(|_| crate::k8s::KUBERNETES_VERSION.into());
    Ok(crate::k8s::build::lookup(&root, &version)?.is_some())
}

/// `sizes`: the Service counts, or empty for the mode's.
pub fn run(agent: &Path, quick: bool, sizes: &[usize]) -> Result<E2eBench> {
    let started = Instant::now();
    let mut params = Params::new(quick);
    if !sizes.is_empty() {
        if sizes.windows(2).any(|w| w[0] >= w[1]) || sizes[0] == 0 {
            bail!("--e2e-sizes {sizes:?}: sizes must be above 0 and increasing (each adds Services)");
        }
        params.sizes = sizes.to_vec();
    }
    let dir = std::env::temp_dir().join(format!("strait-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("lab.yaml");
    std::fs::write(&file, objects::lab_file())?;
    // A lab of this name left by an interrupted run (ours alone: the name is the bench's).
    lab(&strings(&["down"]))?;
    let mut up = strings(&["up", "--json", "--control-plane", "real", "--agent-bin"]);
    up.push(agent.display().to_string());
    up.push(file.display().to_string());
    for p in PROXIES.iter().filter(|p| p.mode != "strait") {
        up.extend(["--proxy".into(), format!("{}={}", p.node, p.mode)]);
    }
    eprintln!("xtask bench e2e: lab up (real control plane, one node per proxy)");
    let t = Instant::now();
    let guard = LabGuard;
    let up_json: Value = serde_json::from_str(&lab(&up)?).context("parsing `lab up --json`")?;
    let lab_up_s = t.elapsed().as_secs_f64();
    eprintln!("xtask bench e2e: lab up took {lab_up_s:.0} s");
    let kubectl = Kubectl::from_up(&up_json)?;
    let mut bench = E2eBench {
        params: params.clone(),
        proxies: PROXIES.iter().map(|p| p.mode.to_string()).collect(),
        lab_up_s,
        sizes: Vec::new(),
        checks: Vec::new(),
        notes: Vec::new(),
        wall_seconds: 0.0,
        loadavg: vec![loadavg()],
    };
    let mut pids = check_proxies(&up_json, &mut bench.checks)?;
    let mut churn_backend = 0;
    let mut have = 0;
    for &n in &params.sizes {
        eprintln!("xtask bench e2e: {n} services");
        let mut size = add_services(&kubectl, have, n, &mut bench)?;
        eprintln!(
            "xtask bench e2e: {n} services: created in {:.1} s, slices {:?} ms later, programmed (ms from created) {:?}",
            size.create_ms / 1000.0,
            size.slices_ms,
            size.programming
                .iter()
                .map(|(m, p)| (m.as_str(), p.from_created_ms.map(|v| v.round())))
                .collect::<Vec<_>>()
        );
        have = n;
        check_sample(n, &mut bench.checks)?;
        for r in 0..params.rounds {
            eprintln!(
                "xtask bench e2e: {n} services, round {} of {}",
                r + 1,
                params.rounds
            );
            let np_round = bench.sizes.len() * params.rounds + r;
            size.rounds
                .push(round(&params, n, r, np_round, &pids, &mut bench.notes)?);
        }
        eprintln!(
            "xtask bench e2e: {n} services, up to {} EndpointSlice changes in {} s",
            params.change_reps, params.change_budget_s
        );
        churn_backend = change::measure(
            &kubectl,
            &mut size,
            params.change_reps,
            Duration::from_secs_f64(params.change_budget_s),
            churn_backend,
            &mut bench.notes,
        )?;
        size.cold = cold::measure(n, params.cold_rounds, &mut pids, &mut bench.notes)?;
        bench.sizes.push(size);
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    bench.wall_seconds = started.elapsed().as_secs_f64();
    bench.loadavg.push(loadavg());
    Ok(bench)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each proxy node runs what the bench says it runs; returns proxy mode → its process id.
fn check_proxies(up: &Value, checks: &mut Vec<String>) -> Result<BTreeMap<String, i32>> {
    let mut pids = BTreeMap::new();
    let nodes = up["nodes"].as_array().context("`lab up --json` has no nodes")?;
    for p in PROXIES {
        let node = nodes
            .iter()
            .find(|n| n["name"] == p.node)
            .with_context(|| format!("node {} missing from the lab", p.node))?;
        if node["proxy"] != p.mode {
            bail!("node {} runs {} instead of {}", p.node, node["proxy"], p.mode);
        }
        let pid = node["agent_pid"]
            .as_i64()
            .or(node["kube_proxy_pid"].as_i64())
            .with_context(|| format!("node {} has no proxy pid in `lab up --json`", p.node))?;
        pids.insert(p.mode.to_string(), pid as i32);
    }
    checks.push(format!(
        "lab up: nodes {} run {} (kube-proxy from the same build as the control plane, v1.34.4)",
        PROXIES.map(|p| p.node).join(", "),
        PROXIES.map(|p| p.mode).join(", ")
    ));
    Ok(pids)
}

/// User + system CPU time of a process and all its threads so far, in ms (/proc/PID/stat).
fn cpu_ms(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `state`, field 3.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    (hz > 0).then(|| ticks * 1000.0 / hz as f64)
}

/// Creates Services `have..n - 1` in bulk, then Service `n - 1` alone while every proxy's client
/// keeps connecting to it: the time from its creation to the first answer through each proxy, with
/// all the size's other Services in place. Also when the controller's slices all exist.
fn add_services(kubectl: &Kubectl, have: usize, n: usize, bench: &mut E2eBench) -> Result<SizeResult> {
    let added = n - have;
    // A bound for everything at this size: creation, slices, programming. Creation is the
    // apiserver's pace, about 30 Services/s on this busy 2-core machine (9000 Services: 5 minutes).
    let limit = Duration::from_secs_f64((90.0 + added as f64 / 15.0).min(600.0));
    let target = format!("{}:{}", objects::vip(n - 1), objects::SERVICE_PORT);
    let parts = if added >= 100 { 4 } else { 1 };
    let docs = objects::services(have..n - 1, parts);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = docs.iter().map(|d| s.spawn(|| create(kubectl, d))).collect();
        for h in handles {
            h.join().expect("kubectl thread")?;
        }
        Ok(())
    })?;
    let watchers: Vec<_> = PROXIES
        .iter()
        .map(|p| watch_until_served(p.client(), target.clone(), limit))
        .collect();
    // The watchers must be sending before the Services exist; their reports say when they began.
    std::thread::sleep(Duration::from_millis(1500));
    let create_start = unix_ms();
    let last = Instant::now();
    create(kubectl, &objects::services(n - 1..n, 1).concat())?;
    let last_create_ms = last.elapsed().as_secs_f64() * 1000.0;
    let create_ms = t.elapsed().as_secs_f64() * 1000.0;
    let created = unix_ms();
    let slices_at = wait_slices(kubectl, n, Instant::now() + limit)?;
    let slices_ms = slices_at.map(|at| at as f64 - created as f64);
    if slices_at.is_none() {
        bench.notes.push(format!(
            "{n} services: not every EndpointSlice existed within {limit:?}"
        ));
    }
    let mut programming = BTreeMap::new();
    for (p, w) in PROXIES.iter().zip(watchers) {
        let report = w.join().expect("watcher thread")?;
        if report.started_unix_ms > create_start {
            bench.notes.push(format!(
                "{n} services, {}: the watcher started {} ms after the creation began",
                p.mode,
                report.started_unix_ms - create_start
            ));
        }
        let first = first_answer_unix_ms(&report, None);
        if let Some(at) = first
            && at < create_start as f64
        {
            bail!(
                "{n} services: {}'s client was answered by {target} before the Service existed",
                p.mode
            );
        }
        if first.is_none() {
            bench.notes.push(format!(
                "{n} services: {} never answered on {target} within {limit:?}",
                p.mode
            ));
        }
        programming.insert(
            p.mode.to_string(),
            Programming {
                from_created_ms: first.map(|f| f - created as f64),
            },
        );
    }
    Ok(SizeResult {
        services: n,
        added,
        create_ms,
        create_processes: docs.len() + 1,
        last_create_ms,
        slices_ms,
        programming,
        rounds: Vec::new(),
        change_ms: BTreeMap::new(),
        change_visible_ms: BTreeMap::new(),
        change_window_ms: BTreeMap::new(),
        change_watch_vs_kubectl_ms: Vec::new(),
        change_left_out: BTreeMap::new(),
        change_kubectl_ms: Vec::new(),
        change_missed: BTreeMap::new(),
        cold: BTreeMap::new(),
    })
}

/// `kubectl create` of generated objects. No client-side validation: it cost kubectl 60 ms of CPU
/// per object here (30 s for 500 Services), more than the apiserver's work.
fn create(kubectl: &Kubectl, docs: &str) -> Result<String> {
    kubectl.run(
        &["create", "--validate=false", "-f", "-", "-o", "name"],
        Some(docs),
    )
}

/// When (Unix ms) `pod` (or any pod) first answered in a load.
fn first_answer_unix_ms(r: &LoadReport, pod: Option<&str>) -> Option<f64> {
    let s = match pod {
        Some(p) => r.first_answer_s.get(p).copied(),
        None => r.first_answer_s.values().copied().reduce(f64::min),
    }?;
    Some(r.started_unix_ms as f64 + s * 1000.0)
}

/// Polls the number of EndpointSlices in the bench namespace (one per Service: ten endpoints fit
/// one slice) until it reaches `n`; returns when (Unix ms), or None at the deadline.
fn wait_slices(kubectl: &Kubectl, n: usize, deadline: Instant) -> Result<Option<u64>> {
    let path = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?limit=1",
        objects::NAMESPACE
    );
    while Instant::now() < deadline {
        let v: Value = serde_json::from_str(&kubectl.run(&["get", "--raw", &path], None)?)
            .context("parsing an EndpointSlice list")?;
        let count = v["items"].as_array().map_or(0, Vec::len) as u64
            + v["metadata"]["remainingItemCount"].as_u64().unwrap_or(0);
        if count >= n as u64 {
            return Ok(Some(unix_ms()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(None)
}

/// How long a sampled Service may take to answer after the watched one did.
const SAMPLE_WAIT: Duration = Duration::from_secs(30);

/// A few Services spread over the range answer through every proxy (the first, the middle, the
/// last): the datapaths hold all of them, not only the one the watchers waited for.
fn check_sample(n: usize, checks: &mut Vec<String>) -> Result<()> {
    let sample = [0, n / 2, n - 1];
    for p in PROXIES {
        for &i in &sample {
            let to = format!("{}:{}", objects::vip(i), objects::SERVICE_PORT);
            // The watchers saw the last Service answer; the others may be a sync behind (kube-proxy
            // writes at most once a second), so each gets a bounded number of tries.
            let deadline = Instant::now() + SAMPLE_WAIT;
            let mut by = lab_cli::probe_once(&p.client(), &to)?;
            while by.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                by = lab_cli::probe_once(&p.client(), &to)?;
            }
            if !by.as_deref().is_some_and(|b| b.starts_with("bench/web-")) {
                bail!(
                    "{n} services: {} did not serve {} ({to}): answered by {by:?}",
                    p.mode,
                    objects::service_name(i)
                );
            }
        }
    }
    checks.push(format!(
        "{n} services: Services {} answered through each of the three proxies",
        sample.map(objects::service_name).join(", ")
    ));
    Ok(())
}

/// One interleaved round: per proxy (order rotated by round), a saturating run, then a run at a
/// fixed rate for latency, each to a ClusterIP of its own (so client ports in TIME_WAIT from one
/// run never limit the next).
fn round(
    params: &Params,
    n: usize,
    r: usize,
    np_round: usize,
    pids: &BTreeMap<String, i32>,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, RoundResult>> {
    let mut out = BTreeMap::new();
    // Never the watched last Service: its client sent SYNs to it before it existed, and a
    // conntrack entry of such a SYN (no NAT) would catch a later connection reusing the port.
    let i = (n + n - 2 - r) % n;
    let to = format!("{}:{}", objects::vip(i), objects::SERVICE_PORT);
    for k in 0..PROXIES.len() {
        let p: &Proxy = &PROXIES[(k + r) % PROXIES.len()];
        let from = p.client();
        let pid = pids.get(p.mode).copied();
        let cpu_before = pid.and_then(cpu_ms);
        let sat = lab_cli::load(&Load {
            from: &from,
            to: to.clone(),
            rate: params.saturate_rate,
            workers: 4,
            seconds: params.load_seconds,
            timeout_ms: 1000,
            until_answered_by: None,
            via: None,
        })?;
        let cpu = cpu_before
            .zip(pid.and_then(cpu_ms))
            .map(|(a, b)| (b - a) / (sat.answered.max(1) as f64 / 1000.0));
        let lat = lab_cli::load(&Load {
            from: &from,
            to: to.clone(),
            rate: params.latency_rate,
            workers: 2,
            seconds: params.load_seconds,
            timeout_ms: 1000,
            until_answered_by: None,
            via: None,
        })?;
        let np = lab_cli::load(&Load {
            from: "external",
            to: format!("{}:{}", p.node_ip, objects::node_port(np_round)),
            rate: params.saturate_rate,
            workers: 4,
            seconds: params.load_seconds,
            timeout_ms: 1000,
            until_answered_by: None,
            via: Some(p.node),
        })?;
        if np.failed > 0 {
            notes.push(format!(
                "{n} services, round {}, {}: {} of {} NodePort attempts from outside failed ({:?})",
                r + 1,
                p.mode,
                np.failed,
                np.attempts,
                np.outcomes
            ));
        }
        if sat.failed + lat.failed > 0 {
            notes.push(format!(
                "{n} services, round {}, {}: {} of {} saturating and {} of {} latency attempts failed ({:?})",
                r + 1,
                p.mode,
                sat.failed,
                sat.attempts,
                lat.failed,
                lat.attempts,
                sat.outcomes
            ));
        }
        out.insert(
            p.mode.to_string(),
            RoundResult {
                target: to.clone(),
                conn_per_s: sat.answered as f64 / sat.seconds.max(1e-9),
                conn_failed: sat.failed,
                latency_p50_ms: lat.latency_ms.as_ref().map(|l| l.p50),
                latency_p99_ms: lat.latency_ms.as_ref().map(|l| l.p99),
                latency_failed: lat.failed,
                proxy_cpu_ms_per_1k: cpu,
                nodeport_conn_per_s: Some(np.answered as f64 / np.seconds.max(1e-9)),
            },
        );
    }
    Ok(out)
}

/// The end-to-end part of `cargo xtask bench`: runs it and writes `e2e.json` and the charts into
/// `dir`. Returns the report's section, and the error if the part failed (the section then says
/// what failed instead of showing figures).
pub fn write(dir: &Path, quick: bool, sizes: &[usize]) -> Result<(String, Option<anyhow::Error>)> {
    if !kubernetes_cached()? {
        let note = "\n## End to end: our agent vs upstream kube-proxy\n\nNot measured: no cached \
                    Kubernetes build for the lab's real control plane (run `cargo xtask k8s build`, \
                    about 12 minutes cold, then the bench again).\n";
        eprintln!("xtask bench: skipping the end-to-end part: no cached Kubernetes build");
        return Ok((note.to_string(), None));
    }
    eprintln!("xtask bench: end to end in the lab (building proxy-agent)");
    let status = crate::cargo()
        .args(["build", "--release", "-p", "proxy-agent"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building proxy-agent failed");
    }
    let agent = crate::target_dir().join("release/proxy-agent");
    match run(&agent, quick, sizes) {
        Ok(b) => {
            std::fs::write(dir.join("e2e.json"), serde_json::to_string_pretty(&b)?)?;
            let mut files = Vec::new();
            for (file, title, svg) in report::charts(&b) {
                std::fs::write(dir.join(&file), svg)?;
                files.push((file, title));
            }
            Ok((report::markdown(&b, &files), None))
        }
        Err(e) => {
            let section = format!(
                "\n## End to end: our agent vs upstream kube-proxy\n\nNot measured: the run failed: \
                 {e:#}\n"
            );
            Ok((section, Some(e)))
        }
    }
}

/// A client connecting to `to` from a thread, 100 times a second, until any backend answers or `limit`
/// passes: how the programming figures (new Service, start from cold) see a Service become served.
pub(super) fn watch_until_served(
    from: String,
    to: String,
    limit: Duration,
) -> std::thread::JoinHandle<Result<crate::lab::load::LoadReport>> {
    std::thread::spawn(move || {
        lab_cli::load(&Load {
            from: &from,
            to,
            rate: 100,
            workers: 8,
            seconds: limit.as_secs_f64(),
            timeout_ms: 100,
            until_answered_by: Some("any"),
            via: None,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_cpu_time_is_read_from_proc() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let ms = super::cpu_ms(std::process::id() as i32).expect("own /proc/PID/stat");
        assert!(ms >= 10.0, "{ms} ms of CPU after 30 ms of spinning");
        assert!(super::cpu_ms(i32::MAX).is_none());
    }
}
