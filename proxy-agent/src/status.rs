//! `proxy-agent status`: the agent's view of itself, served as JSON by the admin endpoint and rendered
//! as a table for people.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::{Output, StatusArgs};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    pub node: String,
    pub version: String,
    pub pin_dir: String,
    pub object_bytes: usize,
    pub sync: SyncView,
    pub lb: LbView,
    pub endpoints: Vec<EndpointView>,
    pub attachments: Vec<AttachmentRow>,
    /// Program name → packets and bytes it has seen, summed over CPUs.
    pub counters: BTreeMap<String, CounterView>,
    /// Problems of the last reconcile (an interface that could not be attached, ...).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncView {
    pub source: String,
    /// True once the first full snapshot has been read and applied.
    pub synced: bool,
    pub objects: usize,
    pub last_sync_unix_ms: u64,
    pub reloads: u64,
    /// Objects that were reported and skipped.
    pub rejected: Vec<String>,
}

/// Service load balancing as last reconciled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LbView {
    pub frontends: usize,
    /// Map operations of the last pass that changed something, and since start.
    pub last_ops: usize,
    pub total_ops: u64,
    /// Frontends left out because a map or id space is full.
    pub unfit: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointView {
    pub pod: String,
    pub ip: String,
    pub interface: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentRow {
    pub program: String,
    pub hook: String,
    pub interface: String,
    pub ifindex: u32,
    pub mode: String,
    pub pod: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
}

pub fn print(args: &StatusArgs) -> Result<()> {
    let url = format!("http://{}/status", args.admin_addr);
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("asking the agent at {url} (is `proxy-agent run` running on this node?)"))?
        .body_mut()
        .read_to_string()
        .context("reading the agent's answer")?;
    let view: StatusView =
        serde_json::from_str(&body).context("the agent's /status answer is not a status")?;
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&view)? + "\n",
        Output::Table => render_table(&view),
    };
    crate::cli::write_stdout(&text)
}

pub fn render_table(v: &StatusView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Node:         {}", v.node);
    let _ = writeln!(
        s,
        "Version:      {} (eBPF object {} bytes)",
        v.version, v.object_bytes
    );
    let _ = writeln!(s, "Pinned maps:  {}", v.pin_dir);
    let _ = writeln!(
        s,
        "Sync:         {} from {}, {} objects, {} reloads{}",
        if v.sync.synced { "synced" } else { "not synced" },
        v.sync.source,
        v.sync.objects,
        v.sync.reloads,
        if v.sync.rejected.is_empty() {
            String::new()
        } else {
            format!(", {} rejected", v.sync.rejected.len())
        }
    );
    for r in &v.sync.rejected {
        let _ = writeln!(s, "  rejected: {r}");
    }
    let _ = writeln!(
        s,
        "Services:     {} frontends programmed, {} map operations so far",
        v.lb.frontends, v.lb.total_ops
    );
    for u in &v.lb.unfit {
        let _ = writeln!(s, "  does not fit: {u}");
    }
    let _ = writeln!(s, "\nAttachments:");
    let _ = writeln!(
        s,
        "  {:<12} {:<11} {:<16} {:>7} {:<8} POD",
        "PROGRAM", "HOOK", "INTERFACE", "IFINDEX", "MODE"
    );
    for a in &v.attachments {
        let _ = writeln!(
            s,
            "  {:<12} {:<11} {:<16} {:>7} {:<8} {}",
            a.program,
            a.hook,
            a.interface,
            a.ifindex,
            a.mode,
            a.pod.as_deref().unwrap_or("-")
        );
    }
    let pending: Vec<&EndpointView> = v.endpoints.iter().filter(|e| e.interface.is_none()).collect();
    if !pending.is_empty() {
        let _ = writeln!(s, "\nLocal pods without a host interface yet:");
        for e in pending {
            let _ = writeln!(s, "  {} {}", e.pod, e.ip);
        }
    }
    let _ = writeln!(s, "\nCounters:");
    let _ = writeln!(s, "  {:<12} {:>12} {:>14}", "PROGRAM", "PACKETS", "BYTES");
    for (name, c) in &v.counters {
        let _ = writeln!(s, "  {:<12} {:>12} {:>14}", name, c.packets, c.bytes);
    }
    if !v.errors.is_empty() {
        let _ = writeln!(s, "\nErrors:");
        for e in &v.errors {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_every_attachment_and_counter() {
        let view = StatusView {
            node: "node-a".into(),
            attachments: vec![AttachmentRow {
                program: "tc_from_pod".into(),
                hook: "tc-ingress".into(),
                interface: "lxc12345678".into(),
                ifindex: 7,
                mode: "tcx".into(),
                pod: Some("app/web".into()),
            }],
            counters: [(
                "xdp_node".to_string(),
                CounterView {
                    packets: 42,
                    bytes: 4200,
                },
            )]
            .into(),
            ..Default::default()
        };
        let table = render_table(&view);
        assert!(table.contains("lxc12345678"), "{table}");
        assert!(table.contains("app/web"));
        assert!(
            table
                .lines()
                .any(|l| l.contains("xdp_node") && l.contains("42") && l.contains("4200"))
        );
    }
}
