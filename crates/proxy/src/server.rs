//! Accepting connections: HTTP/1.1 and HTTP/2 (prior knowledge, h2c) on one listener,
//! with a header-read timeout, header and stream limits and graceful shutdown.
//!
//! The accept loop is [`sluice_listener`]'s, shared with the controller's push server;
//! it is re-exported here so that the proxy's listeners are configured and started
//! from the proxy crate.

pub use sluice_listener::{ServerConfig, serve};
