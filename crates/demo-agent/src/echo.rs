//! The catch-all handler: describes the request it received as JSON.

use std::collections::BTreeMap;

use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::respond::{self, Body};
use crate::server::Agent;

/// The request headers as a JSON object; repeated headers are joined with `", "`.
pub fn headers_json(headers: &http::HeaderMap) -> Value {
    let mut joined: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        joined
            .entry(name.as_str())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    json!(joined)
}

/// The description of a request sent back by the echo handler.
pub fn describe(agent: &str, capabilities: &[String], parts: &Parts, body_length: u64) -> Value {
    json!({
        "agent": agent,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body_length": body_length,
        "capabilities": capabilities,
    })
}

/// Reads (and discards) the request body frame by frame, counting its bytes, waits
/// for the simulated latency and answers with the request's description.
pub(crate) async fn handle(
    agent: &Agent,
    request: Request<Incoming>,
    permit: OwnedSemaphorePermit,
) -> Response<Body> {
    let (parts, mut body) = request.into_parts();
    let mut body_length: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_length += data.len() as u64;
                }
            }
            Err(err) => {
                return respond::invalid_request(
                    "body_read_error",
                    &format!("could not read the request body: {err}"),
                );
            }
        }
    }

    if let Err(failure) = agent.simulate().await {
        return failure;
    }
    let description = describe(agent.name(), agent.capabilities(), &parts, body_length);
    drop(permit);
    respond::json(StatusCode::OK, &description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_request() {
        let request = Request::post("/agents/echo/hello?x=1&y=2")
            .header("x-one", "a")
            .header("x-one", "b")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let d = describe("agent-3", &["chat".to_owned()], &parts, 12);
        assert_eq!(d["agent"], "agent-3");
        assert_eq!(d["method"], "POST");
        assert_eq!(d["path"], "/agents/echo/hello");
        assert_eq!(d["query"], "x=1&y=2");
        assert_eq!(d["headers"]["x-one"], "a, b");
        assert_eq!(d["headers"]["content-type"], "text/plain");
        assert_eq!(d["body_length"], 12);
        assert_eq!(d["capabilities"], json!(["chat"]));
    }

    #[test]
    fn missing_query_is_null() {
        let (parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
        assert!(describe("a", &[], &parts, 0)["query"].is_null());
    }
}
