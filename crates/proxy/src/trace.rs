//! W3C trace context: every request belongs to a trace. The caller's `traceparent`
//! is continued (its trace id kept, the proxy's span a child of the caller's) or, when
//! absent or malformed, a trace is started. Each attempt to an agent is a child span
//! of the request's, and the agent receives a `traceparent` naming the attempt, with
//! the caller's `tracestate` passed on unchanged.
//!
//! The trace id appears in the access log and in the JSON body of every response the
//! proxy answers itself, so that a client's error report leads to the request's log
//! line and spans.
//!
//! With an exporter configured (`--otlp-endpoint`, in a build with the `otlp`
//! feature), each finished request becomes a [`RequestSpan`] put on a bounded
//! [`SpanQueue`]; the exporter drains it off the request path. Without one, no span
//! is assembled at all.
//!
//! Format (W3C Trace Context, level 1): `00-<32 hex trace id>-<16 hex parent id>-<2 hex
//! flags>`. A version other than `00` is read for its first four fields as the
//! specification asks; an all-zero trace or parent id, upper-case hex or a wrong
//! length make the header invalid, and a new trace starts.

use std::fmt;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

use crate::clock::Entropy;

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A 16-byte trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// The trace context of one request.
#[derive(Clone, Debug)]
pub struct TraceContext {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span, when the caller sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// The proxy's span for this request.
    pub span: SpanId,
    /// The trace flags (bit 0: sampled); the caller's, or sampled for a new trace.
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the trace in `headers`, or starts one, with a new span for the proxy.
    pub fn from_headers(headers: &HeaderMap, entropy: &Entropy) -> Self {
        let span = SpanId::random(entropy);
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parsed {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                parent: Some(parent),
                span,
                flags,
                // A tracestate without a valid traceparent means nothing.
                state: headers.get(TRACESTATE).cloned(),
            },
            None => Self {
                trace_id: TraceId::random(entropy),
                parent: None,
                span,
                flags: 0x01,
                state: None,
            },
        }
    }

    /// The `traceparent` an agent receives for the attempt whose span is `attempt`.
    pub fn traceparent_for(&self, attempt: SpanId) -> HeaderValue {
        // `00-{trace id}-{span id}-{flags}`, written directly: this runs for every
        // attempt, and the formatting machinery costs more than the rest of it.
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        hex_into(&mut value[3..35], &self.trace_id.0);
        hex_into(&mut value[36..52], &attempt.0);
        hex_into(&mut value[53..55], &[self.flags]);
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Replaces the trace headers of a request going to an agent: `traceparent` for
    /// the `attempt` span and the caller's `tracestate`, if any.
    pub fn inject(&self, headers: &mut HeaderMap, attempt: SpanId) {
        headers.insert(TRACEPARENT, self.traceparent_for(attempt));
        match &self.state {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random(entropy: &Entropy) -> Self {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&entropy.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&(entropy.next_u64() | 1).to_be_bytes());
        Self(id)
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random(entropy: &Entropy) -> Self {
        Self((entropy.next_u64() | 1).to_be_bytes())
    }
}

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Writes an id (at most 16 bytes) in lowercase hex: one `write_str`, rather than a
/// formatted write per byte, which made the trace id cost a tenth of an access log line.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut text = [0u8; 32];
    let text = &mut text[..bytes.len() * 2];
    hex_into(text, bytes);
    // Hex digits only: always UTF-8.
    f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// One attempt to an agent: a client span, child of the request's.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    /// The span.
    pub span: SpanId,
    /// The endpoint tried.
    pub endpoint: String,
    /// When the attempt was sent.
    pub start: SystemTime,
    /// When its response headers (or its failure) came.
    pub end: SystemTime,
    /// The agent's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (a proxy reason code).
    pub error: Option<&'static str>,
}

/// A finished request: the proxy's server span and its attempts.
#[derive(Debug, Clone)]
pub struct RequestSpan {
    /// The request's trace context (its span is the proxy's server span).
    pub trace: TraceContext,
    /// The span name: the method and the pool (or the path when no pool served).
    pub name: String,
    /// When the request arrived.
    pub start: SystemTime,
    /// When its response body ended.
    pub end: SystemTime,
    /// Attributes: HTTP method, path, status, pool, consumer, reason.
    pub attributes: Vec<(&'static str, String)>,
    /// The status the client received.
    pub status: u16,
    /// The attempts to agents, in order.
    pub attempts: Vec<AttemptSpan>,
}

/// Where finished requests go to be exported: a bounded queue that never blocks the
/// request path (a full queue drops the span and counts it).
#[derive(Debug, Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<RequestSpan>,
    dropped: prometheus::IntCounter,
}

impl SpanQueue {
    /// A queue of `capacity` spans; the exporter reads the receiver.
    pub fn new(
        capacity: usize,
        dropped: prometheus::IntCounter,
    ) -> (Self, mpsc::Receiver<RequestSpan>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, dropped }, rx)
    }

    /// Queues `span` for export, or drops and counts it when the queue is full.
    pub fn send(&self, span: RequestSpan) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// The trace id, parent id and flags of a `traceparent` value, if valid.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !lower_hex(version) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = decode(trace)?;
    let parent: [u8; 8] = decode(parent)?;
    let flags: [u8; 1] = decode(flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(parent), flags[0]))
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !lower_hex(hex) {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let e = Entropy::seeded(1);
        let cx = TraceContext::from_headers(
            &headers(&[("traceparent", VALID), ("tracestate", "vendor=x")]),
            &e,
        );
        assert_eq!(cx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            cx.parent.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(cx.flags, 1);
        let attempt = SpanId::random(&e);
        let sent = cx.traceparent_for(attempt);
        assert_eq!(
            sent.to_str().expect("ascii"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{attempt}-01")
        );
        let mut out = HeaderMap::new();
        cx.inject(&mut out, attempt);
        assert_eq!(out[TRACESTATE], "vendor=x");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let e = Entropy::seeded(2);
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let cx = TraceContext::from_headers(
                &headers(&[("traceparent", bad), ("tracestate", "vendor=x")]),
                &e,
            );
            assert!(cx.parent.is_none(), "{bad:?}");
            assert!(cx.state.is_none(), "{bad:?}");
            assert_ne!(cx.trace_id.0, [0; 16]);
        }
        // A later version is read for its known fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        let cx = TraceContext::from_headers(&headers(&[("traceparent", later)]), &e);
        assert!(cx.parent.is_some());
    }
}
