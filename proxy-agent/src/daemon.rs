//! `proxy-agent run`: load the datapath once, then keep attachments (and, with later issues, maps) in
//! step with the snapshot. Level-triggered: every pass computes the whole desired state again, so a
//! missed change is repaired on the next pass.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    datapath::{
        Datapath, DesiredAttachments,
        attach::{Device, PodInterface},
    },
    endpoints::{self, LocalEndpoint},
    host::{links, routes},
    lb,
    reconcile::Reconciler,
    snapshot::Snapshot,
    source::manifests,
    status::{AttachmentRow, CounterView, EndpointView, LbView, StatusView, SyncView},
};

/// How often the agent looks for changed files and new interfaces. A pod's veth appears when the CNI
/// creates it, which no object tells us about, so the interface scan is periodic.
const TICK: Duration = Duration::from_millis(250);
/// Even without a visible change, re-read everything this often (level-triggered resync).
const RESYNC: Duration = Duration::from_secs(10);

pub struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    datapath: Datapath,
    reconciler: Reconciler,
    node: String,
    sync: SyncView,
    lb: LbView,
    endpoints: Vec<LocalEndpoint>,
    errors: Vec<String>,
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
            lb: inner.lb.clone(),
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
                .attachments
                .view()
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
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let Some(manifests_path) = args.manifests.clone() else {
        bail!("no source of objects: the API-server source is not built yet; pass --manifests FILE|DIR");
    };
    let mut datapath = Datapath::load(&args.bpffs_root)?;
    // Ids come back from the pinned maps, so a restarted agent rewrites nothing that is still right.
    let reconciler = Reconciler::restore(&datapath.lb_maps())?;
    tracing::info!(node = %args.node, pin_dir = %args.bpffs_root.display(), "datapath loaded");
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            datapath,
            reconciler,
            lb: LbView::default(),
            node: args.node.clone(),
            sync: SyncView {
                source: format!("manifests {}", manifests_path.display()),
                ..Default::default()
            },
            endpoints: Vec::new(),
            errors: Vec::new(),
        }),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, manifests_path, shared))
}

async fn serve(args: RunArgs, manifests_path: PathBuf, shared: Arc<Shared>) -> Result<()> {
    let admin = tokio::spawn(crate::admin::serve(args.admin_addr, shared.clone()));
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut ticker = tokio::time::interval(TICK);
    let mut watch = SourceWatch::new(manifests_path);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if admin.is_finished() {
            return admin
                .await
                .context("admin endpoint task")?
                .context("admin endpoint stopped");
        }
        if let Err(e) = reconcile_pass(&args, &mut watch, &shared) {
            tracing::warn!(error = %format!("{e:#}"), "reconcile pass failed; retrying next tick");
            shared.lock().errors = vec![format!("{e:#}")];
        }
    }
    tracing::info!("shutting down; pinned maps stay for the next start");
    Ok(())
}

/// Service maps follow the snapshot: plan (pure) → reconcile (dump, diff, ordered writes).
fn reconcile_services(args: &RunArgs, watch: &mut SourceWatch, inner: &mut Inner) -> Result<()> {
    let mut snapshot = watch.snapshot.clone();
    // Standalone mode plays the EndpointSlice controller for Services that come without slices.
    let derived = lb::derive_endpoint_slices(&snapshot);
    snapshot.endpoint_slices.extend(derived);
    let plan = lb::plan(&snapshot, &args.node);
    for r in &plan.rejected {
        if watch.reported.insert(r.to_string()) {
            tracing::warn!(object = %r, "object skipped by the service planner");
        }
    }
    inner
        .sync
        .rejected
        .extend(plan.rejected.iter().map(ToString::to_string));
    let Inner {
        datapath,
        reconciler,
        lb,
        ..
    } = inner;
    let outcome = reconciler.reconcile(&plan, &mut datapath.lb_maps())?;
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

/// Re-reads the manifests when they change (or on the resync period) and remembers what was reported.
struct SourceWatch {
    path: PathBuf,
    fingerprint: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
    last_load: Option<Instant>,
    snapshot: Snapshot,
    reported: BTreeSet<String>,
}

impl SourceWatch {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            fingerprint: None,
            last_load: None,
            snapshot: Snapshot::default(),
            reported: BTreeSet::new(),
        }
    }

    /// Returns true when the snapshot was re-read.
    fn refresh(&mut self, sync: &mut SyncView) -> Result<bool> {
        let fingerprint = manifests::fingerprint(&self.path)?;
        let due = self.last_load.is_none_or(|t| t.elapsed() >= RESYNC);
        if !due && self.fingerprint.as_ref() == Some(&fingerprint) {
            return Ok(false);
        }
        let (snapshot, rejected) = manifests::load(&self.path)?;
        for r in &rejected {
            // Reported once per distinct problem, not on every resync.
            if self.reported.insert(r.to_string()) {
                tracing::warn!(object = %r.object, file = %r.file.display(), reason = %r.reason, "object skipped");
            }
        }
        sync.rejected = rejected.iter().map(ToString::to_string).collect();
        sync.objects = snapshot.object_count();
        sync.reloads += 1;
        sync.last_sync_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.snapshot = snapshot;
        self.fingerprint = Some(fingerprint);
        self.last_load = Some(Instant::now());
        Ok(true)
    }
}

fn reconcile_pass(args: &RunArgs, watch: &mut SourceWatch, shared: &Shared) -> Result<()> {
    let mut inner = shared.lock();
    if watch.refresh(&mut inner.sync)? {
        reconcile_services(args, watch, &mut inner)?;
    }
    let table = routes::read_routes()?;
    let links = links::read_links()?;
    let local = endpoints::local_endpoints(&watch.snapshot, &args.node, &table);
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
    inner.endpoints = local;
    inner.errors = errors;
    inner.sync.synced = true;
    Ok(())
}
