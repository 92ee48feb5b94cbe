//! Where programs are attached, reconciled against what should be attached.
//!
//! Pods: `tc_from_pod` on tc ingress of the host-side veth (what the pod sends) and `tc_to_pod` on tc egress
//! (what is delivered to it), as clsact direct-action filters. Netlink filters rather than TCX links:
//! every `tc` and `bpftool` release lists them (Debian 12's bpftool 7.1 does not show TCX), and they can
//! be replaced in place by handle. Node devices: `xdp_node`, native mode when the driver has
//! it, generic otherwise — the mode in use is reported, never hidden.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, qdisc_add_clsact},
    xdp::XdpLinkId,
};
use common::{map_names, net::Be32, prog_names};
use serde::Serialize;

use super::{Datapath, loader::program};

/// A pod's host-side interface that should carry the tc programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub interface: String,
    pub ifindex: u32,
    pub pod: String,
    /// The pod's address: registered for the interface so the datapath can refuse spoofed sources.
    pub ip: std::net::Ipv4Addr,
}

/// A node device that should carry the XDP program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub interface: String,
    pub ifindex: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredAttachments {
    pub pods: Vec<PodInterface>,
    pub devices: Vec<Device>,
}

struct TcEntry {
    ifindex: u32,
    pod: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

struct XdpEntry {
    ifindex: u32,
    mode: &'static str,
    link: XdpLinkId,
}

#[derive(Default)]
pub struct Attachments {
    tc: BTreeMap<String, TcEntry>,
    xdp: BTreeMap<String, XdpEntry>,
}

/// One attachment as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentView {
    pub program: &'static str,
    pub hook: &'static str,
    pub interface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Attachments {
    pub fn view(&self) -> Vec<AttachmentView> {
        let mut out = Vec::new();
        for (name, e) in &self.xdp {
            out.push(AttachmentView {
                program: prog_names::XDP_NODE,
                hook: "xdp",
                interface: name.clone(),
                ifindex: e.ifindex,
                mode: e.mode,
                pod: None,
            });
        }
        for (name, e) in &self.tc {
            for (program, hook) in [
                (prog_names::TC_FROM_POD, "tc-ingress"),
                (prog_names::TC_TO_POD, "tc-egress"),
            ] {
                out.push(AttachmentView {
                    program,
                    hook,
                    interface: name.clone(),
                    ifindex: e.ifindex,
                    mode: "clsact",
                    pod: Some(e.pod.clone()),
                });
            }
        }
        out
    }
}

impl Datapath {
    /// Every attachment, as `status` shows them: XDP, tc, then the socket hooks.
    pub fn attachment_views(&self) -> Vec<AttachmentView> {
        let mut out = self.attachments.view();
        out.extend(self.cgroup_view());
        out
    }

    /// Attaches where `desired` says and detaches where it no longer does. Returns one message per
    /// interface that failed; the others are still reconciled.
    pub fn reconcile_attachments(&mut self, desired: &DesiredAttachments) -> Vec<String> {
        let mut errors = Vec::new();
        self.reconcile_tc(&desired.pods, &mut errors);
        self.reconcile_xdp(&desired.devices, &mut errors);
        errors
    }

    fn reconcile_tc(&mut self, desired: &[PodInterface], errors: &mut Vec<String>) {
        let wanted: Vec<(&str, u32)> = desired
            .iter()
            .map(|d| (d.interface.as_str(), d.ifindex))
            .collect();
        for name in stale(&self.attachments.tc, &wanted, |e| e.ifindex) {
            let entry = self.attachments.tc.remove(&name).expect("listed above");
            // The interface is usually gone with its pod, and its links with it: errors are expected.
            if let Ok(p) = tc_program(&mut self.ebpf, prog_names::TC_FROM_POD) {
                let _ = p.detach(entry.ingress);
            }
            if let Ok(p) = tc_program(&mut self.ebpf, prog_names::TC_TO_POD) {
                let _ = p.detach(entry.egress);
            }
            let _ = self.forget_iface(entry.ifindex);
            tracing::info!(interface = %name, pod = %entry.pod, "detached tc programs");
        }
        for want in desired {
            // Registered before attaching, so the first packet the program sees is already checked.
            if let Err(e) = self.register_iface(want.ifindex, want.ip) {
                errors.push(format!(
                    "pod {} interface {}: registering its address: {e:#}",
                    want.pod, want.interface
                ));
                continue;
            }
            if let Some(entry) = self.attachments.tc.get_mut(&want.interface) {
                entry.pod.clone_from(&want.pod);
                continue;
            }
            match self.attach_tc(want) {
                Ok(entry) => {
                    tracing::info!(interface = %want.interface, pod = %want.pod, "attached tc programs");
                    self.attachments.tc.insert(want.interface.clone(), entry);
                }
                Err(e) => errors.push(format!("pod {} interface {}: {e:#}", want.pod, want.interface)),
            }
        }
    }

    fn attach_tc(&mut self, want: &PodInterface) -> Result<TcEntry> {
        match qdisc_add_clsact(&want.interface) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).context("adding the clsact qdisc"),
        }
        let ingress = tc_program(&mut self.ebpf, prog_names::TC_FROM_POD)?
            .attach_with_options(&want.interface, TcAttachType::Ingress, netlink())
            .context("attaching tc_from_pod to tc ingress")?;
        let egress = match tc_program(&mut self.ebpf, prog_names::TC_TO_POD)?
            .attach_with_options(&want.interface, TcAttachType::Egress, netlink())
            .context("attaching tc_to_pod to tc egress")
        {
            Ok(id) => id,
            Err(e) => {
                // Never leave half of a pod's datapath attached.
                let _ = tc_program(&mut self.ebpf, prog_names::TC_FROM_POD)?.detach(ingress);
                return Err(e);
            }
        };
        Ok(TcEntry {
            ifindex: want.ifindex,
            pod: want.pod.clone(),
            ingress,
            egress,
        })
    }

    fn reconcile_xdp(&mut self, desired: &[Device], errors: &mut Vec<String>) {
        let wanted: Vec<(&str, u32)> = desired
            .iter()
            .map(|d| (d.interface.as_str(), d.ifindex))
            .collect();
        for name in stale(&self.attachments.xdp, &wanted, |e| e.ifindex) {
            let entry = self.attachments.xdp.remove(&name).expect("listed above");
            if let Ok(p) = xdp_program(&mut self.ebpf) {
                let _ = p.detach(entry.link);
            }
            tracing::info!(interface = %name, "detached xdp program");
        }
        for want in desired {
            if self.attachments.xdp.contains_key(&want.interface) {
                continue;
            }
            match self.attach_xdp(want) {
                Ok(entry) => {
                    tracing::info!(interface = %want.interface, mode = entry.mode, "attached xdp program");
                    self.attachments.xdp.insert(want.interface.clone(), entry);
                }
                Err(e) => errors.push(format!("device {}: {e:#}", want.interface)),
            }
        }
    }

    fn attach_xdp(&mut self, want: &Device) -> Result<XdpEntry> {
        let prog = xdp_program(&mut self.ebpf)?;
        match prog.attach_to_if_index(want.ifindex, XdpMode::Driver) {
            Ok(link) => Ok(XdpEntry {
                ifindex: want.ifindex,
                mode: "native",
                link,
            }),
            Err(native) => {
                tracing::warn!(interface = %want.interface, error = %native, "native XDP unavailable, using generic XDP");
                let link = prog
                    .attach_to_if_index(want.ifindex, XdpMode::Skb)
                    .context("attaching xdp_node in generic mode")?;
                Ok(XdpEntry {
                    ifindex: want.ifindex,
                    mode: "generic",
                    link,
                })
            }
        }
    }
}

impl Datapath {
    fn ifaces(&mut self) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, Be32>> {
        let map = self
            .ebpf
            .map_mut(map_names::IFACES)
            .with_context(|| format!("map {} missing from the object", map_names::IFACES))?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    fn register_iface(&mut self, ifindex: u32, ip: std::net::Ipv4Addr) -> Result<()> {
        let want = Be32::from_octets(ip.octets());
        let mut ifaces = self.ifaces()?;
        if ifaces.get(&ifindex, 0).ok() != Some(want) {
            ifaces.insert(ifindex, want, 0)?;
        }
        Ok(())
    }

    fn forget_iface(&mut self, ifindex: u32) -> Result<()> {
        match self.ifaces()?.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Attached interfaces that are no longer wanted, or whose interface was recreated under the same
/// name (another ifindex: the old links went with the old interface).
fn stale<E>(
    attached: &BTreeMap<String, E>,
    wanted: &[(&str, u32)],
    ifindex: impl Fn(&E) -> u32,
) -> Vec<String> {
    attached
        .iter()
        .filter(|(name, e)| !wanted.iter().any(|(w, i)| w == name && *i == ifindex(e)))
        .map(|(name, _)| name.clone())
        .collect()
}

fn netlink() -> TcAttachOptions {
    TcAttachOptions::Netlink(NlOptions::default())
}

fn tc_program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(program(ebpf, name)?.try_into()?)
}

fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp> {
    Ok(program(ebpf, prog_names::XDP_NODE)?.try_into()?)
}
