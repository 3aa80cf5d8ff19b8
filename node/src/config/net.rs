//! [`IpNet`]: an address or a CIDR prefix (`10.0.0.0/8`, `::1`), for `[node] trusted`. A dozen lines of
//! parsing, so no crate for it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One address (`127.0.0.1`, a /32 or /128) or a network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The part before `/` is no IP address.
    #[error("`{0}` is not an IP address or ADDRESS/PREFIX")]
    Address(String),
    /// The prefix length is not a number within the family's bits.
    #[error("`/{prefix}`: the prefix of an {family} network is 0 to {max}")]
    Prefix {
        /// As written.
        prefix: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set after the prefix (`10.1.2.3/8`): a typo for an address or for the network.
    #[error("`{given}` has bits set beyond its prefix: the network is `{network}`")]
    HostBits {
        /// As written.
        given: String,
        /// The network it lies in.
        network: String,
    },
}

impl IpNet {
    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) counts as the IPv4
    /// address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Exactly `ip`.
    pub fn host(ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        IpNet { addr: ip, prefix }
    }
}

/// `bits` (of a `width`-bit address, in the low bits) with everything after the first `prefix` bits cleared.
fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width - prefix);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits << host_bits
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(s.to_string()))?;
        let addr = addr.to_canonical();
        let (family, max) = if addr.is_ipv4() {
            ("IPv4", 32)
        } else {
            ("IPv6", 128)
        };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                // `parse` takes a leading `+`; a prefix is digits only.
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(IpNetError::Prefix {
                        prefix: p.to_string(),
                        family,
                        max,
                    })
                }
            },
        };
        let bits = match addr {
            IpAddr::V4(a) => u32::from(a).into(),
            IpAddr::V6(a) => u128::from(a),
        };
        let net = masked(bits, max, prefix);
        if net != bits {
            let network = match addr {
                IpAddr::V4(_) => IpAddr::from((net as u32).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(net.to_be_bytes()),
            };
            return Err(IpNetError::HostBits {
                given: s.to_string(),
                network: format!("{network}/{prefix}"),
            });
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_alone_is_that_one_address() {
        let n = net("127.0.0.1");
        assert!(n.contains(ip("127.0.0.1")));
        assert!(!n.contains(ip("127.0.0.2")));
        assert_eq!(n.to_string(), "127.0.0.1/32");
        assert!(net("::1").contains(ip("::1")));
        assert!(!net("::1").contains(ip("::2")));
    }

    #[test]
    fn a_prefix_covers_its_whole_network() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.0")));
        assert!(n.contains(ip("10.255.3.4")));
        assert!(!n.contains(ip("11.0.0.1")));
        let n = net("fd00::/8");
        assert!(n.contains(ip("fd12:3456::1")));
        assert!(!n.contains(ip("fe80::1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn an_ipv4_mapped_source_matches_its_ipv4_network_and_families_never_mix() {
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("::ffff:10.0.0.1").contains(ip("10.0.0.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(!net("::/0").contains(ip("10.0.0.1")));
    }

    #[test]
    fn bad_addresses_prefixes_and_host_bits_are_refused_with_the_reason() {
        assert_eq!(
            "10.0.0".parse::<IpNet>(),
            Err(IpNetError::Address("10.0.0".into()))
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<IpNet>(),
            Err(IpNetError::Prefix { .. })
        ));
        assert!(matches!(
            "::/129".parse::<IpNet>(),
            Err(IpNetError::Prefix { max: 128, .. })
        ));
        let e = "10.1.2.3/8".parse::<IpNet>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`10.1.2.3/8` has bits set beyond its prefix: the network is `10.0.0.0/8`"
        );
    }

    #[test]
    fn a_host_net_is_exactly_one_address() {
        let n = IpNet::host(ip("::ffff:192.0.2.7"));
        assert_eq!(n.to_string(), "192.0.2.7/32");
        assert!(n.contains(ip("192.0.2.7")));
    }
}
