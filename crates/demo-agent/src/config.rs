//! The agent's configuration and the command line that produces it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Parser;
use http::HeaderValue;

use crate::duration::parse_duration;
use crate::latency::LogNormal;

/// Everything that shapes how a demo agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name, sent in the `x-demo-agent` header of every response.
    pub name: String,
    /// The distribution of simulated latency (time to first byte / first token).
    pub latency: LogNormal,
    /// How many requests may be served at once; beyond that the agent answers 503.
    pub capacity: usize,
    /// Capability names this agent advertises.
    pub capabilities: Vec<String>,
    /// Delay between two streamed tokens.
    pub token_interval: Duration,
    /// Seed for latency sampling and failure injection; random when `None`.
    pub seed: Option<u64>,
    /// Share of requests (0..=1) answered with a simulated 500.
    pub fail_rate: f64,
    /// A file to which one line is appended per request received (see
    /// [`crate::request_log`]).
    pub request_log: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: "agent-1".to_owned(),
            latency: LogNormal::new(Duration::from_millis(50), Duration::from_millis(200))
                .expect("default latency is valid"),
            capacity: 64,
            capabilities: Vec::new(),
            token_interval: Duration::from_millis(20),
            seed: None,
            fail_rate: 0.0,
            request_log: None,
        }
    }
}

impl AgentConfig {
    /// Checks the values that the types alone do not constrain.
    ///
    /// # Errors
    ///
    /// Fails when the name or a capability cannot be sent in an HTTP header, the
    /// capacity is zero or the failure rate is outside `0..=1`.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.name.is_empty(), "the agent name must not be empty");
        HeaderValue::from_str(&self.name)
            .with_context(|| format!("agent name {:?} is not a valid header value", self.name))?;
        ensure!(self.capacity >= 1, "capacity must be at least 1");
        ensure!(
            (0.0..=1.0).contains(&self.fail_rate),
            "fail rate must be between 0 and 1, got {}",
            self.fail_rate
        );
        for capability in &self.capabilities {
            ensure!(
                !capability.is_empty()
                    && capability.chars().all(|c| c.is_ascii_graphic() && c != ','),
                "capability {capability:?} must be printable ASCII without commas or spaces"
            );
        }
        Ok(())
    }
}

/// Command line of `sluice-demo-agent`. Every flag can also be set from the
/// environment (`SLUICE_AGENT_*`).
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-demo-agent", version, about)]
pub struct Cli {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, env = "SLUICE_AGENT_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// Name reported in the `x-demo-agent` response header and in responses.
    #[arg(long, env = "SLUICE_AGENT_NAME", default_value = "agent-1")]
    pub name: String,

    /// Median of the simulated latency (log-normal), e.g. `20ms`.
    #[arg(long, env = "SLUICE_AGENT_LATENCY_P50", default_value = "50ms", value_parser = parse_duration)]
    pub latency_p50: Duration,

    /// 99th percentile of the simulated latency; must be at least the median.
    #[arg(long, env = "SLUICE_AGENT_LATENCY_P99", default_value = "200ms", value_parser = parse_duration)]
    pub latency_p99: Duration,

    /// Maximum number of requests served concurrently; more get 503 + Retry-After.
    #[arg(long, env = "SLUICE_AGENT_CAPACITY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,

    /// Comma-separated capability names, e.g. `chat,search`.
    #[arg(long, env = "SLUICE_AGENT_CAPABILITIES", value_delimiter = ',')]
    pub capabilities: Vec<String>,

    /// Delay between streamed tokens.
    #[arg(long, env = "SLUICE_AGENT_TOKEN_INTERVAL", default_value = "20ms", value_parser = parse_duration)]
    pub token_interval: Duration,

    /// Seed for deterministic latency sampling and failure injection.
    #[arg(long, env = "SLUICE_AGENT_SEED")]
    pub seed: Option<u64>,

    /// Share of requests (0 to 1) answered with a simulated 500.
    #[arg(long, env = "SLUICE_AGENT_FAIL_RATE", default_value_t = 0.0, value_parser = parse_fail_rate)]
    pub fail_rate: f64,

    /// Append a line per request received to this file: its `x-request-id` (or `-`),
    /// method and path, written before the body is read, so that a test can tell
    /// which requests reached the agent even after it is killed.
    #[arg(long, env = "SLUICE_AGENT_REQUEST_LOG")]
    pub request_log: Option<PathBuf>,
}

fn parse_fail_rate(input: &str) -> Result<f64, String> {
    let rate: f64 = input
        .parse()
        .map_err(|_| format!("{input:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

impl Cli {
    /// Turns the parsed flags into a validated [`AgentConfig`].
    ///
    /// # Errors
    ///
    /// Fails when p99 is below p50 or [`AgentConfig::validate`] rejects a value.
    pub fn into_config(self) -> anyhow::Result<AgentConfig> {
        let latency = LogNormal::new(self.latency_p50, self.latency_p99)?;
        let capabilities = self
            .capabilities
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let config = AgentConfig {
            name: self.name,
            latency,
            capacity: usize::try_from(self.capacity).context("capacity too large")?,
            capabilities,
            token_interval: self.token_interval,
            seed: self.seed,
            fail_rate: self.fail_rate,
            request_log: self.request_log,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice-demo-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:9001".parse().unwrap());
        let config = cli.into_config().unwrap();
        assert_eq!(config.name, "agent-1");
        assert_eq!(config.token_interval, Duration::from_millis(20));
        assert_eq!(config.fail_rate, 0.0);
        assert!(config.seed.is_none());
        assert!(config.request_log.is_none());
    }

    #[test]
    fn all_flags() {
        let config = parse(&[
            "--listen",
            "0.0.0.0:8080",
            "--name",
            "agent-7",
            "--latency-p50",
            "20ms",
            "--latency-p99",
            "1.5s",
            "--capacity",
            "3",
            "--capabilities",
            "chat, search,,code",
            "--token-interval",
            "5ms",
            "--seed",
            "42",
            "--fail-rate",
            "0.25",
            "--request-log",
            "/tmp/requests.log",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(config.name, "agent-7");
        assert_eq!(config.latency.p50(), Duration::from_millis(20));
        assert_eq!(config.latency.p99(), Duration::from_millis(1500));
        assert_eq!(config.capacity, 3);
        assert_eq!(config.capabilities, ["chat", "search", "code"]);
        assert_eq!(config.token_interval, Duration::from_millis(5));
        assert_eq!(config.seed, Some(42));
        assert_eq!(config.fail_rate, 0.25);
        assert_eq!(
            config.request_log.as_deref(),
            Some(std::path::Path::new("/tmp/requests.log"))
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--capacity", "0"]).is_err());
        assert!(parse(&["--fail-rate", "1.5"]).is_err());
        assert!(parse(&["--fail-rate", "-0.1"]).is_err());
        assert!(parse(&["--latency-p50", "fast"]).is_err());
        assert!(parse(&["--token-interval", "20"]).is_err());
        let inverted = parse(&["--latency-p50", "1s", "--latency-p99", "10ms"]).unwrap();
        assert!(inverted.into_config().is_err());
        let bad_name = parse(&["--name", "bad\nname"]).unwrap();
        assert!(bad_name.into_config().is_err());
    }
}
