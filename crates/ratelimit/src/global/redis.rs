//! The Redis side of global limits: one connection (reconnecting on its own),
//! one atomic Lua script, a deadline on every call and a short circuit breaker.
//!
//! The script (`gcra.lua`, next to this file) runs GCRA on Redis's own clock (`TIME`), so proxies whose clocks disagree
//! still agree on every decision; it can also hand out several tokens at once (a
//! lease) and take back the unused part of an earlier lease in the same round
//! trip. Keys expire when their limiter is replenished, so Redis holds only
//! active keys.
//!
//! Every call is bounded by [`RedisConfig::deadline`]. After a failure (error or
//! deadline) the backend does not try Redis again for
//! [`RedisConfig::retry_backoff`]: calls fail at once with
//! [`GlobalError::CircuitOpen`] instead of each waiting out the deadline. The
//! connection itself is a redis-rs `ConnectionManager`, created on first use,
//! which reconnects in the background after the server comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::GlobalError;
use super::stats::GlobalStats;
use crate::algorithm::{from_nanos, nanos_of};
use crate::clock::Clock;

/// The script, loaded once per server (EVALSHA, falling back to EVAL after a
/// restart empties the script cache).
const SCRIPT: &str = include_str!("gcra.lua");

/// Default for [`RedisConfig::deadline`]: 50 ms.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);

/// Default for [`RedisConfig::retry_backoff`]: 1 s.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// A `redis://` URL.
    pub url: String,
    /// The longest any one call may take, connection included.
    pub deadline: Duration,
    /// How long to skip Redis after a failed call before trying again.
    pub retry_backoff: Duration,
}

impl RedisConfig {
    /// The server at `url` with the default deadline and backoff.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            deadline: DEFAULT_DEADLINE,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }

    /// Returns this configuration with another per-call deadline.
    #[must_use]
    pub fn with_deadline(self, deadline: Duration) -> Self {
        Self { deadline, ..self }
    }

    /// Returns this configuration with another backoff after failures.
    #[must_use]
    pub fn with_retry_backoff(self, retry_backoff: Duration) -> Self {
        Self {
            retry_backoff,
            ..self
        }
    }
}

/// One script call: take up to `want` (at least `need`) tokens of a GCRA limit,
/// first giving back `give_back` tokens of the lease that ended at `lease_end` and
/// charging `charge` tokens whatever is left (at most one burst ahead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Acquire<'a> {
    pub(crate) key: &'a str,
    pub(crate) interval_micros: f64,
    pub(crate) burst: u32,
    pub(crate) want: u32,
    pub(crate) need: u32,
    pub(crate) give_back: u32,
    pub(crate) lease_end: u64,
    pub(crate) charge: u32,
}

/// The script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Tokens taken (0: refused).
    pub(crate) granted: u32,
    /// Tokens still available in Redis after the grant.
    pub(crate) remaining: u32,
    /// Until the limit is fully replenished.
    pub(crate) reset_after: Duration,
    /// For a refusal: until `need` tokens are available.
    pub(crate) retry_after: Duration,
    /// The TAT after the grant, in Redis microseconds (to give tokens back).
    pub(crate) end: u64,
    /// Whole tokens the give-back returned.
    pub(crate) returned: u32,
}

/// A shared connection to Redis for global limits, with its counters.
pub struct RedisBackend {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    config: RedisConfig,
    clock: Arc<dyn Clock>,
    down_until: AtomicU64,
    stats: GlobalStats,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Prepares a backend; nothing connects until the first call. `clock`
    /// times the circuit breaker (real time in production).
    ///
    /// # Errors
    ///
    /// [`GlobalError::InvalidUrl`] if `config.url` is not a Redis URL.
    pub fn new(config: RedisConfig, clock: Arc<dyn Clock>) -> Result<Self, GlobalError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|source| GlobalError::InvalidUrl { source })?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
            config,
            clock,
            down_until: AtomicU64::new(0),
            stats: GlobalStats::default(),
        })
    }

    /// Returns the configuration.
    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Returns the counters of this backend and the limiters using it.
    #[must_use]
    pub fn stats(&self) -> &GlobalStats {
        &self.stats
    }

    /// Runs the script once, within the deadline.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave tokens taken in Redis and never used: the
    /// limit errs strict, never lenient.
    pub(crate) async fn acquire(&self, request: Acquire<'_>) -> Result<Grant, GlobalError> {
        let now = self.clock.now_nanos();
        let down_until = self.down_until.load(Ordering::Relaxed);
        if now < down_until {
            self.stats.skipped();
            return Err(GlobalError::CircuitOpen {
                retry_in: from_nanos(u128::from(down_until - now)),
            });
        }
        self.stats.op();
        let started = Instant::now();
        match tokio::time::timeout(self.config.deadline, self.invoke(request)).await {
            Ok(Ok(grant)) => {
                self.stats.latency(started.elapsed());
                self.down_until.store(0, Ordering::Relaxed);
                Ok(grant)
            }
            Ok(Err(source)) => {
                self.stats.error();
                self.trip(now);
                Err(GlobalError::Redis { source })
            }
            Err(_) => {
                self.timed_out();
                Err(GlobalError::Timeout {
                    deadline: self.config.deadline,
                })
            }
        }
    }

    /// Counts a call cut off at the deadline and opens the circuit for the retry
    /// backoff. Also called by a caller whose own deadline (which may fire just
    /// before this one's) cut the call short.
    pub(crate) fn timed_out(&self) {
        self.stats.timeout();
        self.trip(self.clock.now_nanos());
    }

    /// How long callers should wait after a failure.
    pub(crate) fn retry_in(&self) -> Duration {
        let now = self.clock.now_nanos();
        let down_until = self.down_until.load(Ordering::Relaxed);
        from_nanos(u128::from(down_until.saturating_sub(now))).max(Duration::from_millis(1))
    }

    fn trip(&self, now: u64) {
        self.down_until.store(
            now.saturating_add(nanos_of(self.config.retry_backoff)),
            Ordering::Relaxed,
        );
    }

    async fn invoke(&self, request: Acquire<'_>) -> redis::RedisResult<Grant> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    // Our own deadline (below) cuts every call short first; the
                    // manager's timeouts only clean up after it.
                    .set_connection_timeout(Some(self.config.deadline * 2))
                    .set_response_timeout(Some(self.config.deadline * 2))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(self.config.retry_backoff);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        let mut connection = connection.clone();
        let (granted, remaining, reset_micros, retry_micros, end, returned): (
            u32,
            u32,
            u64,
            u64,
            u64,
            u32,
        ) = self
            .script
            .key(request.key)
            .arg(request.interval_micros)
            .arg(request.burst)
            .arg(request.want)
            .arg(request.need)
            .arg(request.give_back)
            .arg(request.lease_end)
            .arg(request.charge)
            .invoke_async(&mut connection)
            .await?;
        Ok(Grant {
            granted,
            remaining,
            reset_after: Duration::from_micros(reset_micros),
            retry_after: Duration::from_micros(retry_micros),
            end,
            returned,
        })
    }
}
