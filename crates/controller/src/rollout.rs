//! How far each pool's current form has reached the proxies.
//!
//! The proxies acknowledge whole tables (by revision); an AgentPool's status reports
//! how many of them run a table that holds the pool *as it is now*. [`Rollout`] keeps,
//! for the last few published tables, a digest of every pool, so that a proxy still on
//! an older table counts as updated for the pools that table already had in their
//! current form. A change to one pool then moves that pool's count alone, and the
//! status of the thousand others is not rewritten at every publication.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};
use sluice_api::RouteTable;

/// How many published tables are remembered. A proxy on an older table counts as
/// not updated.
pub const KEPT_TABLES: usize = 16;

/// The pool digests of the last [`KEPT_TABLES`] tables.
#[derive(Debug, Default)]
pub struct Rollout {
    /// `(revision, pool key → digest)`, oldest first.
    tables: VecDeque<(String, HashMap<String, [u8; 32]>)>,
}

impl Rollout {
    /// Remembers `table` as the newest (a table of the newest revision is ignored).
    pub fn record(&mut self, table: &RouteTable) {
        if self
            .tables
            .back()
            .is_some_and(|(revision, _)| *revision == table.revision)
        {
            return;
        }
        let pools = table
            .pools
            .iter()
            .map(|p| {
                // A Pool always serialises; an empty digest would only make it
                // count as changed.
                let bytes = serde_json::to_vec(p).unwrap_or_default();
                (p.key.clone(), Sha256::digest(&bytes).into())
            })
            .collect();
        self.tables.push_back((table.revision.clone(), pools));
        while self.tables.len() > KEPT_TABLES {
            self.tables.pop_front();
        }
    }

    /// Counts, pool by pool, the proxies that run each pool as the newest table has
    /// it, given how many proxies acknowledged each revision.
    pub fn counter<'a>(&'a self, acked: &HashMap<String, usize>) -> Updated<'a> {
        let tables = acked
            .iter()
            .filter_map(|(revision, &n)| {
                let (_, pools) = self.tables.iter().find(|(r, _)| r == revision)?;
                Some((pools, n))
            })
            .collect();
        Updated {
            newest: self.tables.back().map(|(_, pools)| pools),
            tables,
        }
    }
}

/// See [`Rollout::counter`].
#[derive(Debug)]
pub struct Updated<'a> {
    newest: Option<&'a HashMap<String, [u8; 32]>>,
    /// The remembered tables some proxy runs, with how many run each.
    tables: Vec<(&'a HashMap<String, [u8; 32]>, usize)>,
}

impl Updated<'_> {
    /// How many proxies run pool `key` as the newest table has it. Zero when the
    /// newest table lacks the pool; a proxy on a table older than
    /// [`KEPT_TABLES`] counts as not updated.
    pub fn updated(&self, key: &str) -> usize {
        let Some(now) = self.newest.and_then(|pools| pools.get(key)) else {
            return 0;
        };
        self.tables
            .iter()
            .filter(|(pools, _)| pools.get(key) == Some(now))
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::table::{BackendTarget, Endpoint, Pool, Route};

    use super::*;

    fn table(a: &str, b: &str) -> RouteTable {
        let pool = |key: &str, address: &str| Pool {
            key: key.into(),
            backends: vec![BackendTarget {
                name: "b".into(),
                weight: 1,
                endpoints: vec![Endpoint::new(address)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let route = |key: &str| Route {
            pool: key.into(),
            host: None,
            path_prefix: format!("/{key}"),
            headers: vec![],
        };
        RouteTable::new(
            vec![route("a"), route("b")],
            vec![pool("a", a), pool("b", b)],
        )
    }

    fn acked(pairs: &[(&RouteTable, usize)]) -> HashMap<String, usize> {
        pairs
            .iter()
            .map(|(t, n)| (t.revision.clone(), *n))
            .collect()
    }

    #[test]
    fn a_proxy_on_an_older_table_counts_for_the_pools_it_already_has() {
        let mut rollout = Rollout::default();
        let v1 = table("10.0.0.1:80", "10.0.0.2:80");
        let v2 = table("10.0.0.9:80", "10.0.0.2:80");
        rollout.record(&v1);
        rollout.record(&v2);
        // Two proxies still on v1, one on v2.
        let counts = acked(&[(&v1, 2), (&v2, 1)]);
        assert_eq!(rollout.counter(&counts).updated("a"), 1, "a changed in v2");
        assert_eq!(
            rollout.counter(&counts).updated("b"),
            3,
            "b is the same in both"
        );
        assert_eq!(rollout.counter(&counts).updated("gone"), 0);
    }

    #[test]
    fn a_pool_changed_back_counts_the_proxies_on_either_form() {
        let mut rollout = Rollout::default();
        let v1 = table("10.0.0.1:80", "10.0.0.2:80");
        let v2 = table("10.0.0.9:80", "10.0.0.2:80");
        let v3 = table("10.0.0.1:80", "10.0.0.3:80");
        for t in [&v1, &v2, &v3, &v3] {
            rollout.record(t);
        }
        let counts = acked(&[(&v1, 1), (&v2, 1), (&v3, 1)]);
        assert_eq!(
            rollout.counter(&counts).updated("a"),
            2,
            "v1 and v3 have the same a"
        );
        assert_eq!(rollout.counter(&counts).updated("b"), 1);
    }

    #[test]
    fn only_the_last_tables_are_kept() {
        let mut rollout = Rollout::default();
        let first = table("10.0.0.1:80", "10.0.1.0:80");
        rollout.record(&first);
        for i in 1..=KEPT_TABLES {
            rollout.record(&table("10.0.0.1:80", &format!("10.0.1.{i}:80")));
        }
        let counts = acked(&[(&first, 1)]);
        assert_eq!(
            rollout.counter(&counts).updated("a"),
            0,
            "the first table is forgotten"
        );
    }
}
