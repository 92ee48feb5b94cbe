//! `spec.loadBalancerSourceRanges`: which client prefixes may reach a Service's LoadBalancer
//! addresses (kube-proxy filters LoadBalancer ingress IPs only; NodePorts and externalIPs stay open).
//!
//! The safe reading of bad input: an entry that does not parse is reported and left out, and the list
//! still restricts. So a list whose every entry is invalid (or IPv6, which no IPv4 client matches)
//! lets no IPv4 client in, rather than falling back to "open to all".

use std::{collections::BTreeSet, net::Ipv4Addr};

use policy::net::{Cidr, Ipv4Net};

use super::{FrontendKind, LbPlan, Proto};

/// `Ok(None)`: no restriction (field absent or empty). `Some(prefixes)`: only these sources, possibly
/// none. Bad entries come back as `(field, reason)` pairs; they never make the list more open.
pub(crate) fn parse(ranges: Option<&[String]>) -> (Option<Vec<Ipv4Net>>, Vec<(String, String)>) {
    let Some(ranges) = ranges.filter(|r| !r.is_empty()) else {
        return (None, Vec::new());
    };
    let mut prefixes = BTreeSet::new();
    let mut bad = Vec::new();
    for (i, range) in ranges.iter().enumerate() {
        // The API server trims surrounding spaces before validating; so do we.
        match range.trim().parse::<Cidr>() {
            Ok(Cidr::V4(net)) => {
                prefixes.insert(net);
            }
            Ok(Cidr::V6) => {}
            Err(e) => bad.push((
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{e}; entry ignored, the other ranges still restrict"),
            )),
        }
    }
    (Some(prefixes.into_iter().collect()), bad)
}

/// The allowed prefixes of a LoadBalancer frontend: the ranges, and, as kube-proxy does, the Service's
/// own LoadBalancer IPs when a range covers one of this node's addresses (a node that holds the VIP
/// locally reaches it with the VIP as source address).
pub(crate) fn for_frontend(ranges: &[Ipv4Net], lb_ips: &[Ipv4Addr], node_ips: &[Ipv4Addr]) -> Vec<Ipv4Net> {
    let mut out: BTreeSet<Ipv4Net> = ranges.iter().copied().collect();
    if ranges.iter().any(|r| node_ips.iter().any(|ip| r.contains(*ip))) {
        out.extend(lb_ips.iter().map(|ip| Ipv4Net::host(*ip)));
    }
    out.into_iter().collect()
}

/// One entry of the proposed source-range LPM map: (frontend, allowed prefix). The map writer turns
/// the frontend into its rev-NAT id.
pub type SourceRangeEntry = ((Ipv4Addr, u16, Proto), Ipv4Net);

/// Every (frontend, prefix) the datapath must allow; a LoadBalancer frontend with `source_ranges` set
/// and no entry here admits no client.
pub fn desired(plan: &LbPlan) -> BTreeSet<SourceRangeEntry> {
    plan.frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::LoadBalancer)
        .flat_map(|f| {
            f.source_ranges
                .iter()
                .flatten()
                .map(move |net| ((f.addr, f.port, f.proto), *net))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::tests::load;

    fn net(s: &str) -> Ipv4Net {
        match s.parse::<Cidr>() {
            Ok(Cidr::V4(n)) => n,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn absent_or_empty_means_open() {
        assert_eq!(parse(None), (None, vec![]));
        assert_eq!(parse(Some(&[])), (None, vec![]));
    }

    #[test]
    fn bad_entries_are_reported_by_index_and_never_widen_the_list() {
        let (ranges, bad) = parse(Some(&strings(&[
            " 10.1.2.3/16 ",
            "bogus",
            "10.0.0.0/40",
            "2001:db8::/32",
            "192.0.2.0/24",
            "10.1.0.0/16",
        ])));
        assert_eq!(ranges, Some(vec![net("10.1.0.0/16"), net("192.0.2.0/24")]));
        let fields: Vec<&str> = bad.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.loadBalancerSourceRanges[1]",
                "spec.loadBalancerSourceRanges[2]"
            ]
        );
        assert!(bad[0].1.contains("\"bogus\""), "{bad:?}");

        // Nothing usable: restricted to nobody, not open.
        let (ranges, bad) = parse(Some(&strings(&["bogus", "2001:db8::/32"])));
        assert_eq!(ranges, Some(vec![]));
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn a_range_covering_the_node_admits_the_lb_ips() {
        let lb = [Ipv4Addr::new(198, 51, 100, 1)];
        let node = [Ipv4Addr::new(192, 168, 1, 10)];
        assert_eq!(
            for_frontend(&[net("10.0.0.0/8")], &lb, &node),
            vec![net("10.0.0.0/8")]
        );
        assert_eq!(
            for_frontend(&[net("192.168.0.0/16")], &lb, &node),
            vec![net("192.168.0.0/16"), net("198.51.100.1/32")]
        );
        assert_eq!(for_frontend(&[], &lb, &node), vec![]);
    }

    #[test]
    fn desired_entries_are_the_lb_frontends_ranges() {
        let (snapshot, node, _) = load("north-south");
        let plan = crate::lb::plan(&snapshot, &node);
        let entries = desired(&plan);
        let web80 = (Ipv4Addr::new(198, 51, 100, 30), 80, Proto::Tcp);
        let expected: BTreeSet<SourceRangeEntry> = ["192.168.50.0/24", "198.51.100.30/32", "203.0.113.0/24"]
            .iter()
            .flat_map(|n| [(web80, net(n)), ((web80.0, 443, Proto::Tcp), net(n))])
            .collect();
        assert_eq!(entries, expected);
        // The Service whose list has nothing usable has a restricted frontend and no entry.
        let closed = plan
            .frontends
            .iter()
            .find(|f| f.service.name() == "elsewhere" && f.kind == FrontendKind::LoadBalancer)
            .unwrap();
        assert_eq!(closed.source_ranges, Some(vec![]));
        assert!(!entries.iter().any(|((addr, ..), _)| *addr == closed.addr));
        // NodePorts and ClusterIPs are never restricted, even where the Service has ranges.
        assert!(
            plan.frontends
                .iter()
                .filter(|f| f.kind != FrontendKind::LoadBalancer)
                .all(|f| f.source_ranges.is_none())
        );
    }
}
