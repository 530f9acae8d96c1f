//! When a connection last did something: the requests it has in flight (a response
//! counts until its body has been sent, so a long stream keeps its connection busy)
//! and when the last one ended. The connection's task closes it once it has been idle
//! for the idle timeout, HTTP/1.1 and HTTP/2 alike (HTTP/2 keep-alive pings only find
//! dead peers; a live peer that sends nothing would otherwise hold its connection).
//!
//! Also what the connection's stream last did, for parking an HTTP/1.1 connection
//! between requests: whether its last operation was a read that found nothing (hyper
//! waits for the next request), and whether the connection is being parked (hyper's
//! shutdown of the stream is then skipped).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The requests of one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    active: AtomicUsize,
    /// Requests begun, ever.
    begun: AtomicU64,
    /// When the last request ended, in milliseconds since `started`.
    last_end_ms: AtomicU64,
    /// The stream's last operation was a read that found nothing.
    read_blocked: AtomicBool,
    /// The connection is being parked: its stream is not to be shut down.
    parking: AtomicBool,
}

/// One request in flight; ends when dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    /// A connection that starts now, idle.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            read_blocked: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        })
    }

    /// A request starts.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.begun.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How many requests have begun on the connection.
    pub(crate) fn begun(&self) -> u64 {
        self.begun.load(Ordering::Relaxed)
    }

    /// Since when the connection has been idle; `None` while a request is in flight.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_end_ms.load(Ordering::Acquire);
        Some(self.started + Duration::from_millis(ms))
    }

    /// Whether the connection waits for its next request: nothing in flight, and the
    /// stream's last operation a read that found nothing.
    pub(crate) fn waiting(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && self.read_blocked()
    }

    pub(crate) fn read_blocked(&self) -> bool {
        self.read_blocked.load(Ordering::Relaxed)
    }

    pub(crate) fn set_read_blocked(&self, blocked: bool) {
        self.read_blocked.store(blocked, Ordering::Relaxed);
    }

    pub(crate) fn parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    pub(crate) fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stamp first: the idle check reads the stamp only once nothing is active.
        self.0.last_end_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request [`Busy`] until it is done or dropped.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, busy: Busy) -> Self {
        Self {
            inner,
            busy: Some(busy),
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.busy.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_from_the_end_of_the_last_request() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.idle_since(), Some(start));
        let a = activity.begin();
        let b = activity.begin();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(a);
        assert_eq!(activity.idle_since(), None, "one still in flight");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b);
        assert_eq!(activity.idle_since(), Some(start + Duration::from_secs(10)));
    }
}
