//! A private `redis-server` for the tests of global limits, in this crate and in the
//! proxy (feature `testing`). The Debian package `redis-server` provides it; without it
//! on PATH the tests fail, unless `SLUICE_SKIP_REDIS=1` says to skip them.
//!
//! Starting the server is the one wait in real time: polling until it answers PING.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` without persistence on 127.0.0.1, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server on a free port, or returns `None` if `SLUICE_SKIP_REDIS=1` and
    /// there is no `redis-server` on PATH.
    ///
    /// A port the kernel reported free can be taken by an outgoing connection before
    /// the server binds it: then the server exits and another port is tried.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be started and the tests are not to be skipped, or
    /// when it does not answer within 10 s.
    #[must_use]
    pub fn start() -> Option<Self> {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            match Self::spawn(port)? {
                Ok(server) => return Some(server),
                Err(exited) => eprintln!("redis-server on port {port} exited ({exited}), retrying"),
            }
        }
        panic!("redis-server exited on five free ports")
    }

    /// Starts a server on `port` (to bring a stopped one back on its address), or
    /// returns `None` as [`RedisServer::start`] does.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], and when the server exits (the port is taken).
    #[must_use]
    pub fn start_on(port: u16) -> Option<Self> {
        Self::spawn(port)
            .map(|started| started.unwrap_or_else(|exited| panic!("redis-server exited: {exited}")))
    }

    /// The server on `port` once it answers, or how it exited.
    fn spawn(port: u16) -> Option<Result<Self, std::process::ExitStatus>> {
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
        let mut server = Self { port, child };
        let started = Instant::now();
        while !server.answers_ping() {
            if let Ok(Some(exited)) = server.child.try_wait() {
                return Some(Err(exited));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Ok(server))
    }

    /// Whether it answers PING within a second.
    #[must_use]
    pub fn answers_ping(&self) -> bool {
        answers_ping(self.port)
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id, for signals (SIGSTOP to freeze it).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL a backend is given.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server and returns its port, free again.
    pub fn stop(self) -> u16 {
        let port = self.port;
        drop(self);
        port
    }
}

/// Whether a Redis server on 127.0.0.1:`port` answers PING within a second.
#[must_use]
pub fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
