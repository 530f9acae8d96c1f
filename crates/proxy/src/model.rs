//! The OpenAI-style `model` field of a JSON request body: read to route on it, and
//! rewritten for a backend that knows the model by another name.
//!
//! A rewrite changes the value of the top-level `model` field and nothing else: the
//! bytes before and after it are kept as they came (key order, spacing, numbers), so
//! an agent sees the client's request with one name replaced. A body that is not a
//! JSON object, has no `model` string, or names it twice is neither routed on nor
//! rewritten.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The top-level `model` field, borrowed as it is written.
#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
}

/// Where the `model` string sits in `json` (the quotes included), and its value.
fn locate(json: &[u8]) -> Option<(std::ops::Range<usize>, String)> {
    let field: ModelField<'_> = serde_json::from_slice(json).ok()?;
    let raw = field.model?.get();
    let value: String = serde_json::from_str(raw).ok()?;
    // `raw` borrows from `json`: its offset is the distance between the two.
    let start = (raw.as_ptr() as usize).checked_sub(json.as_ptr() as usize)?;
    let end = start + raw.len();
    (end <= json.len()).then_some((start..end, value))
}

/// The `model` a JSON request body asks for.
pub fn requested_model(json: &[u8]) -> Option<String> {
    locate(json).map(|(_, value)| value)
}

/// `json` with its `model` set to `name`, or `None` when it has no `model` string
/// (the body then goes as it is).
pub fn rewrite_model(json: &[u8], name: &str) -> Option<Bytes> {
    let (span, _) = locate(json)?;
    let quoted = serde_json::to_string(name).ok()?;
    let mut out = Vec::with_capacity(json.len() - span.len() + quoted.len());
    out.extend_from_slice(&json[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&json[span.end..]);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_read_where_it_is() {
        let body = br#"{"messages":[{"role":"user","content":"model"}], "model" : "gpt-4o"}"#;
        assert_eq!(requested_model(body).as_deref(), Some("gpt-4o"));
        assert_eq!(
            requested_model(br#"{"model":"a\"b"}"#).as_deref(),
            Some("a\"b")
        );
        for none in [
            &b"[]"[..],
            b"{}",
            br#"{"model":4}"#,
            b"not json",
            br#"{"model":"a","model":"b"}"#,
        ] {
            assert_eq!(
                requested_model(none),
                None,
                "{}",
                String::from_utf8_lossy(none)
            );
        }
    }

    #[test]
    fn a_rewrite_changes_only_the_model_value() {
        let body = br#"{ "max_tokens": 1e3,  "model":"gpt-4o", "n": {"model": "x"} }"#;
        let out = rewrite_model(body, "llama-3.1-70b\"q").expect("rewritten");
        assert_eq!(
            &out[..],
            &br#"{ "max_tokens": 1e3,  "model":"llama-3.1-70b\"q", "n": {"model": "x"} }"#[..]
        );
        assert_eq!(rewrite_model(br#"{"messages":[]}"#, "m"), None);
    }
}
