//! `ct list` and `backend list`: read straight from the pinned maps, so they work while the agent is
//! down or restarting — the moments one most wants to see what the datapath holds.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::Result;
use common::{
    ct::{CtEntry4, CtKey4, ct_flags},
    lb::{Backend4, backend_flags},
    map_names,
};
use serde::Serialize;

use crate::{
    cli::{Output, PinnedArgs},
    datapath::conntrack::{entries, monotonic_ns},
    reconcile::dump::proto_name,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtRow {
    pub proto: String,
    pub source: String,
    pub destination: String,
    /// forward (client → VIP), reply (backend → client), or policy (a flow tracked for policy only).
    pub direction: &'static str,
    pub flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub rev_nat: u32,
    /// Seconds since the entry last saw a packet (within a second: entries are refreshed at most once a
    /// second).
    pub idle_s: u64,
    /// After a reply-tuple clash: the client's own port and the one it leaves with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
    /// A reply entry: the frontend (VIP:port, node IP:NodePort) its answers leave from. On a DSR
    /// backend's node, that frontend is on the node the client entered through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
}

const FLAG_NAMES: [(u16, &str); 12] = [
    (ct_flags::FORWARD, "forward"),
    (ct_flags::REPLY, "reply"),
    (ct_flags::SEEN_FIN, "fin"),
    (ct_flags::SEEN_RST, "rst"),
    (ct_flags::SEEN_REPLY, "seen-reply"),
    (ct_flags::SNAT, "hairpin-snat"),
    (ct_flags::EGRESS_OK, "egress-ok"),
    (ct_flags::INGRESS_OK, "ingress-ok"),
    (ct_flags::PORT_SNAT, "port-snat"),
    (ct_flags::NODEPORT, "north-south"),
    (ct_flags::DSR, "dsr"),
    (ct_flags::FRONTEND, "frontend"),
];

/// Pure: one conntrack entry as a row, `now_ns` on the entries' clock (CLOCK_MONOTONIC).
pub fn ct_row(k: &CtKey4, e: &CtEntry4, now_ns: u64) -> CtRow {
    let addr = |a: common::net::Be32| Ipv4Addr::from(a.octets());
    let holds_frontend = e.flags & ct_flags::FRONTEND != 0;
    let translated = e.rewrite_port.get() != 0 && !holds_frontend;
    let direction = if e.flags & ct_flags::FORWARD != 0 {
        "forward"
    } else if e.flags & ct_flags::REPLY != 0 && (e.rev_nat != 0 || e.flags & ct_flags::DSR != 0) {
        "reply"
    } else {
        "policy"
    };
    CtRow {
        proto: proto_name(k.proto),
        source: format!("{}:{}", addr(k.saddr), k.sport.get()),
        destination: format!("{}:{}", addr(k.daddr), k.dport.get()),
        direction,
        flags: FLAG_NAMES
            .iter()
            .filter(|(bit, _)| e.flags & bit != 0)
            .map(|&(_, name)| name)
            .collect(),
        // A reply entry's key starts at its backend; its rewrite fields hold the frontend.
        backend: if holds_frontend {
            Some(format!("{}:{}", addr(k.saddr), k.sport.get()))
        } else {
            translated.then(|| format!("{}:{}", addr(e.rewrite_addr), e.rewrite_port.get()))
        },
        rev_nat: e.rev_nat,
        idle_s: now_ns.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        ports: (e.flags & ct_flags::PORT_SNAT != 0).then(|| (e.client_port.get(), e.wire_port.get())),
        frontend: if holds_frontend {
            Some(format!("{}:{}", addr(e.rewrite_addr), e.rewrite_port.get()))
        } else {
            (e.flags & ct_flags::DSR != 0 && e.orig_saddr.raw() != 0)
                .then(|| format!("{}:{}", addr(e.orig_saddr), e.wire_port.get()))
        },
    }
}

pub fn render_ct(rows: &[CtRow]) -> String {
    let mut s = format!(
        "{:<5} {:<22} {:<22} {:<8} {:<22} {:>6} {:>6}  FLAGS\n",
        "PROTO", "SOURCE", "DESTINATION", "DIR", "BACKEND", "REVNAT", "IDLE"
    );
    for r in rows {
        let mut flags = r.flags.join(",");
        if let Some((client, wire)) = r.ports {
            let _ = write!(flags, " (port {client} -> {wire})");
        }
        if let Some(frontend) = &r.frontend {
            let _ = write!(flags, " (from {frontend})");
        }
        let _ = writeln!(
            s,
            "{:<5} {:<22} {:<22} {:<8} {:<22} {:>6} {:>5}s  {}",
            r.proto,
            r.source,
            r.destination,
            r.direction,
            r.backend.as_deref().unwrap_or("-"),
            r.rev_nat,
            r.idle_s,
            flags
        );
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub proto: String,
    pub flags: Vec<&'static str>,
}

pub fn backend_row(id: u32, b: &Backend4) -> BackendRow {
    let mut flags = Vec::new();
    if b.flags & backend_flags::LOCAL != 0 {
        flags.push("local");
    }
    if b.flags & backend_flags::TERMINATING != 0 {
        flags.push("terminating");
    }
    BackendRow {
        id,
        address: format!("{}:{}", Ipv4Addr::from(b.addr.octets()), b.port.get()),
        proto: proto_name(b.proto),
        flags,
    }
}

pub fn render_backends(rows: &[BackendRow]) -> String {
    let mut s = format!("{:>7} {:<22} {:<5} FLAGS\n", "ID", "ADDRESS", "PROTO");
    for r in rows {
        let _ = writeln!(
            s,
            "{:>7} {:<22} {:<5} {}",
            r.id,
            r.address,
            r.proto,
            r.flags.join(",")
        );
    }
    s
}

fn ct_rows(pin_dir: &Path) -> Result<Vec<CtRow>> {
    let (_, all) = entries::<CtKey4, CtEntry4>(pin_dir, map_names::CT4, common::ct::MAX_CT_ENTRIES)?;
    let now = monotonic_ns();
    let mut rows: Vec<(CtKey4, CtRow)> = all.into_iter().map(|(k, e)| (k, ct_row(&k, &e, now))).collect();
    rows.sort_by_key(|(k, _)| *k);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

pub fn print_ct(args: &PinnedArgs, count_only: bool) -> Result<()> {
    let rows = ct_rows(&args.bpffs_root)?;
    let text = match (count_only, args.output) {
        (true, Output::Json) => serde_json::json!({"entries": rows.len()}).to_string() + "\n",
        (true, Output::Table) => format!("{}\n", rows.len()),
        (false, Output::Json) => serde_json::to_string_pretty(&rows)? + "\n",
        (false, Output::Table) => render_ct(&rows),
    };
    crate::cli::write_stdout(&text)
}

pub fn print_backends(args: &PinnedArgs) -> Result<()> {
    let (_, all) = entries::<u32, Backend4>(
        &args.bpffs_root,
        map_names::LB4_BACKENDS,
        common::lb::MAX_BACKENDS,
    )?;
    let mut rows: Vec<BackendRow> = all.into_iter().map(|(id, b)| backend_row(id, &b)).collect();
    rows.sort_by_key(|r| r.id);
    crate::cli::write_stdout(&match args.output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => render_backends(&rows),
    })
}

#[cfg(test)]
mod tests {
    use common::net::{Be16, Be32, proto};

    use super::*;

    #[test]
    fn a_reallocated_reply_entry_shows_both_ports() {
        let k = CtKey4 {
            saddr: Be32::from_octets([10, 244, 2, 5]),
            daddr: Be32::from_octets([10, 244, 1, 2]),
            sport: Be16::new(8080),
            dport: Be16::new(51000),
            proto: proto::UDP,
            _pad: 0,
            _pad2: 0,
        };
        let e = CtEntry4 {
            backend_id: 7,
            rev_nat: 2,
            last_seen_ns: 5_000_000_000,
            rewrite_addr: Be32::from_octets([10, 244, 2, 5]),
            rewrite_port: Be16::new(8080),
            flags: ct_flags::REPLY | ct_flags::PORT_SNAT | ct_flags::SEEN_REPLY,
            orig_saddr: Be32::default(),
            client_port: Be16::new(40000),
            wire_port: Be16::new(51000),
        };
        let r = ct_row(&k, &e, 12_500_000_000);
        assert_eq!(r.direction, "reply");
        assert_eq!(r.source, "10.244.2.5:8080");
        assert_eq!(r.proto, "UDP");
        assert_eq!(r.idle_s, 7);
        assert_eq!(r.ports, Some((40000, 51000)));
        assert_eq!(r.flags, vec!["reply", "seen-reply", "port-snat"]);
        let table = render_ct(&[r]);
        assert!(table.contains("(port 40000 -> 51000)"), "{table}");
    }

    #[test]
    fn a_dsr_reply_entry_names_the_frontend_it_answers_from() {
        let e = CtEntry4 {
            rewrite_addr: Be32::from_octets([10, 244, 2, 11]),
            rewrite_port: Be16::new(8080),
            flags: ct_flags::REPLY | ct_flags::NODEPORT | ct_flags::DSR,
            orig_saddr: Be32::from_octets([10, 0, 0, 10]),
            client_port: Be16::new(40000),
            wire_port: Be16::new(30080),
            ..Default::default()
        };
        let r = ct_row(&CtKey4::default(), &e, 0);
        assert_eq!(r.direction, "reply");
        assert_eq!(r.flags, vec!["reply", "north-south", "dsr"]);
        assert_eq!(r.frontend.as_deref(), Some("10.0.0.10:30080"));
        let table = render_ct(&[r]);
        assert!(table.contains("(from 10.0.0.10:30080)"), "{table}");
    }

    #[test]
    fn a_reply_entry_names_the_frontend_it_restores() {
        let e = CtEntry4 {
            rev_nat: 3,
            rewrite_addr: Be32::from_octets([10, 96, 0, 10]),
            rewrite_port: Be16::new(80),
            flags: ct_flags::REPLY | ct_flags::FRONTEND,
            client_port: Be16::new(40000),
            wire_port: Be16::new(40000),
            ..Default::default()
        };
        let k = CtKey4 {
            saddr: Be32::from_octets([10, 244, 2, 5]),
            daddr: Be32::from_octets([10, 244, 1, 2]),
            sport: Be16::new(8080),
            dport: Be16::new(40000),
            proto: proto::TCP,
            _pad: 0,
            _pad2: 0,
        };
        let r = ct_row(&k, &e, 0);
        assert_eq!(r.direction, "reply");
        assert_eq!(
            r.backend.as_deref(),
            Some("10.244.2.5:8080"),
            "the backend is the key's source"
        );
        assert_eq!(r.frontend.as_deref(), Some("10.96.0.10:80"));
        assert_eq!(r.flags, vec!["reply", "frontend"]);
    }

    #[test]
    fn a_policy_only_entry_is_named_so() {
        let e = CtEntry4 {
            flags: ct_flags::REPLY,
            ..Default::default()
        };
        let r = ct_row(&CtKey4::default(), &e, 0);
        assert_eq!(r.direction, "policy");
        assert_eq!(r.backend, None);
    }

    #[test]
    fn backends_show_their_flags() {
        let b = Backend4 {
            addr: Be32::from_octets([10, 244, 1, 11]),
            port: Be16::new(8080),
            proto: proto::TCP,
            flags: backend_flags::LOCAL | backend_flags::TERMINATING,
        };
        let r = backend_row(3, &b);
        assert_eq!(r.address, "10.244.1.11:8080");
        assert_eq!(r.flags, vec!["local", "terminating"]);
        assert!(render_backends(&[r]).contains("local,terminating"));
    }
}
