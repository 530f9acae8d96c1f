//! The admin listener: `/healthz`, `/readyz` (a table is loaded), `/metrics`
//! (Prometheus text), `/routes` (the table in force, with its version, as JSON) and
//! `/limits/top` (per rate policy, the callers refused most, as JSON).
//!
//! It binds to localhost by default. Exposed beyond it, it requires a bearer token for
//! everything but `/healthz` and `/readyz`, which stay open for probes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::store::TableStore;

/// Answers admin requests.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Arc<TableStore>,
    metrics: Metrics,
    token: Option<Arc<str>>,
}

impl Admin {
    /// An admin handler over `store` and `metrics`.
    pub fn new(store: Arc<TableStore>, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            token: None,
        }
    }

    /// Requires `Authorization: Bearer TOKEN` for `/metrics` and `/routes`.
    #[must_use]
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        // Compare digests, so the comparison time says nothing about the token.
        presented.is_some_and(|p| {
            use sha2::Digest;
            sha2::Sha256::digest(p.as_bytes()) == sha2::Sha256::digest(token.as_bytes())
        })
    }

    /// Handles one admin request.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET is served\n".into(),
            );
        }
        let path = req.uri().path();
        if matches!(path, "/metrics" | "/routes" | "/limits/top") && !self.authorized(req) {
            let mut resp = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "admin token required\n".into(),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
            );
            return resp;
        }
        match path {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.store.load() {
                Some(rt) => reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: table version {}\n", rt.table.version),
                ),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no route table yet\n".into(),
                ),
            },
            "/metrics" => {
                self.store.refresh_gauges();
                let body = self.metrics.exposition();
                respond(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            "/limits/top" => {
                let body = serde_json::json!({
                    "window_seconds": crate::top::DEFAULT_WINDOW.as_secs(),
                    "policies": self.store.top().reading(),
                });
                reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
            }
            "/routes" => match self.store.load() {
                Some(rt) => match serde_json::to_string_pretty(&rt.table.redacted()) {
                    Ok(json) => reply(StatusCode::OK, "application/json", json + "\n"),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                },
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"error\":\"no route table yet\"}\n".into(),
                ),
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /healthz, /readyz, /metrics, /routes or /limits/top\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    respond(status, content_type, Full::new(Bytes::from(body)))
}

fn respond<B>(status: StatusCode, content_type: &'static str, body: B) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    let mut resp = Response::new(body.map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
