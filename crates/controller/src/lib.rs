//! The Sluice control plane.
//!
//! Objects come from a [`source`] (a folder of manifests, `--from-dir`) or from the
//! Kubernetes API ([`watch`]), are compiled by [`sluice_api::compile`], and each new
//! table is handed to the [`publisher::Publisher`], which stamps its version. The
//! [`push`] server streams every published table to the subscribed proxies. On
//! Kubernetes, [`status`] turns each compile into status conditions and
//! [`status_writer`] applies them.

pub mod from_dir;
pub mod publisher;
pub mod push;
pub mod source;
pub mod status;
pub mod status_writer;
pub mod watch;

pub use publisher::{Published, Publisher};
