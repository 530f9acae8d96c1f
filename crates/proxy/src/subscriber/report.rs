//! Reporting the pools' load to the controller: every `report_interval` of a
//! subscription, a [`LoadReport`] (what
//! [`TableStore::load_report`](crate::store::TableStore::load_report) reads) on
//! `POST /v1/proxies/report`, the latest only ([`super::post`]). A failed report is
//! logged (at debug after the first of a row), not retried: the next one carries newer
//! numbers.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use sluice_api::load::LoadReport;

use super::HttpClient;
use super::post::Poster;

/// The reporting task of one subscription; dropping it stops the task.
pub(super) type Reporter = Poster<LoadReport>;

/// Starts the reporting task: reports go to `uri` through `client`, each within
/// `timeout`.
pub(super) fn reporter(
    client: HttpClient,
    uri: Uri,
    token: Option<PathBuf>,
    timeout: Duration,
) -> Reporter {
    let mut failing = false;
    Poster::spawn(
        client,
        uri,
        token,
        timeout,
        move |_: &LoadReport, result| match result {
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
        },
    )
}
