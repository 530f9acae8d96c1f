//! Header hygiene toward agents: hop-by-hop headers go, client-supplied `x-sluice-*`
//! headers go, and the gateway's identity headers are set last.
//!
//! The order is the point, and [`prepare_upstream`] fixes it:
//!
//! 1. [`strip_hop_by_hop`]: the fixed hop-by-hop set **and every header the client
//!    names in `Connection`**. Done first, so a `Connection: x-sluice-consumer` can only
//!    remove the client's own copy, never the one the gateway sets afterwards.
//! 2. [`strip_sluice_headers`]: every `x-sluice-*` header the client sent (header names
//!    are case-insensitive and `http` stores them lower-case, so `X-Sluice-Tier` is
//!    caught too): an agent must never see a client-chosen `x-sluice-tier: premium`.
//!    With them go look-alikes spelled with underscores (`x_sluice_tier`,
//!    `x_forwarded_for`, `x_api_key`...): CGI-style frameworks read `_` and `-` as the
//!    same character, so such a header would pass for the one the gateway controls
//!    (nginx drops headers with underscores by default for the same reason).
//! 3. [`set_identity`]: `x-sluice-consumer` and `x-sluice-tier` from the authenticated
//!    consumer; for an anonymous request they stay absent.
//!
//! `Connection` may not remove `Host` or `Content-Length` (message framing and routing
//! are not the client's to drop); those tokens are ignored.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The prefix of every header the gateway owns.
pub const SLUICE_PREFIX: &str = "x-sluice-";

/// The authenticated consumer's name, set by the gateway.
pub const CONSUMER: &str = "x-sluice-consumer";

/// The authenticated consumer's tier, set by the gateway.
pub const TIER: &str = "x-sluice-tier";

const CONSUMER_NAME: HeaderName = HeaderName::from_static(CONSUMER);
const TIER_NAME: HeaderName = HeaderName::from_static(TIER);

/// At most this many names in `Connection` are honoured per request.
pub const MAX_CONNECTION_TOKENS: usize = 32;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1),
/// plus the non-standard `Keep-Alive` and `Proxy-Connection`.
static HOP_BY_HOP: [HeaderName; 9] = [
    // First: [`strip_hop_by_hop`] reads its bit.
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The index of `name` in [`HOP_BY_HOP`]: one match on the name's text (compiled to a
/// switch on its length, then one comparison), where comparing it with each of the
/// nine costs a comparison each.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str() {
        "connection" => 0,
        "proxy-authenticate" => 1,
        "proxy-authorization" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "keep-alive" => 7,
        "proxy-connection" => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], *name);
    Some(i)
}

/// Headers a `Connection` token may not remove.
static PROTECTED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

/// The credential headers the gateway reads ([`strip_credentials`]).
static CREDENTIALS: [HeaderName; 2] = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];

/// Why identity headers could not be set. A consumer name or tier that is not a valid
/// header value is a configuration or token-validation bug upstream of this module;
/// answer 500 rather than forward an unidentified request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The value is not visible ASCII (or is empty).
    #[error("the {header} value is not a valid header value")]
    InvalidIdentity {
        /// Which header: `x-sluice-consumer` or `x-sluice-tier`.
        header: &'static str,
    },
}

/// Who the gateway says is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The consumer's name.
    pub consumer: &'a str,
    /// The consumer's tier.
    pub tier: &'a str,
    /// Both as header values, when made already ([`identity_values`]).
    pub values: Option<&'a [HeaderValue; 2]>,
}

/// Removes the hop-by-hop headers and every header `Connection` names (except
/// `Host` and `Content-Length`; at most [`MAX_CONNECTION_TOKENS`] names).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present (most requests carry none, an
    // agent's answer often `Connection: keep-alive`): cheaper than looking each one up,
    // and only those are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is the first of them: the names it lists go too. The usual values,
    // `keep-alive` and `close`, name none: not split into tokens.
    let names_none = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    let connection = (present & 1 != 0).then(|| headers.get_all(header::CONNECTION));
    let named: Vec<HeaderName> = match connection {
        Some(connection) if !connection.iter().all(names_none) => connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .take(MAX_CONNECTION_TOKENS)
            .map(str::trim)
            // The usual token names a hop-by-hop header, removed below anyway: not
            // parsed into a name (which copies it) only to be filtered out.
            .filter(|name| !name.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(|name| !PROTECTED.contains(name) && !HOP_BY_HOP.contains(name))
            .collect(),
        _ => Vec::new(),
    };
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Names the gateway sets, reads or strips; a header spelled like one of them with
/// underscores for dashes never reaches an agent.
static GUARDED: [&str; 13] = [
    "authorization",
    "x-api-key",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "traceparent",
    "tracestate",
];

/// Removes every `x-sluice-*` header, whatever its case on the wire, and every header
/// that spells a guarded name (an `x-sluice-*` one, a credential, a forwarding or
/// framing header) with underscores.
pub fn strip_sluice_headers(headers: &mut HeaderMap) {
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            if name.starts_with(SLUICE_PREFIX) {
                return true;
            }
            if !name.contains('_') {
                return false;
            }
            let dashed = name.replace('_', "-");
            dashed.starts_with(SLUICE_PREFIX) || GUARDED.contains(&dashed.as_str())
        })
        .cloned()
        .collect();
    for name in owned {
        headers.remove(name);
    }
}

/// Removes the credential headers (`Authorization`, `x-api-key`), for pools whose
/// agents must not see the caller's secret once the gateway has checked it.
pub fn strip_credentials(headers: &mut HeaderMap) {
    for name in &CREDENTIALS {
        headers.remove(name);
    }
}

/// Sets `x-sluice-consumer` and `x-sluice-tier`, replacing any value.
///
/// # Errors
///
/// [`HeaderError::InvalidIdentity`] when a value is empty or not visible ASCII; the
/// headers are then left unchanged.
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity<'_>) -> Result<(), HeaderError> {
    let [consumer, tier] = match identity.values {
        Some(values) => values.clone(),
        None => identity_values(identity.consumer, identity.tier)?,
    };
    headers.insert(CONSUMER_NAME, consumer);
    headers.insert(TIER_NAME, tier);
    Ok(())
}

/// `x-sluice-consumer` and `x-sluice-tier` for `consumer` of `tier`.
///
/// # Errors
///
/// [`HeaderError::InvalidIdentity`] when a value is empty or not visible ASCII.
pub fn identity_values(consumer: &str, tier: &str) -> Result<[HeaderValue; 2], HeaderError> {
    Ok([
        identity_value(consumer, CONSUMER)?,
        identity_value(tier, TIER)?,
    ])
}

fn identity_value(value: &str, header: &'static str) -> Result<HeaderValue, HeaderError> {
    let invalid = HeaderError::InvalidIdentity { header };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid);
    }
    HeaderValue::from_str(value).map_err(|_| invalid)
}

/// The whole hygiene step for a request about to go to an agent, in the order the
/// [module docs](self) explain: hop-by-hop (with `Connection`-named) headers, then
/// client `x-sluice-*` headers, then the identity (none for an anonymous request).
///
/// # Errors
///
/// As [`set_identity`]; the strips have happened by then.
pub fn prepare_upstream(
    headers: &mut HeaderMap,
    identity: Option<&Identity<'_>>,
) -> Result<(), HeaderError> {
    strip_hop_by_hop(headers);
    strip_sluice_headers(headers);
    match identity {
        Some(identity) => set_identity(headers, identity),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key(header::CONNECTION));
    }

    #[test]
    fn connection_tokens_go_with_the_hop_by_hop_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Trace"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn every_hop_by_hop_name_is_found_at_its_index_and_no_other_name_is() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [header::HOST, header::CONTENT_LENGTH, header::DATE] {
            assert_eq!(hop_by_hop_index(&name), None, "{name}");
        }
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn identity_values_must_be_visible_ascii() {
        let mut h = HeaderMap::new();
        for (consumer, tier) in [("", "t"), ("a b", "t"), ("é", "t"), ("c", "x\ny")] {
            assert!(
                set_identity(
                    &mut h,
                    &Identity {
                        consumer,
                        tier,
                        values: None
                    }
                )
                .is_err()
            );
        }
        assert!(h.is_empty());
    }
}
