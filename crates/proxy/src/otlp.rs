//! OTLP export of request spans over HTTP (protobuf), with the OpenTelemetry crates.
//!
//! Only in a build with the `otlp` feature; a run without `--otlp-endpoint` starts
//! nothing. The request path puts each finished [`RequestSpan`] on a bounded
//! [`SpanQueue`]; a task of its own turns them into OpenTelemetry span data (the
//! request as a server span, each attempt as a client span under it, with the ids the
//! agent saw in `traceparent`) and exports them in batches of up to
//! [`MAX_BATCH`], at least once a second while spans come.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::trace::{RequestSpan, SpanQueue};

/// Spans waiting for export at most.
pub const QUEUE: usize = 4096;
/// Spans exported in one call at most.
pub const MAX_BATCH: usize = 512;
/// Longest a span waits for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one export call.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://` or `https://` URL, or the exporter refused its
    /// settings. Not retryable: fix the flag.
    #[error("OTLP endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
}

/// Starts exporting to `endpoint`: a collector's base URL (`http://collector:4318`,
/// to which `/v1/traces` is added) or the full traces URL. Returns the queue the
/// forwarder puts spans on. Must be called within a Tokio runtime.
///
/// # Errors
///
/// [`OtlpError::Endpoint`] for an endpoint that cannot be used.
pub fn start(endpoint: &str, metrics: &Metrics) -> Result<SpanQueue, OtlpError> {
    let url = traces_url(endpoint)?;
    let refused = |message: String| OtlpError::Endpoint {
        endpoint: endpoint.to_owned(),
        message,
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| refused(format!("no system certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name("sluice-proxy")
            .build(),
    );
    let (queue, rx) = SpanQueue::new(QUEUE, metrics.spans_dropped.clone());
    tokio::spawn(export(exporter, rx, metrics.clone()));
    Ok(queue)
}

/// The traces URL for `endpoint`.
fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let uri: http::Uri = endpoint.parse().map_err(|e| OtlpError::Endpoint {
        endpoint: endpoint.to_owned(),
        message: format!("not a URL: {e}"),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(OtlpError::Endpoint {
            endpoint: endpoint.to_owned(),
            message: "give an http:// or https:// URL".into(),
        });
    }
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_owned(),
    })
}

/// Drains the queue in batches until every sender is gone.
async fn export(
    exporter: impl SpanExporter,
    mut rx: mpsc::Receiver<RequestSpan>,
    metrics: Metrics,
) {
    let scope = InstrumentationScope::builder("sluice-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        spans_of(&first, &scope, &mut batch);
        let flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(flush_at, rx.recv()).await {
                Ok(Some(span)) => spans_of(&span, &scope, &mut batch),
                Ok(None) | Err(_) => break,
            }
        }
        let result = match exporter.export(std::mem::take(&mut batch)).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(error = %e, "OTLP export failed; those spans are lost");
                "error"
            }
        };
        metrics.span_exports.with_label_values(&[result]).inc();
    }
}

/// The server span of a request and the client spans of its attempts.
fn spans_of(r: &RequestSpan, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
    let trace_id = OtelTraceId::from_bytes(r.trace.trace_id.0);
    let flags = TraceFlags::new(r.trace.flags);
    let context = |span: [u8; 8]| {
        SpanContext::new(
            trace_id,
            OtelSpanId::from_bytes(span),
            flags,
            false,
            TraceState::default(),
        )
    };
    let status = if r.status >= 500 {
        Status::error(format!("status {}", r.status))
    } else {
        Status::Unset
    };
    out.push(SpanData {
        span_context: context(r.trace.span.0),
        parent_span_id: r
            .trace
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: r.trace.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(r.name.clone()),
        start_time: r.start,
        end_time: r.end,
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .chain(std::iter::once(KeyValue::new(
                "http.response.status_code",
                i64::from(r.status),
            )))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    });
    for a in &r.attempts {
        let mut attributes = vec![KeyValue::new("server.address", a.endpoint.clone())];
        if let Some(s) = a.status {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        let status = match (a.error, a.status) {
            (Some(reason), _) => Status::error(reason),
            (None, Some(s)) if s >= 500 => Status::error(format!("status {s}")),
            _ => Status::Unset,
        };
        out.push(SpanData {
            span_context: context(a.span.0),
            parent_span_id: OtelSpanId::from_bytes(r.trace.span.0),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed("attempt"),
            start_time: a.start,
            end_time: a.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(
            traces_url("http://collector:4318").ok().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://c.example/custom/traces")
                .ok()
                .as_deref(),
            Some("https://c.example/custom/traces")
        );
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("ftp://c.example").is_err());
    }
}
