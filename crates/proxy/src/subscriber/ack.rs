//! Acknowledging applied tables to the controller, off the stream's path.
//!
//! One task per subscription sends `POST /v1/routes/ack` with an [`Ack`] each time a
//! table was applied, over the subscription's HTTP/2 connection, with the token read
//! again from its file. When several are due
//! (a slow answer), only the latest is sent, so a slow controller never holds up the
//! stream, and the task ends with the subscription ([`Acker`] aborts it when dropped).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use sluice_api::push::Ack;
use tokio::sync::watch;

use super::HttpClient;

/// The acknowledgement task of one subscription; dropping it stops the task.
pub(super) struct Acker {
    pending: watch::Sender<Option<Ack>>,
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    /// Starts the task: acknowledgements go to `uri` through `client`, each within
    /// `timeout`.
    pub(super) fn spawn(
        client: HttpClient,
        uri: Uri,
        token: Option<PathBuf>,
        timeout: Duration,
    ) -> Self {
        let (pending, rx) = watch::channel(None);
        let task = tokio::spawn(acknowledge(client, uri, token, rx, timeout));
        Self { pending, task }
    }

    /// Asks for `ack` to be sent, replacing any not sent yet.
    pub(super) fn send(&self, ack: Ack) {
        self.pending.send_replace(Some(ack));
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends the latest table to acknowledge each time one is due, until the subscription
/// ends. A failed acknowledgement is logged, not retried: the next table, or the next
/// subscription, acknowledges again.
async fn acknowledge(
    client: HttpClient,
    uri: Uri,
    token: Option<PathBuf>,
    mut pending: watch::Receiver<Option<Ack>>,
    timeout: Duration,
) {
    while pending.changed().await.is_ok() {
        let Some(ack) = pending.borrow_and_update().clone() else {
            continue;
        };
        let version = ack.version;
        let body = match serde_json::to_vec(&ack) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise an acknowledgement");
                continue;
            }
        };
        let authorization = match super::bearer(token.as_ref()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(version, error = %e, "acknowledgement not sent");
                continue;
            }
        };
        let mut req = Request::post(uri.clone()).header(header::CONTENT_TYPE, "application/json");
        if let Some(value) = &authorization {
            req = req.header(header::AUTHORIZATION, value);
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot build an acknowledgement");
                return;
            }
        };
        match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                tracing::debug!(version, "route table acknowledged");
            }
            Ok(Ok(resp)) => {
                tracing::warn!(version, status = %resp.status(), "the controller refused the acknowledgement");
            }
            Ok(Err(e)) => tracing::warn!(version, error = %e, "acknowledgement failed"),
            Err(_) => tracing::warn!(version, "acknowledgement unanswered within {timeout:?}"),
        }
    }
}
