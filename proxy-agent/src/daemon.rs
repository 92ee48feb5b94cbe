//! `proxy-agent run`: load the datapath once, then keep attachments and maps in step with the
//! snapshot. A pass runs when the source reports a change (after a short debounce that folds a burst
//! into one pass) and on a periodic tick; it redoes the work of the kinds that changed (service maps
//! for Services, EndpointSlices, Nodes and, standalone, Pods; policy maps for Pods, Namespaces, Nodes
//! and NetworkPolicies), against the state the reconcilers last wrote. Every [`RESYNC`] everything is
//! read again and diffed against a dump of the pinned maps, so a missed change or a write behind the
//! agent's back is repaired.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    datapath::{
        Datapath, DesiredAttachments,
        attach::{Device, PodInterface},
    },
    endpoints::{self, LocalEndpoint},
    flows::{FlowContext, FlowStore},
    host::{links, routes},
    lb,
    metrics::{AgentCounters, MetricsSnapshot},
    policy::{PolicyReconciler, view::PolicyState},
    reconcile::Reconciler,
    snapshot::Snapshot,
    source::{Kinds, Source},
    status::{AttachmentRow, CounterView, EndpointView, LbView, PolicyStatusView, StatusView, SyncView},
};

/// How often the agent scans interfaces and polls the source without being woken. A pod's veth
/// appears when the CNI creates it, which no object tells us about, so the interface scan is periodic;
/// the poll catches changes a source could not signal (no inotify).
const TICK: Duration = Duration::from_millis(250);
/// After the source signals a change, wait this long before the pass: the reflectors' events of one
/// API request, or the files of one `cp`, arrive within it and become one pass instead of several.
/// Short against the 5 ms change-to-map target. Slept on the thread (this loop runs its passes on
/// it anyway): tokio's timer would round it up to its 1 ms tick, and then some.
const DEBOUNCE: Duration = Duration::from_micros(300);
/// Whatever happened, re-read everything this often and diff against a dump of the pinned maps
/// (level-triggered resync, which prunes entries written behind the agent's back).
const RESYNC: Duration = Duration::from_secs(10);
/// How often a pass looks at every manifest file instead of only those inotify named (see
/// [`Source::poll`]); within the 1 s a manifest edit has to reach the maps.
const SCAN_ALL: Duration = Duration::from_millis(900);
/// Dumps read off the loop that may be spoiled by writes before the resync reads the maps on it.
const RESYNC_MISSES: u32 = 3;

pub struct Shared {
    inner: Mutex<Inner>,
    /// Flow records, filled by the events reader (its own lock: reading events never waits for a
    /// reconcile pass).
    flows: Mutex<FlowStore>,
    /// What names flow records; replaced after every policy reconcile.
    flow_context: Mutex<Arc<FlowContext>>,
}

struct Inner {
    datapath: Datapath,
    reconciler: Reconciler,
    node: String,
    sync: SyncView,
    lb: LbView,
    endpoints: Vec<LocalEndpoint>,
    errors: Vec<String>,
    policy: PolicyReconciler,
    /// The objects the last policy compile read (`policy explain` against the running agent).
    policy_input: policy::PolicyInput,
    policy_state: Arc<PolicyState>,
    policy_status: PolicyStatusView,
    counters: AgentCounters,
    /// The last plan's frontends (shared with the plan: naming them for `service list` is left to
    /// the command, so that a pass does not rebuild 10k names nobody asked for).
    frontends: lb::Frontends,
    /// The health checks of the last plan, and their listeners (synced at the end of every pass).
    health_checks: Vec<lb::HealthCheck>,
    /// What the last service plan rejected, reported in `status` with the source's rejections.
    plan_rejected: Vec<String>,
    /// What the last interface scan could not attach (kept between scans).
    attach_errors: Vec<String>,
    /// Kinds whose changes are not yet in the maps (a pass failed): the next pass redoes their work.
    pending: Kinds,
    service_health: crate::healthcheck::ServiceHealth,
    /// Maglev tables and source ranges of external frontends.
    external: crate::reconcile::external::ExternalReconciler,
    /// The datapath settings as last written.
    config: common::config::DatapathConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug elsewhere; the state itself stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn view(&self) -> StatusView {
        let inner = self.lock();
        let mut errors = inner.errors.clone();
        let counters = match inner.datapath.counters() {
            Ok(c) => c
                .into_iter()
                .map(|(name, c)| {
                    (
                        name.to_string(),
                        CounterView {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect(),
            Err(e) => {
                errors.push(format!("reading counters: {e:#}"));
                Default::default()
            }
        };
        StatusView {
            node: inner.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pin_dir: inner.datapath.pin_dir.display().to_string(),
            object_bytes: Datapath::object_size(),
            sync: inner.sync.clone(),
            lb: LbView {
                nodeport_mode: crate::cli::NodePortMode::of_flags(inner.config.flags)
                    .name()
                    .to_string(),
                ..inner.lb.clone()
            },
            conntrack: crate::datapath::conntrack::stats(),
            endpoints: inner
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    pod: e.pod.clone(),
                    ip: e.ip.to_string(),
                    interface: e.interface.clone(),
                })
                .collect(),
            attachments: inner
                .datapath
                .attachment_views()
                .into_iter()
                .map(|a| AttachmentRow {
                    program: a.program.to_string(),
                    hook: a.hook.to_string(),
                    interface: a.interface,
                    ifindex: a.ifindex,
                    mode: a.mode.to_string(),
                    pod: a.pod,
                })
                .collect(),
            counters,
            errors,
            policy: inner.policy_status.clone(),
        }
    }

    /// The compiled policy state (`policy list`, `identity list`).
    pub fn policy_state(&self) -> Arc<PolicyState> {
        self.lock().policy_state.clone()
    }

    /// `policy explain` on the agent's objects.
    pub fn explain(&self, from: &str, to: &str) -> Result<crate::policy::view::ExplainView, String> {
        let flow = crate::policy::view::parse_flow(from, to)?;
        let input = self.lock().policy_input.clone();
        policy::explain(&input, &flow)
            .map(|e| crate::policy::view::ExplainView::from(&e))
            .map_err(|e| e.to_string())
    }

    pub fn flows_since(&self, since: u64) -> crate::flows::FlowsPage {
        self.flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .since(since)
    }

    /// Names and stores records read from the events ring buffer.
    pub fn add_flow_events(&self, records: &[&[u8]]) {
        let cx = self
            .flow_context
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (mono, real) = crate::flows::clocks_now();
        let mut store = self
            .flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for bytes in records {
            match crate::flows::decode(bytes) {
                Some(e) => {
                    let wall = crate::flows::wall_clock_ns(e.ts_ns, mono, real);
                    store.push(crate::flows::resolve(&e, wall, &cx));
                }
                None => store.undecodable += 1,
            }
        }
    }

    /// Frontends as programmed (dump of the service maps), with the Service each belongs to.
    pub fn services(&self) -> Result<crate::status::ServicesView, String> {
        let mut inner = self.lock();
        let dump = crate::reconcile::LbMaps::dump(&inner.datapath.lb_maps()).map_err(|e| format!("{e:#}"))?;
        let names = inner
            .frontends
            .iter()
            .map(|f| ((f.addr, f.port, f.proto.number(), f.scope), f.service.to_string()))
            .collect();
        Ok(crate::status::ServicesView::from_dump(&dump, &names))
    }

    /// Everything `/metrics` shows.
    pub fn metrics(&self) -> String {
        let inner = self.lock();
        let mut m = MetricsSnapshot {
            counters: inner.counters.clone(),
            frontends: inner.lb.frontends as u64,
            policy_endpoints: inner.policy_state.endpoints.len() as u64,
            identities: inner.policy_state.identities.len() as u64,
            heap: crate::memory::heap_stats(),
            ..Default::default()
        };
        for (name, ops) in inner.policy.ops_by_map() {
            *m.counters.reconcile_ops.entry(name).or_default() += ops;
        }
        match inner.datapath.drop_counters() {
            Ok(d) => m.drops = d.into_iter().map(|(r, v)| (r.label().to_owned(), v)).collect(),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading drop counters"),
        }
        let refs = inner.policy_state.policies.keys().copied();
        match inner.datapath.policy_counters(refs) {
            Ok(v) => {
                m.verdicts = v
                    .into_iter()
                    .filter_map(|(r, n)| Some((inner.policy_state.policies.get(&r)?.clone(), n)))
                    .collect();
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading policy counters"),
        }
        if let Ok(c) = inner.datapath.counters() {
            m.packets = c.into_iter().map(|(n, c)| (n.to_owned(), c.packets)).collect();
        }
        match inner.datapath.flow_records_lost() {
            Ok(n) => m.flow_records_lost = n,
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading lost flow records"),
        }
        crate::metrics::render(&m)
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let bpffs = Path::new(crate::datapath::bpffs::BPFFS_MOUNT);
    if args.require_host_bpffs && !crate::datapath::bpffs::is_bpffs(bpffs) {
        anyhow::bail!(
            "--require-host-bpffs: {} is not a BPF filesystem; mount one on the host (`mount -t bpf bpf {}`; systemd does it at boot) so pins outlive the agent's container",
            bpffs.display(),
            bpffs.display()
        );
    }
    // The programs are verified (most of a cold start: ~1.5 s of CPU for the tc programs) while the
    // source is started and read: nothing is written to the datapath until both are done.
    let loading = {
        let args = args.clone();
        std::thread::Builder::new()
            .name("datapath-load".into())
            .spawn(move || load_datapath(&args))
            .context("starting the datapath loader thread")?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let source = Source::start(args.manifests.as_deref(), args.kubeconfig.as_deref()).await?;
        let mut watch = SourceWatch::new(source, &args.bpffs_root);
        let mut sync = SyncView::default();
        let mut counters = AgentCounters::default();
        watch.read_ahead(&mut sync, &mut counters);
        let (datapath, reconciler, config) = tokio::task::spawn_blocking(move || loading.join())
            .await
            .context("waiting for the datapath loader")?
            .map_err(|_| anyhow::anyhow!("the datapath loader thread panicked"))??;
        tracing::info!(node = %args.node, pin_dir = %args.bpffs_root.display(), "datapath loaded");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                datapath,
                reconciler,
                lb: LbView::default(),
                node: args.node.clone(),
                sync,
                endpoints: Vec::new(),
                errors: Vec::new(),
                policy: PolicyReconciler::new(),
                policy_input: policy::PolicyInput::default(),
                policy_state: Arc::default(),
                policy_status: PolicyStatusView::default(),
                counters,
                frontends: Arc::default(),
                external: Default::default(),
                config,
                health_checks: Vec::new(),
                plan_rejected: Vec::new(),
                pending: Kinds::NONE,
                attach_errors: Vec::new(),
                service_health: Default::default(),
            }),
            flows: Mutex::new(FlowStore::default()),
            flow_context: Mutex::new(Arc::default()),
        });
        serve(args, shared, watch).await
    })
}

/// Loads (or finds pinned) the datapath, restores the reconciler's ids from its maps and writes the
/// datapath's configuration.
fn load_datapath(args: &RunArgs) -> Result<(Datapath, Reconciler, common::config::DatapathConfig)> {
    let mut datapath = Datapath::load(&args.bpffs_root)?;
    datapath.attachments.xdp_mode = args.xdp_mode;
    // Ids come back from the pinned maps, so a restarted agent rewrites nothing that is still right.
    let reconciler = Reconciler::restore(&datapath.lb_maps())?;
    let mut flags = 0;
    if args.policy_established == crate::cli::PolicyEstablished::Keep {
        flags |= common::config::config_flags::KEEP_ESTABLISHED;
    }
    if args.nodeport_mode == crate::cli::NodePortMode::Dsr {
        flags |= common::config::config_flags::NODEPORT_DSR;
    }
    // The node address for SNAT is filled in once the Node is known (see `reconcile_services`).
    let (local_port_min, local_port_max) = local_ports((0, 0), &mut BTreeSet::new());
    let config = common::config::DatapathConfig {
        flags,
        maglev_size: args.maglev_table_size.get(),
        node_addr: 0,
        local_port_min,
        local_port_max,
    };
    datapath.set_config(config)?;
    Ok((datapath, reconciler, config))
}

async fn serve(args: RunArgs, shared: Arc<Shared>, mut watch: SourceWatch) -> Result<()> {
    shared.lock().sync.source = watch.source.describe();
    let admin = tokio::spawn(crate::admin::serve(args.admin_addr, shared.clone()));
    let health = tokio::spawn(crate::healthz::serve(args.healthz_addr, shared.clone()));
    crate::datapath::conntrack::spawn_sweeper(args.bpffs_root.clone());
    let events = shared.lock().datapath.take_events();
    match events {
        Some(Ok(reader)) => {
            let sink = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = reader.run(move |batch| sink.add_flow_events(batch)).await {
                    tracing::error!(error = %format!("{e:#}"), "flow events reader stopped");
                }
            });
        }
        Some(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "no flow records"),
        None => tracing::warn!("the datapath object has no events ring buffer; no flow records"),
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            wake = wait_for_work(&mut ticker, &mut watch.source) => wake,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        if admin.is_finished() {
            return admin
                .await
                .context("admin endpoint task")?
                .context("admin endpoint stopped");
        }
        if health.is_finished() {
            return health
                .await
                .context("health endpoint task")?
                .context("health endpoint stopped");
        }
        if let Err(e) = reconcile_pass(&args, &mut watch, &shared, wake) {
            tracing::warn!(error = %format!("{e:#}"), "reconcile pass failed; retrying next tick");
            shared.lock().errors = vec![format!("{e:#}")];
        }
    }
    // The programs stay attached and may next be driven by an older agent, which knows nothing of the
    // policy state map and would isolate pods without clearing it: leave it enforcing.
    let stop_skipping = crate::policy::PolicyOp::SetState { none_isolated: false };
    if let Err(e) =
        crate::policy::PolicyMaps::apply(&mut shared.lock().datapath.policy_maps(), &stop_skipping)
    {
        tracing::warn!(error = %format!("{e:#}"), "could not clear the policy state map at shutdown");
    }
    tracing::info!("shutting down; pinned maps stay for the next start");
    Ok(())
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The periodic tick: interfaces are scanned, the source polled.
    Tick,
    /// The source signalled a change (and the debounce passed).
    Changed,
}

/// Waits for the tick or a change of the source, whichever comes first; a change is followed by the
/// [`DEBOUNCE`] so that the rest of its burst lands in the same pass.
async fn wait_for_work(ticker: &mut tokio::time::Interval, source: &mut Source) -> Wake {
    tokio::select! {
        _ = ticker.tick() => Wake::Tick,
        () = source.changed() => {
            std::thread::sleep(DEBOUNCE);
            Wake::Changed
        }
    }
}

/// The port range SNAT keeps out of: the node's ephemeral range; `current` if it cannot be read (it is
/// read again at every resync); (0, 0), which keeps no port out, for a range that would leave SNAT too
/// few ports. Each problem is reported once (`reported`).
fn local_ports(current: (u16, u16), reported: &mut BTreeSet<String>) -> (u16, u16) {
    use crate::host::ports;
    let range = match ports::ephemeral_range() {
        Ok(range) => range,
        Err(e) => {
            let e = format!("{e:#}");
            if reported.insert(e.clone()) {
                tracing::warn!(error = %e, "node's ephemeral port range unknown; SNAT keeps the range it had");
            }
            return current;
        }
    };
    match ports::avoidable(range) {
        Ok(range) => range,
        Err(left) => {
            if reported.insert(format!("ephemeral range {range:?}")) {
                tracing::warn!(
                    min = range.0,
                    max = range.1,
                    left,
                    least = ports::MIN_SNAT_PORTS,
                    "node's ephemeral port range leaves SNAT too few ports; SNATed connections may take ports of the node's own sockets"
                );
            }
            (0, 0)
        }
    }
}

/// Applies `change` to the datapath config (`current`, as last written) and writes it if that changed
/// anything; true if written.
fn update_config(
    current: &mut common::config::DatapathConfig,
    datapath: &mut Datapath,
    change: impl FnOnce(&mut common::config::DatapathConfig),
) -> Result<bool> {
    let mut config = *current;
    change(&mut config);
    if config == *current {
        return Ok(false);
    }
    datapath.set_config(config)?;
    *current = config;
    Ok(true)
}

/// Service maps follow the snapshot: plan (pure) → reconcile (diff against the state last written,
/// ordered writes).
fn reconcile_services(args: &RunArgs, watch: &mut SourceWatch, inner: &mut Inner) -> Result<()> {
    let plan = watch.planner.plan(&watch.snapshot, &watch.derived, &args.node);
    for r in &plan.rejected {
        if watch.reported.insert(r.to_string()) {
            tracing::warn!(object = %r, "object skipped by the service planner");
            *inner.counters.rejected.entry(r.kind.to_owned()).or_default() += 1;
        }
    }
    inner.frontends = plan.frontends.clone();
    inner.plan_rejected = plan.rejected.iter().map(ToString::to_string).collect();
    inner.health_checks.clone_from(&plan.health_checks);
    for w in lb::maglev::warnings(&plan, args.maglev_table_size) {
        if watch.reported.insert(w.clone()) {
            tracing::warn!(problem = %w, "Maglev table too small");
        }
    }
    let Inner {
        datapath,
        reconciler,
        lb,
        ..
    } = inner;
    let outcome = reconciler.reconcile(&plan, &mut datapath.lb_maps())?;
    if !outcome.ops.is_empty() {
        lb.last_write_unix_us = crate::status::unix_us_now();
    }
    let node_addr = plan.snat_addr.map_or(0, |a| u32::from_ne_bytes(a.octets()));
    if update_config(&mut inner.config, &mut inner.datapath, |c| {
        c.node_addr = node_addr
    })? {
        tracing::info!(snat_addr = ?plan.snat_addr, "node address for SNAT of external traffic set");
    }
    let external_ops = inner.external.reconcile(
        &plan,
        inner.reconciler.ids(),
        args.maglev_table_size,
        &mut inner.datapath.external_maps(),
    )?;
    if external_ops > 0 {
        tracing::info!(ops = external_ops, "Maglev and source-range maps updated");
    }
    for op in &outcome.ops {
        *inner.counters.reconcile_ops.entry(lb_map_name(op)).or_default() += 1;
    }
    for u in &outcome.unfit {
        tracing::error!(service = %u.service, frontend = %u.frontend, reason = %u.reason, "frontend does not fit");
    }
    if !outcome.ops.is_empty() {
        tracing::info!(
            ops = outcome.ops.len(),
            frontends = plan.frontends.len(),
            "service maps updated"
        );
    }
    lb.frontends = plan.frontends.len();
    lb.last_ops = outcome.ops.len();
    lb.total_ops += outcome.ops.len() as u64;
    lb.unfit = outcome
        .unfit
        .iter()
        .map(|u| format!("{} {}: {}", u.service, u.frontend, u.reason))
        .collect();
    Ok(())
}

fn lb_map_name(op: &crate::reconcile::MapOp) -> &'static str {
    use crate::reconcile::MapOp;
    use common::map_names as m;
    match op {
        MapOp::UpsertBackend { .. } | MapOp::DeleteBackend { .. } => m::LB4_BACKENDS,
        MapOp::UpsertService { .. } | MapOp::DeleteService { .. } => m::LB4_SERVICES,
        MapOp::UpsertRevNat { .. } | MapOp::DeleteRevNat { .. } => m::LB4_REVNAT,
    }
}

/// Policy maps follow the snapshot: compile for this node (pure) → reconcile (dump, diff, ordered
/// writes); then the tables that name numbers (policy list, flow records) are refreshed.
fn reconcile_policy(args: &RunArgs, watch: &SourceWatch, shared: &Shared, inner: &mut Inner) -> Result<()> {
    let input = crate::policy::input_from_snapshot(&watch.snapshot);
    let Inner { datapath, policy, .. } = inner;
    let result = policy.reconcile(&input, &args.node, &mut datapath.policy_maps());
    // A resync over the same objects reuses the last compile: the tables built from it still hold.
    let recompiled = result.as_ref().map_or(true, |o| o.compiled);
    if let Some(desired) = inner.policy.take_last().filter(|_| recompiled) {
        let pods_by_ip = crate::policy::view::PodsByIp::new(&input.pods);
        let state = Arc::new(PolicyState::build(&desired, &input, &pods_by_ip));
        drop(desired);
        *shared
            .flow_context
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(FlowContext {
            pods_by_ip,
            policy: state.clone(),
        });
        inner.policy_status.endpoints = state.endpoints.len();
        inner.policy_status.identities = state.identities.len();
        inner.policy_status.policies = state.policies.len();
        inner.policy_status.entries = state.policy_entries;
        inner.policy_status.errors.clone_from(&state.errors);
        inner.policy_state = state;
    }
    inner.policy_input = input;
    let outcome = result?;
    for e in &outcome.new_errors {
        tracing::warn!(policy = %e.policy, field = %e.field, reason = %e.message, "NetworkPolicy skipped");
        *inner
            .counters
            .rejected
            .entry("NetworkPolicy".to_owned())
            .or_default() += 1;
    }
    for u in &outcome.unfit {
        tracing::error!(problem = %u, "policy state does not fit");
    }
    if !outcome.ops.is_empty() {
        tracing::info!(ops = outcome.ops.len(), "policy maps updated");
    }
    inner.policy_status.last_ops = outcome.ops.len();
    inner.policy_status.total_ops += outcome.ops.len() as u64;
    inner.policy_status.unfit = outcome.unfit;
    Ok(())
}

/// Keeps the snapshot up to date from the source (on change, or a full read on the resync period)
/// and remembers what was reported.
struct SourceWatch {
    source: Source,
    /// The last full read; `None` until the source gave its first snapshot.
    last_resync: Option<Instant>,
    /// The last poll that looked at every manifest file.
    last_scan: Option<Instant>,
    snapshot: Snapshot,
    /// Standalone mode plays the EndpointSlice controller for selector Services that come without
    /// slices; kept apart from the snapshot so that adding them copies nothing. A slice derived again
    /// unchanged keeps its allocation, so the planner sees its Service unchanged.
    derived: Vec<Arc<crate::slim::EndpointSlice>>,
    /// Whether any Service of the snapshot has a selector (kept as Services change).
    selector_services: bool,
    /// Plans only the Services whose objects changed since the last pass.
    planner: lb::PlanCache,
    /// Reads the resync's dumps off this loop.
    dumper: crate::resync_dumper::ResyncDumper,
    /// Dumps in a row that a pass's writes made unusable.
    resync_misses: u32,
    /// The source's rejected objects of the last update.
    rejected: Vec<String>,
    /// This node's pods (`endpoints::local_pods`), kept as the pods change.
    local_pods: Vec<LocalEndpoint>,
    reported: BTreeSet<String>,
    /// What the read ahead of the first pass brought (see [`Self::read_ahead`]), for that pass.
    carried: Refreshed,
}

/// What a refresh brought.
#[derive(Debug, Clone, Copy, Default)]
struct Refreshed {
    changed: Kinds,
    /// A full read: the reconcilers diff against a dump of the maps this time.
    resync: bool,
}

impl SourceWatch {
    fn new(source: Source, pin_dir: &Path) -> Self {
        Self {
            source,
            last_resync: None,
            last_scan: None,
            snapshot: Snapshot::default(),
            derived: Vec::new(),
            selector_services: false,
            planner: lb::PlanCache::default(),
            dumper: crate::resync_dumper::ResyncDumper::start(pin_dir.to_path_buf()),
            resync_misses: 0,
            rejected: Vec::new(),
            local_pods: Vec::new(),
            reported: BTreeSet::new(),
            carried: Refreshed::default(),
        }
    }

    /// Reads the source while the datapath loads, so the first pass finds the objects read (the
    /// manifests; the API-server source has nothing until its lists are in, which are under way
    /// meanwhile). The first pass takes over what this read brought: it counts as the full read (the
    /// maps are dumped) and programs every kind read. The source is not read again for it (a
    /// resync of the manifests would have every file hashed on a thread, beside the programming).
    fn read_ahead(&mut self, sync: &mut SyncView, counters: &mut AgentCounters) {
        match self.refresh(sync, counters, Wake::Tick) {
            Ok(read) => self.carried = read,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the source while the datapath loads; the first pass tries again");
            }
        }
    }

    fn loaded(&self) -> bool {
        self.last_resync.is_some()
    }

    fn refresh(
        &mut self,
        sync: &mut SyncView,
        counters: &mut AgentCounters,
        wake: Wake,
    ) -> Result<Refreshed> {
        self.source.export(counters);
        // Due resyncs wait for a tick (at most 250 ms): a pass woken by a change does only the change,
        // which would otherwise also pay for the resync's requests and share the cores with its
        // threads (the slowest change of the agent bench was the one that fell on a resync).
        let resync = match self.last_resync {
            None => true,
            Some(t) => wake == Wake::Tick && t.elapsed() >= RESYNC,
        };
        // Every file's metadata is looked at on a tick, once a second at most; passes woken by a
        // write look at the written files only.
        let scan_all = wake == Wake::Tick && self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_ALL);
        if scan_all {
            self.last_scan = Some(Instant::now());
        }
        let carried = std::mem::take(&mut self.carried);
        let Some(update) = self.source.poll(resync, &mut self.snapshot, scan_all)? else {
            return Ok(carried);
        };
        for r in &update.rejected {
            // Reported once per distinct problem, not on every resync.
            if self.reported.insert(r.to_string()) {
                tracing::warn!(object = %r.object, origin = %r.origin, reason = %r.reason, "object skipped");
                *counters.rejected.entry(r.kind().to_owned()).or_default() += 1;
            }
        }
        self.rejected = update.rejected.iter().map(ToString::to_string).collect();
        // A resync brings what the source found changed (the API-server source: the stores whose
        // watches changed them; the manifests: the files the scans found changed); the maps' side of it
        // is the dump.
        let changed = update.changed | carried.changed;
        if changed.intersects(Kinds::SERVICES) {
            self.selector_services = lb::any_selector_service(&self.snapshot);
        }
        // Without selector Services only a change of those can give derived slices: a slice change
        // then skips a walk over every Service.
        if self.source.derives_endpoint_slices()
            && changed.intersects(Kinds::SERVICE_INPUTS)
            && (self.selector_services || !self.derived.is_empty())
        {
            self.derived = lb::keep_unchanged(
                std::mem::take(&mut self.derived),
                lb::derive_endpoint_slices(&self.snapshot),
            );
        }
        sync.objects = self.snapshot.object_count();
        sync.reloads += 1;
        sync.last_sync_unix_ms = crate::status::unix_ms_now();
        if resync {
            self.last_resync = Some(Instant::now());
        }
        Ok(Refreshed {
            changed,
            resync: resync || carried.resync,
        })
    }
}

/// Asks the dumper for the resync's dumps, diffed against the states written now; false if the
/// dumper thread is gone.
fn ask_resync(watch: &mut SourceWatch, inner: &mut Inner) -> bool {
    // The request that is out stands (a new ticket would forget what was written since it).
    if watch.dumper.asked() {
        return true;
    }
    let sent = watch.dumper.request(crate::resync_dumper::Request {
        lb_writes: inner.reconciler.writes(),
        policy_writes: inner.policy.writes(),
        lb_written: inner.reconciler.resync_request(),
        policy_written: inner.policy.written(),
    });
    if !sent {
        inner.reconciler.resync_dropped();
    }
    sent
}

/// The service maps' side of a resync that came back; false if it cannot be used (ask again).
fn take_lb_resync(inner: &mut Inner, dump: crate::resync_dumper::LbDump, writes: u64) -> bool {
    match dump {
        crate::resync_dumper::LbDump::Diff(diff, ticket) => {
            match inner
                .reconciler
                .resync_with(diff, ticket, &mut inner.datapath.lb_maps())
            {
                Ok(Some(outcome)) => {
                    if !outcome.ops.is_empty() {
                        inner.lb.last_write_unix_us = crate::status::unix_us_now();
                        tracing::info!(ops = outcome.ops.len(), "resync repaired the service maps");
                    }
                    for op in &outcome.ops {
                        *inner.counters.reconcile_ops.entry(lb_map_name(op)).or_default() += 1;
                    }
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    // The reconciler forgot what it wrote: the next pass reads the maps.
                    tracing::warn!(error = %format!("{e:#}"), "applying the resync's diff to the service maps");
                    inner.pending |= Kinds::SERVICE_INPUTS;
                    true
                }
            }
        }
        crate::resync_dumper::LbDump::Full(dump) => {
            inner.pending |= Kinds::SERVICE_INPUTS;
            inner.reconciler.resync_from(dump, writes)
        }
    }
}

/// The policy maps' side of a resync that came back; false if it cannot be used (ask again).
fn take_policy_resync(inner: &mut Inner, dump: crate::resync_dumper::PolicyDump, writes: u64) -> bool {
    match dump {
        crate::resync_dumper::PolicyDump::Diff(ops) => {
            match inner
                .policy
                .resync_with(ops, writes, &mut inner.datapath.policy_maps())
            {
                Ok(Some(ops)) => {
                    if !ops.is_empty() {
                        tracing::info!(ops = ops.len(), "resync repaired the policy maps");
                    }
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "applying the resync's diff to the policy maps");
                    inner.pending |= Kinds::POLICY_INPUTS;
                    true
                }
            }
        }
        crate::resync_dumper::PolicyDump::Full(dump) => {
            inner.pending |= Kinds::POLICY_INPUTS;
            inner.policy.resync_from(dump, writes)
        }
    }
}

fn reconcile_pass(args: &RunArgs, watch: &mut SourceWatch, shared: &Shared, wake: Wake) -> Result<()> {
    let mut inner = shared.lock();
    let inner = &mut *inner;
    let t0 = Instant::now();
    let refreshed = watch.refresh(&mut inner.sync, &mut inner.counters, wake)?;
    if refreshed.changed.intersects(Kinds::PODS) {
        watch.local_pods = endpoints::local_pods(&watch.snapshot, &args.node);
    }
    if refreshed.resync {
        // The first pass reads the maps here; later resyncs have them read and diffed off this loop
        // and apply that diff when it is there (a pass or a tick later), so no change waits for it.
        if !(inner.sync.synced && ask_resync(watch, inner)) {
            inner.reconciler.require_dump();
            inner.policy.require_dump();
            inner.pending |= Kinds::SERVICE_INPUTS | Kinds::POLICY_INPUTS;
        }
        inner.external.resync();
        // The sysctl may have been changed since; a change is rare, so the resync period is soon enough.
        let current = (inner.config.local_port_min, inner.config.local_port_max);
        let (min, max) = local_ports(current, &mut watch.reported);
        if update_config(&mut inner.config, &mut inner.datapath, |c| {
            (c.local_port_min, c.local_port_max) = (min, max);
        })? {
            tracing::info!(min, max, "ephemeral port range kept out of SNAT changed");
        }
    }
    match watch.dumper.take() {
        Some(Ok(dumps)) => {
            let lb = take_lb_resync(inner, dumps.lb, dumps.lb_writes);
            let policy = take_policy_resync(inner, dumps.policy, dumps.policy_writes);
            if lb && policy {
                watch.resync_misses = 0;
            } else {
                // A pass wrote while the maps were read: ask again, or read them here after a few
                // misses (a change every few milliseconds would otherwise put the resync off for good).
                watch.resync_misses += 1;
                let again = watch.resync_misses < RESYNC_MISSES && ask_resync(watch, inner);
                if !again {
                    watch.resync_misses = 0;
                    if !lb {
                        inner.reconciler.require_dump();
                    }
                    if !policy {
                        inner.policy.require_dump();
                    }
                    inner.pending |= Kinds::SERVICE_INPUTS | Kinds::POLICY_INPUTS;
                }
            }
        }
        Some(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "resync dump failed; reading the maps on the loop");
            inner.reconciler.require_dump();
            inner.policy.require_dump();
            inner.pending |= Kinds::SERVICE_INPUTS | Kinds::POLICY_INPUTS;
        }
        None => {}
    }
    // Work that failed stays pending until a pass completes it, change or not.
    inner.pending |= refreshed.changed;
    let pending = inner.pending;
    if pending.intersects(Kinds::SERVICE_INPUTS | Kinds::POLICY_INPUTS) {
        let t1 = Instant::now();
        // Policy is reconciled even when the service maps failed, and the other way round.
        let services = if pending.intersects(Kinds::SERVICE_INPUTS) {
            reconcile_services(args, watch, inner)
        } else {
            Ok(())
        };
        let t2 = Instant::now();
        let policy = if pending.intersects(Kinds::POLICY_INPUTS) {
            reconcile_policy(args, watch, shared, inner)
        } else {
            Ok(())
        };
        let t3 = Instant::now();
        inner.pending = Kinds::NONE;
        if services.is_err() {
            inner.pending |= Kinds::SERVICE_INPUTS;
        }
        if policy.is_err() {
            inner.pending |= Kinds::POLICY_INPUTS;
        }
        // Where a pass spends its time, for anyone asking why a change took long to reach the maps.
        tracing::debug!(
            changed = %pending,
            resync = refreshed.resync,
            read_ms = (t1 - t0).as_secs_f64() * 1e3,
            services_ms = (t2 - t1).as_secs_f64() * 1e3,
            policy_ms = (t3 - t2).as_secs_f64() * 1e3,
            lb_dumps = inner.reconciler.dumps(),
            policy_dumps = inner.policy.dumps(),
            policy_compiles = inner.policy.compiles(),
            "reconcile pass"
        );
        inner.sync.rejected = watch.rejected.clone();
        inner.sync.rejected.extend(inner.plan_rejected.iter().cloned());
        // Under the lock, so the status that says a pass is done never sees its garbage resident.
        let _ = crate::memory::return_free_pages();
        services?;
        policy?;
    }
    // Until the source has given a first full snapshot there is nothing to compare attachments
    // with; an empty one would detach every pod of a restarted agent.
    if !watch.loaded() {
        return Ok(());
    }
    // Interfaces come and go without an object saying so: they are scanned on the tick, and when the
    // pods or the node (the addresses that pick devices) changed; a change to Services or slices alone
    // does not wait for a scan of every link and route.
    if wake == Wake::Tick || refreshed.changed.intersects(Kinds::PODS | Kinds::NODES) {
        reconcile_attachments(args, watch, inner)?;
    }
    inner.errors.clone_from(&inner.attach_errors);
    inner.sync.synced = true;
    inner.sync.node_eligible = endpoints::node_eligible(&watch.snapshot, &args.node);
    inner.sync.last_pass_ok_unix_ms = crate::status::unix_ms_now();
    // Last, so that the answers are those of a pass that completed; a pass that fails stops
    // refreshing them and the checks turn 503 once the proxy counts as stale.
    let health = inner
        .service_health
        .sync(&inner.health_checks, inner.sync.last_pass_ok_unix_ms);
    inner.counters.health_check_listen_errors += health.new_failures;
    inner.errors.extend(health.errors);
    Ok(())
}

/// tc on every local pod's veth, XDP on the node's devices, the socket hooks once.
fn reconcile_attachments(args: &RunArgs, watch: &SourceWatch, inner: &mut Inner) -> Result<()> {
    let table = routes::read_routes()?;
    let links = links::read_links()?;
    let local = endpoints::with_interfaces(&watch.local_pods, &table);
    let mut desired = DesiredAttachments::default();
    for ep in &local {
        if let Some(link) = ep.interface.as_ref().and_then(|name| links.get(name)) {
            desired.pods.push(PodInterface {
                interface: link.name.clone(),
                ifindex: link.ifindex,
                pod: ep.pod.clone(),
                ip: ep.ip,
            });
        }
    }
    let mut errors = Vec::new();
    if args.devices.is_empty() {
        let addresses = endpoints::node_addresses(&watch.snapshot, &args.node);
        if addresses.is_empty() {
            errors.push(format!(
                "Node {}: no InternalIP/ExternalIP in status.addresses; no XDP device chosen",
                args.node
            ));
        }
        for link in links
            .values()
            .filter(|l| l.ipv4.iter().any(|ip| addresses.contains(ip)))
        {
            desired.devices.push(Device {
                interface: link.name.clone(),
                ifindex: link.ifindex,
            });
        }
    } else {
        for name in &args.devices {
            match links.get(name) {
                Some(link) => desired.devices.push(Device {
                    interface: name.clone(),
                    ifindex: link.ifindex,
                }),
                None => errors.push(format!("--devices {name}: no such interface")),
            }
        }
    }
    errors.extend(inner.datapath.reconcile_attachments(&desired));
    // After the maps: a first start must not send host sockets to empty service maps (a restart finds
    // its maps filled and its pinned hooks still attached, and only swaps the programs).
    if let Some(cgroup) = &args.cgroup_root
        && inner.datapath.cgroup.is_none()
        && let Err(e) = inner.datapath.attach_cgroup(cgroup)
    {
        errors.push(format!("{e:#}"));
    }
    inner.endpoints = local;
    inner.attach_errors = errors;
    Ok(())
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
