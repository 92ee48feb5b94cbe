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

pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}
