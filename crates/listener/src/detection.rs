//! A deadline on protocol detection: the first bytes of a connection must arrive in
//! time.
//!
//! hyper-util's auto builder reads the first bytes of a connection to tell HTTP/1.1
//! from HTTP/2 (the 24-byte prior-knowledge preface), and only then hands it to hyper,
//! whose header-read timeout starts there. Until then nothing times out: a peer that
//! connects and sends nothing, or a part of the preface, would hold its connection
//! (and a task) until it hangs up (hyperium/hyper#3962). [`Detection`] wraps the
//! stream and fails a read that is still waiting when the deadline passes, for as long
//! as the bytes read can still be the start of the preface; once they cannot, or the
//! whole preface has arrived, reads pass straight through. A healthy HTTP/2 connection
//! that then stays idle is hyper's keep-alive's business, not this.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes must arrive within a deadline.
#[derive(Debug)]
pub(crate) struct Detection<S> {
    inner: S,
    /// Armed until the protocol is known.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes of the preface seen so far.
    matched: usize,
    /// Counts the connections cut by the deadline.
    timed_out: IntCounter,
}

impl<S> Detection<S> {
    /// `inner`, whose protocol must be known within `timeout`; a cut is counted in
    /// `timed_out`.
    pub(crate) fn new(inner: S, timeout: Duration, timed_out: IntCounter) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
            timed_out,
        }
    }

    /// Takes note of `read`, the bytes just read: disarms the deadline once they
    /// tell the protocol (or the peer closed).
    fn saw(&mut self, read: &[u8]) {
        let rest = &H2_PREFACE[self.matched..];
        let n = read.len().min(rest.len());
        if read.is_empty() || read[..n] != rest[..n] || n == rest.len() {
            self.deadline = None;
        } else {
            self.matched += n;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Detection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deadline.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.deadline = None;
                    this.timed_out.inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header-read timeout",
                    )))
                }
                _ => Poll::Pending,
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Detection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(d: &Detection<()>) -> bool {
        d.deadline.is_some()
    }

    fn detection() -> Detection<()> {
        let counter = IntCounter::new("t", "t").expect("a counter");
        Detection::new((), Duration::from_secs(1), counter)
    }

    #[tokio::test]
    async fn the_deadline_holds_while_the_bytes_can_still_be_the_preface() {
        let mut d = detection();
        d.saw(b"PRI * ");
        assert!(armed(&d), "a part of the preface");
        d.saw(b"HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!armed(&d), "the whole preface: HTTP/2");

        let mut d = detection();
        d.saw(b"G");
        assert!(!armed(&d), "not the preface: HTTP/1.1");

        let mut d = detection();
        d.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nmore");
        assert!(!armed(&d), "the preface and more at once");

        let mut d = detection();
        d.saw(b"PRI");
        d.saw(b"");
        assert!(!armed(&d), "the peer closed");
    }
}
