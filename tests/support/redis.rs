//! A private `redis-server` (the Debian package) for the tests that need one: started
//! on a port of the test's choosing, so that it can be stopped and started again on
//! the same address, and paused with SIGSTOP.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Process, eventually};

/// Whether the Redis tests are to be skipped: `SLUICE_SKIP_REDIS=1` and no
/// `redis-server` to run (as for the other Redis tests).
pub fn skipped() -> bool {
    std::env::var("SLUICE_SKIP_REDIS").as_deref() == Ok("1")
        && Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
}

/// A `redis-server` without persistence on 127.0.0.1:`port`, killed when dropped.
pub struct Redis {
    /// Its port.
    pub port: u16,
    process: Process,
}

impl Redis {
    /// Starts a server on `port` and waits until it answers PING.
    ///
    /// # Errors
    ///
    /// When `redis-server` cannot be started (install it: `apt-get install
    /// redis-server`, or set `SLUICE_SKIP_REDIS=1` for [`skipped`]) or does not answer
    /// within 10 s.
    pub fn start(port: u16) -> Result<Self> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        let process = Process::spawn("redis", command)
            .context("starting redis-server (Debian: apt-get install redis-server)")?;
        let redis = Self { port, process };
        eventually(Duration::from_secs(10), "redis-server to answer", || {
            Ok(redis.answers().then_some(()))
        })?;
        Ok(redis)
    }

    /// The URL the proxy is given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING within a second.
    pub fn answers(&self) -> bool {
        sluice_ratelimit::testing::answers_ping(self.port)
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn pause(&self) -> Result<()> {
        self.process.signal("STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn resume(&self) -> Result<()> {
        self.process.signal("CONT")
    }
}
