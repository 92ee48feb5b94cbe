//! `proxy-agent status`: the agent's view of itself, served as JSON by the admin endpoint and rendered
//! as a table for people.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::{Output, StatusArgs};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    pub node: String,
    /// Conntrack pressure and the sweeper's work.
    #[serde(default)]
    pub conntrack: crate::datapath::conntrack::CtStats,
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
    #[serde(default)]
    pub policy: PolicyStatusView,
}

/// NetworkPolicy as last reconciled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyStatusView {
    /// Local pods in the endpoints map.
    pub endpoints: usize,
    pub identities: usize,
    /// Valid policies in the cluster (numbered in the names table).
    pub policies: usize,
    /// Policy LPM entries.
    pub entries: usize,
    pub last_ops: usize,
    pub total_ops: u64,
    /// Invalid policies, skipped (everything else is enforced).
    pub errors: Vec<String>,
    /// What did not fit (a policy ref beyond the names table).
    pub unfit: Vec<String>,
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
    /// When a reconcile pass last completed without error (the health endpoint's `lastUpdated`).
    #[serde(default)]
    pub last_pass_ok_unix_ms: u64,
    /// False while this node's Node object is being deleted or drained by the cluster autoscaler:
    /// `/healthz` then fails, so load balancers stop sending to the node, as with kube-proxy.
    #[serde(default)]
    pub node_eligible: bool,
}

/// Service load balancing as last reconciled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LbView {
    pub frontends: usize,
    /// Map operations of the last pass that changed something, and since start.
    pub last_ops: usize,
    pub total_ops: u64,
    /// When the last pass with operations had written them (µs since the epoch): a change's way to
    /// the maps is timed from this, not from when someone asked.
    #[serde(default)]
    pub last_write_unix_us: u64,
    /// Frontends left out because a map or id space is full.
    pub unfit: Vec<String>,
    /// `--nodeport-mode`: `snat` or `dsr`, as written to the datapath.
    #[serde(default)]
    pub nodeport_mode: String,
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

/// GETs `path` (with its query) from the agent's admin endpoint; a non-2xx answer is an error carrying
/// the agent's message.
/// Wall-clock milliseconds since the Unix epoch, as the sync and health figures record them.
pub fn unix_us_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn get_text(admin_addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let url = format!("http://{admin_addr}{path}");
    let mut resp = ureq::get(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .with_context(|| format!("asking the agent at {url} (is `proxy-agent run` running on this node?)"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .context("reading the agent's answer")?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status}: {}", body.trim());
    }
    Ok(body)
}

/// [`get_text`], parsed as JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(admin_addr: std::net::SocketAddr, path: &str) -> Result<T> {
    let body = get_text(admin_addr, path)?;
    serde_json::from_str(&body)
        .with_context(|| format!("the agent's answer to {path} has an unexpected shape"))
}

pub fn print(args: &StatusArgs) -> Result<()> {
    let view: StatusView = get_json(args.admin_addr, "/status")?;
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
        "Services:     {} frontends programmed, {} map operations so far, NodePort mode {}",
        v.lb.frontends, v.lb.total_ops, v.lb.nodeport_mode
    );
    for u in &v.lb.unfit {
        let _ = writeln!(s, "  does not fit: {u}");
    }
    let ct = &v.conntrack;
    let _ = writeln!(
        s,
        "Conntrack:    {} of {} entries, {} sweeps, {} expired idle, {} of deleted backends",
        ct.entries, ct.max, ct.gc_runs, ct.expired_idle, ct.expired_backend_gone
    );
    let p = &v.policy;
    let _ = writeln!(
        s,
        "Policy:       {} local endpoints, {} identities, {} policies, {} entries, {} map operations so far",
        p.endpoints, p.identities, p.policies, p.entries, p.total_ops
    );
    for e in &p.errors {
        let _ = writeln!(s, "  skipped: {e}");
    }
    for u in &p.unfit {
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

/// `service list`: the frontends in the service maps, with their backends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicesView {
    pub frontends: Vec<FrontendRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrontendRow {
    /// `10.96.0.10:80/TCP`
    pub frontend: String,
    /// `external` or `internal` (the entry for traffic from inside the cluster).
    pub scope: String,
    /// `ns/name[:port]` of the Service, when the last plan had it.
    pub service: Option<String>,
    /// Kind and options (`ClusterIP`, `NodePort+Local`, ...).
    pub flags: String,
    pub revnat: u32,
    pub affinity_timeout: u32,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendRow {
    pub slot: u16,
    pub id: u32,
    /// `10.244.1.5:8080/TCP`; empty when the slot points at a missing backend.
    pub address: String,
    /// `active` or `terminating`.
    pub state: String,
    pub local: bool,
}

impl ServicesView {
    pub fn from_dump(
        d: &crate::reconcile::DesiredMaps,
        names: &BTreeMap<(std::net::Ipv4Addr, u16, u8, u8), String>,
    ) -> Self {
        use common::lb::{SCOPE_INTERNAL, backend_flags};
        let proto =
            |p: u8| crate::lb::Proto::from_number(p).map_or_else(|| format!("proto{p}"), |p| p.to_string());
        let mut frontends = Vec::new();
        let mut keys: Vec<_> = d.services.iter().filter(|(k, _)| k.slot == 0).collect();
        keys.sort_by_key(|(k, _)| (k.addr.get(), k.port.get(), k.proto, k.scope));
        for (k, svc) in keys {
            let addr = std::net::Ipv4Addr::from(k.addr.octets());
            let backends = (1..=svc.count)
                .filter_map(|slot| {
                    let s = d.services.get(&common::lb::Lb4Key { slot, ..*k })?;
                    let be = d.backends.get(&s.backend_id);
                    Some(BackendRow {
                        slot,
                        id: s.backend_id,
                        address: be.map_or_else(String::new, |b| {
                            format!(
                                "{}:{}/{}",
                                std::net::Ipv4Addr::from(b.addr.octets()),
                                b.port.get(),
                                proto(b.proto)
                            )
                        }),
                        state: if be.is_some_and(|b| b.flags & backend_flags::TERMINATING != 0) {
                            "terminating".into()
                        } else {
                            "active".into()
                        },
                        local: be.is_some_and(|b| b.flags & backend_flags::LOCAL != 0),
                    })
                })
                .collect();
            frontends.push(FrontendRow {
                frontend: format!("{addr}:{}/{}", k.port.get(), proto(k.proto)),
                scope: if k.scope == SCOPE_INTERNAL {
                    "internal".into()
                } else {
                    "external".into()
                },
                service: names.get(&(addr, k.port.get(), k.proto, k.scope)).cloned(),
                flags: crate::lb::render::svc_flag_names(svc.flags),
                revnat: svc.rev_nat,
                affinity_timeout: svc.affinity_timeout,
                backends,
            });
        }
        Self { frontends }
    }
}

pub fn render_services(v: &ServicesView) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<9} {:<28} {:<20} BACKENDS",
        "FRONTEND", "SCOPE", "SERVICE", "FLAGS"
    );
    for f in &v.frontends {
        let backends: Vec<String> = f
            .backends
            .iter()
            .map(|b| {
                let mut t = format!("{}) {}", b.slot, b.address);
                if b.state != "active" {
                    t.push_str(&format!(" ({})", b.state));
                }
                if b.local {
                    t.push_str(" (local)");
                }
                t
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<24} {:<9} {:<28} {:<20} {}",
            f.frontend,
            f.scope,
            f.service.as_deref().unwrap_or("-"),
            f.flags,
            if backends.is_empty() {
                "(none)".to_owned()
            } else {
                backends.join(", ")
            }
        );
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
            lb: LbView {
                nodeport_mode: "dsr".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let table = render_table(&view);
        assert!(table.contains("lxc12345678"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("Services:") && l.ends_with("NodePort mode dsr")),
            "{table}"
        );
        assert!(table.contains("app/web"));
        assert!(
            table
                .lines()
                .any(|l| l.contains("xdp_node") && l.contains("42") && l.contains("4200"))
        );
    }
}
