//! `POST /v1/chat/completions`: an OpenAI-compatible chat endpoint that echoes the
//! last user message, word by word, optionally as server-sent events.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::respond::{self, Body, ChannelBody};
use crate::server::Agent;

/// The largest request body accepted by the chat endpoint.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The model name used when a request does not name one.
pub const DEFAULT_MODEL: &str = "sluice-demo";

/// The subset of an OpenAI chat completion request the agent understands.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The requested model; echoed back.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Whether to answer with server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The maximum number of tokens (words) in the completion.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The newer spelling of `max_tokens`, used when `max_tokens` is absent.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// A string, an array of content parts (`{"type": "text", "text": ...}`) or null.
    #[serde(default)]
    pub content: Value,
}

impl ChatMessage {
    /// The message's text; content parts without text are ignored.
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

/// The agent's answer to a chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The model name to report.
    pub model: String,
    /// The words of the reply, in order.
    pub words: Vec<String>,
    /// `stop`, or `length` when `max_tokens` cut the reply short.
    pub finish_reason: &'static str,
    /// Words across all messages of the request.
    pub prompt_tokens: u64,
}

impl Completion {
    /// Builds the deterministic reply of agent `name`: `echo from NAME:` followed by
    /// the words of the last user message, capped at `max_tokens` words.
    pub fn generate(name: &str, request: &ChatRequest) -> Self {
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| m.text().split_whitespace().count() as u64)
            .sum();
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(ChatMessage::text)
            .unwrap_or_default();
        let reply = format!("echo from {name}: {last_user}");
        let mut words: Vec<String> = reply.split_whitespace().map(str::to_owned).collect();
        let mut finish_reason = "stop";
        let limit = request.max_tokens.or(request.max_completion_tokens);
        if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
            && words.len() > limit
        {
            words.truncate(limit);
            finish_reason = "length";
        }
        Self {
            model: request
                .model
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            words,
            finish_reason,
            prompt_tokens,
        }
    }

    /// The reply text.
    pub fn content(&self) -> String {
        self.words.join(" ")
    }

    /// Words in the reply.
    pub fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }

    /// The `usage` object.
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens(),
            "total_tokens": self.prompt_tokens + self.completion_tokens(),
        })
    }

    /// The non-streaming `chat.completion` object.
    pub fn to_json(&self, id: &str, created: u64) -> Value {
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.content() },
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, id: &str, created: u64, choices: Value, usage: Value) -> Value {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage,
        })
    }

    /// The server-sent events of a streamed answer.
    ///
    /// `tokens` holds one `chat.completion.chunk` per word (the first also carries
    /// `delta.role`; an empty reply yields a single role-only chunk). `trailer`
    /// holds the chunk with the finish reason, the usage chunk (`choices: []`) and
    /// `data: [DONE]`.
    pub fn to_events(&self, id: &str, created: u64) -> StreamEvents {
        let choice = |delta: Value, finish: Value| json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]);
        let mut tokens: Vec<Bytes> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, word)| {
                let delta = if i == 0 {
                    json!({ "role": "assistant", "content": word })
                } else {
                    json!({ "content": format!(" {word}") })
                };
                sse(&self.chunk(id, created, choice(delta, Value::Null), Value::Null))
            })
            .collect();
        if tokens.is_empty() {
            let delta = json!({ "role": "assistant", "content": "" });
            tokens.push(sse(&self.chunk(
                id,
                created,
                choice(delta, Value::Null),
                Value::Null,
            )));
        }
        let finish = choice(json!({}), json!(self.finish_reason));
        let trailer = vec![
            sse(&self.chunk(id, created, finish, Value::Null)),
            sse(&self.chunk(id, created, json!([]), self.usage())),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ];
        StreamEvents { tokens, trailer }
    }
}

/// The frames of a streamed completion.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    /// One event per token, sent `--token-interval` apart.
    pub tokens: Vec<Bytes>,
    /// Events sent right after the last token.
    pub trailer: Vec<Bytes>,
}

fn sse(value: &Value) -> Bytes {
    let mut event = b"data: ".to_vec();
    serde_json::to_writer(&mut event, value).expect("JSON values always serialize");
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one chat completion while holding `permit` (released when the response,
/// including a streamed body, is complete).
pub(crate) async fn handle(
    agent: &Agent,
    request: Request<Incoming>,
    permit: OwnedSemaphorePermit,
) -> Response<Body> {
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                &format!("request body exceeds {MAX_REQUEST_BYTES} bytes"),
            );
        }
        Err(err) => {
            return respond::invalid_request(
                "body_read_error",
                &format!("could not read the request body: {err}"),
            );
        }
    };
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(err) => {
            return respond::invalid_request(
                "invalid_json",
                &format!("could not parse the JSON body: {err}"),
            );
        }
    };
    if chat.messages.is_empty() {
        return respond::invalid_request("invalid_messages", "`messages` must not be empty");
    }

    if let Err(failure) = agent.simulate().await {
        return failure;
    }

    let completion = Completion::generate(agent.name(), &chat);
    let id = agent.next_completion_id();
    let created = unix_now();
    if !chat.stream.unwrap_or(false) {
        return respond::json(StatusCode::OK, &completion.to_json(&id, created));
    }

    let events = completion.to_events(&id, created);
    let (tx, body) = ChannelBody::new(4);
    let interval = agent.token_interval();
    tokio::spawn(async move {
        for (i, event) in events.tokens.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if tx.send(event).await.is_err() {
                tracing::debug!("client went away during a streamed completion");
                return;
            }
        }
        for event in events.trailer {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        // Release capacity before the body ends, so that a client that has read the
        // whole stream can rely on the slot being free again.
        drop(permit);
        drop(tx);
    });
    let mut response =
        respond::with_body(StatusCode::OK, "text/event-stream", BodyExt::boxed(body));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn echoes_the_last_user_message_and_counts_words() {
        let req = request(json!({
            "model": "gpt-demo",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "hello  there\tworld"},
            ]
        }));
        let c = Completion::generate("agent-2", &req);
        assert_eq!(c.content(), "echo from agent-2: hello there world");
        assert_eq!(c.prompt_tokens, 2 + 2 + 2 + 3);
        assert_eq!(c.completion_tokens(), 6);
        assert_eq!(c.finish_reason, "stop");
        assert_eq!(c.model, "gpt-demo");
        let body = c.to_json("id-1", 7);
        assert_eq!(body["usage"]["total_tokens"], 15);
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    }

    #[test]
    fn max_tokens_truncates() {
        let req = request(json!({
            "messages": [{"role": "user", "content": "one two three"}],
            "max_tokens": 4
        }));
        let c = Completion::generate("a", &req);
        assert_eq!(c.content(), "echo from a: one");
        assert_eq!(c.finish_reason, "length");
        assert_eq!(c.model, DEFAULT_MODEL);
    }

    #[test]
    fn content_parts_and_null_content() {
        let req = request(json!({
            "messages": [
                {"role": "assistant", "content": null},
                {"role": "user", "content": [
                    {"type": "text", "text": "look at"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "this"}
                ]}
            ]
        }));
        let c = Completion::generate("a", &req);
        assert_eq!(c.content(), "echo from a: look at this");
        assert_eq!(c.prompt_tokens, 3);
    }

    #[test]
    fn events_rebuild_the_reply() {
        let req = request(json!({"messages": [{"role": "user", "content": "hi you"}]}));
        let c = Completion::generate("a", &req);
        let events = c.to_events("id", 1);
        assert_eq!(events.tokens.len(), c.words.len());
        let mut text = String::new();
        for (i, event) in events.tokens.iter().enumerate() {
            let raw = std::str::from_utf8(event).unwrap();
            let payload = raw
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            let chunk: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
            let delta = &chunk["choices"][0]["delta"];
            assert_eq!(delta.get("role").is_some(), i == 0);
            text.push_str(delta["content"].as_str().unwrap());
        }
        assert_eq!(text, c.content());
        assert_eq!(events.trailer.len(), 3);
        assert!(events.trailer[1].starts_with(b"data: {"));
        assert_eq!(&events.trailer[2][..], b"data: [DONE]\n\n");
    }

    #[test]
    fn empty_reply_still_streams_a_role_chunk() {
        let req = request(json!({
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 0
        }));
        let events = Completion::generate("a", &req).to_events("id", 1);
        assert_eq!(events.tokens.len(), 1);
    }

    #[test]
    fn rejects_requests_without_messages() {
        assert!(serde_json::from_value::<ChatRequest>(json!({"model": "m"})).is_err());
    }
}
