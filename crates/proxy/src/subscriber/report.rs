//! Reporting the pools' load to the controller, off the stream's path.
//!
//! Every `report_interval` of a subscription, the proxy posts a
//! [`LoadReport`] (what [`TableStore::load_report`](crate::store::TableStore::load_report)
//! reads) on `POST /v1/proxies/report`, over the subscription's HTTP/2 connection (so it
//! reaches the controller replica that tracks this proxy), with the token read again
//! from its file. One task per subscription sends them; when several are due (a slow
//! answer) only the latest is sent, and the task ends with the subscription
//! ([`Reporter`] aborts it when dropped).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use sluice_api::load::LoadReport;
use tokio::sync::watch;

use super::HttpClient;

/// The reporting task of one subscription; dropping it stops the task.
pub(super) struct Reporter {
    pending: watch::Sender<Option<LoadReport>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Starts the task: reports go to `uri` through `client`, each within `timeout`.
    pub(super) fn spawn(
        client: HttpClient,
        uri: Uri,
        token: Option<PathBuf>,
        timeout: Duration,
    ) -> Self {
        let (pending, rx) = watch::channel(None);
        let task = tokio::spawn(report(client, uri, token, rx, timeout));
        Self { pending, task }
    }

    /// Asks for `report` to be sent, replacing any not sent yet.
    pub(super) fn send(&self, report: LoadReport) {
        self.pending.send_replace(Some(report));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends the latest report each time one is due. A failed report is logged (at debug
/// after the first of a row), not retried: the next one carries newer numbers.
async fn report(
    client: HttpClient,
    uri: Uri,
    token: Option<PathBuf>,
    mut pending: watch::Receiver<Option<LoadReport>>,
    timeout: Duration,
) {
    let mut failing = false;
    while pending.changed().await.is_ok() {
        let Some(report) = pending.borrow_and_update().clone() else {
            continue;
        };
        let result = send(&client, &uri, token.as_ref(), &report, timeout).await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("load reports accepted again");
                }
                failing = false;
            }
            Err(e) if failing => tracing::debug!(error = %e, "load report not delivered"),
            Err(e) => {
                failing = true;
                tracing::warn!(error = %e, "load report not delivered");
            }
        }
    }
}

async fn send(
    client: &HttpClient,
    uri: &Uri,
    token: Option<&PathBuf>,
    report: &LoadReport,
    timeout: Duration,
) -> Result<(), String> {
    let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    let authorization = super::bearer(token).await.map_err(|e| e.to_string())?;
    let mut req = Request::post(uri.clone()).header(header::CONTENT_TYPE, "application/json");
    if let Some(value) = &authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("the controller answered {}", resp.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("unanswered within {timeout:?}")),
    }
}
