//! Protocol upgrades (WebSocket) pass through: the proxy forwards the upgrade request
//! with its `Connection: upgrade` and `Upgrade` headers, and when the agent answers
//! `101 Switching Protocols`, splices the two upgraded connections together.

use http::Request;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Whether `headers` ask for a protocol upgrade the gateway passes through
/// (`Connection: upgrade` plus `Upgrade`). An upgrade to `h2c` is about the client's own
/// connection to the gateway, not the agent's: it is never passed on (its headers go
/// as hop-by-hop).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let h2c = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
    });
    !h2c && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `Upgrade` header of a request, kept aside before hop-by-hop headers are
/// stripped, to be put back on the upstream request.
pub fn take_upgrade<B>(req: &mut Request<B>) -> Option<(HeaderValue, OnUpgrade)> {
    if !is_upgrade_request(req.headers()) {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    Some((protocol, hyper::upgrade::on(req)))
}

/// Restores the upgrade headers on the request sent upstream.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Copies bytes both ways between the client's and the agent's upgraded connections,
/// once both upgrades complete, in a task of its own. `hold` (the endpoint's slot) is
/// kept until the connection closes: an open WebSocket occupies its endpoint.
pub fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    protocol: HeaderValue,
    hold: impl Send + 'static,
) {
    tokio::spawn(async move {
        let _hold = hold;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(?protocol, up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(?protocol, error = %e, "upgraded connection failed"),
        }
    });
}
