//! Which pool serves a request: the first route of the table, in precedence order,
//! whose host, path prefix and headers all match, and whose pool has the capability
//! the request names (when it names one).

use http::{HeaderMap, Uri};
use sluice_api::table::Route;

use crate::error::ProxyError;
use crate::store::Runtime;

/// The index in `runtime` of the pool that serves a request for `uri` with `headers`,
/// asking for `capability` if any.
///
/// # Errors
///
/// [`ProxyError::NoRoute`] when no route matches; [`ProxyError::NoCapability`] when
/// routes match but none of their pools has the capability.
pub fn route(
    runtime: &Runtime,
    uri: &Uri,
    headers: &HeaderMap,
    capability: Option<&str>,
) -> Result<usize, ProxyError> {
    let mut host_buf = String::new();
    let req = RouteRequest {
        host: request_host(uri, headers, &mut host_buf),
        path: uri.path(),
        headers,
    };
    let mut candidates = matching(&runtime.table.routes, &req)
        .filter_map(|i| runtime.pool_index_for_route(i))
        .peekable();
    if candidates.peek().is_none() {
        return Err(ProxyError::NoRoute {
            path: uri.path().to_owned(),
        });
    }
    let found = match capability {
        None => candidates.next(),
        Some(c) => candidates.find(|&p| runtime.pools[p].has_capability(c)),
    };
    found.ok_or_else(|| ProxyError::NoCapability {
        path: uri.path().to_owned(),
        capability: capability.unwrap_or_default().to_owned(),
    })
}

/// The parts of a request routing looks at.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    /// Host without port, lower case; `None` when the request names none.
    pub host: Option<&'a str>,
    /// The URI path.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// Returns the index of the first route that matches.
pub fn find(routes: &[Route], req: &RouteRequest<'_>) -> Option<usize> {
    routes.iter().position(|r| matches(r, req))
}

/// The indices of every route that matches, in precedence order.
pub fn matching<'a>(
    routes: &'a [Route],
    req: &'a RouteRequest<'a>,
) -> impl Iterator<Item = usize> + 'a {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| matches(r, req))
        .map(|(i, _)| i)
}

fn matches(route: &Route, req: &RouteRequest<'_>) -> bool {
    if let Some(host) = &route.host
        && req.host != Some(host.as_str())
    {
        return false;
    }
    if !prefix_matches(&route.path_prefix, req.path) {
        return false;
    }
    route.headers.iter().all(|h| {
        req.headers
            .get_all(&h.name)
            .iter()
            .any(|v| v.as_bytes() == h.value.as_bytes())
    })
}

/// Segment-wise prefix match: `/a/b` matches `/a/b` and `/a/b/c`, not `/a/bc`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The host a request is addressed to: the URI authority (HTTP/2, absolute-form) or the
/// `Host` header, without port and trailing dot, lower-cased into `buf`.
pub fn request_host<'a>(
    uri: &http::Uri,
    headers: &HeaderMap,
    buf: &'a mut String,
) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => {
            let value = headers.get(http::header::HOST)?.to_str().ok()?;
            // Strip a port, minding bracketed IPv6 literals.
            match value.rfind(':') {
                Some(i) if !value[i..].contains(']') => &value[..i],
                _ => value,
            }
        }
    };
    buf.clear();
    buf.push_str(raw.trim_end_matches('.'));
    buf.make_ascii_lowercase();
    Some(buf.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::table::HeaderMatch;

    fn route(pool: &str, host: Option<&str>, prefix: &str, headers: &[(&str, &str)]) -> Route {
        Route {
            pool: pool.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            headers: headers
                .iter()
                .map(|(n, v)| HeaderMatch {
                    name: http::HeaderName::from_bytes(n.as_bytes()).expect("header name"),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/agents/echo", "/agents/echo"));
        assert!(prefix_matches("/agents/echo", "/agents/echo/"));
        assert!(prefix_matches("/agents/echo", "/agents/echo/hello"));
        assert!(!prefix_matches("/agents/echo", "/agents/echoes"));
        assert!(!prefix_matches("/agents/echo", "/agents"));
    }

    fn req<'a>(host: Option<&'a str>, path: &'a str, headers: &'a HeaderMap) -> RouteRequest<'a> {
        RouteRequest {
            host,
            path,
            headers,
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let routes = vec![
            route("host", Some("a.example"), "/", &[]),
            route("hdr", None, "/x", &[("x-tenant", "acme")]),
            route("x", None, "/x", &[]),
            route("root", None, "/", &[]),
        ];
        let mut headers = HeaderMap::new();
        assert_eq!(
            find(&routes, &req(Some("a.example"), "/x", &headers)),
            Some(0)
        );
        assert_eq!(
            find(&routes, &req(Some("b.example"), "/x/y", &headers)),
            Some(2)
        );
        headers.append("x-tenant", "other".parse().expect("value"));
        headers.append("x-tenant", "acme".parse().expect("value"));
        assert_eq!(find(&routes, &req(None, "/x", &headers)), Some(1));
        assert_eq!(find(&routes, &req(None, "/elsewhere", &headers)), Some(3));
        assert_eq!(find(&routes[..3], &req(None, "/elsewhere", &headers)), None);
    }

    #[test]
    fn host_comes_from_authority_or_header_without_port() {
        let mut buf = String::new();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            "Chat.Example.com.:8080".parse().expect("value"),
        );
        let uri: http::Uri = "/path".parse().expect("uri");
        assert_eq!(
            request_host(&uri, &headers, &mut buf),
            Some("chat.example.com")
        );
        headers.insert(http::header::HOST, "[::1]".parse().expect("value"));
        assert_eq!(request_host(&uri, &headers, &mut buf), Some("[::1]"));
        let abs: http::Uri = "http://h2.example/path".parse().expect("uri");
        assert_eq!(request_host(&abs, &headers, &mut buf), Some("h2.example"));
    }
}
