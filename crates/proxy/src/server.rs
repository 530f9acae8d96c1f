//! Accepting connections: HTTP/1.1 and HTTP/2 (over TLS by ALPN, in clear by prior
//! knowledge) on one listener, TLS termination with certificates chosen by SNI and
//! reloaded on change, a header-read and an idle timeout, caps on open connections,
//! header and stream limits, and graceful shutdown.
//!
//! The accept loop is [`sluice_listener`]'s, shared with the controller's push server;
//! it is re-exported here so that the proxy's listeners are configured and started
//! from the proxy crate.

pub use sluice_listener::{
    CertificateFiles, ConnectionMetrics, ListenerMetrics, ServerConfig, TlsConfig, TlsError,
    Workers, serve,
};
