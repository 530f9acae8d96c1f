//! Acknowledging applied tables to the controller: `POST /v1/routes/ack` with an
//! [`Ack`] each time a table was applied, the latest only ([`super::post`]). A failed
//! acknowledgement is logged, not retried: the next table, or the next subscription,
//! acknowledges again.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use sluice_api::push::Ack;

use super::HttpClient;
use super::post::{PostError, Poster};

/// The acknowledgement task of one subscription; dropping it stops the task.
pub(super) type Acker = Poster<Ack>;

/// Starts the acknowledgement task: acknowledgements go to `uri` through `client`,
/// each within `timeout`.
pub(super) fn acker(
    client: HttpClient,
    uri: Uri,
    token: Option<PathBuf>,
    timeout: Duration,
) -> Acker {
    Poster::spawn(client, uri, token, timeout, |ack: &Ack, result| {
        let version = ack.version;
        match result {
            Ok(()) => tracing::debug!(version, "route table acknowledged"),
            Err(PostError::Serialise(e)) => {
                tracing::error!(error = %e, "cannot serialise an acknowledgement");
            }
            Err(PostError::Request(e)) => {
                tracing::error!(error = %e, "cannot build an acknowledgement");
            }
            Err(PostError::Token(e)) => {
                tracing::warn!(version, error = %e, "acknowledgement not sent");
            }
            Err(PostError::Refused(status)) => {
                tracing::warn!(version, %status, "the controller refused the acknowledgement");
            }
            Err(PostError::Failed(e)) => {
                tracing::warn!(version, error = %e, "acknowledgement failed")
            }
            Err(PostError::Unanswered(timeout)) => {
                tracing::warn!(version, "acknowledgement unanswered within {timeout:?}");
            }
        }
    })
}
