//! Network interfaces of the node and their IPv4 addresses.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub ipv4: Vec<Ipv4Addr>,
}

/// All interfaces of the current network namespace, by name.
pub fn read_links() -> Result<BTreeMap<String, Link>> {
    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    for ifa in getifaddrs().context("listing interfaces (getifaddrs)")? {
        let name = ifa.interface_name.clone();
        if !links.contains_key(&name) {
            let Ok(ifindex) = if_nametoindex(name.as_str()) else {
                continue; // gone between the two calls
            };
            links.insert(
                name.clone(),
                Link {
                    name: name.clone(),
                    ifindex,
                    ipv4: Vec::new(),
                },
            );
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            let link = links.get_mut(&name).expect("inserted above");
            link.ipv4.push(sin.ip());
        }
    }
    Ok(links)
}
