//! What the Redis tests share: a private `redis-server` on a free port (Debian
//! package `redis-server`; without it on PATH the tests fail, unless
//! `SLUICE_SKIP_REDIS=1` says to skip them), limiters and backends on it, and
//! counter sums.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_ratelimit::global::GlobalStatsSnapshot;
use sluice_ratelimit::{
    Clock, GlobalConfig, GlobalLimiter, ManualClock, MonotonicClock, Quota, RedisBackend,
    RedisConfig,
};

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub child: Child,
}

impl RedisServer {
    /// Starts a server, or returns `None` if `SLUICE_SKIP_REDIS=1` and there is
    /// no `redis-server` on PATH.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Option<Self> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if std::env::var("SLUICE_SKIP_REDIS").as_deref() == Ok("1") => {
                eprintln!("skipping: cannot start redis-server ({error}) and SLUICE_SKIP_REDIS=1");
                return None;
            }
            Err(error) => panic!(
                "cannot start redis-server ({error}): install it (Debian: apt-get install \
                 redis-server) or set SLUICE_SKIP_REDIS=1 to skip the Redis tests"
            ),
        };
        let server = Self { port, child };
        let started = Instant::now();
        while !server.answers_ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A limiter of `quota` on this server, as one proxy has it: a connection of its
    /// own whose calls are cut at `deadline`, and its own clock.
    pub fn limiter<C: Clock>(
        &self,
        deadline: Duration,
        quota: Quota,
        config: GlobalConfig,
        clock: C,
    ) -> GlobalLimiter<C> {
        GlobalLimiter::new(backend(&self.url(), deadline), quota, config, clock)
    }

    /// One limiter per clock: proxies sharing `quota` through this server.
    pub fn proxies(
        &self,
        clocks: &[Arc<ManualClock>],
        quota: Quota,
        config: GlobalConfig,
    ) -> Vec<Arc<GlobalLimiter<Arc<ManualClock>>>> {
        clocks
            .iter()
            .map(|clock| {
                Arc::new(self.limiter(Duration::from_secs(2), quota, config, Arc::clone(clock)))
            })
            .collect()
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

pub fn backend(url: &str, deadline: Duration) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::new(
            RedisConfig::new(url)
                .with_deadline(deadline)
                .with_retry_backoff(Duration::from_millis(200)),
            Arc::new(MonotonicClock::new()),
        )
        .unwrap(),
    )
}

/// The Redis statistics of `limiters`, summed.
pub fn total<'a, C: Clock + 'a>(
    limiters: impl IntoIterator<Item = &'a Arc<GlobalLimiter<C>>>,
) -> GlobalStatsSnapshot {
    let mut sum = GlobalStatsSnapshot::default();
    for s in limiters.into_iter().map(|l| l.backend().stats().snapshot()) {
        sum.redis_ops += s.redis_ops;
        sum.redis_errors += s.redis_errors;
        sum.redis_timeouts += s.redis_timeouts;
        sum.lease_admitted += s.lease_admitted;
        sum.lease_denied += s.lease_denied;
        sum.tokens_leased += s.tokens_leased;
        sum.tokens_returned += s.tokens_returned;
    }
    sum
}
