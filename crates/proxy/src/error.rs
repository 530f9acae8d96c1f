//! The proxy's one error type, and how each case reaches the client.
//!
//! Every case maps, in one `match` without a wildcard, to an HTTP status, a metric
//! reason (a bounded label) and whether a retry could help.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::trace::TraceId;

/// Why the proxy answered a request itself instead of with an agent's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route table has been loaded yet. Retryable: the proxy is starting.
    #[error("the gateway has no route table yet")]
    NotReady,
    /// No route matches the request. Not retryable.
    #[error("no route matches {path}")]
    NoRoute {
        /// The request path.
        path: String,
    },
    /// The matched pool has no endpoint to send to (with the requested capability,
    /// if any). Retryable once endpoints appear.
    #[error("pool {pool} has no ready endpoints{}", capability.as_ref().map(|c| format!(" with capability {c:?}")).unwrap_or_default())]
    NoEndpoints {
        /// The pool key.
        pool: String,
        /// The capability the request asked for.
        capability: Option<String>,
    },
    /// The request's URI or headers could not be turned into an upstream request, or
    /// its path is refused by normalisation. Not retryable.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request path is refused by normalisation (an encoded `/`, `\\` or NUL, a
    /// bad percent escape). Not retryable.
    #[error("bad request path: {0}")]
    BadPath(#[from] crate::hygiene::path::PathError),
    /// The request's host is ambiguous or malformed (two `Host` lines, a `Host` that
    /// disagrees with the target, an invalid or missing one). Not retryable.
    #[error("bad request: {0}")]
    BadHost(#[from] crate::hygiene::host::HostError),
    /// A method the gateway does not proxy (`CONNECT`). Not retryable.
    #[error("method {method} is not allowed")]
    MethodNotAllowed {
        /// The method.
        method: String,
    },
    /// A request body in a transfer coding other than `chunked`. Not retryable.
    #[error("transfer coding {coding:?} is not implemented; send the body unencoded or chunked")]
    UnsupportedTransferCoding {
        /// The coding.
        coding: String,
    },
    /// Authentication or access refused the request (401, 403, or 503 when a JWKS is
    /// unavailable). Retryable only in the last case.
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// A rate limit refused the request (429). Retryable after `retry_after` seconds.
    #[error("rate limit of policy {policy} (tier {tier}) reached; retry in {retry_after} s")]
    RateLimited {
        /// The refusing policy.
        policy: String,
        /// The tier whose limit refused.
        tier: String,
        /// Seconds to wait.
        retry_after: u64,
        /// `Retry-After`, `RateLimit-Policy` and `RateLimit`.
        headers: Vec<(http::HeaderName, HeaderValue)>,
    },
    /// A global rate limit could not be checked and its policy fails closed (503).
    /// Retryable.
    #[error("rate limit store for policy {policy} is unavailable")]
    LimitsUnavailable {
        /// The policy.
        policy: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The client's request body broke while it was sent on (a malformed chunk, the
    /// client gone mid-body): the client's fault, never counted against the agent.
    /// Not retryable.
    #[error("the request body could not be read: {message}")]
    ClientBody {
        /// What failed.
        message: String,
    },
    /// The client's request body arrived slower than the minimum data rate and was
    /// cut (408), freeing the agent's slot. Not retryable as it was sent.
    #[error("the request body arrived too slowly")]
    ClientBodyTooSlow,
    /// The request body is larger than the proxy reads to find `max_tokens`. Not
    /// retryable.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request names a capability no matching pool advertises. Not retryable.
    #[error("no agent pool for {path} has capability {capability:?}")]
    NoCapability {
        /// The request path.
        path: String,
        /// The capability asked for.
        capability: String,
    },
    /// Every endpoint is busy and the queue is full. Retryable.
    #[error("pool {pool} is at capacity and its queue is full")]
    QueueFull {
        /// The pool key.
        pool: String,
    },
    /// The request waited in the queue until its timeout. Retryable.
    #[error("pool {pool} had no free endpoint within {timeout_ms} ms")]
    QueueTimeout {
        /// The pool key.
        pool: String,
        /// The queue timeout.
        timeout_ms: u64,
    },
    /// Connecting to the endpoint failed or timed out. Retryable on another endpoint:
    /// nothing was sent.
    #[error("could not connect to {endpoint}")]
    Connect {
        /// The endpoint address.
        endpoint: String,
    },
    /// The TLS handshake with the endpoint failed: its certificate was refused (expired,
    /// for another name, from another CA) or no protocol was in common. Retried on
    /// another endpoint (nothing was sent); not retryable by the client.
    #[error("TLS with {endpoint} failed: {reason}")]
    UpstreamTls {
        /// The endpoint address.
        endpoint: String,
        /// What the TLS library said.
        reason: String,
    },
    /// The endpoint did not answer within the request timeout. Not retryable by the
    /// proxy: the agent may have acted on the request.
    #[error("{endpoint} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The endpoint address.
        endpoint: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The connection to the endpoint failed after the request was sent. Not retryable
    /// by the proxy.
    #[error("{endpoint} failed: {message}")]
    Upstream {
        /// The endpoint address.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotReady
            | ProxyError::NoEndpoints { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute { .. } | ProxyError::NoCapability { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::BadHost(_)
            | ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnsupportedTransferCoding { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Auth(e) => e.status(),
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::LimitsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The reason code: a metric label and the `code` in the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NotReady => "not_ready",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoEndpoints { .. } => "no_endpoints",
            ProxyError::NoCapability { .. } => "no_capability",
            ProxyError::QueueFull { .. } => "queue_full",
            ProxyError::QueueTimeout { .. } => "queue_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadPath(e) => e.reason(),
            ProxyError::BadHost(e) => e.reason(),
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::UnsupportedTransferCoding { .. } => "unsupported_transfer_coding",
            ProxyError::Auth(e) => e.reason(),
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::LimitsUnavailable { .. } => "rate_limit_unavailable",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::ClientBody { .. } => "client_body_error",
            ProxyError::ClientBodyTooSlow => "client_body_timeout",
            ProxyError::Connect { .. } => "upstream_connect",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::Upstream { .. } => "upstream_error",
        }
    }

    /// Whether the same request may succeed if sent again (by the client, or by the
    /// proxy to another endpoint).
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::NotReady
            | ProxyError::NoEndpoints { .. }
            | ProxyError::Connect { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. } => true,
            ProxyError::Auth(e) => matches!(e, crate::auth::AuthError::KeysUnavailable),
            ProxyError::RateLimited { .. } | ProxyError::LimitsUnavailable { .. } => true,
            ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyTooSlow => false,
            ProxyError::NoRoute { .. }
            | ProxyError::BadPath(_)
            | ProxyError::BadHost(_)
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::NoCapability { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::Timeout { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Upstream { .. } => false,
        }
    }

    /// The response the client receives: the status and a JSON body
    /// `{"error": {"code": ..., "message": ..., "trace_id": ...}}`; retryable errors
    /// carry `Retry-After`. `trace_id` names the request's trace, so that a client's
    /// report leads to its log line.
    pub fn into_response(self, trace_id: &TraceId) -> Response<ProxyBody> {
        let mut error = serde_json::json!({
            "code": self.reason(),
            "message": self.to_string(),
            "trace_id": trace_id.to_string(),
        });
        if let ProxyError::RateLimited {
            policy,
            tier,
            retry_after,
            ..
        } = &self
        {
            error["policy"] = policy.as_str().into();
            error["tier"] = tier.as_str().into();
            error["retry_after"] = (*retry_after).into();
        }
        let body = serde_json::json!({ "error": error });
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ProxyError::RateLimited { headers: extra, .. } => {
                for (name, value) in extra {
                    headers.insert(name.clone(), value.clone());
                }
            }
            ProxyError::LimitsUnavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ if self.retryable() => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let ProxyError::Auth(e) = &self
            && let Some(challenge) = e.www_authenticate()
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        resp
    }
}
