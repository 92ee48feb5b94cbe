//! The BPF filesystem, where maps (and later links) are pinned so they outlive the agent.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet (as Cilium's agent does), then creates
/// `pin_dir` under it.
pub fn prepare(pin_dir: &Path) -> Result<()> {
    let mount_point = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(mount_point) {
        bail!("--bpffs-root {}: must be under {BPFFS_MOUNT}", pin_dir.display());
    }
    if !is_bpffs(mount_point) {
        std::fs::create_dir_all(mount_point).with_context(|| format!("creating {BPFFS_MOUNT}"))?;
        mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs at {BPFFS_MOUNT}"))?;
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating pin directory {}", pin_dir.display()))
}

/// Removes the pins in `pin_dir` named by `common::map_names::RETIRED`; returns the names removed. A
/// pin that cannot be removed is logged and left: nothing reads it.
pub fn remove_retired(pin_dir: &Path) -> Vec<&'static str> {
    remove_pins(pin_dir, common::map_names::RETIRED)
}

fn remove_pins(pin_dir: &Path, names: &[&'static str]) -> Vec<&'static str> {
    let mut removed = Vec::new();
    for name in names {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(*name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(pin = %path.display(), error = %e, "cannot remove a retired pin"),
        }
    }
    removed
}

pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_pins_are_removed_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("strait-retired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (retired, absent) = ("STRAIT_TEST_RETIRED_V1", "STRAIT_TEST_NEVER_PINNED_V1");
        for name in [retired, common::map_names::EVENTS, common::map_names::CT4] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let first = remove_pins(&dir, &[retired, absent]);
        let kept = [common::map_names::EVENTS, common::map_names::CT4].map(|n| dir.join(n).exists());
        let second = remove_pins(&dir, &[retired, absent]);
        let gone = !dir.join(retired).exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(first, vec![retired], "only the pin that exists is reported");
        assert!(gone);
        assert_eq!(kept, [true, true]);
        assert!(second.is_empty(), "a second start finds nothing to remove");
    }
}
