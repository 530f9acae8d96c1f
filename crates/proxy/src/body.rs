//! Bodies. A request body is streamed, or read in full (bounded) when a limit needs
//! to see it. A response body is streamed frame by frame, with deadlines, and watched
//! so that the proxy learns how it ended (to release an endpoint slot, settle a token
//! reservation or count a cut stream).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::time::{Instant, Sleep};

pub use crate::client_body::{BodyStats, CountedBody, MinRate};
use crate::error::ProxyError;

/// The error type of bodies the proxy serves.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy serves.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A request body: streamed, or read in full when a limit needed it.
#[derive(Debug)]
pub enum RequestBody {
    /// As it arrives from the client, its bytes counted.
    Streaming(CountedBody),
    /// Read in full.
    Buffered(Bytes),
}

impl RequestBody {
    /// Reads the body in full, up to `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`ProxyError::BodyTooLarge`] past `limit`; [`ProxyError::BadRequest`] when the
    /// client's body fails.
    pub async fn into_bytes(self, limit: usize) -> Result<Bytes, ProxyError> {
        match self {
            RequestBody::Buffered(bytes) => Ok(bytes),
            RequestBody::Streaming(body) => http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ProxyError::BodyTooLarge { limit }
                    } else if e.is::<crate::client_body::TooSlow>() {
                        ProxyError::ClientBodyTooSlow
                    } else {
                        ProxyError::BadRequest(format!("reading the request body: {e}"))
                    }
                }),
        }
    }
}

/// Whether a request body is JSON (where `model` and `max_tokens` may be).
pub fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// A deadline expired while the body was still streaming.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    /// The whole-request (or whole-stream) deadline passed.
    #[error("request timeout expired while streaming the response body")]
    Total,
    /// No chunk arrived within the idle timeout.
    #[error("no data within the idle timeout while streaming the response body")]
    Idle,
}

/// How a watched body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every frame was delivered.
    Complete,
    /// The upstream body failed.
    Failed,
    /// A deadline cut it.
    TimedOut(TimeoutKind),
    /// The client went away before the end.
    Dropped,
}

/// Which deadline cut a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The total deadline.
    Total,
    /// The idle timeout.
    Idle,
}

/// Sees the data of a response body and how it ended. `on_end` is called exactly once.
pub trait BodyWatch: Send + 'static {
    /// A data chunk passed through.
    fn on_data(&mut self, _data: &Bytes) {}
    /// The body ended this way.
    fn on_end(&mut self, end: BodyEnd);
}

impl BodyWatch for () {
    fn on_end(&mut self, _end: BodyEnd) {}
}

impl<A: BodyWatch, B: BodyWatch> BodyWatch for (A, B) {
    fn on_data(&mut self, data: &Bytes) {
        self.0.on_data(data);
        self.1.on_data(data);
    }
    fn on_end(&mut self, end: BodyEnd) {
        self.0.on_end(end);
        self.1.on_end(end);
    }
}

impl<W: BodyWatch> BodyWatch for Option<W> {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(w) = self {
            w.on_data(data);
        }
    }
    fn on_end(&mut self, end: BodyEnd) {
        if let Some(w) = self {
            w.on_end(end);
        }
    }
}

/// Wraps an upstream body: passes frames through as they come, fails it when the total
/// deadline passes or no frame arrives within the idle timeout, and tells `watch`.
///
/// The timers are armed only when the body has to wait (most bodies of an answer
/// arrive with it and never do): no timer is registered, reset and cancelled for them.
/// The idle timeout counts from when the body starts waiting after its last frame.
pub struct WatchedBody<B, W: BodyWatch> {
    inner: B,
    deadline: Option<Instant>,
    /// The total deadline's timer, once the body has waited.
    total: Option<Pin<Box<Sleep>>>,
    idle: Option<Duration>,
    /// The idle timer, once the body has waited, and whether a frame came since it
    /// was set.
    idle_timer: Option<(Pin<Box<Sleep>>, bool)>,
    watch: Option<W>,
}

impl<B, W: BodyWatch> std::fmt::Debug for WatchedBody<B, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedBody")
            .field("ended", &self.watch.is_none())
            .finish_non_exhaustive()
    }
}

impl<B, W: BodyWatch> WatchedBody<B, W> {
    /// Wraps `inner` with an optional total `deadline` and `idle` timeout.
    pub fn new(inner: B, deadline: Option<Instant>, idle: Option<Duration>, watch: W) -> Self {
        Self {
            inner,
            deadline,
            total: None,
            idle,
            idle_timer: None,
            watch: Some(watch),
        }
    }

    fn end(&mut self, end: BodyEnd) {
        if let Some(mut w) = self.watch.take() {
            w.on_end(end);
        }
    }
}

impl<B, W: BodyWatch> Drop for WatchedBody<B, W> {
    fn drop(&mut self) {
        self.end(BodyEnd::Dropped);
    }
}

impl<B, W> Body for WatchedBody<B, W>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    W: BodyWatch + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.watch.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            match &frame {
                Some(Ok(f)) => {
                    if let (Some(data), Some(w)) = (f.data_ref(), this.watch.as_mut()) {
                        w.on_data(data);
                    }
                    if let Some((_, fed)) = &mut this.idle_timer {
                        *fed = true;
                    }
                    // A body of known length ends with its last frame: hyper polls
                    // no further once `is_end_stream` says so.
                    if this.inner.is_end_stream() {
                        this.end(BodyEnd::Complete);
                    }
                }
                Some(Err(_)) => this.end(BodyEnd::Failed),
                None => this.end(BodyEnd::Complete),
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(deadline) = this.deadline {
            let total = this
                .total
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if total.as_mut().poll(cx).is_ready() {
                this.end(BodyEnd::TimedOut(TimeoutKind::Total));
                return Poll::Ready(Some(Err(Box::new(BodyTimeout::Total))));
            }
        }
        if let Some(idle) = this.idle {
            let (timer, fed) = this
                .idle_timer
                .get_or_insert_with(|| (Box::pin(tokio::time::sleep(idle)), false));
            if std::mem::take(fed) {
                timer.as_mut().reset(Instant::now() + idle);
            }
            if timer.as_mut().poll(cx).is_ready() {
                this.end(BodyEnd::TimedOut(TimeoutKind::Idle));
                return Poll::Ready(Some(Err(Box::new(BodyTimeout::Idle))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.watch.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<(usize, Vec<BodyEnd>)>>);
    impl BodyWatch for Record {
        fn on_data(&mut self, data: &Bytes) {
            self.0.lock().expect("lock").0 += data.len();
        }
        fn on_end(&mut self, end: BodyEnd) {
            self.0.lock().expect("lock").1.push(end);
        }
    }

    type Tx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn channel_body() -> (
        Tx,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        (tx, StreamBody::new(Box::pin(stream)))
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_cuts_the_body_once() {
        let (tx, inner) = channel_body();
        let rec = Record::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut body = WatchedBody::new(inner, Some(deadline), None, rec.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        let err = body.frame().await.expect("some").expect_err("times out");
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Total)
        ));
        assert!(body.frame().await.is_none());
        drop(body);
        assert_eq!(
            *rec.0.lock().expect("lock"),
            (3, vec![BodyEnd::TimedOut(TimeoutKind::Total)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_resets_with_each_chunk() {
        let (tx, inner) = channel_body();
        let rec = Record::default();
        let mut body = WatchedBody::new(inner, None, Some(Duration::from_secs(5)), rec.clone());
        for _ in 0..4 {
            // Chunks 4 s apart: each resets the 5 s idle timer, 16 s in all.
            tokio::time::advance(Duration::from_secs(4)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .expect("send");
            assert!(body.frame().await.expect("frame").is_ok());
        }
        let err = body.frame().await.expect("some").expect_err("idle");
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Idle)
        ));
        assert_eq!(
            *rec.0.lock().expect("lock"),
            (4, vec![BodyEnd::TimedOut(TimeoutKind::Idle)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_wait_after_the_last_chunk() {
        let (tx, inner) = channel_body();
        let rec = Record::default();
        let mut body = WatchedBody::new(inner, None, Some(Duration::from_secs(5)), rec.clone());
        let start = Instant::now();
        // A chunk 4 s into the first wait: the wait after it has 5 s of its own.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .expect("send");
            tx
        });
        assert!(body.frame().await.expect("frame").is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        let _open = sender.await.expect("sender");
        let err = body.frame().await.expect("some").expect_err("idle");
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Idle)
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_complete_after_its_last_frame() {
        // A server stops polling once `is_end_stream` is true: the body must not
        // wait for a final `None` to count as complete.
        let rec = Record::default();
        let mut body = WatchedBody::new(
            http_body_util::Full::new(Bytes::from_static(b"{}")),
            None,
            None,
            rec.clone(),
        );
        assert!(body.frame().await.expect("frame").is_ok());
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*rec.0.lock().expect("lock"), (2, vec![BodyEnd::Complete]));
    }

    #[tokio::test]
    async fn complete_and_dropped_bodies_are_reported() {
        let rec = Record::default();
        let body = WatchedBody::new(
            http_body_util::Full::new(Bytes::from_static(b"done")),
            None,
            None,
            rec.clone(),
        );
        assert_eq!(
            &body.collect().await.expect("collect").to_bytes()[..],
            b"done"
        );
        let (_tx, inner) = channel_body();
        drop(WatchedBody::new(inner, None, None, rec.clone()));
        assert_eq!(
            rec.0.lock().expect("lock").1,
            vec![BodyEnd::Complete, BodyEnd::Dropped]
        );
    }
}
