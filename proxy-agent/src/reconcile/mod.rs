//! Level-triggered reconcile of the load-balancing maps: plan → desired map contents (with ids from
//! [`Ids`]) → [`diff()`] against a dump of the maps → [`MapOp`]s in an order that never leaves the
//! datapath pointing at something missing → applied through [`LbMaps`].
//!
//! A pass after a complete one changes only the frontends that differ from the last plan's (see
//! [`incremental`]); the first pass, a pass after a dump, and a pass whose change cannot be made in
//! place (a full map or id space) recompute everything from the plan. What it diffs against is the last state it wrote
//! completely, kept in memory: dumping the pinned maps costs one syscall per entry (hundreds of
//! milliseconds at 100k endpoints), far more than the change. The maps are dumped instead at start,
//! after a failed write (so a pass that failed half-way is finished by the next one from what the
//! maps really hold), and whenever the caller asks with [`Reconciler::require_dump`] (the daemon's
//! periodic resync, which prunes anything written behind the agent's back). A pass with nothing to
//! change performs no operation either way.

mod desired;
pub(crate) mod diff;
pub mod dump;
pub mod external;
mod fake;
mod ids;
mod incremental;
pub mod resync;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context, Result};
use common::lb::{Backend4, Lb4Key, Lb4Service, RevNat4};

pub use desired::{Unfit, desired};
pub use diff::diff;
pub use fake::{FakeMaps, injected_failure};
pub use ids::{BackendKey, Ids, RevNatKey};

use crate::lb::LbPlan;

/// The contents of the three load-balancing maps, desired or dumped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredMaps {
    /// Frontends (slot 0) and their backend slots (1..=count).
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Backend4>,
    pub revnat: BTreeMap<u32, RevNat4>,
}

impl DesiredMaps {
    /// Entries in all three maps.
    pub fn len(&self) -> usize {
        self.services.len() + self.backends.len() + self.revnat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same contents in less memory. Maps filled by inserts in an order other than their keys'
    /// (frontends by Service, backend ids as allocated) leave their B-tree nodes between half and
    /// two-thirds full; rebuilt from their sorted entries, the nodes are full. At 10k Services these
    /// maps hold ~220k entries, and the reconciler keeps them for the life of the process.
    pub fn compacted(self) -> Self {
        Self {
            services: self.services.into_iter().collect(),
            backends: self.backends.into_iter().collect(),
            revnat: self.revnat.into_iter().collect(),
        }
    }

    /// Every reference the datapath follows resolves: each frontend's slots 1..=count exist, each slot's
    /// backend exists, each frontend's rev-NAT entry exists. Holds after every single operation of a
    /// [`diff`], starting from maps for which it holds.
    pub fn check_references(&self) -> Result<(), String> {
        for (key, svc) in &self.services {
            if key.slot == 0 {
                for slot in 1..=svc.count {
                    if !self.services.contains_key(&Lb4Key { slot, ..*key }) {
                        return Err(format!("{key:?} count={} but slot {slot} is missing", svc.count));
                    }
                }
                if svc.rev_nat != 0 && !self.revnat.contains_key(&svc.rev_nat) {
                    return Err(format!("{key:?} points at missing rev-NAT {}", svc.rev_nat));
                }
            } else if !self.backends.contains_key(&svc.backend_id) {
                return Err(format!("{key:?} points at missing backend {}", svc.backend_id));
            }
        }
        Ok(())
    }
}

/// One write to one map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOp {
    UpsertBackend {
        id: u32,
        backend: Backend4,
    },
    /// A frontend (slot 0) or a backend slot.
    UpsertService {
        key: Lb4Key,
        value: Lb4Service,
    },
    UpsertRevNat {
        id: u32,
        revnat: RevNat4,
    },
    DeleteService {
        key: Lb4Key,
    },
    DeleteRevNat {
        id: u32,
    },
    DeleteBackend {
        id: u32,
    },
}

impl std::fmt::Display for MapOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UpsertBackend { id, backend } => write!(f, "upsert {}", dump::backend_line(*id, backend)),
            Self::UpsertService { key, value } => write!(f, "upsert {}", dump::service_line(key, value)),
            Self::UpsertRevNat { id, revnat } => write!(f, "upsert {}", dump::revnat_line(*id, revnat)),
            Self::DeleteService { key } => write!(f, "delete SVC {}", dump::key_text(key)),
            Self::DeleteRevNat { id } => write!(f, "delete REVNAT {id}"),
            Self::DeleteBackend { id } => write!(f, "delete BE {id}"),
        }
    }
}

/// Frees a large value on a thread of its own: a dump of 100k entries took milliseconds to free, and
/// every change arriving meanwhile waited for it. Small values are freed here.
pub(crate) fn drop_elsewhere<T: Send + 'static>(value: T, len: impl Fn(&T) -> usize) {
    if len(&value) < 10_000 {
        return;
    }
    if let Err(e) = std::thread::Builder::new().name("drop".into()).spawn(move || {
        crate::background::lower_this_thread();
        drop(value);
    }) {
        tracing::debug!(error = %e, "no thread to free a dump on; freed on the loop");
    }
}

/// The load-balancing maps, as the reconciler sees them. The aya-backed implementation lives with the
/// datapath; [`FakeMaps`] is the in-memory one for tests.
pub trait LbMaps {
    /// The current contents of all three maps.
    fn dump(&self) -> Result<DesiredMaps>;
    /// Performs one operation; deleting an absent key is not an error.
    fn apply(&mut self, op: &MapOp) -> Result<()>;
    /// Performs `ops` in order, with the outcome of [`apply`](Self::apply) on each in turn; an
    /// implementation may write a run of one kind in fewer system calls. On failure, the index of the
    /// operation that failed (those before it were performed) and its error.
    fn apply_ops(&mut self, ops: &[MapOp]) -> Result<(), (usize, anyhow::Error)> {
        for (i, op) in ops.iter().enumerate() {
            self.apply(op).map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The operations performed, in order.
    pub ops: Vec<MapOp>,
    /// Frontends left out because a map or an id space is full.
    pub unfit: Vec<Unfit>,
}

/// Holds the id allocator and the last state written between passes.
#[derive(Debug, Clone, Default)]
pub struct Reconciler {
    ids: Ids,
    /// What the maps hold, as far as this reconciler knows: the last desired state written without
    /// error (or the dump at start). `None` makes the next pass dump the maps. Shared with the
    /// resync's dumper, which diffs its dump against the state as it was when the resync asked: a
    /// pass that changes it meanwhile copies it first (copy on write), so the copy exists only while
    /// a resync is out and a pass writes, not for the life of the agent.
    written: Option<Arc<DesiredMaps>>,
    /// Passes that dumped the maps since start (tests and the debug log).
    dumps: u64,
    /// Who uses each id of `written`, when the next pass may change it in place.
    users: Option<incremental::Users>,
    /// Passes that recomputed everything since start (tests and the debug log).
    full_passes: u64,
    /// On a resync: the state last written and its users, with the frontend list it was written
    /// from. A resync of that same list (the planner hands out the same `Arc` when nothing changed)
    /// diffs the dump against it instead of recomputing every entry.
    resync_base: Option<(crate::lb::Frontends, DesiredMaps, incremental::Users)>,
    /// The frontend list `written` was brought to.
    written_from: Option<crate::lb::Frontends>,
    /// Resyncs that diffed the dump against the state last written (tests and the debug log).
    resyncs_from_written: u64,
    /// A dump read elsewhere (see `crate::resync_dumper`) for the next pass to diff against.
    given_dump: Option<(DesiredMaps, u64)>,
    /// Bumped by every pass that writes (or tries to): a dump read elsewhere is a true picture of
    /// the maps only if this did not move while it was read.
    writes: u64,
    /// Bumped whenever `written` is replaced or lost: a resync diff against an older one is void.
    epoch: u64,
    /// The keys written since the outstanding resync request (see [`Self::resync_with`]).
    touched: Option<resync::Touched>,
}

/// A resync's request, for [`Reconciler::resync_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncTicket {
    epoch: u64,
}

impl Reconciler {
    /// A reconciler that keeps the ids found in the maps (call once at start).
    pub fn restore(maps: &dyn LbMaps) -> Result<Self> {
        let dump = maps
            .dump()
            .context("dumping the load-balancing maps to restore ids")?;
        let mut ids = Ids::restore(&dump);
        // Entries the restore could not take over (duplicates) are orphans the first pass deletes.
        ids.hold(&dump);
        Ok(Self {
            ids,
            written: Some(Arc::new(dump)),
            dumps: 1,
            ..Self::default()
        })
    }

    /// A reconciler with the given allocator (e.g. [`Ids::with_limits`]).
    pub fn with_ids(ids: Ids) -> Self {
        Self {
            ids,
            ..Self::default()
        }
    }

    /// The next pass diffs against a fresh dump of the maps instead of the state last written, and so
    /// repairs and prunes whatever someone else changed in them.
    pub fn require_dump(&mut self) {
        self.written_from = None;
        self.resync_base = None;
        self.forget_written();
    }

    /// `written` is gone (the maps hold something it does not say): a resync diffed against it is
    /// void.
    fn forget_written(&mut self) {
        self.written = None;
        self.users = None;
        self.epoch += 1;
    }

    /// A resync asks for a dump diffed elsewhere against the state written now, which comes with the
    /// ticket; `None` if that state is not known.
    pub fn resync_request(&mut self) -> Option<(ResyncTicket, Arc<DesiredMaps>)> {
        let written = Arc::clone(self.written.as_ref()?);
        // A request already out keeps what it recorded: skipping more keys only defers repairs.
        self.touched.get_or_insert_default();
        Some((ResyncTicket { epoch: self.epoch }, written))
    }

    /// The request of [`Self::resync_request`] was not sent: stop recording the keys written.
    pub fn resync_dropped(&mut self) {
        self.touched = None;
    }

    /// Applies the resync's diff (the dump against the state written at `ticket`), except for the
    /// keys written since; holds the dump's orphan ids. `None` when the state written was replaced
    /// or lost since the request (ask again).
    pub fn resync_with(
        &mut self,
        diff: resync::ResyncDiff,
        ticket: ResyncTicket,
        maps: &mut dyn LbMaps,
    ) -> Result<Option<Outcome>> {
        let touched = self.touched.take();
        let Some(touched) = touched.filter(|_| ticket.epoch == self.epoch && self.written.is_some()) else {
            return Ok(None);
        };
        self.dumps += 1;
        self.resyncs_from_written += 1;
        let ops: Vec<MapOp> = diff.ops.into_iter().filter(|op| !touched.contains(op)).collect();
        self.writes += u64::from(!ops.is_empty());
        self.apply_all(&ops, maps)?;
        self.ids
            .hold_ids(diff.orphan_backends.into_iter(), diff.orphan_revnat.into_iter());
        Ok(Some(Outcome {
            ops,
            unfit: Vec::new(),
        }))
    }

    /// The write generation (see [`Self::resync_from`]).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// As [`Self::require_dump`], with the dump already read — from the maps as they were at write
    /// generation `writes` (asked for then, read before this reconciler writes again). A dump read
    /// while a pass wrote is not a picture of any one moment (an entry added and removed since
    /// would stay behind): then this does nothing and returns false.
    pub fn resync_from(&mut self, dump: DesiredMaps, writes: u64) -> bool {
        let (written, users) = (self.written.take(), self.users.take());
        self.forget_written();
        // Only a state every frontend fitted in (`users` is kept for those alone).
        self.resync_base = match (self.written_from.take(), written, users) {
            (Some(from), Some(written), Some(users)) => Some((from, Arc::unwrap_or_clone(written), users)),
            _ => None,
        };
        // A dump read while passes wrote is usable with the state last written (see `reconcile`);
        // without one, the pass reads the maps itself.
        let usable = writes == self.writes || self.resync_base.is_some();
        self.given_dump = usable.then_some((dump, writes));
        usable
    }

    /// How many passes recomputed every entry since start (the others changed only what changed).
    pub fn full_passes(&self) -> u64 {
        self.full_passes
    }

    /// How many times the maps were dumped since start.
    pub fn dumps(&self) -> u64 {
        self.dumps
    }

    /// How many resyncs found the plan unchanged and diffed the dump against the state last written.
    pub fn resyncs_from_written(&self) -> u64 {
        self.resyncs_from_written
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// One level-triggered pass: compute the desired contents, diff them against the state last
    /// written (or a dump, see the module doc), apply the difference in order. Stops at the first failed
    /// operation, after which the next pass starts over from a fresh dump; ids are released only after
    /// a pass completed.
    pub fn reconcile(&mut self, plan: &LbPlan, maps: &mut dyn LbMaps) -> Result<Outcome> {
        if let (Some(written), Some(users)) = (self.written.as_mut(), self.users.as_mut()) {
            if let Some(change) = users.update(plan, &mut self.ids, Arc::make_mut(written)) {
                self.written_from = Some(plan.frontends.clone());
                return self.write_change(change, maps);
            }
            // A state half-updated in place is not trusted: start over from the maps.
            self.forget_written();
        }
        self.full_passes += 1;
        // The state last written, brought to this plan in place when the plan changed since (a
        // change landing in the resync's pass): the same as recomputing every entry.
        // Its operations go first: an entry written after the dump was read and dropped now is only
        // in the state last written, and the dump's diff alone would leave it behind.
        let mut ops = Vec::new();
        let base = self
            .resync_base
            .take()
            .and_then(|(from, mut written, mut users)| {
                if !std::sync::Arc::ptr_eq(&from, &plan.frontends) {
                    ops = users.update(plan, &mut self.ids, &mut written)?.ops;
                }
                Some((from, written, users))
            });
        let given = self
            .given_dump
            .take()
            .filter(|(_, at)| *at == self.writes || base.is_some());
        let actual = match self.written.take() {
            Some(written) => written,
            None => {
                self.dumps += 1;
                let dump = match given {
                    Some((dump, _)) => dump,
                    None => maps.dump().context("dumping the load-balancing maps")?,
                };
                self.ids.hold(&dump);
                Arc::new(dump)
            }
        };
        self.users = None;
        // Ids held as orphans by the last dump stay held until the next one; that costs a few unused
        // ids for a while, never an id that a stale entry still points at.
        let (wanted, unfit, kept_users) = match base {
            // The same frontends with the same ids: `desired` would give this very state again.
            Some((_, wanted, users)) => {
                self.resyncs_from_written += 1;
                (wanted, Vec::new(), Some(users))
            }
            None => {
                let (wanted, unfit) = desired(plan, &mut self.ids);
                (wanted, unfit, None)
            }
        };
        ops.extend(diff(&wanted, &actual));
        drop_elsewhere(actual, |a| a.len());
        self.writes += u64::from(!ops.is_empty());
        if let Some(t) = self.touched.as_mut() {
            t.record(&ops);
        }
        self.apply_all(&ops, maps)?;
        self.ids.release_unused(&wanted);
        self.written = Some(Arc::new(wanted));
        self.epoch += 1;
        self.written_from = Some(plan.frontends.clone());
        // With a frontend left out, which ones fit depends on all of them: the next pass is full too.
        if unfit.is_empty() {
            self.users = kept_users.or_else(|| incremental::Users::of(plan, &self.ids));
        }
        Ok(Outcome { ops, unfit })
    }

    /// Writes `ops` in order; at the first failure the state written is forgotten (the next pass
    /// reads the maps).
    fn apply_all(&mut self, ops: &[MapOp], maps: &mut dyn LbMaps) -> Result<()> {
        if let Err((i, e)) = maps.apply_ops(ops) {
            self.forget_written();
            let op = ops.get(i).map_or_else(|| "?".to_string(), ToString::to_string);
            return Err(e).with_context(|| format!("map operation {} of {}: {op}", i + 1, ops.len()));
        }
        Ok(())
    }

    fn write_change(&mut self, change: incremental::Change, maps: &mut dyn LbMaps) -> Result<Outcome> {
        let ops = change.ops;
        self.writes += u64::from(!ops.is_empty());
        if let Some(t) = self.touched.as_mut() {
            t.record(&ops);
        }
        self.apply_all(&ops, maps)?;
        self.ids.release(&change.unused_backends, &change.unused_revnat);
        Ok(Outcome {
            ops,
            unfit: Vec::new(),
        })
    }
}
