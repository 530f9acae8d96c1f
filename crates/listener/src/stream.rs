//! A client connection's byte stream as hyper sees it: bytes already read and not yet
//! handed to HTTP come first, and the connection's [`Activity`] learns when the last
//! read found nothing to read (what an HTTP/1.1 connection waiting for its next
//! request does) and when a shutdown is to be skipped (the connection is being parked,
//! not closed).
//!
//! Also here: telling HTTP/2 with prior knowledge from HTTP/1.1 by a connection's
//! first bytes ([`read_version`]), and which streams can be parked at all
//! ([`ClientStream`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::activity::Activity;

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Http1,
    Http2,
}

/// Reads a connection's first bytes until they tell the version: the whole HTTP/2
/// preface, or bytes that cannot begin it (or the peer's end of the stream: hyper
/// then answers or closes as HTTP/1.1). Returns the version and the bytes read, which
/// the connection must be served from first.
pub(crate) async fn read_version<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(Version, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let n = io.read(&mut buf[filled..]).await?;
        filled += n;
        let version = if n == 0 || buf[..filled] != H2_PREFACE[..filled] {
            Version::Http1
        } else if filled == H2_PREFACE.len() {
            Version::Http2
        } else {
            continue;
        };
        return Ok((version, Bytes::copy_from_slice(&buf[..filled])));
    }
}

/// A stream a client connection arrives on.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether an HTTP/1.1 connection on it can be parked between requests: not when
    /// the stream may hold bytes read from the socket and not yet handed out (TLS
    /// decrypts whole records), as the socket would then not say that a request
    /// waits.
    const PARKS: bool;

    /// Ready once the peer has sent more, or closed; for a stream that does not park,
    /// at once.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientStream for TcpStream {
    const PARKS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    const PARKS: bool = false;

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A client's stream, with the bytes already read from it in front.
#[derive(Debug)]
pub(crate) struct Stream<I> {
    inner: I,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl<I> Stream<I> {
    pub(crate) fn new(inner: I, unread: Bytes, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            unread,
            activity,
        }
    }

    pub(crate) fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Puts `read` (bytes read and not yet handed to HTTP) back in front. Only the
    /// bytes are kept, not the buffer they came in.
    pub(crate) fn unread(&mut self, read: &[u8]) {
        debug_assert!(self.unread.is_empty(), "nothing left unread before");
        self.unread = if read.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(read)
        };
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Stream<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            this.activity.set_read_blocked(false);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.activity.set_read_blocked(polled.is_pending());
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Stream<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.set_read_blocked(false);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.set_read_blocked(false);
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if polled.is_pending() {
            this.activity.set_read_blocked(false);
        }
        polled
    }

    /// Skipped while the connection is being parked: hyper shuts a connection down
    /// when it ends, and a parked one goes on.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn version_of(first: &[&[u8]]) -> (Version, Bytes) {
        let (mut client, mut server) = tokio::io::duplex(64);
        let chunks: Vec<Vec<u8>> = first.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in chunks {
                client.write_all(&c).await.expect("write");
                tokio::task::yield_now().await;
            }
        });
        let got = read_version(&mut server).await.expect("read");
        writer.await.expect("writer");
        got
    }

    #[tokio::test]
    async fn the_first_bytes_tell_the_version_and_are_kept() {
        let (v, read) = version_of(&[b"GET / HTTP/1.1\r\n"]).await;
        assert_eq!(v, Version::Http1);
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&read), "{read:?}");
        let (v, read) = version_of(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]).await;
        assert_eq!(v, Version::Http2, "the preface in two parts");
        assert_eq!(read, H2_PREFACE);
        let (v, read) = version_of(&[b"PRI * ", b"HTTP/1.1"]).await;
        assert_eq!(v, Version::Http1, "a start of the preface, then not");
        assert!(read.starts_with(b"PRI * H"), "{read:?}");
        let (v, read) = version_of(&[b"PRI"]).await;
        assert_eq!(
            (v, &read[..]),
            (Version::Http1, &b"PRI"[..]),
            "then the end"
        );
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut stream = Stream::new(server, Bytes::from_static(b"ab"), activity.clone());
        let mut two = [0u8; 2];
        stream.read_exact(&mut two).await.expect("read");
        assert_eq!(&two, b"ab");
        stream.unread(b"cd");
        use tokio::io::AsyncWriteExt;
        client.write_all(b"ef").await.expect("write");
        let mut four = [0u8; 4];
        stream.read_exact(&mut four).await.expect("read");
        assert_eq!(&four, b"cdef");
        assert!(!activity.read_blocked());
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_is_noted_until_the_next_operation() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut stream = Stream::new(server, Bytes::new(), activity.clone());
        let mut one = [0u8; 1];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = ReadBuf::new(&mut one);
        assert!(
            Pin::new(&mut stream)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        );
        assert!(activity.read_blocked());
        use tokio::io::AsyncWriteExt;
        stream.write_all(b"x").await.expect("write");
        assert!(!activity.read_blocked(), "a write since");
        client.write_all(b"y").await.expect("write");
        assert!(
            Pin::new(&mut stream)
                .poll_read(&mut cx, &mut buf)
                .is_ready()
        );
        assert!(!activity.read_blocked());
    }
}
