//! Plan → desired map contents.

use std::net::Ipv4Addr;

use common::{
    lb::{Backend4, Lb4Key, Lb4Service, MAX_SERVICE_ENTRIES, RevNat4, backend_flags},
    net::{Be16, Be32},
};

use super::{DesiredMaps, Ids};
use crate::lb::{Frontend, LbPlan, PlannedBackend, ServicePortRef};

/// A frontend that did not fit (a map or an id space is full); it is left out whole, never
/// programmed with part of its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub service: ServicePortRef,
    pub frontend: String,
    pub reason: String,
}

pub(crate) fn key(addr: Ipv4Addr, port: u16, proto: u8, scope: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        addr: Be32::from_octets(addr.octets()),
        port: Be16::new(port),
        slot,
        proto,
        scope,
        _pad: [0; 2],
    }
}

/// The map contents for `plan`, with ids from `ids` (allocated for new backends and frontends).
/// Backend slots follow the plan's backend order (sorted by address and port), so they are stable.
pub fn desired(plan: &LbPlan, ids: &mut Ids) -> (DesiredMaps, Vec<Unfit>) {
    let mut maps = DesiredMaps::default();
    let mut unfit = Vec::new();
    for f in plan.frontends.iter() {
        if let Err(reason) = add_frontend(&mut maps, ids, f) {
            unfit.push(Unfit {
                service: f.service.clone(),
                frontend: format!("{}:{}/{}", f.addr, f.port, f.proto),
                reason,
            });
        }
    }
    (maps.compacted(), unfit)
}

fn add_frontend(maps: &mut DesiredMaps, ids: &mut Ids, f: &Frontend) -> Result<(), String> {
    let proto = f.proto.number();
    let entries = 1 + f.backends.len();
    if maps.services.len() + entries > MAX_SERVICE_ENTRIES as usize {
        return Err(format!(
            "the services map is full ({MAX_SERVICE_ENTRIES} entries)"
        ));
    }
    let count = u16::try_from(f.backends.len()).map_err(|_| format!("{} backends", f.backends.len()))?;
    let rev_nat = ids
        .alloc_revnat(&(f.addr, f.port, proto))
        .ok_or("no free rev-NAT id")?;
    let mut slots = Vec::with_capacity(f.backends.len());
    for b in &f.backends {
        let id = ids
            .alloc_backend(&(b.addr, b.port, proto))
            .ok_or("no free backend id")?;
        slots.push((id, backend_value(b, proto)));
    }
    // Everything fits: write the frontend whole.
    for (slot, (id, backend)) in slots.into_iter().enumerate() {
        // One backend may serve several frontends: it is local if any says so (all agree: it is the
        // endpoint's nodeName), terminating only if every frontend uses it as a terminating fallback,
        // so the result does not depend on the order of the frontends.
        maps.backends
            .entry(id)
            .and_modify(|b| {
                b.flags = ((b.flags | backend.flags) & backend_flags::LOCAL)
                    | (b.flags & backend.flags & backend_flags::TERMINATING)
            })
            .or_insert(backend);
        maps.services.insert(
            key(f.addr, f.port, proto, f.scope, slot as u16 + 1),
            Lb4Service {
                backend_id: id,
                ..Default::default()
            },
        );
    }
    maps.services.insert(
        key(f.addr, f.port, proto, f.scope, 0),
        Lb4Service {
            backend_id: 0,
            count,
            rev_nat,
            flags: f.flags,
            affinity_timeout: f.affinity_timeout,
        },
    );
    maps.revnat.insert(rev_nat, revnat_value(f));
    Ok(())
}

/// A backend entry as one frontend sees it (its own LOCAL and TERMINATING flags).
pub(crate) fn backend_value(b: &PlannedBackend, proto: u8) -> Backend4 {
    let mut flags = 0;
    if b.local {
        flags |= backend_flags::LOCAL;
    }
    if b.terminating {
        flags |= backend_flags::TERMINATING;
    }
    Backend4 {
        addr: Be32::from_octets(b.addr.octets()),
        port: Be16::new(b.port),
        proto,
        flags,
    }
}

/// The frontend's slot-0 entry; `None` with more backends than a slot number holds.
pub(crate) fn frontend_value(f: &Frontend, rev_nat: u32) -> Option<Lb4Service> {
    Some(Lb4Service {
        backend_id: 0,
        count: u16::try_from(f.backends.len()).ok()?,
        rev_nat,
        flags: f.flags,
        affinity_timeout: f.affinity_timeout,
    })
}

pub(crate) fn revnat_value(f: &Frontend) -> RevNat4 {
    RevNat4 {
        addr: Be32::from_octets(f.addr.octets()),
        port: Be16::new(f.port),
        _pad: 0,
    }
}
