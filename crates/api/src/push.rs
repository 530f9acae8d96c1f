//! The push protocol between the controller and its proxies, defined once for both.
//!
//! A proxy subscribes under its name with `GET` [`WATCH_PATH`]`?proxy=ID`
//! ([`watch_path`]); the controller answers with a stream of newline-delimited JSON:
//! each published [`RouteTable`] as one line ([`encode_line`]), and a blank line
//! ([`HEARTBEAT`]) whenever the stream is otherwise idle. The proxy reads the stream
//! with a [`LineDecoder`], and acknowledges each table it applied with `POST`
//! [`ACK_PATH`] and an [`Ack`] as the JSON body. Controller replicas list the proxies
//! they track on [`PROXIES_PATH`], and the current table on [`ROUTES_PATH`]. Every few
//! seconds the proxy also posts the load of its pools ([`LoadReport`](crate::load::LoadReport))
//! on [`REPORT_PATH`], over the same connection.
//!
//! Every call but the health checks carries `Authorization: Bearer TOKEN`
//! ([`bearer_token`] reads it): a shared token, or on Kubernetes the caller's projected
//! ServiceAccount token for the audience [`DEFAULT_TOKEN_AUDIENCE`] (or the one
//! configured). A call without a valid token is answered `401` and nothing else; a
//! caller whose identity may not make it, `403`.
//!
//! Proxy names are [`ProxyId`]s: 1 to [`MAX_PROXY_ID_LEN`] of `A-Z a-z 0-9 . _ - : @`
//! ([`PROXY_ID_RULE`]), safe in a query string without escaping and in logs.
//!
//! Nothing here does I/O: the controller's push server and the proxy's subscriber move
//! the bytes.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::RouteTable;

/// The path proxies subscribe on.
pub const WATCH_PATH: &str = "/v1/routes/watch";
/// The path proxies acknowledge tables on.
pub const ACK_PATH: &str = "/v1/routes/ack";
/// The path proxies post their pools' load on ([`crate::load::LoadReport`]).
pub const REPORT_PATH: &str = "/v1/proxies/report";
/// The path that lists the proxies a controller replica tracks.
pub const PROXIES_PATH: &str = "/v1/proxies";
/// The path that serves the current table (one JSON object).
pub const ROUTES_PATH: &str = "/v1/routes";
/// The query parameter of [`WATCH_PATH`] that names the subscribing proxy.
pub const PROXY_PARAM: &str = "proxy";

/// The audience of the ServiceAccount tokens proxies and controller replicas present,
/// unless configured otherwise: a token minted for another audience (the API server's,
/// another service's) is refused.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "sluice.dev/push";

/// The token of an `Authorization` header value `Bearer TOKEN` (the scheme in any
/// case, RFC 9110), or `None` when there is none or it is empty.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The longest proxy name (a DNS name's length).
pub const MAX_PROXY_ID_LEN: usize = 253;
/// What a proxy name may hold, as told to whoever gave a bad one.
pub const PROXY_ID_RULE: &str = "1 to 253 of A-Z a-z 0-9 . _ - : @";

/// The longest line (one table) a subscriber accepts.
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// The heartbeat the controller sends on an idle stream: an empty line.
pub const HEARTBEAT: &[u8] = b"\n";

/// Why a proxy name or a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A proxy name is empty, longer than [`MAX_PROXY_ID_LEN`] or holds a character
    /// outside [`PROXY_ID_RULE`]. Not retryable: the name must change.
    #[error("{0:?} is not a proxy name: use {PROXY_ID_RULE}")]
    InvalidProxyId(String),
    /// A line of the stream is longer than the decoder's bound (the line may not have
    /// ended yet). Retryable on a new stream; this one cannot be read further.
    #[error("a line is longer than {max} bytes")]
    LineTooLong {
        /// The bound.
        max: usize,
    },
}

/// A proxy's name: 1 to [`MAX_PROXY_ID_LEN`] of ASCII letters, digits and `.`, `_`,
/// `-`, `:`, `@`. Only a valid name can be held; parse one with [`str::parse`] or make
/// one with [`ProxyId::from_host`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyId(String);

/// Whether `b` may stand in a proxy name.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@')
}

impl ProxyId {
    /// `HOST-PID`, with each character of `host` that a proxy name cannot hold
    /// replaced by `-`, `host` cut short so that the whole fits, and `proxy` for an
    /// empty `host`. The proxy's default name, from its host (pod) name and process.
    pub fn from_host(host: &str, pid: u32) -> Self {
        // `-` and at most ten digits follow the host.
        let mut name: String = host
            .chars()
            .map(|c| match u8::try_from(c) {
                Ok(b) if allowed(b) => c,
                _ => '-',
            })
            .take(MAX_PROXY_ID_LEN - 11)
            .collect();
        if name.is_empty() {
            name.push_str("proxy");
        }
        Self(format!("{name}-{pid}"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProxyId {
    type Error = PushError;

    fn try_from(id: String) -> Result<Self, PushError> {
        if id.is_empty() || id.len() > MAX_PROXY_ID_LEN || !id.bytes().all(allowed) {
            return Err(PushError::InvalidProxyId(id));
        }
        Ok(Self(id))
    }
}

impl FromStr for ProxyId {
    type Err = PushError;

    fn from_str(id: &str) -> Result<Self, PushError> {
        Self::try_from(id.to_owned())
    }
}

impl From<ProxyId> for String {
    fn from(id: ProxyId) -> Self {
        id.0
    }
}

impl AsRef<str> for ProxyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ProxyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `WATCH_PATH?proxy=ID`: the path and query a proxy subscribes with (a proxy name
/// needs no escaping).
pub fn watch_path(id: &ProxyId) -> String {
    format!("{WATCH_PATH}?{PROXY_PARAM}={id}")
}

/// The value of [`PROXY_PARAM`] in the query of a subscription, as given (a valid
/// name needs no percent-decoding; parse it into a [`ProxyId`]).
pub fn proxy_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == PROXY_PARAM)
        .map(|(_, v)| v)
}

/// The body of `POST` [`ACK_PATH`]: the proxy applied (or already ran) this table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The name the proxy subscribed under.
    pub proxy: ProxyId,
    /// The table's version, as received on the stream.
    pub version: u64,
    /// The table's revision (content digest).
    pub revision: String,
}

impl Ack {
    /// Proxy `proxy` runs `table`.
    pub fn of(proxy: ProxyId, table: &RouteTable) -> Self {
        Self {
            proxy,
            version: table.version,
            revision: table.revision.clone(),
        }
    }
}

/// `table` as one line of the stream: its JSON and a trailing `\n`.
///
/// A route table holds only strings, numbers, booleans, lists and structs, so it
/// always serialises; were it ever not to, the line would be empty, which subscribers
/// read as a heartbeat.
pub fn encode_line(table: &RouteTable) -> Bytes {
    let mut line = serde_json::to_vec(table).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Splits the frames of a stream into its lines, without heartbeats.
///
/// Feed each frame as it arrives with [`LineDecoder::feed`], then take the lines it
/// completed with [`LineDecoder::next_line`] until there are none. A table line
/// arrives in many frames: each byte is searched for the end of line once, not once
/// per frame. A line longer than the bound is refused as soon as that is known,
/// whether it has ended or not, so the lines taken and the error do not depend on how
/// the stream was split into frames, and at most the bound and one frame are buffered.
#[derive(Debug)]
pub struct LineDecoder {
    buf: BytesMut,
    /// Leading bytes of `buf` known to hold no `\n`.
    scanned: usize,
    max_line: usize,
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineDecoder {
    /// A decoder of lines at most `max_line` bytes long (the `\n` not counted).
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
        }
    }

    /// Appends one frame of the stream.
    pub fn feed(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    /// The next complete line fed, without its `\n`, skipping heartbeats (lines of
    /// ASCII white space only); `Ok(None)` until more is fed.
    ///
    /// # Errors
    ///
    /// [`PushError::LineTooLong`] when the next line, complete or not, is longer than
    /// the bound. The stream cannot be read further: every later call fails too.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, PushError> {
        loop {
            let Some(found) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                return self.check(self.buf.len()).map(|()| None);
            };
            let end = self.scanned + found;
            self.check(end)?;
            self.scanned = 0;
            let line = self.buf.split_to(end + 1).freeze().slice(..end);
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
    }

    /// Bytes fed and not yet taken as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn check(&self, len: usize) -> Result<(), PushError> {
        if len > self.max_line {
            return Err(PushError::LineTooLong { max: self.max_line });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn proxy_names() {
        for ok in ["proxy-7f9c-1", "a", "node.local:42", "p_1@zone-a"] {
            assert_eq!(ok.parse::<ProxyId>().map(String::from), Ok(ok.to_owned()));
        }
        let longest = "x".repeat(MAX_PROXY_ID_LEN);
        assert!(longest.parse::<ProxyId>().is_ok());
        let long = "x".repeat(MAX_PROXY_ID_LEN + 1);
        for bad in ["", "a b", "a/b", "a%20b", "a&b=c", "é", long.as_str()] {
            assert_eq!(
                bad.parse::<ProxyId>(),
                Err(PushError::InvalidProxyId(bad.to_owned())),
                "{bad}"
            );
        }
        let err = "a b".parse::<ProxyId>().expect_err("invalid").to_string();
        assert!(err.contains(PROXY_ID_RULE), "{err}");
    }

    #[test]
    fn a_name_is_checked_when_read_from_json() {
        let id: ProxyId = serde_json::from_str("\"p-1\"").expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"p-1\"");
        assert!(serde_json::from_str::<ProxyId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<Ack>(r#"{"proxy":"","version":1,"revision":"r"}"#).is_err());
    }

    #[test]
    fn names_from_the_host() {
        let id = |host: &str, pid| ProxyId::from_host(host, pid).to_string();
        assert_eq!(id("sluice-proxy-7f9c", 1), "sluice-proxy-7f9c-1");
        assert_eq!(id("a b/c", 42), "a-b-c-42");
        assert_eq!(id("é", 42), "--42");
        assert_eq!(id("", 3), "proxy-3");
        let long = id(&"h".repeat(1000), u32::MAX);
        assert_eq!(long.len(), MAX_PROXY_ID_LEN);
        assert!(long.parse::<ProxyId>().is_ok());
    }

    #[test]
    fn the_watch_query_names_the_proxy() {
        let id: ProxyId = "p-1".parse().expect("valid");
        let path = watch_path(&id);
        assert_eq!(path, "/v1/routes/watch?proxy=p-1");
        let query = path.split_once('?').map(|(_, q)| q);
        assert_eq!(proxy_param(query), Some("p-1"));
        assert_eq!(proxy_param(Some("a=1&proxy=p2&b")), Some("p2"));
        assert_eq!(proxy_param(Some("proxyx=1")), None);
        assert_eq!(proxy_param(None), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn an_ack_is_the_json_both_sides_speak() {
        let table = crate::RouteTable {
            version: 3,
            revision: "abc".into(),
            ..Default::default()
        };
        let ack = Ack::of("p-1".parse().expect("valid"), &table);
        let json = serde_json::to_value(&ack).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"proxy": "p-1", "version": 3, "revision": "abc"})
        );
        assert_eq!(
            serde_json::from_value::<Ack>(json).expect("reads back"),
            ack
        );
    }

    #[test]
    fn a_table_is_one_line() {
        let table = crate::RouteTable {
            version: 7,
            revision: "r".into(),
            ..Default::default()
        };
        let line = encode_line(&table);
        assert!(line.ends_with(b"\n"));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let mut decoder = LineDecoder::default();
        decoder.feed(HEARTBEAT);
        decoder.feed(&line);
        let read = decoder.next_line().expect("short").expect("a line");
        assert_eq!(
            serde_json::from_slice::<RouteTable>(&read).expect("table"),
            table
        );
        assert_eq!(decoder.next_line(), Ok(None));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn lines_across_frames_and_heartbeats() {
        let mut d = LineDecoder::new(8);
        d.feed(b"\n \r\nab");
        assert_eq!(d.next_line(), Ok(None));
        d.feed(b"c");
        assert_eq!(d.next_line(), Ok(None));
        d.feed(b"\nde\n\nf");
        assert_eq!(d.next_line(), Ok(Some(Bytes::from_static(b"abc"))));
        assert_eq!(d.next_line(), Ok(Some(Bytes::from_static(b"de"))));
        assert_eq!(d.next_line(), Ok(None));
        assert_eq!(d.buffered(), 1);
        d.feed(b"12345678");
        let too_long = Err(PushError::LineTooLong { max: 8 });
        assert_eq!(d.next_line(), too_long, "refused before it ends");
        assert_eq!(d.next_line(), too_long, "and for good");
        let mut d = LineDecoder::new(8);
        d.feed(b"123456789\nok\n");
        assert_eq!(d.next_line(), too_long, "refused when it ended at once");
    }

    /// A stream of lines, some of them heartbeats, and what a decoder bounded to
    /// `max` yields from it: the lines before the first too long, then the error.
    fn expected(lines: &[Vec<u8>], max: usize) -> (Vec<Vec<u8>>, Option<PushError>) {
        let mut out = Vec::new();
        for line in lines {
            if line.len() > max {
                return (out, Some(PushError::LineTooLong { max }));
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line.clone());
            }
        }
        (out, None)
    }

    fn decode(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, Option<PushError>) {
        let mut d = LineDecoder::new(max);
        let mut out = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(stream.len());
        for cut in cuts {
            d.feed(&stream[start..cut]);
            start = cut;
            loop {
                match d.next_line() {
                    Ok(Some(line)) => out.push(line.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Heartbeats and other white space.
            prop::collection::vec(prop::sample::select(vec![b' ', b'\t', b'\r']), 0..3),
            // Anything but the end of line.
            prop::collection::vec(any::<u8>().prop_filter("not \\n", |b| *b != b'\n'), 1..40),
        ]
    }

    proptest! {
        #[test]
        fn any_split_into_frames_yields_the_same_lines(
            lines in prop::collection::vec(line(), 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..30),
            max in prop_oneof![Just(usize::MAX), 8..40usize],
        ) {
            let stream: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
            prop_assert_eq!(decode(&stream, &cuts, max), expected(&lines, max));
        }
    }
}
