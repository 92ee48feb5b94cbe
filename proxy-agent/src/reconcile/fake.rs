//! In-memory [`LbMaps`] for tests.

use anyhow::{Result, bail};

use super::{DesiredMaps, LbMaps, MapOp};

/// BTreeMap-backed maps. `fail_after = Some(n)`: the next `n` operations succeed, the one after fails
/// (once), as a full map or a kernel error would.
#[derive(Debug, Clone, Default)]
pub struct FakeMaps {
    pub maps: DesiredMaps,
    /// Every operation applied successfully, in order.
    pub applied: Vec<MapOp>,
    pub fail_after: Option<usize>,
    /// Check [`DesiredMaps::check_references`] after every operation and fail the operation that
    /// breaks it.
    pub check_references: bool,
}

impl FakeMaps {
    pub fn new() -> Self {
        Self {
            check_references: true,
            ..Self::default()
        }
    }

    pub fn with(maps: DesiredMaps) -> Self {
        Self { maps, ..Self::new() }
    }
}

impl LbMaps for FakeMaps {
    fn dump(&self) -> Result<DesiredMaps> {
        Ok(self.maps.clone())
    }

    fn apply(&mut self, op: &MapOp) -> Result<()> {
        injected_failure(&mut self.fail_after)?;
        let before = self.check_references.then(|| self.maps.clone());
        super::resync::apply(&mut self.maps, op);
        if let Some(before) = before {
            if let Err(e) = self.maps.check_references() {
                self.maps = before;
                bail!("{op} would leave a dangling reference: {e}");
            }
        }
        self.applied.push(*op);
        Ok(())
    }
}

/// The failure injection both fakes share: with `Some(n)` the next `n` operations succeed and the one
/// after fails (once); `None` never fails.
pub fn injected_failure(fail_after: &mut Option<usize>) -> Result<()> {
    match *fail_after {
        Some(0) => {
            *fail_after = None;
            bail!("injected failure");
        }
        Some(n) => *fail_after = Some(n - 1),
        None => {}
    }
    Ok(())
}
