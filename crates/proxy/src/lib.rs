//! The Sluice data plane.
//!
//! A request flows through [`router`] (which pool), a balancer from `sluice-balance`
//! (which endpoint) and [`forward`] (send it, stream both ways), while [`metrics`]
//! records what happened. The routing state is a [`store::TableStore`]: an immutable
//! runtime built once per [`sluice_api::RouteTable`] and swapped in whole, so the
//! request path takes no lock. Tables arrive from the controller through the
//! [`subscriber`], or from the binary's file mode; [`admin`] serves health, readiness,
//! metrics and the current table.

pub mod admin;
pub mod auth;
pub mod body;
pub mod clock;
pub mod error;
pub mod forward;
pub mod hygiene;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod replay;
pub mod router;
pub mod server;
pub mod store;
pub mod subscriber;
pub mod table_cache;
#[cfg(test)]
mod test_tables;
pub mod upgrade;

pub use error::ProxyError;
pub use forward::Forwarder;
pub use metrics::Metrics;
pub use store::TableStore;
