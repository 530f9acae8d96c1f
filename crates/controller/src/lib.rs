//! The Sluice control plane.
//!
//! Objects come from a [`source`] (today a folder of manifests; the Kubernetes API
//! watchers come later), are compiled by [`sluice_api::compile`], and each new table is
//! handed to the [`publisher::Publisher`], which stamps its version. The [`push`] server
//! streams every published table to the subscribed proxies.

pub mod from_dir;
pub mod publisher;
pub mod push;
pub mod source;

pub use publisher::{Published, Publisher};
