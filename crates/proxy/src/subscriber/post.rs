//! Posting to the controller off the stream's path: acknowledgements of applied tables
//! ([`super::ack`]) and load reports ([`super::report`]).
//!
//! One task per kind and subscription sends `POST uri` with the value as JSON, over
//! the subscription's HTTP/2 connection (so it reaches the controller replica that
//! tracks this proxy), with the token read again from its file. When several are due
//! (a slow answer) only the latest is sent, so a slow controller never holds up the
//! stream; the task ends with the subscription ([`Poster`] aborts it when dropped).
//! A value that was not delivered is not retried: the next one supersedes it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::watch;

use super::HttpClient;

/// Why a value was not delivered.
#[derive(Debug)]
pub(super) enum PostError {
    /// It could not be serialised.
    Serialise(String),
    /// No request could be made of it (a token that is no header value).
    Request(String),
    /// The token file could not be read.
    Token(String),
    /// The controller answered with this status.
    Refused(StatusCode),
    /// The request failed.
    Failed(String),
    /// No answer within the timeout.
    Unanswered(Duration),
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serialise(e) | Self::Request(e) | Self::Token(e) | Self::Failed(e) => {
                f.write_str(e)
            }
            Self::Refused(status) => write!(f, "the controller answered {status}"),
            Self::Unanswered(timeout) => write!(f, "unanswered within {timeout:?}"),
        }
    }
}

/// The posting task of one kind of value for one subscription; dropping it stops the
/// task.
pub(super) struct Poster<T> {
    pending: watch::Sender<Option<T>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Serialize + Clone + Send + Sync + 'static> Poster<T> {
    /// Starts the task: values go to `uri` through `client`, each within `timeout`,
    /// and `outcome` is told how each post went.
    pub(super) fn spawn(
        client: HttpClient,
        uri: Uri,
        token: Option<PathBuf>,
        timeout: Duration,
        mut outcome: impl FnMut(&T, Result<(), PostError>) + Send + 'static,
    ) -> Self {
        let (pending, mut rx) = watch::channel::<Option<T>>(None);
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(value) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let result = post(&client, &uri, token.as_ref(), &value, timeout).await;
                outcome(&value, result);
            }
        });
        Self { pending, task }
    }

    /// Asks for `value` to be sent, replacing any not sent yet.
    pub(super) fn send(&self, value: T) {
        self.pending.send_replace(Some(value));
    }
}

impl<T> Drop for Poster<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn post<T: Serialize>(
    client: &HttpClient,
    uri: &Uri,
    token: Option<&PathBuf>,
    value: &T,
    timeout: Duration,
) -> Result<(), PostError> {
    let body = serde_json::to_vec(value).map_err(|e| PostError::Serialise(e.to_string()))?;
    let authorization = super::bearer(token)
        .await
        .map_err(|e| PostError::Token(e.to_string()))?;
    let mut req = Request::post(uri.clone()).header(header::CONTENT_TYPE, "application/json");
    if let Some(value) = &authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Request(e.to_string()))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(PostError::Refused(resp.status())),
        Ok(Err(e)) => Err(PostError::Failed(e.to_string())),
        Err(_) => Err(PostError::Unanswered(timeout)),
    }
}
