//! Level-triggered reconcile of the NetworkPolicy maps: snapshot → [`policy::PolicyInput`] →
//! [`policy::compile`] for this node → desired contents of the four maps ([`PolicyMapsState`]) →
//! [`diff()`] against a dump of the pinned maps → ordered [`PolicyOp`]s applied through [`PolicyMaps`].
//!
//! The order never denies, even for one operation, a flow that both the old and the new state allow
//! (see [`diff()`]); reconciling twice performs no operation; numbers (identities, endpoint ids, CIDR
//! classes, policy refs) are restored from the pinned maps at start ([`restore_allocations`]), so a
//! restarted agent renumbers nothing.

pub(crate) mod diff;
mod fake;
pub mod render;
#[cfg(test)]
mod tests;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use common::policy::{
    IpCacheKey4, IpCacheValue4, MAX_POLICIES, PolicyEndpoint4, PolicyEndpointKey4, PolicyEntry, PolicyKey,
    endpoint_flags, identity,
};
use policy::{Allocations, IdentityKey, PolicyDesired, PolicyError, PolicyInput, PolicyRef, net::Ipv4Net};

pub use diff::diff;
pub use fake::FakePolicyMaps;

use crate::snapshot::Snapshot;

/// The contents of the four policy maps, desired or dumped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyMapsState {
    pub ipcache: BTreeMap<IpCacheKey4, IpCacheValue4>,
    pub endpoints: BTreeMap<PolicyEndpointKey4, PolicyEndpoint4>,
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// `policy_ref` → `namespace/name` (the non-empty slots of the names array).
    pub names: BTreeMap<u16, String>,
    /// The state map's `NONE_ISOLATED`: no endpoint isolated, the datapath skips policy.
    pub none_isolated: bool,
}

impl PolicyMapsState {
    /// The maps a compile result asks for. Policy refs beyond the names array cannot be named in the
    /// datapath; they are returned as errors (their entries are still programmed: the verdict does not
    /// depend on the name).
    pub fn from_desired(d: &PolicyDesired) -> (Self, Vec<String>) {
        let mut unfit = Vec::new();
        let mut names = BTreeMap::new();
        for (r, p) in &d.policies {
            if u32::from(*r) < MAX_POLICIES {
                names.insert(*r, p.to_string());
            } else {
                unfit.push(format!(
                    "policy {p}: ref {r} beyond the names table ({MAX_POLICIES} slots)"
                ));
            }
        }
        let state = Self {
            ipcache: d.ipcache.clone(),
            endpoints: d.endpoints.clone(),
            policy: d.policy.clone(),
            names,
            none_isolated: d.endpoints.values().all(|e| !is_isolated(e)),
        };
        (state, unfit)
    }

    /// A `PolicyDesired` holding these maps (and no tables), for [`policy::simulate`].
    pub fn as_desired(&self) -> PolicyDesired {
        PolicyDesired {
            ipcache: self.ipcache.clone(),
            endpoints: self.endpoints.clone(),
            policy: self.policy.clone(),
            ..Default::default()
        }
    }

    /// Whether some endpoint is isolated while the state says none is: the datapath would skip
    /// policy it must enforce. [`diff()`] orders its operations so that this never holds.
    pub fn skips_an_isolated_endpoint(&self) -> bool {
        self.none_isolated && self.endpoints.values().any(is_isolated)
    }

    pub fn len(&self) -> usize {
        self.ipcache.len() + self.endpoints.len() + self.policy.len() + self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_isolated(e: &PolicyEndpoint4) -> bool {
    e.flags & (endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED) != 0
}

/// One write to one policy map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOp {
    UpsertName {
        policy_ref: u16,
        name: String,
    },
    UpsertPolicy {
        key: PolicyKey,
        entry: PolicyEntry,
    },
    UpsertIpCache {
        key: IpCacheKey4,
        value: IpCacheValue4,
    },
    UpsertEndpoint {
        key: PolicyEndpointKey4,
        value: PolicyEndpoint4,
    },
    DeleteEndpoint {
        key: PolicyEndpointKey4,
    },
    DeletePolicy {
        key: PolicyKey,
    },
    DeleteIpCache {
        key: IpCacheKey4,
    },
    /// Clears a slot of the names array.
    DeleteName {
        policy_ref: u16,
    },
    /// Writes the state map (`policy_state`).
    SetState {
        none_isolated: bool,
    },
}

impl PolicyOp {
    /// The pinned map the operation writes (the `map` label of `strait_reconcile_operations_total`).
    pub fn map_name(&self) -> &'static str {
        use common::map_names as m;
        match self {
            Self::UpsertName { .. } | Self::DeleteName { .. } => m::POLICY_NAMES,
            Self::UpsertPolicy { .. } | Self::DeletePolicy { .. } => m::POLICY,
            Self::UpsertIpCache { .. } | Self::DeleteIpCache { .. } => m::IPCACHE4,
            Self::UpsertEndpoint { .. } | Self::DeleteEndpoint { .. } => m::POLICY_ENDPOINTS4,
            Self::SetState { .. } => m::POLICY_STATE,
        }
    }
}

impl std::fmt::Display for PolicyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use render::{
            endpoint_line, ipcache_key_text, ipcache_line, name_line, policy_key_text, policy_line,
        };
        match self {
            Self::UpsertName { policy_ref, name } => write!(f, "upsert {}", name_line(*policy_ref, name)),
            Self::UpsertPolicy { key, entry } => write!(f, "upsert {}", policy_line(key, entry)),
            Self::UpsertIpCache { key, value } => write!(f, "upsert {}", ipcache_line(key, value)),
            Self::UpsertEndpoint { key, value } => write!(f, "upsert {}", endpoint_line(key, value)),
            Self::DeleteEndpoint { key } => write!(f, "delete EP {}", Ipv4Addr::from(key.addr.octets())),
            Self::DeletePolicy { key } => write!(f, "delete POLICY {}", policy_key_text(key)),
            Self::DeleteIpCache { key } => write!(f, "delete IPCACHE {}", ipcache_key_text(key)),
            Self::DeleteName { policy_ref } => write!(f, "delete NAME {policy_ref}"),
            Self::SetState { none_isolated: true } => write!(f, "set STATE none-isolated"),
            Self::SetState { none_isolated: false } => write!(f, "set STATE enforcing"),
        }
    }
}

/// The policy maps as the reconciler sees them: the aya implementation lives with the datapath
/// (`datapath::policy_maps`), [`FakePolicyMaps`] is the in-memory one for tests.
pub trait PolicyMaps {
    fn dump(&self) -> Result<PolicyMapsState>;
    /// Performs one operation; deleting an absent key is not an error.
    fn apply(&mut self, op: &PolicyOp) -> Result<()>;
}

/// The objects policy reads, out of the agent's snapshot.
pub fn input_from_snapshot(s: &Snapshot) -> PolicyInput {
    PolicyInput {
        namespaces: s.namespaces.clone(),
        pods: s.pods.clone(),
        policies: s.network_policies.clone(),
        nodes: s.nodes.clone(),
    }
}

/// The numbers in use in the pinned maps, keyed by what they stand for in `input` — so the first
/// compile after a restart keeps them:
/// - identities: each pod /32 in the ipcache gives its identity to that pod's identity key (the key
///   computed from `input`); an id claimed by two keys (the address now belongs to a pod with other
///   labels) or a key claiming two ids keeps only the first claim (lowest address);
/// - endpoint ids: the endpoints map (pod IP → endpoint id) and the pod that owns the IP now;
/// - CIDR classes: ipcache prefixes with identity `WORLD`, and /32s whose class no shorter prefix carries
///   (a /32 declared on its own, e.g. a pod inside an egress ipBlock with a named port);
/// - policy refs: the names array.
pub fn restore_allocations(dump: &PolicyMapsState, input: &PolicyInput, node: &str) -> Allocations {
    let mut out = Allocations::default();
    restore_pod_numbers(dump, input, node, &mut out);
    let shorter_classes: BTreeSet<u32> = dump
        .ipcache
        .iter()
        .filter(|(k, v)| k.prefix_len < 32 && v.identity == identity::WORLD)
        .map(|(_, v)| v.cidr_class)
        .collect();
    let mut classes_taken = BTreeSet::new();
    for (key, value) in &dump.ipcache {
        let class = value.cidr_class;
        if !identity::is_cidr_class(class) {
            continue;
        }
        let declared = if key.prefix_len < 32 {
            value.identity == identity::WORLD
        } else {
            !shorter_classes.contains(&class)
        };
        if !declared || !classes_taken.insert(class) {
            continue;
        }
        let net = Ipv4Net::new(Ipv4Addr::from(key.addr.octets()), key.prefix_len as u8);
        out.cidr_classes.insert(net, class);
    }

    for (r, name) in &dump.names {
        if let Ok(p) = name.parse::<PolicyRef>() {
            out.policies.entry(p).or_insert(*r);
        }
    }
    out
}

/// Identities and endpoint ids of pods, which need a compile without history to say which key each
/// address and endpoint stands for now. Skipped when the maps hold none (a first start): that compile
/// would double the cold start's policy pass for nothing.
fn restore_pod_numbers(dump: &PolicyMapsState, input: &PolicyInput, node: &str, out: &mut Allocations) {
    let pod_identities = dump.ipcache.iter().any(|(key, value)| {
        key.prefix_len == 32
            && (identity::FIRST_POD_IDENTITY..identity::MAX_IDENTITY).contains(&value.identity)
    });
    if !pod_identities && dump.endpoints.is_empty() {
        return;
    }
    let Ok(fresh) = policy::compile(input, node, &Allocations::default()) else {
        return;
    };
    let mut ids_taken: BTreeSet<u32> = BTreeSet::new();
    for (key, value) in &dump.ipcache {
        if key.prefix_len != 32 {
            continue;
        }
        let old = value.identity;
        if !(identity::FIRST_POD_IDENTITY..identity::MAX_IDENTITY).contains(&old) {
            continue;
        }
        let Some(now) = fresh.ipcache.get(key) else {
            continue;
        };
        let Some(ik) = fresh.identities.get(&now.identity) else {
            continue;
        };
        if out.identities.contains_key(ik) || !ids_taken.insert(old) {
            continue;
        }
        out.identities.insert(ik.clone(), old);
    }

    let mut eps_taken = BTreeSet::new();
    let pod_of_ip: BTreeMap<Ipv4Addr, &policy::PodRef> =
        fresh.endpoint_table.values().map(|e| (e.ip, &e.pod)).collect();
    for (key, value) in &dump.endpoints {
        let ip = Ipv4Addr::from(key.addr.octets());
        let Some(pod) = pod_of_ip.get(&ip) else { continue };
        if value.endpoint_id == 0 || out.endpoints.contains_key(*pod) || !eps_taken.insert(value.endpoint_id)
        {
            continue;
        }
        out.endpoints.insert((*pod).clone(), value.endpoint_id);
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PolicyOutcome {
    /// The operations performed, in order.
    pub ops: Vec<PolicyOp>,
    /// Invalid policies, each reported (logged) once by the reconciler; these are the new ones.
    pub new_errors: Vec<PolicyError>,
    /// Things that could not be programmed (a policy ref beyond the names table).
    pub unfit: Vec<String>,
    /// False when the input was the very one of the last compile (same objects, same node) and its
    /// result was reused: what names numbers (policy list, flows) is still current.
    pub compiled: bool,
}

/// The objects of an input by allocation, in order: equal when a snapshot kept every object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct InputAllocations {
    node: String,
    objects: [Vec<usize>; 4],
}

impl InputAllocations {
    fn of(input: &PolicyInput, node: &str) -> Self {
        fn ptrs<T>(v: &[Arc<T>]) -> Vec<usize> {
            v.iter().map(|o| Arc::as_ptr(o) as usize).collect()
        }
        Self {
            node: node.to_owned(),
            objects: [
                ptrs(&input.namespaces),
                ptrs(&input.pods),
                ptrs(&input.policies),
                ptrs(&input.nodes),
            ],
        }
    }
}

/// Holds the allocations and the last compile between passes.
#[derive(Debug, Default)]
pub struct PolicyReconciler {
    allocations: Allocations,
    restored: bool,
    /// The last compile (what the datapath was brought to), until the daemon takes it to build the
    /// tables of `policy list`, flows and metrics ([`Self::take_last`]): its entries are those of
    /// `written`, ~3 MB at 1k policies over 10k pods that nothing reads again.
    last: Option<PolicyDesired>,
    reported: BTreeSet<PolicyError>,
    /// Operations applied since start, by pinned map.
    ops_by_map: BTreeMap<&'static str, u64>,
    /// What the maps hold as far as this reconciler knows: the last state written without error.
    /// `None` makes the next pass dump the maps (start, after a failure, on [`Self::require_dump`]);
    /// a dump costs one syscall per entry, far more than a small change.
    written: Option<Arc<PolicyMapsState>>,
    /// Passes that dumped the maps since start.
    dumps: u64,
    /// What the last compile was of, and the map state it asked for (kept when a resync drops
    /// `written`): a resync over unchanged objects diffs the dump against it without compiling.
    /// The input's `Arc`s are held, so that an address cannot be reused by another object.
    compiled_from: Option<(InputAllocations, PolicyInput)>,
    last_wanted: Option<(Arc<PolicyMapsState>, Vec<String>)>,
    last_unfit: Vec<String>,
    /// Passes that compiled since start.
    compiles: u64,
    /// A dump read elsewhere (see `crate::resync_dumper`) for the next pass to diff against.
    given_dump: Option<PolicyMapsState>,
    /// Bumped by every pass that writes (or tries to); see [`Self::resync_from`].
    writes: u64,
}

impl PolicyReconciler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocations(&self) -> &Allocations {
        &self.allocations
    }

    pub fn last(&self) -> Option<&PolicyDesired> {
        self.last.as_ref()
    }

    /// The last compile, if nobody took it since.
    pub fn take_last(&mut self) -> Option<PolicyDesired> {
        self.last.take()
    }

    /// Operations applied since start, by pinned map (`strait_reconcile_operations_total`).
    pub fn ops_by_map(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.ops_by_map.iter().map(|(k, v)| (*k, *v))
    }

    /// The next pass diffs against a fresh dump instead of the state last written, and so repairs and
    /// prunes whatever someone else changed in the maps.
    pub fn require_dump(&mut self) {
        if let Some(written) = self.written.take() {
            self.last_wanted = Some((written, self.last_unfit.clone()));
        }
    }

    /// The write generation (see [`Self::resync_from`]).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The state last written, shared (it is replaced, never changed in place): the resync's dumper
    /// diffs its dump against it off the loop.
    pub fn written(&self) -> Option<Arc<PolicyMapsState>> {
        self.written.clone()
    }

    /// Applies the resync's diff (its dump against [`Self::written`] at write generation `writes`);
    /// `None` if this reconciler wrote since (ask again). A failed write leaves the next pass to dump.
    pub fn resync_with(
        &mut self,
        ops: Vec<PolicyOp>,
        writes: u64,
        maps: &mut dyn PolicyMaps,
    ) -> Result<Option<Vec<PolicyOp>>> {
        if writes != self.writes || self.written.is_none() {
            return Ok(None);
        }
        self.dumps += 1;
        self.apply_all(&ops, maps)?;
        Ok(Some(ops))
    }

    /// Writes `ops` in order; at the first failure the state written is dropped (the next pass
    /// dumps the maps).
    fn apply_all(&mut self, ops: &[PolicyOp], maps: &mut dyn PolicyMaps) -> Result<()> {
        self.writes += u64::from(!ops.is_empty());
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = maps.apply(op) {
                self.require_dump();
                return Err(e)
                    .with_context(|| format!("policy map operation {} of {}: {op}", i + 1, ops.len()));
            }
            *self.ops_by_map.entry(op.map_name()).or_default() += 1;
        }
        Ok(())
    }

    /// As [`Self::require_dump`], with the dump already read — from the maps as they were at write
    /// generation `writes`. A dump read while a pass wrote is not a picture of any one moment: then
    /// this does nothing and returns false.
    pub fn resync_from(&mut self, dump: PolicyMapsState, writes: u64) -> bool {
        if writes != self.writes {
            return false;
        }
        self.require_dump();
        self.given_dump = Some(dump);
        true
    }

    /// How many passes compiled since start (a resync over unchanged objects does not).
    pub fn compiles(&self) -> u64 {
        self.compiles
    }

    /// How many times the maps were dumped since start.
    pub fn dumps(&self) -> u64 {
        self.dumps
    }

    /// One level-triggered pass against the state last written (or a dump: at start, after a failure,
    /// after [`Self::require_dump`]).
    /// The first pass restores the numbers from the dump. Stops at the first failed operation (the
    /// next pass starts over from a fresh dump).
    pub fn reconcile(
        &mut self,
        input: &PolicyInput,
        node: &str,
        maps: &mut dyn PolicyMaps,
    ) -> Result<PolicyOutcome> {
        let from = InputAllocations::of(input, node);
        let same_input = self.compiled_from.as_ref().is_some_and(|(f, _)| *f == from);
        if same_input && self.written.is_some() {
            // The same objects, and the maps hold what the last compile asked for.
            return Ok(PolicyOutcome {
                ops: Vec::new(),
                new_errors: Vec::new(),
                unfit: self.last_unfit.clone(),
                compiled: false,
            });
        }
        let actual = match self.written.take() {
            Some(written) => written,
            None => {
                self.dumps += 1;
                match self.given_dump.take() {
                    Some(dump) => Arc::new(dump),
                    None => Arc::new(maps.dump().context("dumping the policy maps")?),
                }
            }
        };
        if !self.restored {
            self.allocations = restore_allocations(&actual, input, node);
            self.restored = true;
        }
        let (wanted, unfit, new_errors, compiled) = match self.last_wanted.take() {
            // A compile is a function of the input and the allocations, and these are the
            // allocations that compile produced: the result would be the same.
            Some((wanted, unfit)) if same_input => (wanted, unfit, Vec::new(), false),
            _ => {
                let desired =
                    policy::compile(input, node, &self.allocations).context("compiling NetworkPolicies")?;
                self.compiles += 1;
                let (wanted, unfit) = PolicyMapsState::from_desired(&desired);
                let wanted = Arc::new(wanted);
                // The numbers of this compile are the ones the maps will hold: keep them even if a
                // write fails.
                self.allocations = desired.allocations.clone();
                // Reported once while it stays invalid (again if it is fixed and broken anew).
                let current: BTreeSet<PolicyError> = desired.errors.iter().cloned().collect();
                let new_errors: Vec<PolicyError> = current.difference(&self.reported).cloned().collect();
                self.reported = current;
                self.last = Some(desired);
                self.compiled_from = Some((from, input.clone()));
                (wanted, unfit, new_errors, true)
            }
        };
        let ops = diff(&wanted, &actual);
        crate::reconcile::drop_elsewhere(actual, |a| a.policy.len() + a.ipcache.len() + a.endpoints.len());
        // `written` was taken above: a failed write leaves the next pass to dump.
        self.apply_all(&ops, maps)?;
        self.last_unfit.clone_from(&unfit);
        self.written = Some(wanted);
        Ok(PolicyOutcome {
            ops,
            new_errors,
            unfit,
            compiled,
        })
    }
}

/// Labels an identity key for people: `ns=x app=web,tier=db`.
pub fn identity_labels(k: &IdentityKey) -> String {
    let labels: Vec<String> = k.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.join(",")
}
