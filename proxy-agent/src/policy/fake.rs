//! In-memory [`PolicyMaps`] for tests.

use anyhow::Result;

use super::{PolicyMaps, PolicyMapsState, PolicyOp};

/// BTreeMap-backed policy maps. `fail_after = Some(n)`: the next `n` operations succeed, the one after
/// fails (once). `history` (when `record` is set) holds the maps after every operation, for checks of
/// what the datapath could have seen in between.
#[derive(Debug, Clone, Default)]
pub struct FakePolicyMaps {
    pub maps: PolicyMapsState,
    pub applied: Vec<PolicyOp>,
    pub fail_after: Option<usize>,
    pub record: bool,
    pub history: Vec<PolicyMapsState>,
}

impl FakePolicyMaps {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PolicyMaps for FakePolicyMaps {
    fn dump(&self) -> Result<PolicyMapsState> {
        Ok(self.maps.clone())
    }

    fn apply(&mut self, op: &PolicyOp) -> Result<()> {
        crate::reconcile::injected_failure(&mut self.fail_after)?;
        let m = &mut self.maps;
        match op {
            PolicyOp::UpsertName { policy_ref, name } => {
                m.names.insert(*policy_ref, name.clone());
            }
            PolicyOp::UpsertPolicy { key, entry } => {
                m.policy.insert(*key, *entry);
            }
            PolicyOp::UpsertIpCache { key, value } => {
                m.ipcache.insert(*key, *value);
            }
            PolicyOp::UpsertEndpoint { key, value } => {
                m.endpoints.insert(*key, *value);
            }
            PolicyOp::DeleteEndpoint { key } => {
                m.endpoints.remove(key);
            }
            PolicyOp::DeletePolicy { key } => {
                m.policy.remove(key);
            }
            PolicyOp::DeleteIpCache { key } => {
                m.ipcache.remove(key);
            }
            PolicyOp::DeleteName { policy_ref } => {
                m.names.remove(policy_ref);
            }
            PolicyOp::SetState { none_isolated } => m.none_isolated = *none_isolated,
        }
        self.applied.push(op.clone());
        if self.record {
            self.history.push(self.maps.clone());
        }
        Ok(())
    }
}
