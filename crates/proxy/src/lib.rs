//! The Sluice data plane.
//!
//! A request goes through the phases of [`forward`], in order: **route** ([`router`]:
//! which pool), **admit** ([`identity`], [`auth`]: who is asking, may they call it),
//! **limit** ([`limits`]: every rate limit of the pool at once), **reserve** ([`pool`]:
//! a slot on an endpoint picked by a balancer from `sluice-balance`, queueing or
//! falling back), **send** (with retries; the head cleaned by [`hygiene`]),
//! **respond** ([`body`]: streamed back under deadlines) and **log** ([`metrics`]).
//!
//! The routing state is a [`store::TableStore`]: an immutable runtime built once per
//! [`sluice_api::RouteTable`] and swapped in whole, so the request path takes no lock.
//! Tables arrive from the controller through the [`subscriber`], or from the binary's
//! file mode; [`admin`] serves health, readiness, metrics and the current table. Time
//! and randomness come from [`clock`], injected so that tests control them.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod client_body;
pub mod clock;
pub mod dns;
pub mod endpoint_metrics;
pub mod error;
pub mod forward;
pub mod hygiene;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod model;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod pool;
pub mod replay;
pub mod router;
pub mod server;
pub mod store;
pub mod subscriber;
pub mod table_cache;
#[cfg(test)]
mod test_tables;
pub mod top;
pub mod trace;
pub mod upgrade;

pub use error::ProxyError;
pub use forward::Forwarder;
pub use metrics::Metrics;
pub use store::TableStore;
