//! The authority a request is for: one value that routing matches and the agent
//! receives as `Host`, so a request can never be routed by one host and delivered
//! with another.
//!
//! Per RFC 9112 section 3.2 and RFC 9113 section 8.3.1, a request is refused (400)
//! when it carries more than one `Host` line, a `Host` that is not a valid
//! `host[:port]`, a `Host` that names another host than its absolute-form target or
//! HTTP/2 `:authority`, or (HTTP/1.1) no host at all. Host names compare without case
//! and without a trailing dot; ports must agree when both sides give one.

use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Uri, Version};

/// Why a request's host was refused. Each is a 400 the client must fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// More than one `Host` line.
    #[error("more than one Host header")]
    Multiple,
    /// A `Host` value that is not `host[:port]`.
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
    /// `Host` names another host (or port) than the request target's authority.
    #[error("the Host header does not match the request's authority")]
    Mismatch,
    /// An HTTP/1.1 request without any host.
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
}

impl HostError {
    /// The reason code (a metric label and the JSON `code`).
    pub fn reason(&self) -> &'static str {
        match self {
            HostError::Multiple => "multiple_host",
            HostError::Invalid => "invalid_host",
            HostError::Mismatch => "host_mismatch",
            HostError::Missing => "missing_host",
        }
    }
}

/// The authority of a request: the target's (absolute-form, or HTTP/2
/// `:authority`) when it has one, else its single `Host` header; `None` for a request
/// that names no host and may (HTTP/1.0).
///
/// # Errors
///
/// The [`HostError`] that makes the request malformed.
pub fn request_authority(
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Option<Authority>, HostError> {
    let mut lines = headers.get_all(header::HOST).iter();
    let host_header = match (lines.next(), lines.next()) {
        (Some(_), Some(_)) => return Err(HostError::Multiple),
        (Some(v), None) => Some(parse(v.as_bytes())?),
        (None, _) => None,
    };
    match (uri.authority(), host_header) {
        (Some(target), Some(host)) => {
            if !same(target, &host) {
                return Err(HostError::Mismatch);
            }
            Ok(Some(target.clone()))
        }
        (Some(target), None) => Ok(Some(target.clone())),
        (None, Some(host)) => Ok(Some(host)),
        (None, None) if version == Version::HTTP_11 => Err(HostError::Missing),
        (None, None) => Ok(None),
    }
}

/// A `Host` value as an authority: a registered name, IPv4 or bracketed IPv6 address,
/// with an optional port, and nothing else (no user info, no path).
fn parse(value: &[u8]) -> Result<Authority, HostError> {
    if value.is_empty() || value.contains(&b'@') {
        return Err(HostError::Invalid);
    }
    let authority = Authority::try_from(value).map_err(|_| HostError::Invalid)?;
    let host = authority.host();
    let host_ok = if let Some(ip6) = host.strip_prefix('[') {
        ip6.strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host_ok || (authority.as_str().ends_with(':') && authority.port().is_none()) {
        return Err(HostError::Invalid);
    }
    Ok(authority)
}

/// Whether two authorities name the same host (without case or a trailing dot) and
/// port (when both give one).
fn same(a: &Authority, b: &Authority) -> bool {
    let host = |x: &Authority| x.host().trim_end_matches('.').to_ascii_lowercase();
    host(a) == host(b)
        && match (a.port_u16(), b.port_u16()) {
            (Some(p), Some(q)) => p == q,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, v.parse().expect("value"));
        }
        h
    }

    fn check(target: &str, version: Version, hosts: &[&str]) -> Result<Option<String>, HostError> {
        let uri: Uri = target.parse().expect("uri");
        request_authority(&uri, version, &headers(hosts)).map(|a| a.map(|a| a.to_string()))
    }

    #[test]
    fn one_consistent_host_is_the_authority() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            check("/x", v11, &["a.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            check("http://a.example/x", v11, &["A.Example.:80"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            check("/x", v11, &["[::1]:8080"]),
            Ok(Some("[::1]:8080".into()))
        );
        assert_eq!(check("/x", Version::HTTP_10, &[]), Ok(None));
    }

    #[test]
    fn ambiguous_or_malformed_hosts_are_refused() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            check("/x", v11, &["a.example", "b.example"]),
            Err(HostError::Multiple)
        );
        assert_eq!(
            check("/x", v11, &["a.example", "a.example"]),
            Err(HostError::Multiple)
        );
        assert_eq!(
            check("http://other.example/x", v11, &["secure.example"]),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            check("http://a.example:81/x", v11, &["a.example:82"]),
            Err(HostError::Mismatch)
        );
        for bad in [
            "",
            "user@a.example",
            "a example",
            "a.example/x",
            "a.example:",
            "[zz]",
        ] {
            assert_eq!(check("/x", v11, &[bad]), Err(HostError::Invalid), "{bad:?}");
        }
        assert_eq!(check("/x", v11, &[]), Err(HostError::Missing));
    }
}
