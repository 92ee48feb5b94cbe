//! The node's ephemeral port range, which external traffic SNATed to the node must stay out of (see
//! `common::config::DatapathConfig::local_port_min`). Per network namespace, like the rest of `host`.

use anyhow::{Context, Result, bail};

const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `net.ipv4.ip_local_port_range` of the calling thread's network namespace.
pub fn ephemeral_range() -> Result<(u16, u16)> {
    let text = std::fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    parse_range(&text).with_context(|| format!("{PATH}: {:?}", text.trim()))
}

/// Fewer ports than this left to SNAT (1024–65535 less the node's range) and the range is not kept out
/// of: through this node each backend port could then hold only that many SNATed connections, and new
/// ones would be dropped once the few ports are taken. Linux's default range leaves ~36k.
pub const MIN_SNAT_PORTS: u32 = 16_384;

/// The range SNAT keeps out of: the node's ephemeral range, or, when that would leave fewer than
/// [`MIN_SNAT_PORTS`] ports, the number it would leave.
pub fn avoidable(range: (u16, u16)) -> Result<(u16, u16), u32> {
    let left = common::ct::nat_port_count(range.0, range.1);
    if left < MIN_SNAT_PORTS {
        return Err(left);
    }
    Ok(range)
}

/// "32768\t60999\n" → (32768, 60999).
fn parse_range(text: &str) -> Result<(u16, u16)> {
    let mut fields = text.split_whitespace();
    let (Some(lo), Some(hi), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("expected two port numbers");
    };
    let lo: u16 = lo.parse().with_context(|| format!("first port {lo:?}"))?;
    let hi: u16 = hi.parse().with_context(|| format!("second port {hi:?}"))?;
    if lo == 0 || hi < lo {
        bail!("not a port range");
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_format_is_read_and_nonsense_is_refused_by_name() {
        assert_eq!(parse_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert_eq!(parse_range("1024 65535").unwrap(), (1024, 65535));
        for bad in [
            "",
            "32768",
            "32768 60999 1",
            "a 60999",
            "32768 70000",
            "60999 32768",
            "0 10",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
        assert!(
            format!("{:#}", parse_range("32768 x").unwrap_err()).contains("second port \"x\""),
            "the field is named"
        );
    }

    #[test]
    fn a_range_that_leaves_snat_too_few_ports_is_not_kept_out_of() {
        assert_eq!(avoidable((32768, 60999)), Ok((32768, 60999)));
        assert_eq!(avoidable((1024, 65000)), Err(535));
        // Covering every port, it is ignored by the datapath anyway: nothing is left out.
        assert_eq!(avoidable((1024, 65535)), Ok((1024, 65535)));
        assert_eq!(avoidable((10000, 58000)), Ok((10000, 58000)), "16511 left");
        assert_eq!(avoidable((5000, 58000)), Err(64_512 - 53_001));
    }

    #[test]
    fn this_namespace_has_a_range() {
        let (lo, hi) = ephemeral_range().unwrap();
        assert!(0 < lo && lo <= hi);
    }
}
