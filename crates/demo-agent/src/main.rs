//! `sluice-demo-agent`: runs one simulated AI agent. See the library documentation.

use std::io::IsTerminal;

use clap::Parser;
use sluice_demo_agent::{Cli, Server, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cli = Cli::parse();
    let listen = cli.listen;
    let config = cli.into_config()?;
    let server = Server::bind(listen, config.clone()).await?;
    tracing::info!(
        addr = %server.local_addr()?,
        name = %config.name,
        p50 = ?config.latency.p50(),
        p99 = ?config.latency.p99(),
        capacity = config.capacity,
        capabilities = ?config.capabilities,
        token_interval = ?config.token_interval,
        fail_rate = config.fail_rate,
        "demo agent listening"
    );
    server.run(shutdown_signal()).await?;
    tracing::info!("demo agent stopped");
    Ok(())
}
