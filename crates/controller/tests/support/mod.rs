//! Shared pieces of the controller's integration tests: a push server and its
//! subscribers ([`push`]), a watch loop fed from channels ([`watch`]).
//!
//! Every test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod push;
pub mod watch;
