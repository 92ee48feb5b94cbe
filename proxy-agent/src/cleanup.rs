//! `proxy-agent cleanup`: removes everything the agent leaves in the kernel, the way `kube-proxy
//! --cleanup` removes its rules — our tc filters on every interface of this network namespace, the
//! pinned XDP and socket-hook links (removing the pin detaches them), and the pinned maps. Run it with
//! the agent stopped: a running agent would put its attachments back on its next pass.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    cli::{CleanupArgs, Output},
    datapath::{attach, bpffs, links},
    host::links as host_links,
};

#[derive(Debug, Default, Serialize)]
pub struct CleanupReport {
    /// Interfaces whose tc filters (ingress, egress or both) were removed.
    pub tc_interfaces: Vec<String>,
    /// Pinned links removed (XDP per device, socket hooks per cgroup).
    pub links: Vec<String>,
    /// Pinned maps removed.
    pub maps: Vec<String>,
    pub pin_dir: PathBuf,
}

pub fn run(args: &CleanupArgs) -> Result<()> {
    let report = cleanup(&args.bpffs_root)?;
    crate::cli::write_stdout(&match args.output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Table => render(&report),
    })
}

pub fn cleanup(pin_dir: &Path) -> Result<CleanupReport> {
    let mut report = CleanupReport {
        pin_dir: pin_dir.to_path_buf(),
        ..Default::default()
    };
    for name in host_links::read_links()?.into_keys() {
        if attach::detach_tc(&name) > 0 {
            report.tc_interfaces.push(name);
        }
    }
    if !bpffs::is_bpffs(Path::new(bpffs::BPFFS_MOUNT)) || !pin_dir.exists() {
        return Ok(report);
    }
    for name in links::pinned_names(pin_dir) {
        links::remove(&links::links_dir(pin_dir).join(&name))?;
        report.links.push(name);
    }
    let links_dir = links::links_dir(pin_dir);
    if links_dir.exists() {
        std::fs::remove_dir(&links_dir).with_context(|| format!("removing {}", links_dir.display()))?;
    }
    let mut maps: Vec<String> = std::fs::read_dir(pin_dir)
        .with_context(|| format!("reading {}", pin_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("STRAIT_"))
        .collect();
    maps.sort();
    for name in &maps {
        let path = pin_dir.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing the pinned map {}", path.display()))?;
    }
    report.maps = maps;
    // Only an empty directory goes: anything else in it is not ours to delete.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(report)
}

fn render(r: &CleanupReport) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "tc filters removed from: {}\npinned links removed: {}\npinned maps removed ({}): {}\n",
        list(&r.tc_interfaces),
        list(&r.links),
        r.pin_dir.display(),
        list(&r.maps),
    )
}
