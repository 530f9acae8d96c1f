//! A request body that can be sent again, for retries.
//!
//! The body streams to the first attempt as it arrives, while the first `cap` bytes are
//! kept. A later attempt replays the kept frames, then goes on reading the original
//! body. Once more than `cap` bytes went out the body is no longer replayable: a retry
//! would send a truncated request, so the proxy never replays a body that was partly
//! sent and not kept (linkerd2-proxy's `ReplayBody` works the same way).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// Bytes of a request body kept for replay when a pool has retries.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

#[derive(Debug)]
struct Shared<B> {
    source: B,
    /// Data frames read from `source` so far, while within `cap`.
    kept: Vec<Bytes>,
    kept_len: usize,
    cap: usize,
    /// More than `cap` bytes were read: the kept frames are incomplete.
    overflowed: bool,
    /// `source` has ended; `trailers` are its trailers, if any.
    done: bool,
    trailers: Option<HeaderMap>,
    /// Size hint of `source` before anything was read.
    initial_hint: SizeHint,
}

/// One attempt's view of a replayable body. Clone it (with [`ReplayBody::attempt`])
/// for each attempt; attempts must not be polled at the same time.
#[derive(Debug)]
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Index of the next kept frame this attempt replays.
    next: usize,
    trailers_sent: bool,
}

impl<B> ReplayBody<B> {
    /// Wraps `source`, keeping up to `cap` bytes for replay.
    pub fn new(source: B, cap: usize) -> Self
    where
        B: Body,
    {
        let initial_hint = source.size_hint();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source,
                kept: Vec::new(),
                kept_len: 0,
                cap,
                overflowed: false,
                done: false,
                trailers: None,
                initial_hint,
            })),
            next: 0,
            trailers_sent: false,
        }
    }

    /// A fresh view for another attempt, starting from the first byte; `None` when the
    /// body can no longer be replayed in full.
    pub fn attempt(&self) -> Option<Self> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        (!shared.overflowed).then(|| Self {
            shared: self.shared.clone(),
            next: 0,
            trailers_sent: false,
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(frame) = shared.kept.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
        }
        if shared.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut shared.source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !shared.overflowed {
                        if shared.kept_len + data.len() > shared.cap {
                            shared.overflowed = true;
                            shared.kept = Vec::new();
                        } else {
                            shared.kept_len += data.len();
                            shared.kept.push(data.clone());
                            this.next = shared.kept.len();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        shared.done = true;
                        shared.trailers = Some(trailers.clone());
                        this.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Neither data nor trailers: nothing to forward.
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        self.next >= shared.kept.len()
            && (shared.done || shared.source.is_end_stream())
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // Known exactly when nothing was read yet (the usual first attempt), or when
        // the whole body is kept.
        if shared.kept_len == 0 && !shared.done && !shared.overflowed {
            return shared.initial_hint;
        }
        if shared.done && !shared.overflowed {
            let left: usize = shared.kept[self.next.min(shared.kept.len())..]
                .iter()
                .map(Bytes::len)
                .sum();
            return SizeHint::with_exact(left as u64);
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_kept_body_is_sent_again_in_full() {
        let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 16);
        let first = body.attempt().expect("replayable");
        assert_eq!(first.size_hint().exact(), Some(5));
        let bytes = first.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let second = body.attempt().expect("still replayable");
        assert_eq!(second.size_hint().exact(), Some(5));
        assert_eq!(
            &second.collect().await.expect("body").to_bytes()[..],
            b"hello"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayed() {
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"0123456789"))),
            Ok(Frame::data(Bytes::from_static(b"0123456789"))),
        ];
        let body = ReplayBody::new(StreamBody::new(futures_util::stream::iter(chunks)), 15);
        let first = body.attempt().expect("replayable before sending");
        let bytes = first.collect().await.expect("body").to_bytes();
        assert_eq!(bytes.len(), 20, "the first attempt gets everything");
        assert!(
            body.attempt().is_none(),
            "20 bytes went out, only 15 could be kept"
        );
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_resends_from_the_start() {
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ];
        let body = ReplayBody::new(StreamBody::new(futures_util::stream::iter(chunks)), 64);
        let mut first = body.attempt().expect("replayable");
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"ab")));
        drop(first); // the attempt failed after sending "ab"
        let second = body.attempt().expect("replayable");
        assert_eq!(
            &second.collect().await.expect("body").to_bytes()[..],
            b"abcd"
        );
    }
}
