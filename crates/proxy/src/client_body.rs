//! The client's request body as the proxy reads it: counted for the access log and
//! metrics, watched for breaking (a malformed chunk, a client gone mid-body), and held
//! to a minimum data rate so that a client trickling its upload cannot keep an agent's
//! slot.
//!
//! The rate is Kestrel's `MinRequestBodyDataRate`: once the proxy starts reading a
//! body, it must have received `rate × (elapsed − grace)` bytes at any moment; a client
//! that falls behind has its body cut (the request is answered 408 and the slot freed).
//! A body is only read once it is needed (to find `max_tokens`, or to send it to an
//! agent), so a slow client waiting in a queue holds nothing, and a streaming upload
//! that keeps the rate streams as long as it likes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The minimum data rate of a request body, with a grace period from its first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes a second, at least 1.
    pub bytes_per_second: u32,
    /// How long the body may send nothing at first.
    pub grace: Duration,
}

impl Default for MinRate {
    /// 240 bytes a second after 5 seconds, as Kestrel.
    fn default() -> Self {
        Self {
            bytes_per_second: 240,
            grace: Duration::from_secs(5),
        }
    }
}

/// A body that fell below its minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {bytes_per_second} bytes a second")]
pub struct TooSlow {
    bytes_per_second: u32,
}

/// What the proxy saw of a client's request body: how many bytes came, and whether it
/// broke or was cut for arriving too slowly. The access log and metrics read it once the
/// request is over; the send phase reads it to tell a client's fault from an agent's.
#[derive(Debug, Default)]
pub struct BodyStats {
    bytes: AtomicU64,
    failed: AtomicBool,
    too_slow: AtomicBool,
}

impl BodyStats {
    /// The bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the client's body failed (broke, or was cut as too slow).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether it was cut for arriving slower than its minimum rate.
    pub fn too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Relaxed)
    }
}

/// The client's request body, counted into its [`BodyStats`] and held to its
/// [`MinRate`].
#[derive(Debug)]
pub struct CountedBody {
    inner: hyper::body::Incoming,
    stats: Arc<BodyStats>,
    rate: Option<MinRate>,
    /// Since the first read: when the body falls behind its rate.
    behind_at: Option<Pin<Box<Sleep>>>,
    started: Option<Instant>,
}

impl CountedBody {
    /// Counts what is read from `inner` into `stats`, holding it to `rate` (none: no
    /// rate).
    pub fn new(inner: hyper::body::Incoming, stats: Arc<BodyStats>, rate: Option<MinRate>) -> Self {
        Self {
            inner,
            stats,
            rate,
            behind_at: None,
            started: None,
        }
    }

    /// When the bytes read so far stop being enough for the rate.
    fn deadline(&self, rate: MinRate, started: Instant) -> Instant {
        let bytes = self.stats.bytes();
        let earned =
            Duration::from_secs_f64(bytes as f64 / f64::from(rate.bytes_per_second.max(1)));
        started + rate.grace + earned
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.stats.failed() {
            return Poll::Ready(None);
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.stats
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Some(rate) = this.rate {
                    let at = this.deadline(rate, started);
                    if let Some(sleep) = this.behind_at.as_mut() {
                        sleep.as_mut().reset(at);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(rate) = this.rate else {
                    return Poll::Pending;
                };
                if this.behind_at.is_none() {
                    let at = this.deadline(rate, started);
                    this.behind_at = Some(Box::pin(tokio::time::sleep_until(at)));
                }
                let Some(sleep) = this.behind_at.as_mut() else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    this.stats.too_slow.store(true, Ordering::Relaxed);
                    this.stats.failed.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(TooSlow {
                        bytes_per_second: rate.bytes_per_second,
                    }))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
