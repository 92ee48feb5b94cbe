//! IPv4 route lookup from `/proc/net/route` (per network namespace), used to find a pod's host-side
//! interface from its IP the way a CNI plugin leaves it: a directly connected route to the pod.
//! Reading the table avoids depending on interface names, which differ between CNIs.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

/// One row of the main routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub interface: String,
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// `None` for a directly connected route.
    pub gateway: Option<Ipv4Addr>,
}

impl Route {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        u32::from(ip) & mask == u32::from(self.destination) & mask
    }
}

pub fn read_routes() -> Result<Vec<Route>> {
    let text = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    parse_proc_net_route(&text)
}

/// Parses the kernel's table: hex fields in host byte order of a little-endian machine as written by the
/// kernel (`%08X` of the raw `__be32`), so the bytes must be reversed back to network order.
pub fn parse_proc_net_route(text: &str) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let hex = |i: usize| -> Result<u32> {
            u32::from_str_radix(fields[i], 16)
                .with_context(|| format!("/proc/net/route line {}: field {i}", n + 1))
        };
        let addr = |v: u32| Ipv4Addr::from(v.to_le_bytes());
        let destination = addr(hex(1)?);
        let gateway = addr(hex(2)?);
        let mask = addr(hex(7)?);
        routes.push(Route {
            interface: fields[0].to_string(),
            destination,
            prefix_len: u32::from(mask).count_ones() as u8,
            gateway: (!gateway.is_unspecified()).then_some(gateway),
        });
    }
    Ok(routes)
}

/// Longest-prefix match, as the kernel's main table would answer.
pub fn lookup(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.contains(ip))
        .max_by_key(|r| r.prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0032A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
lxc1a2b3c4d\t0201F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth0\t0202F40A\t0B32A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn parses_directly_connected_and_gateway_routes() {
        let routes = parse_proc_net_route(TABLE).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].destination, Ipv4Addr::new(192, 168, 50, 0));
        assert_eq!(routes[0].prefix_len, 24);
        assert_eq!(routes[1].interface, "lxc1a2b3c4d");
        assert_eq!(routes[1].destination, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(routes[1].gateway, None);
        assert_eq!(routes[2].gateway, Some(Ipv4Addr::new(192, 168, 50, 11)));
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = parse_proc_net_route(TABLE).unwrap();
        assert_eq!(
            lookup(&routes, Ipv4Addr::new(10, 244, 1, 2)).unwrap().interface,
            "lxc1a2b3c4d"
        );
        assert_eq!(
            lookup(&routes, Ipv4Addr::new(192, 168, 50, 9)).unwrap().interface,
            "eth0"
        );
        assert!(lookup(&routes, Ipv4Addr::new(10, 9, 9, 9)).is_none());
    }
}
