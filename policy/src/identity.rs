//! Identities (numbers for label sets) and the stable allocation of every number the datapath sees.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{NamedPorts, PodRef, PodView, PolicyRef};
use crate::net::Ipv4Net;
use crate::selector::Labels;

/// What a pod identity stands for: everything a NetworkPolicy can tell about a pod peer.
///
/// The named-port table is part of the key, always. Pods with equal labels almost always come from one
/// template and share it, so this rarely adds identities; in exchange an identity resolves a named port
/// to exactly one number, which makes egress named-port entries exact per identity. Adding it only
/// "when needed" (when two pods with equal labels disagree) was rejected: it would make one pod's
/// identity depend on which other pods exist, so creating a pod could renumber its neighbours.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    pub namespace: String,
    pub namespace_labels: Labels,
    pub labels: Labels,
    pub named_ports: NamedPorts,
}

impl IdentityKey {
    pub(crate) fn of(pod: &PodView) -> Self {
        Self {
            namespace: pod.id.namespace.clone(),
            namespace_labels: pod.ns_labels.clone(),
            labels: pod.labels.clone(),
            named_ports: pod.named_ports.clone(),
        }
    }
}

fn write_labels(f: &mut fmt::Formatter<'_>, labels: &Labels) -> fmt::Result {
    f.write_str("{")?;
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{k}={v}")?;
    }
    f.write_str("}")
}

impl fmt::Display for IdentityKey {
    /// `ns=x nslabels={..} labels={..} ports={name=80/TCP,..}`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns={} nslabels=", self.namespace)?;
        write_labels(f, &self.namespace_labels)?;
        f.write_str(" labels=")?;
        write_labels(f, &self.labels)?;
        write!(f, " ports={{{}}}", self.named_ports)
    }
}

/// Every number handed out by a compile, keyed by what it stands for. Pass the previous compile's
/// allocations (the agent restores them at start from what it pinned) to keep numbers stable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    pub identities: BTreeMap<IdentityKey, u32>,
    pub endpoints: BTreeMap<PodRef, u32>,
    pub cidr_classes: BTreeMap<Ipv4Net, u32>,
    pub policies: BTreeMap<PolicyRef, u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("out of {what} numbers ({limit} in use)")]
pub struct Exhausted {
    pub what: &'static str,
    pub limit: u32,
}

/// Gives each key of `keys` a number in `first..limit`: the previous number if it had one; otherwise
/// the lowest number that no key held in `previous` (live or gone), so a number released in this pass
/// is not reused with a new meaning before the next pass. New keys are numbered in key order, so the
/// result depends only on the inputs.
pub(crate) fn allocate<K: Ord + Clone>(
    keys: &BTreeSet<K>,
    previous: &BTreeMap<K, u32>,
    first: u32,
    limit: u32,
    what: &'static str,
) -> Result<BTreeMap<K, u32>, Exhausted> {
    let mut out = BTreeMap::new();
    let taken: BTreeSet<u32> = previous.values().copied().collect();
    let mut next = first;
    for k in keys {
        if let Some(id) = previous.get(k).filter(|id| (first..limit).contains(*id)) {
            out.insert(k.clone(), *id);
            continue;
        }
        while taken.contains(&next) {
            next += 1;
        }
        if next >= limit {
            return Err(Exhausted {
                what,
                limit: limit - first,
            });
        }
        out.insert(k.clone(), next);
        next += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_reuses_and_quarantines() {
        let keys = |ks: &[&str]| ks.iter().map(|s| (*s).to_string()).collect::<BTreeSet<_>>();
        let a = allocate(&keys(&["b", "d"]), &BTreeMap::new(), 10, 100, "t").unwrap();
        assert_eq!(a, BTreeMap::from([("b".into(), 10), ("d".into(), 11)]));
        // "a" sorts first but does not renumber "b"/"d"; "d" is gone and 11 is not reused yet.
        let b = allocate(&keys(&["a", "b", "c"]), &a, 10, 100, "t").unwrap();
        assert_eq!(
            b,
            BTreeMap::from([("a".into(), 12), ("b".into(), 10), ("c".into(), 13)])
        );
        // One pass later 11 is free again.
        let c = allocate(&keys(&["a", "b", "c", "e"]), &b, 10, 100, "t").unwrap();
        assert_eq!(c["e"], 11);
        assert_eq!(
            allocate(&keys(&["a", "b", "c"]), &BTreeMap::new(), 10, 12, "t"),
            Err(Exhausted { what: "t", limit: 2 })
        );
    }
}
