//! The API-server source: one watcher per kind (Services, EndpointSlices, Pods, Namespaces, Nodes,
//! NetworkPolicies), each storing cut-down objects ([`strip`]); a [`Snapshot`] is read from the
//! stores.
//!
//! No snapshot is given out before every kind has been listed once, so the datapath is never
//! programmed from a partial view of the cluster. After that, a relist (after 410 Gone, or when the
//! API server comes back after an outage) fills a side buffer that replaces a store only once it is
//! complete, so a snapshot taken at any time holds every object of every kind as last seen, and the
//! datapath keeps its state while the API server is away.

pub mod config;
pub mod reflect;
pub mod store;
pub mod strip;

use std::sync::Arc;

use ::kube::Client;
use k8s_openapi::api::{
    core::v1::{Namespace, Node},
    networking::v1::NetworkPolicy,
};
use tokio::{sync::watch, task::JoinHandle};

use self::{reflect::KindState, store::ObjectStore};
use super::{Kinds, Rejected};
use crate::{
    slim::{EndpointSlice, Pod, Service},
    snapshot::Snapshot,
};

/// Where a rejected object came from, in reports.
pub const ORIGIN: &str = "API server";

pub struct KubeSource {
    url: String,
    nodes: ObjectStore<Node>,
    namespaces: ObjectStore<Namespace>,
    pods: ObjectStore<Pod>,
    services: ObjectStore<Service>,
    endpoint_slices: ObjectStore<EndpointSlice>,
    network_policies: ObjectStore<NetworkPolicy>,
    kinds: Vec<Arc<KindState>>,
    /// Each kind's generation as of the last poll, in the order of `kinds`.
    seen_generations: Vec<u64>,
    /// Bumped on every store change.
    changed: Arc<watch::Sender<u64>>,
    seen: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Starts the reflectors; they list, then watch, until the source is dropped. Needs a Tokio
    /// runtime.
    pub fn start(client: Client, url: String) -> Self {
        let (changed, seen) = watch::channel(0);
        let changed = Arc::new(changed);
        let mut kinds = Vec::new();
        let mut tasks = Vec::new();
        let mut start = |kind: &'static str| {
            let state = Arc::new(KindState::new(kind));
            kinds.push(state.clone());
            state
        };
        let (nodes, t1) = reflect::spawn::<Node>(client.clone(), start("Node"), changed.clone());
        let (namespaces, t2) =
            reflect::spawn::<Namespace>(client.clone(), start("Namespace"), changed.clone());
        let (pods, t3) = reflect::spawn::<Pod>(client.clone(), start("Pod"), changed.clone());
        let (services, t4) = reflect::spawn::<Service>(client.clone(), start("Service"), changed.clone());
        let (endpoint_slices, t5) =
            reflect::spawn::<EndpointSlice>(client.clone(), start("EndpointSlice"), changed.clone());
        let (network_policies, t6) =
            reflect::spawn::<NetworkPolicy>(client, start("NetworkPolicy"), changed.clone());
        tasks.extend([t1, t2, t3, t4, t5, t6]);
        Self {
            url,
            nodes,
            namespaces,
            pods,
            services,
            endpoint_slices,
            network_policies,
            seen_generations: vec![0; kinds.len()],
            kinds,
            changed,
            seen,
            tasks,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every kind has been listed once (readiness).
    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|k| k.ready())
    }

    /// The stores as a snapshot, each kind sorted by namespace/name so that nothing downstream depends
    /// on hash order; `None` until [`Self::synced`].
    pub fn snapshot(&self) -> Option<Snapshot> {
        if !self.synced() {
            return None;
        }
        Some(Snapshot {
            nodes: self.nodes.sorted(),
            namespaces: self.namespaces.sorted(),
            pods: self.pods.sorted(),
            services: self.services.sorted(),
            endpoint_slices: self.endpoint_slices.sorted(),
            network_policies: self.network_policies.sorted(),
        })
    }

    /// A new snapshot when a store changed since the last call (or `resync` asks for one anyway),
    /// once synced. Changes in between are coalesced: the caller's pace sets the reconcile rate.
    pub fn poll(&mut self, resync: bool) -> Option<Snapshot> {
        self.poll_kinds(resync).map(|(s, _)| s)
    }

    /// [`Self::poll`], with the kinds whose stores changed since the last poll.
    pub fn poll_kinds(&mut self, resync: bool) -> Option<(Snapshot, Kinds)> {
        let kinds = self.changed_kinds(resync)?;
        self.snapshot().map(|s| (s, kinds))
    }

    /// The kinds whose stores changed since the last poll, once synced; on a resync an answer even
    /// when none did (the stores are kept current by their watches: copying and sorting unchanged
    /// ones again every 10 s spent the daemon's loop time for nothing).
    fn changed_kinds(&mut self, resync: bool) -> Option<Kinds> {
        if !self.synced() {
            // Marked seen, so that [`Self::changed`] waits for the next event instead of returning at
            // once for every event of the initial lists.
            self.seen.borrow_and_update();
            return None;
        }
        let changed = self.seen.has_changed().unwrap_or(false);
        if !changed && !resync {
            return None;
        }
        // Marked seen before reading: a change that lands while the snapshot is read is seen again.
        self.seen.borrow_and_update();
        let mut kinds = Kinds::NONE;
        for (state, seen) in self.kinds.iter().zip(self.seen_generations.iter_mut()) {
            let now = state.generation();
            if now != *seen {
                *seen = now;
                kinds |= Kinds::of_kind(state.kind);
            }
        }
        Some(kinds)
    }

    /// [`Self::poll_kinds`] into the caller's snapshot (the one the last call left, or an empty one),
    /// rebuilding only the kinds whose stores changed: sorting 10k Pods again because one
    /// EndpointSlice changed cost milliseconds of a change that should take fewer.
    pub fn poll_into(&mut self, resync: bool, snapshot: &mut Snapshot) -> Option<Kinds> {
        let kinds = self.changed_kinds(resync)?;
        let all = snapshot.object_count() == 0;
        let take = |kind: Kinds| all || kinds.intersects(kind);
        if take(Kinds::NODES) {
            snapshot.nodes = self.nodes.sorted();
        }
        if take(Kinds::NAMESPACES) {
            snapshot.namespaces = self.namespaces.sorted();
        }
        if take(Kinds::PODS) {
            snapshot.pods = self.pods.sorted();
        }
        if take(Kinds::SERVICES) {
            snapshot.services = self.services.sorted();
        }
        if take(Kinds::ENDPOINT_SLICES) {
            snapshot.endpoint_slices = self.endpoint_slices.sorted();
        }
        if take(Kinds::NETWORK_POLICIES) {
            snapshot.network_policies = self.network_policies.sorted();
        }
        Some(kinds)
    }

    /// Waits until a store changes after the last [`Self::poll`]; returns at once if one did already.
    pub async fn changed(&mut self) {
        // On a copy of the receiver: waiting must not mark the change seen, or the poll that follows
        // the wake would find nothing new. The sender lives in `self`, so this never returns early
        // for a dropped sender.
        let mut seen = self.seen.clone();
        let _ = seen.changed().await;
    }

    /// The objects that are set aside now, by kind, namespace/name and field.
    pub fn rejected(&self) -> Vec<Rejected> {
        let mut out = Vec::new();
        for kind in &self.kinds {
            for (namespace, name, reason) in kind.rejected() {
                let object = if namespace.is_empty() {
                    format!("{} {name}", kind.kind)
                } else {
                    format!("{} {namespace}/{name}", kind.kind)
                };
                out.push(Rejected {
                    origin: ORIGIN.into(),
                    object,
                    reason,
                });
            }
        }
        out
    }

    /// Per kind: objects stored, watch errors so far, listed once.
    pub fn kinds(&self) -> impl Iterator<Item = (&'static str, u64, u64, bool)> + '_ {
        self.kinds
            .iter()
            .map(|k| (k.kind, k.objects(), k.errors(), k.ready()))
    }

    /// The change counter; tests and callers that want to know a change happened without reading.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
