//! Egress policy for outbound requests (completion notices): which addresses vow may
//! connect to. Guards against SSRF: a tenant must not be able to make vow call its own
//! loopback, the private network, link-local addresses or a cloud metadata endpoint.
//!
//! The check is applied to every address a URL's host *resolves to*, at connect time,
//! so DNS tricks (a public name resolving to 127.0.0.1) are refused too. Operators can
//! allow specific ranges (`webhook_allow_cidrs`, env `VOW_WEBHOOK_ALLOW_CIDRS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::ValidationError;

/// Ranges that are refused unless explicitly allowed.
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",         // "this" network
    "10.0.0.0/8",        // private
    "100.64.0.0/10",     // carrier-grade NAT
    "127.0.0.0/8",       // loopback
    "169.254.0.0/16",    // link-local, cloud metadata (169.254.169.254)
    "172.16.0.0/12",     // private
    "192.0.0.0/24",      // IETF protocol assignments
    "192.0.2.0/24",      // documentation
    "192.168.0.0/16",    // private
    "198.18.0.0/15",     // benchmarking
    "198.51.100.0/24",   // documentation
    "203.0.113.0/24",    // documentation
    "224.0.0.0/4",       // multicast
    "240.0.0.0/4",       // reserved, broadcast
    "::/128",            // unspecified
    "::1/128",           // loopback
    "64:ff9b::/96",      // NAT64 (embeds IPv4)
    "100::/64",          // discard
    "2001:db8::/32",     // documentation
    "fc00::/7",          // unique local
    "fe80::/10",         // link-local
    "ff00::/8",          // multicast
    "fd00:ec2::254/128", // AWS metadata over IPv6
];

fn blocked() -> &'static [IpNet] {
    static NETS: std::sync::LazyLock<Vec<IpNet>> = std::sync::LazyLock::new(|| {
        BLOCKED
            .iter()
            .map(|b| b.parse().expect("BLOCKED holds valid CIDRs"))
            .collect()
    });
    &NETS
}

/// The allow-list: address ranges permitted even though they are blocked by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl FromStr for EgressPolicy {
    type Err = ValidationError;

    /// Parses a comma-separated list of CIDRs (`127.0.0.0/8,10.1.0.0/16`); empty allows
    /// nothing extra.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let allow = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ValidationError::invalid(
                            "webhook_allow_cidrs",
                            format!("`{p}` is not a CIDR"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }
}

impl EgressPolicy {
    /// A policy allowing exactly `ranges` beyond the public internet.
    pub fn allowing(ranges: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            allow: ranges.into_iter().collect(),
        }
    }

    /// Whether vow may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !blocked().iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if is_v4_compatible(v6) => IpAddr::V4(Ipv4Addr::from(v6.to_bits() as u32)),
            None => ip,
        },
        v4 => v4,
    }
}

fn is_v4_compatible(v6: Ipv6Addr) -> bool {
    let bits = v6.to_bits();
    bits >> 32 == 0 && bits > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_blocked_range_parses() {
        assert_eq!(blocked().len(), BLOCKED.len());
    }

    #[test]
    fn private_loopback_link_local_and_metadata_are_refused() {
        let p = EgressPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd12::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fd00:ec2::254",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "172.32.0.1",
        ] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_ranges() {
        let p: EgressPolicy = "127.0.0.0/8, 10.9.0.0/16,::1".parse().unwrap();
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(p.permits(ip("::1")));
        assert!(p.permits(ip("10.9.200.1")));
        assert!(!p.permits(ip("10.8.0.1")));
        assert!(!p.permits(ip("169.254.169.254")));
        assert!("127.0.0.0/33".parse::<EgressPolicy>().is_err());
        assert!("nonsense".parse::<EgressPolicy>().is_err());
        assert_eq!("".parse::<EgressPolicy>().unwrap(), EgressPolicy::default());
    }
}
