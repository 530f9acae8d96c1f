//! Forwarding: route the request, pick an endpoint, send it with the pooled client and
//! stream the response back.
//!
//! Bodies are never buffered: the client's request body goes upstream as it arrives and
//! the agent's response frames reach the client one by one (an SSE stream token by
//! token). Hop-by-hop headers, including those named in `Connection`, are removed in
//! both directions; `X-Forwarded-For` and `X-Forwarded-Proto` are set.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{DeadlineBody, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::{Metrics, NO_POOL, code_class};
use crate::router::{self, RouteRequest};
use crate::store::TableStore;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The proxy's request handler.
#[derive(Debug, Clone)]
pub struct Forwarder {
    store: Arc<TableStore>,
    metrics: Metrics,
}

/// Decrements a pool's in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Forwarder {
    /// A forwarder reading the routing state from `store`.
    pub fn new(store: Arc<TableStore>, metrics: Metrics) -> Self {
        Self { store, metrics }
    }

    /// Handles one request from `peer`, always producing a response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let start = Instant::now();
        let (pool, result) = self.forward(req, peer, start).await;
        let resp = result.unwrap_or_else(|e| {
            tracing::debug!(error = %e, %peer, "request answered by the proxy");
            self.metrics.errors.with_label_values(&[e.reason()]).inc();
            e.into_response()
        });
        let pool = pool.as_deref().unwrap_or(NO_POOL);
        self.metrics
            .requests
            .with_label_values(&[pool, code_class(resp.status())])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[pool])
            .observe(start.elapsed().as_secs_f64());
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        start: Instant,
    ) -> (Option<String>, Result<Response<ProxyBody>, ProxyError>) {
        let Some(runtime) = self.store.load() else {
            return (None, Err(ProxyError::NotReady));
        };
        let mut host_buf = String::new();
        let host = router::request_host(req.uri(), req.headers(), &mut host_buf);
        let route_req = RouteRequest {
            host,
            path: req.uri().path(),
            headers: req.headers(),
        };
        let Some(pool) =
            router::find(&runtime.table.routes, &route_req).and_then(|i| runtime.pool_for_route(i))
        else {
            let path = req.uri().path().to_owned();
            return (None, Err(ProxyError::NoRoute { path }));
        };
        let key = Some(pool.key.clone());
        let Some(endpoint) = pool.pick().and_then(|i| pool.endpoints.get(i)) else {
            return (
                key,
                Err(ProxyError::NoEndpoints {
                    pool: pool.key.clone(),
                }),
            );
        };
        let upstream = match upstream_request(req, endpoint, peer) {
            Ok(r) => r,
            Err(e) => return (key, Err(e)),
        };
        self.metrics
            .endpoint_requests
            .with_label_values(&[&pool.key, endpoint])
            .inc();
        let gauge = self.metrics.in_flight.with_label_values(&[&pool.key]);
        gauge.inc();
        let in_flight = InFlight(gauge);

        let deadline = start + pool.request_timeout;
        let sent = tokio::time::timeout_at(deadline, pool.client.request(upstream)).await;
        let resp = match sent {
            Err(_) => {
                return (
                    key,
                    Err(ProxyError::Timeout {
                        endpoint: endpoint.clone(),
                        timeout_ms: u64::try_from(pool.request_timeout.as_millis())
                            .unwrap_or(u64::MAX),
                    }),
                );
            }
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(error = ?e, endpoint, "connect failed");
                return (
                    key,
                    Err(ProxyError::Connect {
                        endpoint: endpoint.clone(),
                    }),
                );
            }
            Ok(Err(e)) => {
                let message = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string);
                return (
                    key,
                    Err(ProxyError::Upstream {
                        endpoint: endpoint.clone(),
                        message,
                    }),
                );
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = DeadlineBody::new(body, deadline, in_flight).boxed();
        (key, Ok(Response::from_parts(parts, body)))
    }
}

/// Turns the client's request into the request sent to `endpoint`.
fn upstream_request(
    req: Request<Incoming>,
    endpoint: &str,
    peer: SocketAddr,
) -> Result<Request<Incoming>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = format!("http://{endpoint}{path}")
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("cannot build the upstream URI: {e}")))?;
    // HTTP/2 requests carry the host in the authority: keep it for the agent.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers);
    append_forwarded_for(&mut parts.headers, peer);
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Appends `peer` to `X-Forwarded-For`, joining the lines the client sent into one list
/// (a list split over several lines means the same as one line, RFC 9110 section 5.3).
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = String::new();
    for prior in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        value.push_str(prior);
        value.push_str(", ");
    }
    value.push_str(&peer.ip().to_canonical().to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ] {
            h.append(n, v.parse().expect("value"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
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
