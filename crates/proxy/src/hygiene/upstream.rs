//! The request head an agent receives: the client's, cleaned once per request by
//! [`super::headers::prepare_upstream`] and the forwarding headers,
//! then copied for each attempt, or moved into the only one.
//!
//! In order: hop-by-hop headers (and those `Connection` names) go; client-sent
//! `x-sluice-*` headers go; the caller's identity is set; the gateway's credentials
//! go once a caller is identified; `X-Forwarded-For` is extended (from a trusted peer)
//! or replaced, `Forwarded` and `X-Real-IP` from an untrusted peer go, and
//! `X-Forwarded-Proto` is set; an upgrade's `Connection`/`Upgrade` are put back.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Uri};

use super::client_ip::{X_FORWARDED_FOR, push_ip};

// Header names built at compile time: a name given as a string is parsed on every use.
const X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
use super::headers::{Identity, prepare_upstream, strip_credentials, strip_sluice_headers};
use crate::body::ProxyBody;
use crate::identity::Caller;
use crate::pool::Upstream;
use crate::upgrade;

/// The cleaned head of a request, ready to be sent to any endpoint.
#[derive(Debug)]
pub struct UpstreamHead {
    method: Method,
    path: PathAndQuery,
    /// `None` once moved into the last request built from the head.
    headers: Option<HeaderMap>,
    upgrade: bool,
}

impl UpstreamHead {
    /// Cleans the client's request head for agents (see the [module docs](self)).
    /// `authority` is the one routing used (see [`super::host`]), sent as `Host`;
    /// `peer_trusted` says whether the TCP peer is a trusted proxy; `upgrade` is the
    /// `Upgrade` value of an upgrade request, kept aside before hop-by-hop headers
    /// went.
    pub fn new(
        parts: &Parts,
        authority: Option<&Authority>,
        peer: SocketAddr,
        peer_trusted: bool,
        caller: Option<&Caller>,
        upgrade: Option<HeaderValue>,
    ) -> Self {
        // With room for the headers added below and for each attempt (`X-Forwarded-For`,
        // `X-Forwarded-Proto`, the caller's identity, `Host`, the trace context).
        let mut headers = copy_with_room(&parts.headers, 8);
        // A chunked body stays chunked: without the header the client would send a
        // GET's body as no body at all (Transfer-Encoding itself is hop-by-hop).
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        // The agent is told the host routing used: the target's authority (HTTP/2,
        // absolute-form) or the one Host line, as the client wrote it (then it is
        // there already).
        if let Some(authority) = authority
            && (parts.uri.authority().is_some() || !headers.contains_key(header::HOST))
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let identity = caller.map(|c| Identity {
            consumer: &c.consumer,
            tier: &c.tier,
            values: c.identity_values.as_ref(),
        });
        if prepare_upstream(&mut headers, identity.as_ref()).is_err() {
            // Names and tiers were validated when the table was built; an identity
            // that still cannot be a header value is not passed on.
            strip_sluice_headers(&mut headers);
        }
        if caller.is_some() {
            strip_credentials(&mut headers);
        }
        if peer_trusted {
            append_forwarded_for(&mut headers, peer);
        } else {
            // What an untrusted peer claims about the path it came by is not passed on:
            // `X-Forwarded-For` starts again from it (inserting replaces every line),
            // and `Forwarded` and `X-Real-IP` go, looked up only when one of the
            // names is there (one pass over them costs less than two lookups).
            if headers.keys().any(|k| *k == FORWARDED || *k == X_REAL_IP) {
                headers.remove(FORWARDED);
                headers.remove(X_REAL_IP);
            }
            // An address's text is always a valid value.
            match peer_value(peer.ip().to_canonical()) {
                Some(v) => headers.insert(X_FORWARDED_FOR_NAME, v),
                None => headers.remove(X_FORWARDED_FOR_NAME),
            };
        }
        let proto = if parts.extensions.get::<sluice_listener::OverTls>().is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        let is_upgrade = upgrade.is_some();
        if let Some(protocol) = upgrade {
            upgrade::restore_upgrade_headers(&mut headers, protocol);
        }
        if chunked {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        Self {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: Some(headers),
            upgrade: is_upgrade,
        }
    }

    /// Whether the request asks for a protocol upgrade, which only HTTP/1.1 carries.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }

    /// Whether the method is idempotent (RFC 9110 section 9.2.2): sending it again
    /// after a connection broke cannot do twice what the client asked once.
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }

    /// Whether the request goes over the endpoint's own connections (cleartext
    /// HTTP/1.1, not an upgrade) rather than the pooled client.
    pub fn direct(&self, upstream: &Upstream) -> bool {
        upstream.direct && !self.upgrade
    }

    /// The request for the agent at `endpoint` of a backend reached as `upstream`
    /// says, carrying `body`. Over the endpoint's own connections ([`Self::direct`])
    /// its target is in origin form, with the endpoint as `Host` if the client sent
    /// none; for the pooled client, in absolute form.
    ///
    /// A backend by URL gets its own `Host` and no `x-sluice-*` identity headers (they
    /// mean nothing outside the cluster); a backend with a credential gets it in place
    /// of the caller's `Authorization` and `x-api-key`, whether or not the gateway
    /// identified the caller.
    ///
    /// `last`: no other request is built from this head (the body can be sent only
    /// once), so its headers are moved into this one instead of copied. `None` when
    /// they were moved already: a request never goes out without them.
    pub fn request(
        &mut self,
        endpoint: &Authority,
        upstream: &Upstream,
        body: ProxyBody,
        last: bool,
    ) -> Option<Request<ProxyBody>> {
        let mut headers = if last {
            self.headers.take()?
        } else {
            copy_with_room(self.headers.as_ref()?, 4)
        };
        let direct = self.direct(upstream);
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = if direct {
            Uri::from(self.path.clone())
        } else {
            upstream.uri(endpoint, &self.path)
        };
        if direct
            && !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(endpoint.as_str())
        {
            headers.insert(header::HOST, host);
        }
        if let Some(host) = &upstream.host {
            headers.insert(header::HOST, host.clone());
            strip_sluice_headers(&mut headers);
        }
        if let Some((name, value)) = &upstream.auth {
            strip_credentials(&mut headers);
            headers.remove(name);
            headers.insert(name.clone(), value.clone());
        }
        *req.headers_mut() = headers;
        Some(req)
    }
}

/// A copy of `headers` with room for `room` more. `HeaderMap::clone` copies the
/// entries with no room to spare, and `HeaderMap::reserve` makes none in them while
/// the map's index has some (as a map hyper parsed into usually has): each header
/// added to such a copy would first copy all the others to a new allocation.
fn copy_with_room(headers: &HeaderMap, room: usize) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len() + room);
    for (name, value) in headers {
        copy.append(name.clone(), value.clone());
    }
    copy
}

/// `ip` as a header value.
fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    HeaderValue::try_from(text).ok()
}

/// Appends `peer` to `X-Forwarded-For`, joining the lines the client sent into one list
/// (a list split over several lines means the same as one line, RFC 9110 section 5.3).
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = String::new();
    for prior in headers
        .get_all(&X_FORWARDED_FOR_NAME)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        value.push_str(prior);
        value.push_str(", ");
    }
    push_ip(&mut value, peer.ip().to_canonical());
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR_NAME, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_with_room_keeps_every_line_in_order() {
        let mut headers = HeaderMap::new();
        for (name, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5")] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let copy = copy_with_room(&headers, 8);
        assert_eq!(copy, headers);
        let lines = |m: &HeaderMap| -> Vec<(String, String)> {
            m.iter()
                .map(|(k, v)| (k.to_string(), v.to_str().expect("text").to_owned()))
                .collect()
        };
        assert_eq!(lines(&copy), lines(&headers));
        assert!(copy.capacity() >= headers.len() + 8);
    }

    #[test]
    fn an_untrusted_peer_replaces_the_forwarding_headers_a_trusted_one_extends_them() {
        let (parts, ()) = Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.2")
            .header("forwarded", "for=203.0.113.7")
            .header("x-real-ip", "203.0.113.7")
            .header("x-other", "kept")
            .body(())
            .expect("request")
            .into_parts();
        let peer: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let untrusted = UpstreamHead::new(&parts, None, peer, false, None, None)
            .headers
            .expect("headers");
        let xff: Vec<_> = untrusted.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["10.0.0.1"]);
        assert!(!untrusted.contains_key("forwarded"));
        assert!(!untrusted.contains_key("x-real-ip"));
        assert_eq!(untrusted["x-other"], "kept");
        assert_eq!(untrusted["x-forwarded-proto"], "http");

        let trusted = UpstreamHead::new(&parts, None, peer, true, None, None)
            .headers
            .expect("headers");
        assert_eq!(
            trusted["x-forwarded-for"],
            "203.0.113.7, 198.51.100.2, 10.0.0.1"
        );
        assert_eq!(trusted["forwarded"], "for=203.0.113.7");
        assert_eq!(trusted["x-real-ip"], "203.0.113.7");

        // Without any of them, the peer alone.
        let (bare, ()) = Request::new(()).into_parts();
        let head = UpstreamHead::new(&bare, None, peer, false, None, None)
            .headers
            .expect("headers");
        assert_eq!(head["x-forwarded-for"], "10.0.0.1");
    }

    #[tokio::test]
    async fn the_last_request_takes_the_headers_and_none_is_built_after_it() {
        use http_body_util::BodyExt;
        let store = crate::store::TableStore::new(crate::metrics::Metrics::new());
        store
            .apply(crate::test_tables::one_pool("/", 1))
            .expect("table");
        let rt = store.load().expect("runtime");
        let endpoint = &rt.pools[0].endpoints[0];
        let authority = endpoint.authority.clone().expect("authority");
        let (parts, ()) = Request::builder()
            .header("x-other", "kept")
            .body(())
            .expect("request")
            .into_parts();
        let peer = "10.0.0.1:80".parse().expect("addr");
        let mut head = UpstreamHead::new(&parts, None, peer, false, None, None);
        let body = || {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        };
        for last in [false, false, true] {
            let req = head
                .request(&authority, &endpoint.upstream, body(), last)
                .expect("a request");
            assert_eq!(req.headers()["x-other"], "kept");
            assert_eq!(req.headers()["x-forwarded-for"], "10.0.0.1");
        }
        for last in [false, true] {
            assert!(
                head.request(&authority, &endpoint.upstream, body(), last)
                    .is_none(),
                "never without the headers"
            );
        }
    }

    #[test]
    fn peer_values_read_as_the_address_displays() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.1",
            "99.100.101.255",
            "192.168.10.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let addr: IpAddr = ip.parse().expect("address");
            assert_eq!(peer_value(addr).expect("value"), addr.to_string().as_str());
        }
    }

    #[test]
    fn forwarded_for_joins_every_line_then_appends_the_peer() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.1, 198.51.100.2".parse().expect("value"),
        );
        h.append("x-forwarded-for", "203.0.113.7".parse().expect("value"));
        append_forwarded_for(&mut h, "10.0.0.1:80".parse().expect("addr"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["198.51.100.1, 198.51.100.2, 203.0.113.7, 10.0.0.1"]);
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().expect("addr");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut h, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    }
}
