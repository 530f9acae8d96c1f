//! A private `redis-server` on a free port for the tests of global limits (Debian
//! package `redis-server`). Without it on PATH these tests fail, unless
//! `SLUICE_SKIP_REDIS=1` says to skip them.
//!
//! Starting the server is the one wait in real time: polling until it answers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_ratelimit::{MonotonicClock, RedisBackend, RedisConfig};

/// A `redis-server` killed on drop.
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server, or returns `None` if `SLUICE_SKIP_REDIS=1` and there is no
    /// `redis-server` on PATH.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("address")
            .port();
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

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// A backend on this server with a generous deadline.
    pub fn backend(&self) -> Arc<RedisBackend> {
        let config = RedisConfig::new(format!("redis://127.0.0.1:{}/", self.port))
            .with_deadline(Duration::from_secs(2));
        Arc::new(RedisBackend::new(config, Arc::new(MonotonicClock::new())).expect("URL"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
