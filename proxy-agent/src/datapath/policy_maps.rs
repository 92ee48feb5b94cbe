//! The NetworkPolicy maps of the loaded datapath, behind the reconciler's [`PolicyMaps`] trait, and the
//! verdict counters (drops by reason, new connections by policy).

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use common::{
    event::{DROP_REASON_SLOTS, DropReason},
    map_names,
    net::Be32,
    policy::{
        IpCacheKey4, IpCacheValue4, MAX_POLICIES, PolicyEndpoint4, PolicyEndpointKey4, PolicyEntry,
        PolicyKey, PolicyKeyData, PolicyName, policy_state,
    },
};

use super::{Datapath, MapSource};
use crate::policy::{PolicyMaps, PolicyMapsState, PolicyOp};

pub struct AyaPolicyMaps<'a> {
    datapath: &'a mut Datapath,
}

impl Datapath {
    pub fn policy_maps(&mut self) -> AyaPolicyMaps<'_> {
        AyaPolicyMaps { datapath: self }
    }

    /// Drops by reason, summed over CPUs (every reason, zeros included).
    pub fn drop_counters(&self) -> Result<Vec<(DropReason, u64)>> {
        let array = per_cpu_u64(self, map_names::DROP_STATS)?;
        DropReason::ALL
            .iter()
            .filter(|r| (**r as u32) < DROP_REASON_SLOTS && **r != DropReason::None)
            .map(|r| Ok((*r, sum(&array, *r as u32)?)))
            .collect()
    }

    /// New connections let through by each of `refs` (policy refs), summed over CPUs.
    pub fn policy_counters(&self, refs: impl Iterator<Item = u16>) -> Result<Vec<(u16, u64)>> {
        let array = per_cpu_u64(self, map_names::POLICY_STATS)?;
        refs.filter(|r| u32::from(*r) < MAX_POLICIES)
            .map(|r| Ok((r, sum(&array, u32::from(r))?)))
            .collect()
    }
}

fn per_cpu_u64<'m>(dp: &'m Datapath, name: &str) -> Result<PerCpuArray<&'m MapData, u64>> {
    let map = dp.map(name)?;
    PerCpuArray::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn sum(array: &PerCpuArray<&MapData, u64>, index: u32) -> Result<u64> {
    let values = array
        .get(&index, 0)
        .with_context(|| format!("reading counter {index}"))?;
    Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
}

fn ipcache(dp: &mut Datapath) -> Result<LpmTrie<&mut MapData, Be32, IpCacheValue4>> {
    Ok(LpmTrie::try_from(dp.map_mut(map_names::IPCACHE4)?)?)
}

fn policy(dp: &mut Datapath) -> Result<LpmTrie<&mut MapData, PolicyKeyData, PolicyEntry>> {
    Ok(LpmTrie::try_from(dp.map_mut(map_names::POLICY)?)?)
}

fn endpoints(dp: &mut Datapath) -> Result<HashMap<&mut MapData, PolicyEndpointKey4, PolicyEndpoint4>> {
    Ok(HashMap::try_from(dp.map_mut(map_names::POLICY_ENDPOINTS4)?)?)
}

fn names(dp: &mut Datapath) -> Result<Array<&mut MapData, PolicyName>> {
    Ok(Array::try_from(dp.map_mut(map_names::POLICY_NAMES)?)?)
}

fn state(dp: &mut Datapath) -> Result<Array<&mut MapData, u32>> {
    Ok(Array::try_from(dp.map_mut(map_names::POLICY_STATE)?)?)
}

fn name_value(name: &str) -> PolicyName {
    let mut v = PolicyName::default();
    let bytes = name.as_bytes();
    // Names are namespace/name: at most 63 + 1 + 253 bytes; a longer one is cut at a char boundary.
    let mut len = bytes.len().min(v.name.len());
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    v.name[..len].copy_from_slice(&bytes[..len]);
    v.len = len as u16;
    v
}

/// The policy maps' contents, read from `src` (the loaded object, or pins).
pub fn dump(src: &dyn MapSource) -> Result<PolicyMapsState> {
    let dp = src;
    let mut out = PolicyMapsState::default();
    let ipcache: LpmTrie<&MapData, Be32, IpCacheValue4> =
        LpmTrie::try_from(dp.map(map_names::IPCACHE4)?).context("ipcache map type")?;
    // Collected, not inserted one by one (see `lb_maps::dump`).
    out.ipcache = ipcache
        .iter()
        .map(|e| {
            e.map(|(k, v)| {
                let key = IpCacheKey4 {
                    prefix_len: k.prefix_len(),
                    addr: k.data(),
                };
                (key, v)
            })
        })
        .collect::<Result<_, _>>()
        .context("reading the ipcache map")?;
    let policy: LpmTrie<&MapData, PolicyKeyData, PolicyEntry> =
        LpmTrie::try_from(dp.map(map_names::POLICY)?).context("policy map type")?;
    out.policy = policy
        .iter()
        .map(|e| e.map(|(k, v)| (PolicyKey::from_data(k.prefix_len(), &k.data()), v)))
        .collect::<Result<_, _>>()
        .context("reading the policy map")?;
    let endpoints: HashMap<&MapData, PolicyEndpointKey4, PolicyEndpoint4> =
        HashMap::try_from(dp.map(map_names::POLICY_ENDPOINTS4)?).context("endpoints map type")?;
    out.endpoints = endpoints
        .iter()
        .collect::<Result<_, _>>()
        .context("reading the policy endpoints map")?;
    let names: Array<&MapData, PolicyName> =
        Array::try_from(dp.map(map_names::POLICY_NAMES)?).context("policy names map type")?;
    for (i, v) in names.iter().enumerate() {
        let v = v.context("reading the policy names map")?;
        if v.len == 0 {
            continue;
        }
        let len = usize::from(v.len).min(v.name.len());
        let name = String::from_utf8_lossy(&v.name[..len]).into_owned();
        if let Ok(r) = u16::try_from(i) {
            out.names.insert(r, name);
        }
    }
    let state: Array<&MapData, u32> =
        Array::try_from(dp.map(map_names::POLICY_STATE)?).context("policy state map type")?;
    let flags = state.get(&0, 0).context("reading the policy state map")?;
    out.none_isolated = flags & policy_state::NONE_ISOLATED != 0;
    Ok(out)
}

/// The maps [`dump`] reads.
pub const DUMPED: [&str; 5] = [
    map_names::IPCACHE4,
    map_names::POLICY,
    map_names::POLICY_ENDPOINTS4,
    map_names::POLICY_NAMES,
    map_names::POLICY_STATE,
];

impl PolicyMaps for AyaPolicyMaps<'_> {
    fn dump(&self) -> Result<PolicyMapsState> {
        dump(&*self.datapath)
    }

    fn apply(&mut self, op: &PolicyOp) -> Result<()> {
        let dp = &mut *self.datapath;
        match op {
            PolicyOp::UpsertName { policy_ref, name } => {
                names(dp)?.set(u32::from(*policy_ref), name_value(name), 0)?;
            }
            PolicyOp::DeleteName { policy_ref } => {
                names(dp)?.set(u32::from(*policy_ref), PolicyName::default(), 0)?;
            }
            PolicyOp::UpsertPolicy { key, entry } => {
                policy(dp)?.insert(&Key::new(key.prefix_len, key.data()), entry, 0)?;
            }
            PolicyOp::DeletePolicy { key } => {
                super::absent_ok(policy(dp)?.remove(&Key::new(key.prefix_len, key.data())))?;
            }
            PolicyOp::UpsertIpCache { key, value } => {
                ipcache(dp)?.insert(&Key::new(key.prefix_len, key.addr), value, 0)?;
            }
            PolicyOp::DeleteIpCache { key } => {
                super::absent_ok(ipcache(dp)?.remove(&Key::new(key.prefix_len, key.addr)))?;
            }
            PolicyOp::UpsertEndpoint { key, value } => {
                endpoints(dp)?.insert(key, value, 0)?;
            }
            PolicyOp::DeleteEndpoint { key } => {
                super::absent_ok(endpoints(dp)?.remove(key))?;
            }
            PolicyOp::SetState { none_isolated } => {
                let flags = if *none_isolated {
                    policy_state::NONE_ISOLATED
                } else {
                    0
                };
                state(dp)?.set(0, flags, 0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_fit_the_slot() {
        let v = name_value("x/allow");
        assert_eq!(usize::from(v.len), 7);
        assert_eq!(&v.name[..7], b"x/allow");
        let long = "n/".to_owned() + &"é".repeat(200);
        let v = name_value(&long);
        assert!(usize::from(v.len) <= v.name.len());
        assert!(std::str::from_utf8(&v.name[..usize::from(v.len)]).is_ok());
    }
}
