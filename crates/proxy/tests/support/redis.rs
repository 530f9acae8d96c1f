//! A private `redis-server` for the tests of global limits
//! ([`sluice_ratelimit::testing`]) and a backend on it.

use std::sync::Arc;
use std::time::Duration;

pub use sluice_ratelimit::testing::RedisServer;
use sluice_ratelimit::{MonotonicClock, RedisBackend, RedisConfig};

/// A backend on `server` with a generous deadline.
pub fn backend(server: &RedisServer) -> Arc<RedisBackend> {
    let config = RedisConfig::new(server.url()).with_deadline(Duration::from_secs(2));
    Arc::new(RedisBackend::new(config, Arc::new(MonotonicClock::new())).expect("URL"))
}
