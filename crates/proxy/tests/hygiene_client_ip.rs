//! Client IP: `X-Forwarded-For` believed only from trusted proxies, walked from the
//! right, robust to spoofing and garbage.

use std::net::IpAddr;

use http::HeaderMap;
use sluice_proxy::hygiene::client_ip::{ClientIpError, MAX_HOPS, TrustedProxies};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn xff(lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for l in lines {
        h.append("x-forwarded-for", l.parse().expect("value"));
    }
    h
}

fn trusted() -> TrustedProxies {
    TrustedProxies::parse(["10.0.0.0/8", "fd00::/8", "127.0.0.1"]).expect("cidrs")
}

#[test]
fn spoofing_from_an_untrusted_peer_is_ignored() {
    let t = trusted();
    // The client claims to be someone else to dodge a per-IP limit.
    for lines in [
        vec!["1.1.1.1"],
        vec!["10.0.0.5"],
        vec!["1.1.1.1, 2.2.2.2", "3.3.3.3"],
    ] {
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), &xff(&lines)),
            ip("203.0.113.9")
        );
    }
    // Trusting nobody (the default) ignores the header from anyone.
    let none = TrustedProxies::none();
    assert_eq!(
        none.client_ip(ip("10.0.0.1"), &xff(&["1.1.1.1"])),
        ip("10.0.0.1")
    );
}

#[test]
fn a_trusted_peer_reports_the_client() {
    let t = trusted();
    assert_eq!(
        t.client_ip(ip("10.0.0.1"), &xff(&["198.51.100.7"])),
        ip("198.51.100.7")
    );
    // Without the header, the peer itself.
    assert_eq!(
        t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
        ip("10.0.0.1")
    );
}

#[test]
fn multi_hop_chain_stops_at_the_first_untrusted_from_the_right() {
    let t = trusted();
    // client-forged, real client, then two trusted hops; the peer is a third.
    let h = xff(&["6.6.6.6, 198.51.100.7, 10.1.1.1", "fd00::2"]);
    assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    // All trusted: the leftmost is the client.
    let h = xff(&["10.9.9.9, 10.1.1.1"]);
    assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("10.9.9.9"));
}

#[test]
fn garbage_stops_the_walk() {
    let t = trusted();
    let peer = ip("10.0.0.1");
    // Garbage right after the peer: nothing attributable, the peer is the client.
    for value in [
        "unknown",
        "",
        "not-an-ip",
        "1.2.3.4.5",
        "[::1",
        "_obfuscated",
    ] {
        assert_eq!(t.client_ip(peer, &xff(&[value])), peer, "{value:?}");
    }
    // Garbage behind a trusted hop: that hop is the last address known.
    assert_eq!(
        t.client_ip(peer, &xff(&["198.51.100.7, garbage, 10.2.2.2"])),
        ip("10.2.2.2")
    );
    // Garbage to the left of the client is the client's own business.
    assert_eq!(
        t.client_ip(peer, &xff(&["garbage, 198.51.100.7, 10.2.2.2"])),
        ip("198.51.100.7")
    );
    // A value that is not visible ASCII counts as garbage.
    let mut h = xff(&["198.51.100.7"]);
    h.append(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff").expect("value"),
    );
    assert_eq!(t.client_ip(peer, &h), peer);
}

#[test]
fn ports_brackets_and_mapped_addresses() {
    let t = trusted();
    let peer = ip("::ffff:10.0.0.1");
    assert_eq!(
        t.client_ip(peer, &xff(&["198.51.100.7:5555"])),
        ip("198.51.100.7")
    );
    assert_eq!(
        t.client_ip(peer, &xff(&["[2001:db8::7]:443"])),
        ip("2001:db8::7")
    );
    assert_eq!(
        t.client_ip(peer, &xff(&["::ffff:198.51.100.7"])),
        ip("198.51.100.7")
    );
    // An untrusted mapped peer comes back canonical.
    assert_eq!(
        t.client_ip(ip("::ffff:203.0.113.9"), &HeaderMap::new()),
        ip("203.0.113.9")
    );
}

#[test]
fn the_walk_is_bounded() {
    let t = trusted();
    let chain = vec!["10.3.3.3"; MAX_HOPS + 10].join(", ");
    let h = xff(&[&format!("198.51.100.7, {chain}")]);
    // The client lies past the bound: the walk stops at the last hop it examined.
    assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.3.3.3"));
}

#[test]
fn configuration_errors_are_clear() {
    assert_eq!(
        TrustedProxies::parse(["10.0.0.0/8", "ten"]),
        Err(ClientIpError::InvalidCidr {
            entry: "ten".into()
        })
    );
    assert_eq!(
        TrustedProxies::parse(["10.0.0.0/33"]),
        Err(ClientIpError::InvalidCidr {
            entry: "10.0.0.0/33".into()
        })
    );
    let err = TrustedProxies::parse(["10.1.2.3/8"]).expect_err("host bits");
    assert_eq!(
        err,
        ClientIpError::HostBitsSet {
            entry: "10.1.2.3/8".into(),
            network: "10.0.0.0/8".into()
        }
    );
    assert!(err.to_string().contains("did you mean \"10.0.0.0/8\""));
    let t = TrustedProxies::parse([" ::1/128 ", "192.168.1.1"]).expect("parse");
    assert!(t.contains(ip("::1")));
    assert!(t.contains(ip("192.168.1.1")));
    assert!(!t.contains(ip("192.168.1.2")));
}
