//! Response bodies: streamed frame by frame, with the request's deadline, and a guard
//! that keeps the in-flight gauge up until the body is done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tokio::time::{Instant, Sleep};

/// The error type of bodies the proxy serves.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy serves.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// The whole-request deadline expired while the body was still streaming.
#[derive(Debug, thiserror::Error)]
#[error("request timeout expired while streaming the response body")]
pub struct BodyTimeout;

/// Wraps an upstream body: passes frames through as they come, fails with
/// [`BodyTimeout`] once `deadline` passes, and holds `guard` until the end.
#[derive(Debug)]
pub struct DeadlineBody<B, G> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    guard: Option<G>,
}

impl<B, G> DeadlineBody<B, G> {
    /// Wraps `inner`, failing it at `deadline`; `guard` is dropped when the body ends,
    /// fails or is dropped.
    pub fn new(inner: B, deadline: Instant, guard: G) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for DeadlineBody<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    G: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) {
                this.guard = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.sleep.as_mut().poll(cx));
        this.guard = None;
        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_frames_then_times_out_and_releases_the_guard() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let dropped = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut body = DeadlineBody::new(
            StreamBody::new(Box::pin(stream)),
            deadline,
            Guard(dropped.clone()),
        );

        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        let frame = body.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"a")));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "guard held while streaming"
        );

        // Nothing more arrives: paused time jumps to the deadline.
        let err = body.frame().await.expect("some").expect_err("times out");
        assert!(err.is::<BodyTimeout>());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "guard released on timeout"
        );
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn releases_the_guard_at_end_of_stream() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let inner = http_body_util::Full::new(Bytes::from_static(b"done"));
        let body = DeadlineBody::new(inner, deadline, Guard(dropped.clone()));
        let bytes = body.collect().await.expect("collect").to_bytes();
        assert_eq!(&bytes[..], b"done");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
