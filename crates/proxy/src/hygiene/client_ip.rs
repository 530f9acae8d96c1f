//! The client's IP address: the TCP peer, or what trusted proxies in front of the
//! gateway report in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is only believed when the TCP peer is one of the configured
//! trusted proxies ([`TrustedProxies`]); otherwise anyone could pick the address a
//! per-IP limit is keyed on. When the peer is trusted, the list is walked from the
//! right (the entry the nearest proxy appended) to the left, skipping trusted
//! addresses: the first untrusted address is the client. Everything to its left was
//! written by the client itself and is ignored. When every entry is trusted, the
//! leftmost one is the client. An entry that is not an IP address stops the walk: the
//! last address walked (or the peer) is the client, since nothing past a garbled hop
//! can be attributed. All header lines count as one list, in order.
//!
//! Addresses are canonical: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the
//! IPv4 address, both when matching CIDRs and in the result, so one client has one key.

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};

/// The header read when the peer is trusted.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// At most this many `X-Forwarded-For` entries are examined per request; a longer
/// chain stops the walk as a garbled entry does.
pub const MAX_HOPS: usize = 32;

/// Appends `ip` to `text`. An IPv4 address is written digit by digit: through
/// `Display` it costs more than the rest of the forwarding headers together.
pub fn push_ip(text: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        text.push_str(&ip.to_string());
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
}

/// Why a trusted-proxy list was refused. A configuration error, reported at load time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    /// The entry is neither a CIDR (`10.0.0.0/8`, `fd00::/8`) nor an IP address.
    #[error("trusted proxy {entry:?} is not a CIDR such as \"10.0.0.0/8\" or \"::1/128\"")]
    InvalidCidr {
        /// The entry as configured.
        entry: String,
    },
    /// The CIDR has bits set past its prefix length, which usually means a typo.
    #[error("trusted proxy {entry:?} has host bits set: did you mean {network:?}?")]
    HostBitsSet {
        /// The entry as configured.
        entry: String,
        /// The network the entry probably meant.
        network: String,
    },
}

/// The proxies whose `X-Forwarded-For` is believed. Built once per configuration; the
/// default trusts nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts nobody: the client is always the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses CIDRs such as `"10.0.0.0/8"` or `"::1/128"`; a bare address means that
    /// one host. IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) become IPv4 ones.
    ///
    /// # Errors
    ///
    /// [`ClientIpError::InvalidCidr`] for an entry that does not parse,
    /// [`ClientIpError::HostBitsSet`] for one like `10.0.0.1/8`.
    pub fn parse<I, S>(cidrs: I) -> Result<Self, ClientIpError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = cidrs
            .into_iter()
            .map(|entry| parse_cidr(entry.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    /// The configured networks, canonical.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` (canonicalised) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers` (see the
    /// [module docs](self)). Always canonical.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let entries = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|line| {
                // A line that is not visible ASCII counts as one unparseable entry.
                let (text, garbled) = match line.to_str() {
                    Ok(s) => (Some(s), false),
                    Err(_) => (None, true),
                };
                text.into_iter()
                    .flat_map(|s| s.rsplit(','))
                    .map(|e| Some(e.trim()))
                    .chain(garbled.then_some(None))
            })
            .take(MAX_HOPS);
        for entry in entries {
            let Some(ip) = entry.and_then(parse_entry) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return client;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = entry.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn parse_cidr(entry: &str) -> Result<IpNet, ClientIpError> {
    let invalid = || ClientIpError::InvalidCidr {
        entry: entry.to_owned(),
    };
    let net = match entry.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(entry.parse::<IpAddr>().map_err(|_| invalid())?),
    };
    if net.addr() != net.network() {
        return Err(ClientIpError::HostBitsSet {
            entry: entry.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(canonical_net(net))
}

/// `::ffff:a.b.c.d/n` with `n >= 96` is the IPv4 network `a.b.c.d/(n - 96)`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_ports_and_brackets() {
        let v4: IpAddr = "1.2.3.4".parse().expect("ip");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(parse_entry("1.2.3.4"), Some(v4));
        assert_eq!(parse_entry("1.2.3.4:8080"), Some(v4));
        assert_eq!(parse_entry("::ffff:1.2.3.4"), Some(v4));
        assert_eq!(parse_entry("2001:db8::1"), Some(v6));
        assert_eq!(parse_entry("[2001:db8::1]"), Some(v6));
        assert_eq!(parse_entry("[2001:db8::1]:443"), Some(v6));
        for bad in [
            "",
            "unknown",
            "1.2.3.4:",
            "1.2.3.4:x",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "2001:db8::1:99999999",
            "_hidden",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        let t = TrustedProxies::parse(["::ffff:10.0.0.0/104"]).expect("parse");
        assert_eq!(t.networks(), &["10.0.0.0/8".parse::<IpNet>().expect("net")]);
        assert!(t.contains("10.9.9.9".parse().expect("ip")));
        assert!(t.contains("::ffff:10.9.9.9".parse().expect("ip")));
    }
}
