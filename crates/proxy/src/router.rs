//! Which pool serves a request: the first route of the table, in precedence order,
//! whose host, path prefix, headers, method and model all match, and whose pool has
//! the capability the request names (when it names one).
//!
//! The model is the `model` field of a JSON body ([`crate::model`]). The body is read
//! for it (within [`MAX_BUFFERED_BODY`], the bound the limits use for `max_tokens`)
//! only when a route that fits the request otherwise asks for a model: a table without
//! model routes costs nothing, and neither does a request none of them could match.

use http::request::Parts;
use http::{HeaderMap, Method, Uri};
use sluice_api::table::Route;

use crate::body::{RequestBody, is_json};
use crate::client_body::CountedBody;
use crate::error::ProxyError;
use crate::limits::MAX_BUFFERED_BODY;
use crate::model::requested_model;
use crate::store::Runtime;

/// Routes a request with head `parts`: the index in `runtime` of the pool that serves
/// it, and its body, read in full when routing needed its `model`.
///
/// # Errors
///
/// As [`route`]; [`ProxyError::BodyTooLarge`] or [`ProxyError::BadRequest`] when the
/// body that had to be read could not be.
pub async fn route_request(
    runtime: &Runtime,
    parts: &Parts,
    body: CountedBody,
    capability: Option<&str>,
) -> Result<(usize, RequestBody), ProxyError> {
    let (uri, headers, method) = (&parts.uri, &parts.headers, &parts.method);
    let mut body = RequestBody::Streaming(body);
    let mut model = None;
    if runtime.routes_on_model() && is_json(headers) && needs_model(runtime, uri, headers, method) {
        let bytes = body.into_bytes(MAX_BUFFERED_BODY).await?;
        model = requested_model(&bytes);
        body = RequestBody::Buffered(bytes);
    }
    let index = route(runtime, uri, headers, method, model.as_deref(), capability)?;
    Ok((index, body))
}

/// Whether a route that fits a request in all but its model asks for a model.
pub fn needs_model(runtime: &Runtime, uri: &Uri, headers: &HeaderMap, method: &Method) -> bool {
    let mut host_buf = String::new();
    let req = RouteRequest {
        host: request_host(uri, headers, &mut host_buf),
        path: uri.path(),
        headers,
        method,
        model: None,
    };
    runtime
        .table
        .routes
        .iter()
        .any(|r| r.model.is_some() && matches_but_model(r, &req))
}

/// The index in `runtime` of the pool that serves a request for `uri` with `headers`
/// and `method`, whose body names `model` (if known), asking for `capability` if any.
///
/// # Errors
///
/// [`ProxyError::NoRoute`] when no route matches; [`ProxyError::NoCapability`] when
/// routes match but none of their pools has the capability.
pub fn route(
    runtime: &Runtime,
    uri: &Uri,
    headers: &HeaderMap,
    method: &Method,
    model: Option<&str>,
    capability: Option<&str>,
) -> Result<usize, ProxyError> {
    let mut host_buf = String::new();
    let req = RouteRequest {
        host: request_host(uri, headers, &mut host_buf),
        path: uri.path(),
        headers,
        method,
        model,
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
    /// The request method.
    pub method: &'a Method,
    /// The `model` of the JSON body, when it was read and has one.
    pub model: Option<&'a str>,
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
    matches_but_model(route, req)
        && route
            .model
            .as_ref()
            .is_none_or(|m| req.model.is_some_and(|model| m.matches(model)))
}

fn matches_but_model(route: &Route, req: &RouteRequest<'_>) -> bool {
    if let Some(host) = &route.host
        && req.host != Some(host.as_str())
    {
        return false;
    }
    if !prefix_matches(&route.path_prefix, req.path) {
        return false;
    }
    if route
        .method
        .is_some_and(|m| m.as_str() != req.method.as_str())
    {
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
/// `Host` header, without port and trailing dot, lower-cased (into `buf` when it is not
/// already).
pub fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
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
    let raw = raw.trim_end_matches('.');
    if !raw.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(raw);
    }
    buf.clear();
    buf.push_str(raw);
    buf.make_ascii_lowercase();
    Some(buf.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::table::HeaderMatch;

    fn route(pool: &str, host: Option<&str>, prefix: &str, headers: &[(&str, &str)]) -> Route {
        Route {
            host: host.map(Into::into),
            headers: headers
                .iter()
                .map(|(n, v)| HeaderMatch {
                    name: http::HeaderName::from_bytes(n.as_bytes()).expect("header name"),
                    value: (*v).into(),
                })
                .collect(),
            ..Route::new(pool, prefix)
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
            method: &Method::GET,
            model: None,
        }
    }

    #[test]
    fn method_and_model_narrow_a_route() {
        use sluice_api::table::{HttpMethod, ModelMatch};
        let routes = vec![
            Route {
                model: Some(ModelMatch::Exact("gpt-4o".into())),
                ..route("exact", None, "/v1", &[])
            },
            Route {
                model: Some(ModelMatch::Prefix("gpt-4".into())),
                ..route("family", None, "/v1", &[])
            },
            Route {
                method: Some(HttpMethod::Post),
                ..route("post", None, "/v1", &[])
            },
            route("any", None, "/v1", &[]),
        ];
        let headers = HeaderMap::new();
        let with = |method: &'static Method, model: Option<&'static str>| RouteRequest {
            method,
            model,
            ..req(None, "/v1/chat/completions", &headers)
        };
        assert_eq!(find(&routes, &with(&Method::POST, Some("gpt-4o"))), Some(0));
        assert_eq!(
            find(&routes, &with(&Method::POST, Some("gpt-4-turbo"))),
            Some(1)
        );
        assert_eq!(find(&routes, &with(&Method::POST, Some("llama"))), Some(2));
        assert_eq!(find(&routes, &with(&Method::POST, None)), Some(2));
        assert_eq!(find(&routes, &with(&Method::GET, None)), Some(3));
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
        headers.insert(
            http::header::HOST,
            "api.example.com.".parse().expect("value"),
        );
        assert_eq!(
            request_host(&uri, &headers, &mut buf),
            Some("api.example.com"),
            "already lower case: as sent, less the dot"
        );
        headers.insert(http::header::HOST, "[::1]".parse().expect("value"));
        assert_eq!(request_host(&uri, &headers, &mut buf), Some("[::1]"));
        let abs: http::Uri = "http://h2.example/path".parse().expect("uri");
        assert_eq!(request_host(&abs, &headers, &mut buf), Some("h2.example"));
    }
}
