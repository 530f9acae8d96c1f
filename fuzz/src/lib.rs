//! Fuzz target bodies for Sluice, shared with the stable corpus replay test.

pub mod checks;
