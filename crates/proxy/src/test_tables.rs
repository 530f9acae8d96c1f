//! Route tables for the unit tests of this crate.

use sluice_api::RouteTable;

/// [`sluice_api::testing::one_pool_table`] at `version`.
pub(crate) fn one_pool(prefix: &str, version: u64) -> RouteTable {
    let mut t = sluice_api::testing::one_pool_table(prefix);
    t.version = version;
    t
}
