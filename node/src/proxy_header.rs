//! The PROXY protocol version 2 header (HAProxy's `proxy-protocol.txt`, section 2.2): the balancer's Layer-4
//! listener puts one in front of a connection it opens to a node (`[lb.l4] send_proxy`), so that the node knows
//! which client it serves; a node reads it only when `[node] accept_proxy` is set. Pure: the balancer encodes,
//! the node checks a whole header before it parses one, and neither touches a socket here.
//!
//! Version 2 is binary and begins with twelve bytes no HTTP request can begin with, so a node that accepts the
//! header can still serve connections that do not carry it (the Layer-7 path and health checks do not).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family, and the length of what follows.
pub const FIXED_LEN: usize = 16;
/// The longest header a node reads: addresses plus room for TLVs a sender may add (we send none). A longer
/// length field is refused rather than buffered.
pub const MAX_LEN: usize = 512;

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const TCP_V4: u8 = 0x11;
const TCP_V6: u8 = 0x21;
const UNSPEC: u8 = 0x00;
const V4_ADDRS: usize = 12;
const V6_ADDRS: usize = 36;

/// A version 2 header for a TCP connection from `client` to `server` (the address the client connected to).
/// Both addresses are put in the same family: an IPv4 client of an IPv6 listener is written as IPv4-mapped.
pub fn encode(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + V6_ADDRS);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_2 | CMD_PROXY);
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            out.push(TCP_V4);
            out.extend_from_slice(&(V4_ADDRS as u16).to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&s.octets());
        }
        (c, s) => {
            out.push(TCP_V6);
            out.extend_from_slice(&(V6_ADDRS as u16).to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not a PROXY header: the connection's own protocol starts at byte 0.
    NotProxy,
    /// A header may start here; at least this many bytes in all are needed to tell.
    Need(usize),
    /// A whole header of `len` bytes; `client` is `None` for a `LOCAL` command or an unspecified family (the
    /// sender's own connection, e.g. a health check).
    Header {
        /// Bytes the header takes, to be skipped before the connection's own protocol.
        len: usize,
        /// The client the sender relays, when it names one.
        client: Option<SocketAddr>,
    },
}

/// Why a header that started like one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Only version 2 is read.
    #[error("PROXY protocol version {0} (only version 2 is read)")]
    Version(u8),
    /// A command other than LOCAL or PROXY.
    #[error("PROXY protocol command {0:#x} is neither LOCAL nor PROXY")]
    Command(u8),
    /// A family and protocol byte this reader does not know.
    #[error("PROXY protocol family {0:#04x} is not TCP over IPv4 or IPv6")]
    Family(u8),
    /// The length field exceeds [`MAX_LEN`].
    #[error("PROXY header of {0} bytes is longer than the {MAX_LEN} accepted")]
    TooLong(usize),
    /// The length field is shorter than the family's addresses.
    #[error("PROXY header of {len} bytes cannot hold its {need} bytes of addresses")]
    TooShort {
        /// The length field.
        len: usize,
        /// What the family's addresses take.
        need: usize,
    },
}

/// Looks at the first bytes read from a connection (`buf`, possibly fewer than a header).
///
/// # Errors
/// [`HeaderError`] when `buf` begins with the signature but the rest is not a header this reader accepts.
pub fn parse(buf: &[u8]) -> Result<Start, HeaderError> {
    let prefix = buf.len().min(SIGNATURE.len());
    if buf[..prefix] != SIGNATURE[..prefix] {
        return Ok(Start::NotProxy);
    }
    if buf.len() < FIXED_LEN {
        return Ok(Start::Need(FIXED_LEN));
    }
    let (ver, cmd) = (buf[12] & 0xf0, buf[12] & 0x0f);
    if ver != VERSION_2 {
        return Err(HeaderError::Version(ver >> 4));
    }
    if cmd != CMD_LOCAL && cmd != CMD_PROXY {
        return Err(HeaderError::Command(cmd));
    }
    let family = buf[13];
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if rest > MAX_LEN - FIXED_LEN {
        return Err(HeaderError::TooLong(FIXED_LEN + rest));
    }
    let need = match family {
        TCP_V4 => V4_ADDRS,
        TCP_V6 => V6_ADDRS,
        UNSPEC => 0,
        other => return Err(HeaderError::Family(other)),
    };
    if rest < need {
        return Err(HeaderError::TooShort { len: rest, need });
    }
    let len = FIXED_LEN + rest;
    if buf.len() < len {
        return Ok(Start::Need(len));
    }
    // The whole header is in: now read the addresses (TLVs after them are skipped).
    let a = &buf[FIXED_LEN..len];
    let client = match (cmd, family) {
        (CMD_PROXY, TCP_V4) => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (CMD_PROXY, TCP_V6) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(o);
            // An IPv4-mapped client is an IPv4 client.
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            Some(SocketAddr::new(ip, u16::from_be_bytes([a[32], a[33]])))
        }
        _ => None,
    };
    Ok(Start::Header { len, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv4_header_reads_back_its_client() {
        let h = encode(addr("127.3.4.5:40000"), addr("127.0.0.1:8081"));
        assert_eq!(h.len(), 28);
        assert_eq!(
            parse(&h),
            Ok(Start::Header {
                len: 28,
                client: Some(addr("127.3.4.5:40000"))
            })
        );
    }

    #[test]
    fn an_ipv6_header_reads_back_its_client_and_a_mapped_ipv4_client_as_ipv4() {
        let h = encode(addr("[::1]:5000"), addr("[::1]:80"));
        assert_eq!(
            parse(&h),
            Ok(Start::Header {
                len: 52,
                client: Some(addr("[::1]:5000"))
            })
        );
        let mixed = encode(addr("10.1.2.3:7"), addr("[::1]:80"));
        assert_eq!(
            parse(&mixed),
            Ok(Start::Header {
                len: 52,
                client: Some(addr("10.1.2.3:7"))
            })
        );
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more_and_never_errs() {
        let h = encode(addr("127.0.0.9:1"), addr("127.0.0.1:2"));
        for n in 0..h.len() {
            assert!(
                matches!(parse(&h[..n]), Ok(Start::Need(k)) if k > n),
                "prefix of {n}"
            );
        }
    }

    #[test]
    fn an_http_request_is_not_a_header() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Start::NotProxy));
        assert_eq!(parse(b"\r\n\r\nGET"), Ok(Start::NotProxy));
        assert_eq!(parse(b"P"), Ok(Start::NotProxy));
    }

    #[test]
    fn tlvs_after_the_addresses_are_skipped() {
        let mut h = encode(addr("127.0.0.9:1"), addr("127.0.0.1:2"));
        h[15] += 5;
        h.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]);
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h),
            Ok(Start::Header {
                len: 33,
                client: Some(addr("127.0.0.9:1"))
            })
        );
    }

    #[test]
    fn a_local_command_names_no_client() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&h),
            Ok(Start::Header {
                len: 16,
                client: None
            })
        );
    }

    #[test]
    fn version_one_unknown_commands_families_and_bad_lengths_are_refused() {
        let good = encode(addr("127.0.0.9:1"), addr("127.0.0.1:2"));
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            parse(&h)
        };
        assert_eq!(with(12, 0x11), Err(HeaderError::Version(1)));
        assert_eq!(with(12, 0x22), Err(HeaderError::Command(2)));
        assert_eq!(with(13, 0x12), Err(HeaderError::Family(0x12)));
        assert_eq!(with(15, 4), Err(HeaderError::TooShort { len: 4, need: 12 }));
        let mut long = good.clone();
        long[14] = 0xff;
        assert!(matches!(parse(&long), Err(HeaderError::TooLong(_))));
    }
}
