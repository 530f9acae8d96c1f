//! The request log (`--request-log FILE`): one line per request received, so that a
//! fault test can count what reached the agent, even after the agent was killed.
//!
//! A line is `ID METHOD PATH`, where `ID` is the request's `x-request-id` header (`-`
//! when it is missing or holds anything but visible ASCII). It is appended with one
//! `write` call on a file opened with `O_APPEND` as soon as the request head arrives,
//! before the body is read or the request is answered: once the agent has seen a
//! request, its line is in the kernel's hands and survives a SIGKILL. Lines written by
//! concurrent requests do not interleave. Health checks (`/healthz`) and
//! `/capabilities` are not logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use http::Request;

/// The header whose value names a request in the log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// An open request log.
#[derive(Debug)]
pub struct RequestLog {
    file: File,
}

impl RequestLog {
    /// Opens (creating it if needed) `path` for appending.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the request log {}", path.display()))?;
        Ok(Self { file })
    }

    /// Appends the line of `request`.
    ///
    /// # Errors
    ///
    /// When the line cannot be written.
    pub fn record<B>(&self, request: &Request<B>) -> std::io::Result<()> {
        (&self.file).write_all(line(request).as_bytes())
    }
}

/// The log line of a request, newline included.
pub fn line<B>(request: &Request<B>) -> String {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("-");
    format!("{id} {} {}\n", request.method(), request.uri().path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_id_method_and_path() {
        let r = Request::post("/agents/echo/x?q=1")
            .header("x-request-id", "post-7-42")
            .body(())
            .unwrap();
        assert_eq!(line(&r), "post-7-42 POST /agents/echo/x\n");
    }

    #[test]
    fn a_missing_or_unprintable_id_is_a_dash() {
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(line(&r), "- GET /x\n");
        let r = Request::get("/x")
            .header("x-request-id", "two words")
            .body(())
            .unwrap();
        assert_eq!(line(&r), "- GET /x\n");
    }
}
