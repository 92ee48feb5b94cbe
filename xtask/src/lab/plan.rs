//! Names and addresses of everything the lab creates. Pure: no kernel, no files, so it is unit-tested.
//!
//! Every name starts with `strait-<lab>-`, so two labs (or a lab and a test) never collide and `lab down`
//! can find leftovers by prefix alone. Lab names may not contain `-`: with lab `a` the prefix
//! `strait-a-` would otherwise also match the objects of lab `a-b`.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

/// Longest netns name we use as is; longer pod names fall back to a hash (names stay readable in
/// `ip netns list`, and the cgroup and log file names derived from them stay short).
const MAX_NETNS_NAME: usize = 64;

/// FNV-1a, 64 bit: stable across runs, Rust versions and machines (std's hasher is not).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Eight hex characters of the hash of `s`.
pub fn hex8(s: &str) -> String {
    let h = fnv64(s.as_bytes());
    // Fold the high half in: the low 32 bits of FNV differ little between short, similar names.
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

pub fn check_lab_name(name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 16 || !ok_chars {
        bail!(
            "lab name {name:?}: use 1 to 16 characters from a-z and 0-9 (no '-': the name is a prefix of \
             every object the lab creates, and `lab down` matches on it)"
        );
    }
    Ok(())
}

pub fn prefix(lab: &str) -> String {
    format!("strait-{lab}-")
}

pub fn segment_netns(lab: &str) -> String {
    format!("strait-{lab}-seg")
}

pub fn external_netns(lab: &str) -> String {
    format!("strait-{lab}-external")
}

/// Kubernetes names are DNS labels/subdomains; anything else (or too long) is not used verbatim.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

pub fn node_netns(lab: &str, node: &str) -> String {
    let name = format!("strait-{lab}-node-{node}");
    if plain(node) && name.len() <= MAX_NETNS_NAME {
        name
    } else {
        format!("strait-{lab}-node-h{}", hex8(node))
    }
}

/// The short, unique key of a pod: the suffix of its netns name, also its cgroup and log file name.
/// `<ns>-<pod>` when that is plain, short and not yet `taken`; else `h<hash of ns/pod>`.
/// `taken` matters because `a-b/c` and `a/b-c` both read `a-b-c`.
pub fn pod_key(lab: &str, namespace: &str, pod: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let readable = format!("{namespace}-{pod}");
    let fits = format!("strait-{lab}-pod-{readable}").len() <= MAX_NETNS_NAME;
    if plain(namespace) && plain(pod) && fits && !taken(&readable) {
        readable
    } else {
        format!("h{}", hex8(&format!("{namespace}/{pod}")))
    }
}

pub fn pod_netns(lab: &str, key: &str) -> String {
    format!("strait-{lab}-pod-{key}")
}

/// Host side of a pod's veth, in the node's netns: `lxc` + 8 hex (15-character IFNAMSIZ limit).
pub fn host_veth(namespace: &str, pod: &str) -> String {
    format!("lxc{}", hex8(&format!("{namespace}/{pod}")))
}

/// Segment side of a node's (or the external client's) veth, in the segment netns.
pub fn segment_veth(what: &str) -> String {
    format!("seg{}", hex8(what))
}

/// MACs are derived from the pod IP (unique in the lab), so the permanent neighbour entries can be
/// written before the interfaces exist. Both are locally administered unicast addresses.
pub fn pod_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

pub fn host_veth_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0e:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The gateway every pod routes through: link-local, answered by the permanent neighbour entry, so no
/// address has to be put on the host veth (the Calico arrangement).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Subnet {
        Subnet {
            net: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.net)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) | !mask(self.prefix))
    }

    pub fn parse(s: &str) -> Option<Subnet> {
        let (ip, len) = s.split_once('/')?;
        let prefix: u8 = len.parse().ok().filter(|p| *p <= 32)?;
        Some(Subnet::new(ip.parse().ok()?, prefix))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Node IPs must share a subnet no wider than this (a lab is one L2 segment, not an address plan).
pub const WIDEST_NODE_PREFIX: u8 = 16;

/// The node segment's subnet: /24 when every node IP fits one /24 (the common case, and what people
/// expect to see), else the longest common prefix of them all, down to /16. `Err(i)` names the first
/// node that does not share a /16 with node 0. Network and broadcast addresses are checked by the caller.
pub fn node_subnet(ips: &[Ipv4Addr]) -> Result<Subnet, usize> {
    let Some(first) = ips.first() else {
        return Ok(Subnet::new(Ipv4Addr::new(10, 0, 0, 0), 24));
    };
    let mut prefix = 24u8;
    for (i, ip) in ips.iter().enumerate() {
        while !Subnet::new(*first, prefix).contains(*ip) {
            prefix -= 1;
            if prefix < WIDEST_NODE_PREFIX {
                return Err(i);
            }
        }
    }
    Ok(Subnet::new(*first, prefix))
}

/// The external client's address: the highest host address of the subnet nobody uses.
pub fn external_ip(subnet: Subnet, used: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.net) + 1;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last).rev().map(Ipv4Addr::from).find(|ip| !used(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lab_names() {
        assert!(check_lab_name("lab").is_ok());
        assert!(check_lab_name("t1234m").is_ok());
        assert!(check_lab_name("a-b").is_err());
        assert!(check_lab_name("").is_err());
        assert!(check_lab_name("Lab").is_err());
        assert!(check_lab_name("abcdefghijklmnopq").is_err());
    }

    #[test]
    fn hash_is_stable() {
        // FNV-1a test vector: a changed hash would rename every interface of running labs.
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(host_veth("x", "a"), host_veth("x", "a"));
        assert_ne!(host_veth("x", "a"), host_veth("x", "b"));
        assert_eq!(host_veth("x", "a").len(), 11);
    }

    #[test]
    fn pod_keys_readable_hashed_and_unique() {
        let none = |_: &str| false;
        assert_eq!(pod_key("lab", "x", "a", &none), "x-a");
        // Collides with a pod already named `a-b-c`: falls back to the hash.
        let taken = |k: &str| k == "a-b-c";
        let k = pod_key("lab", "a", "b-c", &taken);
        assert!(k.starts_with('h') && k.len() == 9, "{k}");
        // Odd characters and long names are hashed too.
        assert!(pod_key("lab", "x", "Web_1", &none).starts_with('h'));
        let long = "p".repeat(60);
        assert!(pod_key("lab", "x", &long, &none).starts_with('h'));
        assert_eq!(pod_netns("lab", "x-a"), "strait-lab-pod-x-a");
    }

    #[test]
    fn node_netns_names() {
        assert_eq!(node_netns("lab", "n1"), "strait-lab-node-n1");
        assert!(node_netns("lab", "N_1").starts_with("strait-lab-node-h"));
    }

    #[test]
    fn subnet_is_24_when_it_fits() {
        let s = node_subnet(&[ip("10.0.0.10"), ip("10.0.0.11")]).unwrap();
        assert_eq!(s.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn subnet_widens_to_common_prefix() {
        let s = node_subnet(&[ip("10.0.0.10"), ip("10.0.1.11"), ip("10.0.3.1")]).unwrap();
        assert_eq!(s.to_string(), "10.0.0.0/22");
    }

    #[test]
    fn subnet_refuses_unrelated_ips() {
        assert_eq!(
            node_subnet(&[ip("10.0.0.10"), ip("10.0.0.11"), ip("192.168.0.1")]),
            Err(2)
        );
    }

    #[test]
    fn external_ip_skips_used() {
        let s = Subnet::new(ip("10.0.0.0"), 24);
        assert_eq!(external_ip(s, &|_| false), Some(ip("10.0.0.254")));
        assert_eq!(external_ip(s, &|a| a == ip("10.0.0.254")), Some(ip("10.0.0.253")));
        let tiny = Subnet::new(ip("10.0.0.0"), 31);
        assert_eq!(external_ip(tiny, &|_| false), None);
    }

    #[test]
    fn macs_from_ip() {
        assert_eq!(pod_mac(ip("10.244.1.5")), "0a:58:0a:f4:01:05");
        assert_eq!(host_veth_mac(ip("10.244.1.5")), "0e:58:0a:f4:01:05");
    }

    #[test]
    fn subnet_parse_and_contains() {
        let s = Subnet::parse("10.244.1.0/24").unwrap();
        assert!(s.contains(ip("10.244.1.77")));
        assert!(!s.contains(ip("10.244.2.1")));
        assert_eq!(s.broadcast(), ip("10.244.1.255"));
        assert!(Subnet::parse("10.0.0.0/33").is_none());
    }
}
