//! Where programs are attached, reconciled against what should be attached.
//!
//! Pods: `tc_from_pod` on tc ingress of the host-side veth (what the pod sends) and `tc_to_pod` on tc egress
//! (what is delivered to it), as clsact direct-action filters. Netlink filters rather than TCX links:
//! every `tc` and `bpftool` release lists them (Debian 12's bpftool 7.1 does not show TCX), and they can
//! be replaced in place by handle. Node devices: `xdp_node`, native mode when the driver has
//! it, generic otherwise — the mode in use is reported, never hidden — and `tc_from_node` on tc
//! ingress for the north-south traffic XDP hands on.
//!
//! Nothing here is owned by the agent process, so a restart, a crash or an upgrade never leaves a gap:
//! tc filters sit at a fixed priority and handle, and a new agent replaces the program in them (one
//! netlink change the kernel applies atomically); XDP links are pinned in bpffs and updated in place
//! (see `links`). Only `cleanup` or an interface going away removes them.

use std::{collections::BTreeMap, os::fd::AsFd};

use anyhow::{Context, Result};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, Link},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact},
};
use common::{iface, map_names, net::Be32, prog_names};
use serde::Serialize;

use super::{
    Datapath,
    links::{self, Pinned},
    loader::program,
};

/// Where our tc filters sit on every pod interface. Priority 1 runs before filters other tools add
/// with the default priority; the handle ("ST") names ours, so a new agent replaces exactly them.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0x5354;

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
}

struct XdpEntry {
    ifindex: u32,
    mode: &'static str,
    /// `tc_from_node` is on the device's tc ingress; retried every pass until it is.
    tc: bool,
    /// The last error attaching `tc_from_node`, logged when it changes.
    tc_error: Option<String>,
}

/// `--xdp-mode`: the XDP attach modes the agent may use on node devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native (driver) mode where the driver has it, generic otherwise.
    #[default]
    Auto,
    Native,
    /// Generic (skb) mode: slower, but XDP_TX works on any device. veth pairs need it unless their
    /// peers run XDP too (native XDP_TX on a veth is dropped when the peer has no XDP receive queue).
    Generic,
}

impl XdpModeChoice {
    fn allows(self, mode: &str) -> bool {
        match self {
            XdpModeChoice::Auto => true,
            XdpModeChoice::Native => mode == "native",
            XdpModeChoice::Generic => mode == "generic",
        }
    }
}

#[derive(Default)]
pub struct Attachments {
    tc: BTreeMap<String, TcEntry>,
    xdp: BTreeMap<String, XdpEntry>,
    pub xdp_mode: XdpModeChoice,
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
            if e.tc {
                out.push(AttachmentView {
                    program: prog_names::TC_FROM_NODE,
                    hook: "tc-ingress",
                    interface: name.clone(),
                    ifindex: e.ifindex,
                    mode: "clsact",
                    pod: None,
                });
            }
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
            // The interface is usually gone with its pod, and its filters with it: errors are expected.
            let _ = detach_tc(&name);
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
        let from_pod = tc_program(&mut self.ebpf, prog_names::TC_FROM_POD)?;
        let ingress = place_tc(from_pod, &want.interface, TcAttachType::Ingress)
            .context("attaching tc_from_pod to tc ingress")?;
        let to_pod = tc_program(&mut self.ebpf, prog_names::TC_TO_POD)?;
        if let Err(e) = place_tc(to_pod, &want.interface, TcAttachType::Egress)
            .context("attaching tc_to_pod to tc egress")
        {
            // Never leave half of a pod's datapath attached (a replaced filter stays: it was whole).
            if ingress == Pinned::Created {
                let _ = detach_one(&want.interface, TcAttachType::Ingress);
            }
            return Err(e);
        }
        Ok(TcEntry {
            ifindex: want.ifindex,
            pod: want.pod.clone(),
        })
    }

    fn reconcile_xdp(&mut self, desired: &[Device], errors: &mut Vec<String>) {
        let wanted: Vec<(&str, u32)> = desired
            .iter()
            .map(|d| (d.interface.as_str(), d.ifindex))
            .collect();
        for name in stale(&self.attachments.xdp, &wanted, |e| e.ifindex) {
            let entry = self.attachments.xdp.remove(&name).expect("listed above");
            for mode in XDP_MODES {
                let _ = links::remove(&self.xdp_pin(entry.ifindex, mode));
            }
            let _ = detach_one(&name, TcAttachType::Ingress);
            tracing::info!(interface = %name, "detached xdp and tc programs of the device");
        }
        for want in desired {
            if !self.attachments.xdp.contains_key(&want.interface) {
                match self.attach_xdp(want) {
                    Ok((entry, how)) => {
                        tracing::info!(interface = %want.interface, mode = entry.mode, how = ?how, "attached xdp program");
                        self.attachments.xdp.insert(want.interface.clone(), entry);
                    }
                    Err(e) => {
                        errors.push(format!("device {}: {e:#}", want.interface));
                        continue;
                    }
                }
            }
            if self.attachments.xdp.get(&want.interface).is_some_and(|e| e.tc) {
                continue;
            }
            // What XDP passes on (local backends, SCTP, unresolved neighbours) is finished at tc ingress.
            let result = self.attach_node_tc(&want.interface);
            let entry = self
                .attachments
                .xdp
                .get_mut(&want.interface)
                .expect("attached above");
            match result {
                Ok(how) => {
                    tracing::info!(interface = %want.interface, how = ?how, "attached tc_from_node");
                    entry.tc = true;
                    entry.tc_error = None;
                }
                Err(e) => {
                    let message = format!("device {}: {e:#}", want.interface);
                    if entry.tc_error.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "tc_from_node not attached; retrying every pass");
                        entry.tc_error = Some(message.clone());
                    }
                    errors.push(message);
                }
            }
        }
        // Pins left by an earlier run for devices no longer wanted.
        let keep: Vec<String> = desired
            .iter()
            .flat_map(|d| XDP_MODES.map(|m| xdp_pin_name(d.ifindex, m)))
            .collect();
        for name in links::pinned_names(&self.pin_dir) {
            if name.starts_with("xdp_") && !keep.contains(&name) {
                let _ = links::remove(&links::links_dir(&self.pin_dir).join(&name));
                tracing::info!(pin = %name, "removed the xdp link of a device no longer wanted");
            }
        }
    }

    fn attach_node_tc(&mut self, interface: &str) -> Result<Pinned> {
        match qdisc_add_clsact(interface) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).context("adding the clsact qdisc"),
        }
        let prog = tc_program(&mut self.ebpf, prog_names::TC_FROM_NODE)?;
        place_tc(prog, interface, TcAttachType::Ingress).context("attaching tc_from_node to tc ingress")
    }

    fn xdp_pin(&self, ifindex: u32, mode: &str) -> std::path::PathBuf {
        links::links_dir(&self.pin_dir).join(xdp_pin_name(ifindex, mode))
    }

    /// Native mode when the driver has it, generic otherwise; a pin left by an earlier run is updated in
    /// the mode it was made in.
    fn attach_xdp(&mut self, want: &Device) -> Result<(XdpEntry, Pinned)> {
        let mut last_err = None;
        let choice = self.attachments.xdp_mode;
        // A link pinned in a mode no longer allowed goes first: a device carries one XDP program.
        for mode in XDP_MODES.into_iter().filter(|m| !choice.allows(m)) {
            let _ = links::remove(&self.xdp_pin(want.ifindex, mode));
        }
        let pinned: Vec<&'static str> = XDP_MODES
            .into_iter()
            .filter(|m| choice.allows(m) && self.xdp_pin(want.ifindex, m).exists())
            .collect();
        for mode in pinned
            .into_iter()
            .chain(XDP_MODES.into_iter().filter(|m| choice.allows(m)))
        {
            let pin = self.xdp_pin(want.ifindex, mode);
            let prog = xdp_program(&mut self.ebpf)?;
            let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
            let flags = if mode == "native" {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            let attach = || -> Result<FdLink> {
                let id = prog.attach_to_if_index(want.ifindex, flags)?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            };
            match links::update_or_create(&pin, fd.as_fd(), attach) {
                Ok(how) => {
                    return Ok((
                        XdpEntry {
                            ifindex: want.ifindex,
                            mode,
                            tc: false,
                            tc_error: None,
                        },
                        how,
                    ));
                }
                Err(e) => {
                    if mode == "native" && choice == XdpModeChoice::Auto {
                        tracing::warn!(interface = %want.interface, error = %format!("{e:#}"), "native XDP unavailable, using generic XDP");
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one mode was tried")).context("attaching xdp_node")
    }
}

const XDP_MODES: [&str; 2] = ["native", "generic"];

fn xdp_pin_name(ifindex: u32, mode: &str) -> String {
    format!("xdp_{ifindex}_{mode}")
}

/// Puts `prog` into our filter on `interface`: replaces the program of a filter an earlier agent left
/// (atomic in the kernel), or creates the filter. The link is not kept: a filter belongs to the
/// interface, and a link left with aya would be detached when the agent exits.
fn place_tc(prog: &mut SchedClassifier, interface: &str, hook: TcAttachType) -> Result<Pinned> {
    let existing =
        SchedClassifierLink::attached(interface, hook, TC_PRIORITY, TcHandle::from(TC_HANDLE), None)
            .with_context(|| format!("interface {interface}"))?;
    let (id, how) = match prog.attach_to_link(existing) {
        Ok(id) => (id, Pinned::Updated),
        Err(_) => {
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TcHandle::from(TC_HANDLE),
                classid: None,
            });
            (
                prog.attach_with_options(interface, hook, options)?,
                Pinned::Created,
            )
        }
    };
    // An NlLink holds no descriptor: forgetting it leaks nothing and keeps its Drop from detaching.
    std::mem::forget(prog.take_link(id)?);
    Ok(how)
}

fn detach_one(interface: &str, hook: TcAttachType) -> Result<()> {
    SchedClassifierLink::attached(interface, hook, TC_PRIORITY, TcHandle::from(TC_HANDLE), None)?.detach()?;
    Ok(())
}

/// Removes our filters from an interface; returns how many were there (0 to 2).
pub fn detach_tc(interface: &str) -> usize {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .filter(|&hook| detach_one(interface, hook).is_ok())
        .count()
}

impl Datapath {
    fn ifaces(&mut self) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, Be32>> {
        let map = self.map_mut(map_names::IFACES)?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    fn ifaces_direct(&mut self) -> Result<aya::maps::Array<&mut aya::maps::MapData, Be32>> {
        let map = self.map_mut(map_names::IFACES_DIRECT)?;
        Ok(aya::maps::Array::try_from(map)?)
    }

    /// Records the pod address behind `ifindex` where the datapath looks for it (`common::iface`).
    pub fn register_iface(&mut self, ifindex: u32, ip: std::net::Ipv4Addr) -> Result<()> {
        let want = Be32::from_octets(ip.octets());
        if iface::is_direct(ifindex) {
            let mut direct = self.ifaces_direct()?;
            if direct.get(&ifindex, 0).ok() != Some(want) {
                direct.set(ifindex, want, 0)?;
            }
            return Ok(());
        }
        let mut ifaces = self.ifaces()?;
        if ifaces.get(&ifindex, 0).ok() != Some(want) {
            ifaces.insert(ifindex, want, 0)?;
        }
        Ok(())
    }

    /// Clears what [`Self::register_iface`] recorded.
    pub fn forget_iface(&mut self, ifindex: u32) -> Result<()> {
        if iface::is_direct(ifindex) {
            self.ifaces_direct()?.set(ifindex, Be32::default(), 0)?;
        }
        // Also for direct ifindexes: a datapath before the direct table kept them all in the hash map,
        // and what it left there goes with the interface.
        super::absent_ok(self.ifaces()?.remove(&ifindex))?;
        Ok(())
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

fn tc_program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(program(ebpf, name)?.try_into()?)
}

fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp> {
    Ok(program(ebpf, prog_names::XDP_NODE)?.try_into()?)
}
