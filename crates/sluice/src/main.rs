//! `sluice`: the one binary of the Sluice gateway.
//!
//! Thin wiring of the library crates into subcommands: `proxy` (the data plane),
//! `controller` (the control plane), `compile` (check manifests offline), `crds`
//! (print the CustomResourceDefinitions) and `metrics` (list the metrics).

mod cmd_compile;
mod cmd_controller;
mod cmd_metrics;
mod cmd_proxy;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The release and the commit it was built from, as `sluice --version` prints them:
/// `0.1.0 (1a2b3c4)`. The commit comes from `build.rs`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SLUICE_GIT_COMMIT"),
    ")"
);

/// Sluice, a Kubernetes-native gateway for AI agents.
#[derive(Parser, Debug)]
#[command(name = "sluice", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data plane: route, balance and forward requests to agents.
    Proxy(Box<cmd_proxy::Args>),
    /// Run the control plane: compile manifests and push route tables to proxies.
    Controller(Box<cmd_controller::Args>),
    /// Compile manifests and print the route table as JSON, or the diagnostics.
    Compile {
        /// A manifest file or a folder of them.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Print the SHA-256 hash of an API key read from standard input, the form
    /// consumer Secrets and standalone files may store it in (`api-key-sha256`).
    HashKey,
    /// Print the CustomResourceDefinitions as YAML, or write them into folders.
    Crds {
        /// Write one file per CRD into each of these folders instead of printing.
        #[arg(long = "out")]
        out: Vec<PathBuf>,
    },
    /// Print every metric the proxy and the controller can export (name, labels, help)
    /// as JSON.
    Metrics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile { path } => return ExitCode::from(cmd_compile::run(&path)),
        Command::Crds { out } => crds(&out),
        Command::HashKey => hash_key(),
        Command::Metrics => cmd_metrics::run(),
        Command::Proxy(args) => {
            runtime(args.runtime_threads()).and_then(|rt| rt.block_on(cmd_proxy::run(*args)))
        }
        Command::Controller(args) => {
            runtime(None).and_then(|rt| rt.block_on(cmd_controller::run(*args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`sluice crds | head`) is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the causes: no backtrace, even with RUST_BACKTRACE set (a
            // user error is not a bug).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output.
///
/// # Errors
///
/// When stdout cannot be written; a closed pipe is reported as such, and `main` ends
/// quietly on it.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A work-stealing runtime of `threads` worker threads (default: one per CPU).
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    init_tracing();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    Ok(builder.enable_all().build()?)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn crds(out: &[PathBuf]) -> Result<()> {
    let crds = sluice_api::crds();
    if out.is_empty() {
        let all: Vec<String> = crds.into_iter().map(|(_, yaml)| yaml).collect();
        return print_stdout(&all.join("---\n"));
    }
    for dir in out {
        std::fs::create_dir_all(dir)?;
        for (name, yaml) in &crds {
            let path = dir.join(name);
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Reads one key from stdin (surrounding whitespace, such as the newline of `echo`,
/// is not part of it) and prints its hash.
fn hash_key() -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)?;
    let key = input.trim();
    if key.is_empty() {
        anyhow::bail!("no key on standard input: try `printf %s \"$KEY\" | sluice hash-key`");
    }
    if key.contains(char::is_whitespace) {
        anyhow::bail!("the key contains whitespace; give one key without spaces or newlines");
    }
    print_stdout(&format!("{}\n", sluice_api::compile::hash_api_key(key)))
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
