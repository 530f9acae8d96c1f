//! Respond: the agent's response becomes the client's. Hop-by-hop headers go, the rate
//! limits' headers are added, the body streams under the pool's deadlines (a stream
//! under its own limit and the idle timeout instead of the request's), the endpoint
//! slot is held until the body ends, token reservations settle with the usage the
//! body reports, and an upgraded connection is spliced through (holding the slot
//! until it closes).

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::context::{RequestCtx, Serving};
use crate::body::{BodyEnd, BodyWatch, ProxyBody, TimeoutKind, WatchedBody};
use crate::hygiene::headers::strip_hop_by_hop;
use crate::limits::{RateOutcome, UsageWatch};
use crate::pool::{DEFAULT_IDLE_TIMEOUT, Slot};
use crate::upgrade;

/// The client's response for the agent's `resp`, served from the endpoint of `slot`.
pub(super) fn respond(
    ctx: &RequestCtx,
    serving: &Serving,
    mut resp: Response<Incoming>,
    slot: Slot,
    client_upgrade: Option<OnUpgrade>,
    rate: RateOutcome,
) -> Response<ProxyBody> {
    let pool = serving.pool();
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    let mut slot = Some(slot);
    if let (true, Some(client), Some(protocol)) = (switching, client_upgrade, protocol.clone()) {
        // The upgraded connection, not the (empty) response body, holds the slot.
        upgrade::splice(client, hyper::upgrade::on(&mut resp), protocol, slot.take());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(protocol)) = (switching, protocol) {
        upgrade::restore_upgrade_headers(&mut parts.headers, protocol);
    }
    let stream = is_stream(&parts.headers);
    let total = if stream {
        pool.spec.stream_max_duration.map(|d| ctx.start + d.get())
    } else {
        Some(serving.deadline())
    };
    let idle = pool
        .spec
        .idle_timeout
        .map_or(DEFAULT_IDLE_TIMEOUT, |t| t.get());
    for (name, value) in rate.headers {
        parts.headers.insert(name, value);
    }
    let usage =
        (!rate.tokens.is_empty()).then(|| UsageWatch::new(rate.tokens, stream, ctx.tokens.clone()));
    let watch = (
        SlotWatch {
            slot,
            cut: pool.metrics.body_cut.clone(),
        },
        usage,
    );
    Response::from_parts(
        parts,
        WatchedBody::new(body, total, Some(idle), watch).boxed(),
    )
}

/// Holds an endpoint slot until the response body ends, and counts cut bodies.
struct SlotWatch {
    slot: Option<Slot>,
    /// `sluice_body_cut_total` for `total`, `idle` and `upstream`.
    cut: [prometheus::IntCounter; 3],
}

impl BodyWatch for SlotWatch {
    fn on_end(&mut self, end: BodyEnd) {
        match end {
            BodyEnd::TimedOut(TimeoutKind::Total) => self.cut[0].inc(),
            BodyEnd::TimedOut(TimeoutKind::Idle) => self.cut[1].inc(),
            BodyEnd::Failed => self.cut[2].inc(),
            BodyEnd::Complete | BodyEnd::Dropped => {}
        }
        self.slot.take();
    }
}

/// Whether a response streams (server-sent events, NDJSON, gRPC): such a body is not
/// cut by the whole-request timeout, only by the stream's own limit and the idle
/// timeout.
fn is_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes().trim_ascii_start();
        // Compared without a lower-cased copy: this runs for every response.
        let starts = |prefix: &str| {
            ct.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        starts("text/event-stream") || starts("application/x-ndjson") || starts("application/grpc")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_recognised_by_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8".parse().expect("v"),
        );
        assert!(is_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            " Application/X-NDJSON".parse().expect("v"),
        );
        assert!(is_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().expect("v"),
        );
        assert!(is_stream(&h));
        h.insert(header::CONTENT_TYPE, "text/event".parse().expect("v"));
        assert!(!is_stream(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().expect("v"));
        assert!(!is_stream(&h));
    }
}
