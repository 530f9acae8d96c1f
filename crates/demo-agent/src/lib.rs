//! Sluice demo agent: a small, realistic AI-agent simulator.
//!
//! It serves HTTP/1.1 and h2c and offers:
//!
//! - `GET /healthz`: `200 ok`, immediately;
//! - `GET /capabilities`: the agent's name and capabilities;
//! - `POST /v1/chat/completions`: an OpenAI-compatible chat endpoint that echoes the
//!   last user message, with or without server-sent-event streaming;
//! - any other method and path: a JSON description of the request received.
//!
//! Chat and echo requests wait for a log-normally distributed latency, count
//! against a capacity limit (503 + `Retry-After` beyond it) and can be made to fail
//! at a configurable rate. Every response carries `x-demo-agent: NAME`. With
//! `--request-log FILE`, every chat and echo request is recorded as it arrives (see
//! [`request_log`]).
//!
//! The binary is a thin wrapper around [`Cli`] and [`Server`]; tests start the
//! server in-process with [`Server::bind`] and [`Server::run`].

pub mod chat;
pub mod config;
pub mod duration;
pub mod echo;
pub mod latency;
pub mod request_log;
pub mod respond;
pub mod server;

pub use config::{AgentConfig, Cli};
pub use duration::parse_duration;
pub use latency::{LatencySampler, LogNormal};
pub use server::{AGENT_HEADER, Agent, CAPABILITIES_HEADER, Server, shutdown_signal};
