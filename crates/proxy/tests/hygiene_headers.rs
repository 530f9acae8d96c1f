//! Identity headers: client copies removed, gateway values set last, and no
//! `Connection` trick can remove them.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use sluice_proxy::hygiene::headers::{
    CONSUMER, Identity, TIER, prepare_upstream, strip_credentials, strip_hop_by_hop,
};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

const STANDARD: Identity<'static> = Identity {
    consumer: "standard-user",
    tier: "standard",
    values: None,
};

#[test]
fn connection_naming_identity_headers_cannot_remove_them() {
    for connection in [
        "x-sluice-consumer",
        "X-Sluice-Consumer, x-sluice-tier",
        "keep-alive, x-sluice-tier",
    ] {
        let mut h = headers(&[("connection", connection), ("x-kept", "1")]);
        prepare_upstream(&mut h, Some(&STANDARD)).expect("identity");
        assert_eq!(h[CONSUMER], "standard-user", "{connection}");
        assert_eq!(h[TIER], "standard", "{connection}");
        assert!(!h.contains_key("connection"));
        assert_eq!(h["x-kept"], "1");
    }
}

#[test]
fn client_sent_identity_headers_are_replaced() {
    let mut h = headers(&[
        ("x-sluice-tier", "premium"),
        ("X-SLUICE-CONSUMER", "admin"),
        ("x-sluice-consumer", "root"),
        ("X-Sluice-Anything", "x"),
        ("x-sluicey", "kept"),
    ]);
    prepare_upstream(&mut h, Some(&STANDARD)).expect("identity");
    assert_eq!(h.get_all(TIER).iter().collect::<Vec<_>>(), ["standard"]);
    assert_eq!(
        h.get_all(CONSUMER).iter().collect::<Vec<_>>(),
        ["standard-user"]
    );
    assert!(!h.contains_key("x-sluice-anything"));
    assert_eq!(h["x-sluicey"], "kept");
}

#[test]
fn anonymous_requests_carry_no_identity() {
    let mut h = headers(&[("x-sluice-tier", "premium"), ("x-sluice-consumer", "admin")]);
    prepare_upstream(&mut h, None).expect("no identity");
    assert!(h.is_empty());
}

#[test]
fn hop_by_hop_headers_go() {
    let mut h = headers(&[
        ("connection", "close, x-secret"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-secret", "1"),
        ("te", "trailers"),
        ("trailer", "x-t"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic eA=="),
        ("host", "agents.example"),
        ("content-type", "application/json"),
    ]);
    strip_hop_by_hop(&mut h);
    let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["content-type", "host"]);
}

#[test]
fn credentials_can_be_kept_from_agents() {
    let mut h = headers(&[
        ("authorization", "Bearer k"),
        ("x-api-key", "k"),
        ("accept", "*/*"),
    ]);
    strip_credentials(&mut h);
    assert_eq!(h.len(), 1);
}

#[test]
fn invalid_identity_is_an_error_not_a_silent_drop() {
    let mut h = headers(&[("x-sluice-tier", "premium")]);
    let bad = Identity {
        consumer: "a\u{7f}",
        tier: "t",
        values: None,
    };
    assert!(prepare_upstream(&mut h, Some(&bad)).is_err());
    // The client's copy is gone even though the identity could not be set.
    assert!(!h.contains_key(TIER));
}

#[test]
fn identity_values_made_in_advance_are_the_ones_sent() {
    let values = sluice_proxy::hygiene::headers::identity_values("alice", "gold").expect("valid");
    let mut h = headers(&[("x-sluice-consumer", "mallory")]);
    let made = Identity {
        consumer: "alice",
        tier: "gold",
        values: Some(&values),
    };
    prepare_upstream(&mut h, Some(&made)).expect("set");
    assert_eq!(h[CONSUMER], "alice");
    assert_eq!(h[TIER], "gold");
    assert_eq!(h.len(), 2);
}
