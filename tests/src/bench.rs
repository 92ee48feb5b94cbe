//! Per-packet cost of the datapath through BPF_PROG_TEST_RUN, for `strait-bench` (run by `cargo xtask
//! bench`). Every figure is a ratio to a bare program measured in the same run, interleaved round by
//! round with the subject so that drift of a noisy machine hits both alike.
//!
//! Two methods, because of how the kernel runs a test (net/bpf/test_run.c, `bpf_test_run`): `data_in`
//! is copied ONCE into one skb (or xdp_buff) and the program runs `repeat` times on that same buffer.
//! A program that rewrites the packet sees its own output from the second repetition on.
//! - `repeat`: the kernel's average over `repeat` runs. Used only where every repetition takes the
//!   intended path: programs that do not rewrite the packet, and the established ClusterIP flow, for
//!   which the maps hold a conntrack cycle (client→VIP translates to client→backend, and client→backend
//!   translates back to client→VIP), so each repetition is an established-flow translation. Checked
//!   before measuring: one run translates, two runs give the original packet back.
//! - `single-shot`: one run per syscall (`repeat = 1`) on a fresh packet each time (a new source port:
//!   a new connection), taking the kernel-reported duration of each run; a round is the median of its
//!   shots. Used for first packets of new connections, which `repeat` cannot measure (the second
//!   repetition already finds the connection). Each figure includes the kernel's timer overhead, as
//!   does the bare baseline measured the same way.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::Context as _;
use aya::{
    maps::HashMap as AyaHashMap,
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    event::DropReason,
    lb::{MAX_BACKENDS, MAX_REVNAT, MAX_SERVICE_ENTRIES},
    map_names,
    net::{Be16, Be32},
    policy::{DIR_INGRESS, PolicyKey, endpoint_flags, identity},
};
use serde::Serialize;

use crate::{
    datapath::{TestDatapath, TestService},
    packet::{self, Ipv4Packet, PROTO_TCP, TCP_ACK},
};

pub const BENCH_TC_BARE: &str = "bench_tc_bare";
pub const BENCH_XDP_BARE: &str = "bench_xdp_bare";
/// Parse and one conntrack lookup, nothing else: the floor under an established flow.
pub const BENCH_TC_CT: &str = "bench_tc_ct";
pub const TC_FROM_POD: &str = "tc_from_pod";
pub const TC_TO_POD: &str = "tc_to_pod";
pub const XDP_NODE: &str = "xdp_node";

const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
/// BPF_PROG_TEST_RUN gives skbs the loopback device.
const TEST_IFINDEX: u32 = 1;
/// Backends per service, as the issue asks.
const BACKENDS_PER_SERVICE: u32 = 3;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 9);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const POD_OPEN: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const POD_ISOLATED: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 21);
const FRIEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
const EP_OPEN: u32 = 20;
const EP_ISOLATED: u32 = 21;
const FRIEND_ID: u32 = identity::FIRST_POD_IDENTITY + 44;

/// How much work one run does.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub mode: String,
    /// Rounds per case; each figure is the median over rounds.
    pub rounds: usize,
    /// `repeat` of one repeat-method measurement.
    pub repeat: u32,
    /// Runs per round of a single-shot measurement.
    pub shots: usize,
    pub service_counts: Vec<u32>,
    pub policy_counts: Vec<u32>,
}

impl Params {
    pub fn quick() -> Self {
        Self {
            mode: "quick".into(),
            rounds: 5,
            repeat: 20_000,
            shots: 300,
            service_counts: vec![10, 1_000, 10_000],
            policy_counts: vec![100, 1_000],
        }
    }

    pub fn full() -> Self {
        Self {
            mode: "full".into(),
            rounds: 11,
            repeat: 100_000,
            shots: 1_000,
            service_counts: vec![10, 1_000, 10_000, 100_000],
            policy_counts: vec![100, 1_000],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mib: u64,
    /// /proc/loadavg when the run started: other work on the machine, for the reader to judge noise.
    pub loadavg_at_start: String,
}

impl Machine {
    pub fn describe() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let kernel = format!("Linux {} {}", release.trim(), std::env::consts::ARCH);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            kernel,
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib,
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// One case of one group: its per-round figures and their summary.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub group: String,
    pub case: String,
    pub program: String,
    /// `repeat` or `single-shot` (see the module documentation).
    pub method: String,
    pub services: Option<u32>,
    pub policy_entries: Option<u32>,
    /// The case in the same group this one is divided by; `None` for a baseline.
    pub baseline: Option<String>,
    /// ns per packet, one figure per round (repeat: kernel average; single-shot: median of the shots).
    pub rounds_ns: Vec<f64>,
    pub median_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
    /// Median of the per-round ratios this / baseline (each round's pair was measured back to back,
    /// so a burst of load on the machine affects both sides of a pair).
    pub ratio: Option<f64>,
    /// Smallest and largest of the per-round ratios (the rounds are interleaved, so pairwise).
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub params: Params,
    pub machine: Machine,
    /// What was checked about each path before it was measured.
    pub checks: Vec<String>,
    /// Things the reader must know to interpret the figures (capacity limits, substitutions).
    pub notes: Vec<String>,
    pub measurements: Vec<Measurement>,
    pub wall_seconds: f64,
}

/// What one BPF_PROG_TEST_RUN returned.
pub struct Run {
    pub action: u32,
    /// Kernel-reported average ns per repetition.
    pub ns: f64,
    pub packet: Vec<u8>,
}

/// Loads the bare baselines, which the agent's loader leaves alone (they are never attached).
pub fn load_baselines(dp: &mut TestDatapath) -> anyhow::Result<()> {
    let ebpf = dp.datapath.ebpf_mut();
    for name in [BENCH_TC_BARE, BENCH_TC_CT] {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("{name} missing from the object"))?
            .try_into()?;
        tc.load()?;
    }
    let xdp: &mut Xdp = ebpf
        .program_mut(BENCH_XDP_BARE)
        .ok_or_else(|| anyhow::anyhow!("{BENCH_XDP_BARE} missing from the object"))?
        .try_into()?;
    xdp.load()?;
    Ok(())
}

/// Runs `prog` `repeat` times on one copy of `packet` (the kernel's semantics, see the module docs).
pub fn test_run(dp: &mut TestDatapath, prog: &str, packet: &[u8], repeat: u32) -> anyhow::Result<Run> {
    let mut out = vec![0u8; packet.len() + 256];
    let program = dp
        .datapath
        .ebpf_mut()
        .program_mut(prog)
        .ok_or_else(|| anyhow::anyhow!("program {prog} missing"))?;
    let ingress = XDP_INGRESS.with(std::cell::Cell::get);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: Vec<u8> = [0, packet.len() as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let xdp_ctx = matches!(program, Program::Xdp(_)) && ingress != 0;
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: xdp_ctx.then_some(md.as_slice()),
        repeat,
        ..Default::default()
    };
    let result = match program {
        Program::Xdp(p) => p.test_run(opts),
        Program::SchedClassifier(p) => p.test_run(opts),
        other => anyhow::bail!("program {prog} has type {:?}", other.prog_type()),
    }
    .map_err(|e| anyhow::anyhow!("BPF_PROG_TEST_RUN of {prog}: {e}"))?;
    out.truncate(result.data_size_out as usize);
    Ok(Run {
        action: result.return_value,
        ns: result.duration.as_nanos() as f64,
        packet: out,
    })
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A case measures one round at a time: given the datapath and the round number, ns per packet.
pub type RoundFn<'a> = Box<dyn FnMut(&mut TestDatapath, usize) -> anyhow::Result<f64> + 'a>;

pub struct Case<'a> {
    pub name: String,
    pub program: &'static str,
    pub method: &'static str,
    /// Index of the baseline case within the group; `None` for the baseline itself.
    pub baseline: Option<usize>,
    pub round: RoundFn<'a>,
}

/// Tags shared by the cases of a group.
#[derive(Clone, Default)]
pub struct GroupInfo {
    pub name: String,
    pub services: Option<u32>,
    pub policy_entries: Option<u32>,
}

/// Runs every case once per round, in order, for `rounds` rounds.
pub fn interleave(
    dp: &mut TestDatapath,
    info: &GroupInfo,
    rounds: usize,
    mut cases: Vec<Case<'_>>,
) -> anyhow::Result<Vec<Measurement>> {
    // One discarded round first: caches, branch predictors and map pages warm up for every case.
    for case in cases.iter_mut() {
        (case.round)(dp, rounds)?;
    }
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    for r in 0..rounds {
        for (i, case) in cases.iter_mut().enumerate() {
            samples[i].push((case.round)(dp, r)?);
        }
    }
    let mut out = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let s = &samples[i];
        let med = median(s);
        let (ratio, ratio_min, ratio_max) = match case.baseline {
            Some(b) => {
                let base = &samples[b];
                let per_round: Vec<f64> = s.iter().zip(base).map(|(x, y)| x / y).collect();
                (
                    Some(median(&per_round)),
                    per_round.iter().copied().reduce(f64::min),
                    per_round.iter().copied().reduce(f64::max),
                )
            }
            None => (None, None, None),
        };
        out.push(Measurement {
            group: info.name.clone(),
            case: case.name.clone(),
            program: case.program.into(),
            method: case.method.into(),
            services: info.services,
            policy_entries: info.policy_entries,
            baseline: case.baseline.map(|b| cases[b].name.clone()),
            rounds_ns: s.clone(),
            median_ns: med,
            min_ns: s.iter().copied().fold(f64::INFINITY, f64::min),
            max_ns: s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ratio,
            ratio_min,
            ratio_max,
        });
    }
    Ok(out)
}

/// A repeat-method case: the kernel's average over `repeat` runs on one copy of `packet`.
pub fn repeat_case<'a>(
    name: &str,
    program: &'static str,
    baseline: Option<usize>,
    packet: Vec<u8>,
    repeat: u32,
    expect_action: u32,
) -> Case<'a> {
    let case = name.to_string();
    Case {
        name: name.into(),
        program,
        method: "repeat",
        baseline,
        round: Box::new(move |dp, _| {
            let run = test_run(dp, program, &packet, repeat)?;
            anyhow::ensure!(
                run.action == expect_action,
                "{case}: action {} instead of {expect_action}",
                run.action
            );
            Ok(run.ns)
        }),
    }
}

/// `case` with the policy state map's `NONE_ISOLATED` set to `none_isolated` before each of its
/// rounds (the cases of one group share the maps).
pub fn under_policy_state(mut case: Case<'_>, none_isolated: bool) -> Case<'_> {
    let mut inner = std::mem::replace(&mut case.round, Box::new(|_, _| Ok(0.0)));
    case.round = Box::new(move |dp, r| {
        dp.set_none_isolated(none_isolated);
        inner(dp, r)
    });
    case
}

/// A single-shot case: `shots` runs of one repetition each, each on the packet `make(round, shot)`;
/// the round's figure is the median of the kernel-reported durations.
pub fn single_shot_case<'a>(
    name: &str,
    program: &'static str,
    baseline: Option<usize>,
    shots: usize,
    expect_action: u32,
    make: impl Fn(usize, usize) -> Vec<u8> + 'a,
) -> Case<'a> {
    let case = name.to_string();
    Case {
        name: name.into(),
        program,
        method: "single-shot",
        baseline,
        round: Box::new(move |dp, r| {
            let mut ns = Vec::with_capacity(shots);
            for i in 0..shots {
                let run = test_run(dp, program, &make(r, i), 1)?;
                anyhow::ensure!(
                    run.action == expect_action,
                    "{case}: action {} instead of {expect_action}",
                    run.action
                );
                ns.push(run.ns);
            }
            Ok(median(&ns))
        }),
    }
}

/// Service `i` of a synthetic cluster: VIP 10.96.0.0/16 + i + 1, port 80/TCP, three backends of its
/// own in 10.128.0.0/10.
pub fn synthetic_service(i: u32) -> TestService {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1);
    let mut svc = TestService::new(vip, 80, PROTO_TCP, i + 1);
    for j in 0..BACKENDS_PER_SERVICE {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * BACKENDS_PER_SERVICE + j + 1);
        svc.backends.push((addr, 8080));
    }
    svc
}

/// How many such services the datapath maps hold: every service takes a rev-NAT id, one frontend
/// plus one slot per backend in the service map, and its own backends.
pub fn service_capacity() -> u32 {
    let by_revnat = MAX_REVNAT;
    let by_entries = MAX_SERVICE_ENTRIES / (1 + BACKENDS_PER_SERVICE);
    let by_backends = MAX_BACKENDS / BACKENDS_PER_SERVICE;
    by_revnat.min(by_entries).min(by_backends)
}

fn ct_map(dp: &mut TestDatapath) -> AyaHashMap<&mut aya::maps::MapData, CtKey4, CtEntry4> {
    let map = dp
        .datapath
        .ebpf_mut()
        .map_mut(map_names::CT4)
        .expect("conntrack map");
    AyaHashMap::try_from(map).expect("conntrack is a hash map")
}

fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> CtKey4 {
    CtKey4 {
        saddr: Be32::from_octets(src.octets()),
        daddr: Be32::from_octets(dst.octets()),
        sport: Be16::new(sport),
        dport: Be16::new(dport),
        proto: PROTO_TCP,
        _pad: 0,
        _pad2: 0,
    }
}

fn established(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut p = Ipv4Packet::tcp(src, sport, dst, dport);
    p.tcp_flags = TCP_ACK;
    p.build()
}

fn ensure_valid(frame: &[u8], what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        packet::ipv4_checksum_ok(frame) && packet::l4_checksum_ok(frame),
        "{what}: bad checksum in the output packet"
    );
    Ok(())
}

/// Progress on stderr.
fn progress(msg: &str) {
    eprintln!("strait-bench: {msg}");
}

/// The ClusterIP group for `n` services: bare tc, a non-service packet, the established service flow
/// (repeat, conntrack cycle) and the first packet of new connections (single-shot) against a bare
/// program run single-shot too.
pub fn clusterip_group(
    p: &Params,
    n: u32,
    requested: u32,
    checks: &mut Vec<String>,
) -> anyhow::Result<Vec<Measurement>> {
    let mut dp = TestDatapath::load(&format!("bench-lb{n}"));
    load_baselines(&mut dp)?;
    let t = Instant::now();
    for i in 0..n {
        dp.add_service(&synthetic_service(i));
    }
    progress(&format!(
        "seeded {n} services ({} map entries) in {:.1}s",
        n * (2 + 2 * BACKENDS_PER_SERVICE),
        t.elapsed().as_secs_f64()
    ));
    // The pod behind the test veth is the client (anti-spoofing passes, as for a real pod), with the
    // endpoint record the agent writes for every local pod (open: no policy isolates it).
    dp.register_iface(TEST_IFINDEX, CLIENT);
    dp.add_endpoint(CLIENT, EP_OPEN, identity::FIRST_POD_IDENTITY, 0);
    let svc = synthetic_service(n / 2);
    let (vip, vport) = (svc.vip, svc.port);
    let backends: Vec<Ipv4Addr> = svc.backends.iter().map(|b| b.0).collect();

    // Establish the flow with the real program, then close the cycle in conntrack.
    let request = established(CLIENT, 40000, vip, vport);
    let first = test_run(&mut dp, TC_FROM_POD, &request, 1)?;
    anyhow::ensure!(first.action == TC_ACT_OK, "first packet: action {}", first.action);
    let seen = packet::read(&first.packet);
    anyhow::ensure!(
        seen.src == CLIENT && backends.contains(&seen.dst) && seen.dport == 8080,
        "first packet not translated to a backend: {seen:?}"
    );
    ensure_valid(&first.packet, "first packet")?;
    let backend = seen.dst;
    let cycle = CtEntry4 {
        backend_id: 0,
        rev_nat: svc.rev_nat,
        flags: ct_flags::FORWARD,
        last_seen_ns: 0,
        rewrite_addr: Be32::from_octets(vip.octets()),
        rewrite_port: Be16::new(vport),
        orig_saddr: Be32::from_octets([0; 4]),
        client_port: Be16::new(40000),
        wire_port: Be16::new(40000),
    };
    ct_map(&mut dp).insert(ct_key(CLIENT, 40000, backend, 8080), cycle, 0)?;
    // One run translates to the backend; two runs on the same buffer translate back (this is also
    // the check that repetitions see their own output); every repetition is an established hit.
    let one = test_run(&mut dp, TC_FROM_POD, &request, 1)?;
    let two = test_run(&mut dp, TC_FROM_POD, &request, 2)?;
    let three = test_run(&mut dp, TC_FROM_POD, &request, 3)?;
    anyhow::ensure!(
        packet::read(&one.packet).dst == backend && one.action == TC_ACT_OK,
        "established: one run must reach the same backend"
    );
    anyhow::ensure!(
        two.packet == request && two.action == TC_ACT_OK,
        "established: two runs must give the request back (same-buffer repetition)"
    );
    anyhow::ensure!(
        packet::read(&three.packet).dst == backend,
        "established: three runs end at the backend"
    );
    ensure_valid(&one.packet, "established")?;
    ensure_valid(&two.packet, "established x2")?;
    let ct_before = ct_map(&mut dp).keys().count();
    let _ = test_run(&mut dp, TC_FROM_POD, &request, p.repeat)?;
    let ct_after = ct_map(&mut dp).keys().count();
    anyhow::ensure!(
        ct_before == ct_after,
        "established: repetitions created conntrack entries ({ct_before} -> {ct_after})"
    );
    if checks.iter().all(|c| !c.starts_with("tc_from_pod established")) {
        checks.push(format!(
            "tc_from_pod established ClusterIP flow: 1 run translates {CLIENT}:40000->{vip}:80 to \
             {backend}:8080 (checksums valid); 2 runs on one buffer return the original packet, 3 runs \
             the translated one, so repetitions DO see their own output (net/bpf/test_run.c runs the \
             program `repeat` times on one skb); with the conntrack cycle every repetition is an \
             established-flow translation, and {} repetitions create no conntrack entry. tc_to_pod \
             reply: 1 run rewrites {backend}:8080->{CLIENT}:40000 to come from {vip}:80 (checksums \
             valid), 2 runs give the backend's packet back (a reply-entry cycle: the second entry names \
             the backend as its frontend)",
            p.repeat
        ));
    }

    // The reply direction: the backend's answer, reverse-NATed to come from VIP:port. Same cycle: a
    // reply entry for VIP:port → client, made from the one the datapath wrote for the connection (so
    // the measured path is the one real replies take), names the backend as its frontend.
    let reply = established(backend, 8080, CLIENT, 40000);
    let written = ct_map(&mut dp)
        .get(&ct_key(backend, 8080, CLIENT, 40000), 0)
        .context("the connection's reply entry")?;
    anyhow::ensure!(
        written.flags & ct_flags::FRONTEND != 0,
        "the reply entry does not hold its frontend: {written:?}"
    );
    let reply_cycle = CtEntry4 {
        rewrite_addr: Be32::from_octets(backend.octets()),
        rewrite_port: Be16::new(8080),
        ..written
    };
    ct_map(&mut dp).insert(ct_key(vip, vport, CLIENT, 40000), reply_cycle, 0)?;
    let one = test_run(&mut dp, TC_TO_POD, &reply, 1)?;
    let two = test_run(&mut dp, TC_TO_POD, &reply, 2)?;
    let seen = packet::read(&one.packet);
    anyhow::ensure!(
        one.action == TC_ACT_OK && (seen.src, seen.sport, seen.dst) == (vip, vport, CLIENT),
        "reply: one run must come from VIP:port, got {seen:?}"
    );
    ensure_valid(&one.packet, "reply")?;
    anyhow::ensure!(
        two.packet == reply && two.action == TC_ACT_OK,
        "reply: two runs must give the backend's packet back"
    );

    // Non-service packet: parse, conntrack miss, service miss, no rewrite.
    let other = established(CLIENT, 40001, ELSEWHERE, 80);
    let run = test_run(&mut dp, TC_FROM_POD, &other, 1)?;
    anyhow::ensure!(
        run.action == TC_ACT_OK && run.packet == other,
        "non-service packet must pass untouched"
    );
    // New connections: a fresh source port for every shot of every round.
    let new_flow = move |r: usize, i: usize| {
        let sport = 1024 + (r * 4099 + i) as u16 % 60000;
        let mut pk = Ipv4Packet::tcp(CLIENT, sport, vip, vport);
        pk.tcp_flags = packet::TCP_SYN;
        pk.build()
    };
    {
        let probe = new_flow(p.rounds + 1, 0);
        let run = test_run(&mut dp, TC_FROM_POD, &probe, 1)?;
        let seen = packet::read(&run.packet);
        anyhow::ensure!(
            run.action == TC_ACT_OK && backends.contains(&seen.dst),
            "new connection not translated"
        );
        ensure_valid(&run.packet, "new connection")?;
    }
    let sizes = if n == requested {
        format!("{n}")
    } else {
        format!("{n} (for {requested})")
    };
    let info = GroupInfo {
        name: format!("clusterip-{sizes}"),
        services: Some(n),
        policy_entries: None,
    };
    let shots = p.shots;
    // A node where no pod is isolated by a NetworkPolicy, as the agent writes the state map for it:
    // policy is skipped. One case measures the established flow on a node where some pod is isolated
    // (not this client): then every packet also looks its pod's endpoint up.
    let open = true;
    let cases = vec![
        repeat_case(
            "tc bare",
            BENCH_TC_BARE,
            None,
            request.clone(),
            p.repeat,
            TC_ACT_OK,
        ),
        under_policy_state(
            repeat_case(
                "tc_from_pod, not a service",
                TC_FROM_POD,
                Some(0),
                other,
                p.repeat,
                TC_ACT_OK,
            ),
            open,
        ),
        under_policy_state(
            repeat_case(
                "tc_from_pod, ClusterIP established",
                TC_FROM_POD,
                Some(0),
                request.clone(),
                p.repeat,
                TC_ACT_OK,
            ),
            open,
        ),
        under_policy_state(
            repeat_case(
                "tc_to_pod, ClusterIP reply (reverse NAT)",
                TC_TO_POD,
                Some(0),
                reply,
                p.repeat,
                TC_ACT_OK,
            ),
            open,
        ),
        single_shot_case(
            "tc bare (single-shot)",
            BENCH_TC_BARE,
            None,
            shots,
            TC_ACT_OK,
            new_flow,
        ),
        under_policy_state(
            single_shot_case(
                "tc_from_pod, ClusterIP new connection (single-shot)",
                TC_FROM_POD,
                Some(4),
                shots,
                TC_ACT_OK,
                new_flow,
            ),
            open,
        ),
        repeat_case(
            "parse + one conntrack lookup (hit), nothing else: the floor under an established flow",
            BENCH_TC_CT,
            Some(0),
            request.clone(),
            p.repeat,
            TC_ACT_OK,
        ),
        under_policy_state(
            repeat_case(
                "tc_from_pod, ClusterIP established, policy enforced on the node (this pod open)",
                TC_FROM_POD,
                Some(0),
                request,
                p.repeat,
                TC_ACT_OK,
            ),
            false,
        ),
    ];
    let out = interleave(&mut dp, &info, p.rounds, cases)?;
    Ok(out)
}

/// The policy group: ingress into an isolated pod whose endpoint has `m` allow entries, against the
/// same program into a pod without isolation (same maps, same run).
pub fn policy_group(p: &Params, m: u32, checks: &mut Vec<String>) -> anyhow::Result<Vec<Measurement>> {
    let mut dp = TestDatapath::load(&format!("bench-pol{m}"));
    load_baselines(&mut dp)?;
    dp.add_ipcache(FRIEND, 32, FRIEND_ID, 0);
    dp.add_ipcache(NODE, 32, identity::HOST, 0);
    dp.add_ipcache(POD_OPEN, 32, FRIEND_ID + 1, 0);
    dp.add_ipcache(POD_ISOLATED, 32, FRIEND_ID + 2, 0);
    dp.add_endpoint(POD_OPEN, EP_OPEN, FRIEND_ID + 1, 0);
    dp.add_endpoint(
        POD_ISOLATED,
        EP_ISOLATED,
        FRIEND_ID + 2,
        endpoint_flags::INGRESS_ISOLATED,
    );
    // m entries on the isolated endpoint: the one that allows FRIEND to TCP/80, and m-1 others
    // (other peers, other ports), so the trie has the size and shape of a busy endpoint.
    let allow = PolicyKey::lookup(EP_ISOLATED, DIR_INGRESS, FRIEND_ID, PROTO_TCP, 80);
    dp.add_policy(allow, 1, 0);
    for j in 1..m {
        let peer = identity::FIRST_POD_IDENTITY + 1000 + j / 8;
        let port = 1000 + (j % 8) as u16;
        dp.add_policy(
            PolicyKey::lookup(EP_ISOLATED, DIR_INGRESS, peer, PROTO_TCP, port),
            (1 + j / 8) as u16,
            (j % 8) as u16,
        );
    }
    let open = established(FRIEND, 40000, POD_OPEN, 80);
    let isolated = established(FRIEND, 40000, POD_ISOLATED, 80);
    for (what, pk) in [("open", &open), ("isolated", &isolated)] {
        let run = test_run(&mut dp, TC_TO_POD, pk, 2)?;
        anyhow::ensure!(
            run.action == TC_ACT_OK && &run.packet == pk,
            "{what}: allowed flow must pass untouched"
        );
    }
    // Default mode (revoke): an established flow is judged again on every packet, so every
    // repetition does the full policy lookup. Proven by revoking the rule: the next packet drops.
    dp.remove_policy(allow);
    let drops = dp.drops(DropReason::PolicyIngress);
    let run = test_run(&mut dp, TC_TO_POD, &isolated, 1)?;
    anyhow::ensure!(
        run.action != TC_ACT_OK && dp.drops(DropReason::PolicyIngress) == drops + 1,
        "revoke mode: an established flow without its rule must drop"
    );
    dp.add_policy(allow, 1, 0);
    if checks.iter().all(|c| !c.starts_with("tc_to_pod policy")) {
        checks.push(
            "tc_to_pod policy: an allowed flow into the isolated pod passes unchanged (2 runs); the \
             packet is not rewritten so repetitions all take the same path; in the default revoke mode \
             each packet of an established flow is judged again (removing the rule drops the next \
             packet), so repeat measures the full ipcache + policy lookup per packet; new connections \
             (conntrack insert + flow event) are measured single-shot with fresh source ports"
                .into(),
        );
    }
    let info = GroupInfo {
        name: format!("policy-{m}"),
        services: None,
        policy_entries: Some(m),
    };
    let new_to = |dst: Ipv4Addr| {
        move |r: usize, i: usize| {
            let sport = 1024 + (r * 4099 + i) as u16 % 60000;
            let mut pk = Ipv4Packet::tcp(FRIEND, sport, dst, 80);
            pk.tcp_flags = packet::TCP_SYN;
            pk.build()
        }
    };
    let shots = p.shots;
    let cases = vec![
        repeat_case("tc bare", BENCH_TC_BARE, None, open.clone(), p.repeat, TC_ACT_OK),
        repeat_case(
            "tc_to_pod, pod not isolated",
            TC_TO_POD,
            Some(0),
            open,
            p.repeat,
            TC_ACT_OK,
        ),
        repeat_case(
            "tc_to_pod, isolated, allowed flow",
            TC_TO_POD,
            Some(1),
            isolated,
            p.repeat,
            TC_ACT_OK,
        ),
        single_shot_case(
            "tc bare (single-shot)",
            BENCH_TC_BARE,
            None,
            shots,
            TC_ACT_OK,
            new_to(POD_OPEN),
        ),
        single_shot_case(
            "tc_to_pod, not isolated, new connection (single-shot)",
            TC_TO_POD,
            Some(3),
            shots,
            TC_ACT_OK,
            new_to(POD_OPEN),
        ),
        single_shot_case(
            "tc_to_pod, isolated, allowed new connection (single-shot)",
            TC_TO_POD,
            Some(4),
            shots,
            TC_ACT_OK,
            new_to(POD_ISOLATED),
        ),
    ];
    interleave(&mut dp, &info, p.rounds, cases)
}

/// The NodePort path at XDP, in a node-shaped network namespace of its own (so the forwarding lookup
/// has a device, routes and neighbours): an external client's established flow to a backend on another
/// node (SNAT + DNAT + checksums + MACs, XDP_TX), the backend's reply (XDP_TX), new connections, and a
/// packet for the node itself. Single-shot throughout: XDP_TX rewrites the buffer, and a cycle through
/// conntrack cannot close at XDP (one of its two states would be addressed to the node itself, which
/// XDP leaves to the stack).
pub fn xdp_group(p: &Params, checks: &mut Vec<String>) -> anyhow::Result<Vec<Measurement>> {
    let p = p.clone();
    let (out, check) = std::thread::spawn(move || -> anyhow::Result<(Vec<Measurement>, String)> {
        set_xdp_ingress(crate::netns::enter_node_netns());
        nodeport_cases(&p)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the NodePort benchmark thread panicked"))??;
    checks.push(check);
    Ok(out)
}

/// Makes `dp` the node at NODE (its address for SNAT) with one NodePort Service on `node_port`
/// whose only backend is `backend`, as the XDP benchmarks measure it.
pub fn seed_nodeport(dp: &mut TestDatapath, node_port: u16, proto: u8, backend: (Ipv4Addr, u16)) {
    dp.set_datapath_config(common::config::DatapathConfig {
        flags: 0,
        maglev_size: 0,
        node_addr: u32::from_ne_bytes(NODE.octets()),
        local_port_min: 0,
        local_port_max: 0,
    });
    let mut svc = TestService::new(NODE, node_port, proto, 1);
    svc.flags = common::lb::svc_flags::NODEPORT;
    svc.backends.push(backend);
    dp.add_service(&svc);
}

fn nodeport_cases(p: &Params) -> anyhow::Result<(Vec<Measurement>, String)> {
    use crate::netns::{CLIENT, REMOTE_BACKEND};
    let mut dp = TestDatapath::load("bench-xdp");
    load_baselines(&mut dp)?;
    seed_nodeport(&mut dp, 30080, packet::PROTO_TCP, (REMOTE_BACKEND, 8080));
    let request = established(CLIENT, 40000, NODE, 30080);
    let first = test_run(&mut dp, XDP_NODE, &request, 1)?;
    let seen = packet::read(&first.packet);
    anyhow::ensure!(
        first.action == XDP_TX && (seen.src, seen.dst, seen.dport) == (NODE, REMOTE_BACKEND, 8080),
        "NodePort request: action {} and {seen:?} instead of XDP_TX to {REMOTE_BACKEND}:8080 from {NODE}",
        first.action
    );
    ensure_valid(&first.packet, "NodePort request")?;
    let reply = established(REMOTE_BACKEND, 8080, NODE, 40000);
    let back = test_run(&mut dp, XDP_NODE, &reply, 1)?;
    let seen_back = packet::read(&back.packet);
    anyhow::ensure!(
        back.action == XDP_TX && (seen_back.src, seen_back.sport, seen_back.dst) == (NODE, 30080, CLIENT),
        "NodePort reply: action {} and {seen_back:?}",
        back.action
    );
    ensure_valid(&back.packet, "NodePort reply")?;
    let other = established(CLIENT, 40001, NODE, 22);
    let run = test_run(&mut dp, XDP_NODE, &other, 1)?;
    anyhow::ensure!(
        run.action == XDP_PASS && run.packet == other,
        "a packet for the node itself must pass untouched"
    );
    let check = format!(
        "xdp_node NodePort (netns with a device, routes, neighbours): {CLIENT}:40000->{NODE}:30080 leaves \
         with XDP_TX as {NODE}:40000->{REMOTE_BACKEND}:8080, the reply {REMOTE_BACKEND}:8080->{NODE}:40000 \
         as {NODE}:30080->{CLIENT}:40000, checksums valid; a packet to {NODE}:22 passes untouched"
    );
    let info = GroupInfo {
        name: "xdp".into(),
        ..Default::default()
    };
    let same = |pk: Vec<u8>| move |_: usize, _: usize| pk.clone();
    let new_flow = move |r: usize, i: usize| {
        let sport = 1024 + (r * 4099 + i) as u16 % 60000;
        let mut pk = Ipv4Packet::tcp(CLIENT, sport, NODE, 30080);
        pk.tcp_flags = packet::TCP_SYN;
        pk.build()
    };
    let shots = p.shots;
    let cases = vec![
        single_shot_case(
            "xdp bare (single-shot)",
            BENCH_XDP_BARE,
            None,
            shots,
            XDP_PASS,
            same(other.clone()),
        ),
        single_shot_case(
            "xdp_node, packet for the node (single-shot)",
            XDP_NODE,
            Some(0),
            shots,
            XDP_PASS,
            same(other),
        ),
        single_shot_case(
            "xdp_node, NodePort established, SNAT to a remote backend, XDP_TX (single-shot)",
            XDP_NODE,
            Some(0),
            shots,
            XDP_TX,
            same(request),
        ),
        single_shot_case(
            "xdp_node, NodePort reply to the client, XDP_TX (single-shot)",
            XDP_NODE,
            Some(0),
            shots,
            XDP_TX,
            same(reply),
        ),
        single_shot_case(
            "xdp_node, NodePort new connection (single-shot)",
            XDP_NODE,
            Some(0),
            shots,
            XDP_TX,
            new_flow,
        ),
    ];
    Ok((interleave(&mut dp, &info, p.rounds, cases)?, check))
}

/// Makes this thread's XDP test runs claim to arrive on `ifindex` (in the namespace the thread is in).
pub fn set_xdp_ingress(ifindex: u32) {
    XDP_INGRESS.with(|c| c.set(ifindex));
}

thread_local! {
    /// The ingress interface XDP test runs claim to arrive on (0: none). Set by the NodePort group in the
    /// network namespace it made, where the forwarding lookup finds that interface.
    static XDP_INGRESS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Every group, in order, with progress on stderr.
pub fn run_all(p: &Params) -> anyhow::Result<Report> {
    let start = Instant::now();
    let machine = Machine::describe();
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    let mut measurements = Vec::new();
    let capacity = service_capacity();
    let total = p.service_counts.len() + p.policy_counts.len() + 1;
    let mut step = 0;
    for &requested in &p.service_counts {
        step += 1;
        let n = if requested > capacity {
            let n = capacity / 1000 * 1000;
            notes.push(format!(
                "{requested} services do not fit the datapath maps: with {BACKENDS_PER_SERVICE} backends \
                 each, at most {capacity} (rev-NAT map {MAX_REVNAT}; service map \
                 {MAX_SERVICE_ENTRIES} entries = 1 frontend + 1 slot per backend; backend map \
                 {MAX_BACKENDS}). Measured at {n} services instead."
            ));
            n
        } else {
            requested
        };
        progress(&format!("[{step}/{total}] ClusterIP with {n} services"));
        measurements.extend(clusterip_group(p, n, requested, &mut checks)?);
    }
    for &m in &p.policy_counts {
        step += 1;
        progress(&format!("[{step}/{total}] policy with {m} entries"));
        measurements.extend(policy_group(p, m, &mut checks)?);
    }
    step += 1;
    progress(&format!("[{step}/{total}] XDP"));
    measurements.extend(xdp_group(p, &mut checks)?);
    progress("NodePort forwarding against kube-proxy's rules (frames through a netns)");
    measurements.extend(crate::forwarding::forwarding_group(p, &mut checks)?);
    progress("policy compile (control plane)");
    measurements.extend(compile_group(p)?);
    progress("conntrack sweep (control plane)");
    measurements.extend(conntrack_sweep_group(p)?);
    progress(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(Report {
        schema: 1,
        params: p.clone(),
        machine,
        checks,
        notes,
        measurements,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Synthetic cluster for the policy compiler: `pods` pods over 10 namespaces and 100 label sets, one
/// in twenty on the node compiled for, and `policies` policies mixing pod selectors, namespace
/// selectors, ipBlocks, ports and endPort ranges.
pub fn synthetic_policy_input(pods: u32, policies: u32) -> policy::PolicyInput {
    let mut yaml = String::new();
    yaml.push_str("kind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n");
    for ns in 0..10 {
        yaml.push_str(&format!(
            "---\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{}}}}}\n",
            ns % 3
        ));
    }
    for i in 0..pods {
        let node = if i % 20 == 0 { "node-1" } else { "node-2" };
        yaml.push_str(&format!(
            "---\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: app{}, tier: t{}}}}}\n\
spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
status: {{podIP: 10.{}.{}.{}}}\n",
            i % 10,
            i % 100,
            i % 4,
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    for j in 0..policies {
        yaml.push_str(&format!(
            "---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: pol{j}, namespace: ns{}}}\n\
spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  \
- from:\n    - podSelector: {{matchLabels: {{app: app{}}}}}\n    - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n      \
podSelector: {{matchLabels: {{tier: t{}}}}}\n    ports: [{{port: http}}, {{port: 9000, endPort: 9100, protocol: UDP}}]\n  \
egress:\n  - to:\n    - ipBlock: {{cidr: 192.168.{}.0/24, except: [192.168.{}.128/25]}}\n    ports: [{{port: 443}}]\n",
            j % 10,
            j % 100,
            (j + 1) % 100,
            j % 3,
            j % 4,
            j % 256,
            j % 256
        ));
    }
    policy::PolicyInput::from_yaml(&yaml).expect("synthetic policy input")
}

/// A wall-clock measurement (`rounds`: ns per run) and its ratio to `baseline`, a smaller size of the
/// same group measured in the same run (none for the baseline itself).
fn wall_clock(
    group: &str,
    case: String,
    program: &str,
    policy_entries: Option<u32>,
    rounds: Vec<f64>,
    baseline: Option<&Measurement>,
) -> Measurement {
    let median_ns = median(&rounds);
    let ratio = baseline.map(|b| median_ns / b.median_ns);
    Measurement {
        group: group.into(),
        case,
        program: program.into(),
        method: "wall-clock".into(),
        services: None,
        policy_entries,
        baseline: baseline.map(|b| b.case.clone()),
        min_ns: rounds.iter().copied().fold(f64::INFINITY, f64::min),
        max_ns: rounds.iter().copied().fold(0.0, f64::max),
        rounds_ns: rounds,
        median_ns,
        ratio,
        ratio_min: ratio,
        ratio_max: ratio,
    }
}

/// Control-plane cost of NetworkPolicy: wall-clock time of `policy::compile` for one node, as the
/// median of `rounds` runs; the small input (10× fewer pods and policies) is the same-run baseline, so
/// the ratio shows how compile time scales.
pub fn compile_group(p: &Params) -> anyhow::Result<Vec<Measurement>> {
    let sizes = [(1_000u32, 100u32), (10_000, 1_000)];
    let mut out: Vec<Measurement> = Vec::new();
    for (pods, policies) in sizes {
        let input = synthetic_policy_input(pods, policies);
        let mut rounds = Vec::new();
        for _ in 0..p.rounds.min(5) {
            let start = Instant::now();
            let desired = policy::compile(&input, "node-1", &policy::Allocations::default())
                .map_err(|e| anyhow::anyhow!("compile: {e}"))?;
            rounds.push(start.elapsed().as_nanos() as f64);
            anyhow::ensure!(
                !desired.policy.is_empty(),
                "the synthetic policies compiled to nothing"
            );
        }
        out.push(wall_clock(
            "policy-compile",
            format!("compile {policies} policies over {pods} pods"),
            "policy::compile",
            Some(policies),
            rounds,
            out.first(),
        ));
    }
    Ok(out)
}

/// The agent's conntrack sweeper (`proxy_agent::datapath::conntrack::sweep`): wall-clock time of one
/// pass over the pinned table holding `n` established entries (none expires, so every pass reads the
/// same table), as the median of the rounds; 10k entries is the same-run baseline, so the ratio shows
/// how a pass scales towards the table's limit. The sweeper runs every 5 s on a lowered-priority
/// thread; this is its CPU cost per pass.
pub fn conntrack_sweep_group(p: &Params) -> anyhow::Result<Vec<Measurement>> {
    let sizes = [10_000u32, common::ct::MAX_CT_ENTRIES];
    let mut out: Vec<Measurement> = Vec::new();
    for n in sizes {
        let mut dp = TestDatapath::load(&format!("bench-ct-{n}"));
        let now = proxy_agent::datapath::conntrack::monotonic_ns();
        {
            let mut ct = dp.hash_map::<CtKey4, CtEntry4>(map_names::CT4);
            for i in 0..n {
                let key = CtKey4 {
                    saddr: Be32::from_octets([10, 1, (i >> 16) as u8, (i >> 8) as u8]),
                    daddr: Be32::from_octets([10, 96, 0, i as u8]),
                    sport: Be16::new(1024 + (i % 60_000) as u16),
                    dport: Be16::new(80),
                    proto: PROTO_TCP,
                    _pad: 0,
                    _pad2: 0,
                };
                let entry = CtEntry4 {
                    last_seen_ns: now,
                    flags: ct_flags::FORWARD | ct_flags::SEEN_REPLY,
                    ..Default::default()
                };
                ct.insert(key, entry, 0)?;
            }
        }
        let timeouts = proxy_agent::datapath::conntrack::Timeouts::default();
        let mut rounds = Vec::new();
        for _ in 0..p.rounds.min(5) {
            let mut stats = proxy_agent::datapath::conntrack::CtStats::default();
            let start = Instant::now();
            proxy_agent::datapath::conntrack::sweep(dp.pin_dir(), &timeouts, &mut stats)?;
            rounds.push(start.elapsed().as_nanos() as f64);
            anyhow::ensure!(
                stats.entries == u64::from(n) && stats.expired_idle == 0,
                "a sweep of {n} live entries counted {} and expired {}",
                stats.entries,
                stats.expired_idle
            );
        }
        out.push(wall_clock(
            "conntrack-sweep",
            format!("sweep {n} entries"),
            "proxy_agent::datapath::conntrack::sweep",
            None,
            rounds,
            out.first(),
        ));
    }
    Ok(out)
}
