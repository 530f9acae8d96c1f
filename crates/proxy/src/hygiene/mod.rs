//! Request hygiene: what the gateway makes of the raw request before any decision.
//!
//! Independent building blocks, each usable alone:
//!
//! * [`message`]: what is never forwarded (`CONNECT`, transfer codings other than
//!   chunked);
//! * [`host`]: the one authority routing matches and the agent receives, refusing
//!   ambiguous or malformed hosts;
//! * [`path`]: one canonical request path, computed once before matching, so routing,
//!   authentication, limits and the agent agree on what was asked for;
//! * [`client_ip`]: the client address, taken from `X-Forwarded-For` only when the TCP
//!   peer is a trusted proxy;
//! * [`headers`]: hop-by-hop and client-supplied `x-sluice-*` headers removed, then the
//!   gateway's identity headers set, in that order;
//! * [`upstream`]: the head an agent receives, built once per request from the above
//!   and the forwarding headers.
//!
//! On the request path they run in this order: refuse what is never forwarded, find
//! the authority (400 on a [`host::HostError`]), normalise the path (400 on a
//! [`path::PathError`]) → route → client IP → strip headers ([`headers::strip_hop_by_hop`],
//! [`headers::strip_sluice_headers`]) → authenticate (`crate::auth`) → set the identity
//! ([`headers::set_identity`]). Client IP comes before the strip so that a
//! `Connection: x-forwarded-for` cannot hide the forwarded chain from it.

pub mod client_ip;
pub mod headers;
pub mod host;
pub mod message;
pub mod path;
pub mod upstream;

pub use client_ip::TrustedProxies;
pub use headers::Identity;
pub use path::{PathError, PathOptions, normalise};
