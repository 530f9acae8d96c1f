//! A streamed chat completion (server-sent events) held open while a test does
//! something else, then read to its end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Response, parse_response};

/// A streamed completion whose response head has arrived.
pub struct SseStream {
    stream: TcpStream,
    /// What was read so far (the head, perhaps some events).
    raw: Vec<u8>,
}

impl SseStream {
    /// Sends a streamed chat completion of `words` words to `addr` over HTTP/1.1 and
    /// waits for the response head.
    ///
    /// # Errors
    ///
    /// On connection failure, or when no head arrives within 10 s.
    pub fn open(addr: SocketAddr, words: usize) -> Result<Self> {
        let content = vec!["word"; words].join(" ");
        let body = format!(
            r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{content}"}}]}}"#
        );
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = Vec::new();
        let mut buf = [0; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).context("reading the response head")?;
            anyhow::ensure!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        }
        Ok(Self { stream, raw })
    }

    /// The response head read so far (the body is partial).
    ///
    /// # Errors
    ///
    /// When it does not parse.
    pub fn head(&self) -> Result<Response> {
        parse_response(&self.raw)
    }

    /// Reads the stream to its end and returns the whole response.
    ///
    /// # Errors
    ///
    /// When the connection fails before the end.
    pub fn finish(mut self) -> Result<Response> {
        self.stream.read_to_end(&mut self.raw)?;
        parse_response(&self.raw)
    }
}

/// Whether a streamed completion's body ended as the agent ends it.
pub fn complete(body: &str) -> bool {
    body.trim_end().ends_with("data: [DONE]")
}
