//! Response bodies and helpers shared by the handlers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame};
use tokio::sync::mpsc;

/// The body type of every response the agent sends.
pub type Body = BoxBody<Bytes, Infallible>;

/// A body that yields each chunk received on a channel as one data frame, and ends
/// when every sender is gone. Frames reach the connection as soon as they are sent.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// Creates the body and the sender that feeds it, buffering up to `buffer` chunks.
    pub fn new(buffer: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(buffer);
        (tx, Self { rx })
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// A response with the given status, content type and body.
pub fn with_body(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_body(status, "text/plain; charset=utf-8", full(body))
}

/// An `application/json` response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON values always serialize");
    with_body(status, "application/json", full(body))
}

/// An error in the OpenAI shape:
/// `{"error": {"message", "type", "param": null, "code"}}`.
pub fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({
            "error": {
                "message": message,
                "type": kind,
                "param": null,
                "code": code,
            }
        }),
    )
}

/// 503 with `Retry-After: 1`, sent when the agent is at capacity.
pub fn overloaded(name: &str, capacity: usize) -> Response<Body> {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded_error",
        "overloaded",
        &format!("agent {name} is at capacity ({capacity} concurrent requests)"),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 400 for a malformed request.
pub fn invalid_request(code: &str, message: &str) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        message,
    )
}

/// 500 for a simulated failure.
pub fn simulated_failure(name: &str) -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "simulated_failure",
        &format!("agent {name} failed on purpose (--fail-rate)"),
    )
}
