//! How far each pool's current form has reached the proxies.
//!
//! The proxies acknowledge whole tables (by revision); an AgentPool's status reports
//! how many of them run a table that holds the pool *as it is now*. [`Rollout`]
//! numbers the tables this replica publishes and remembers, for each pool of the
//! newest one, the first table since which the pool has had its current form. A proxy
//! whose table is that one or newer runs the pool as it is now: a change to one pool
//! moves that pool's count alone, and the statuses of the thousand others are not
//! rewritten at every publication.
//!
//! Revisions are remembered for the last [`KEPT_REVISIONS`] tables (at one table per
//! 50 ms debounce, most of a minute: far longer than the peers' 5 s poll). A proxy on
//! a revision this replica does not know (older than that, or compiled only by another
//! replica during a burst) counts as not updated until it runs one it knows.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};
use sluice_api::RouteTable;

/// How many published tables' revisions are remembered.
pub const KEPT_REVISIONS: usize = 1024;

/// The tables published, numbered, and since when each pool is unchanged.
#[derive(Debug, Default)]
pub struct Rollout {
    /// Number of the newest table recorded (the first is 1).
    seq: u64,
    /// Each pool of the newest table: a digest of its form, and the number of the
    /// first table since which it has had that form.
    pools: HashMap<String, ([u8; 32], u64)>,
    /// Revision → the number of the newest table with that content.
    revisions: HashMap<String, u64>,
    /// The revisions recorded, oldest first, to forget the oldest.
    order: VecDeque<(String, u64)>,
}

impl Rollout {
    /// Records `table` as the newest (a table of the newest revision is ignored).
    pub fn record(&mut self, table: &RouteTable) {
        if self
            .order
            .back()
            .is_some_and(|(revision, _)| *revision == table.revision)
        {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let previous = std::mem::take(&mut self.pools);
        self.pools = table
            .pools
            .iter()
            .map(|p| {
                // A Pool always serialises; an empty digest would only make it
                // count as changed.
                let bytes = serde_json::to_vec(p).unwrap_or_default();
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                let since = match previous.get(&p.key) {
                    Some((before, since)) if *before == digest => *since,
                    _ => seq,
                };
                (p.key.clone(), (digest, since))
            })
            .collect();
        self.revisions.insert(table.revision.clone(), seq);
        self.order.push_back((table.revision.clone(), seq));
        while self.order.len() > KEPT_REVISIONS {
            if let Some((revision, seq)) = self.order.pop_front()
                && self.revisions.get(&revision) == Some(&seq)
            {
                self.revisions.remove(&revision);
            }
        }
    }

    /// Counts, pool by pool, the proxies that run each pool as the newest table has
    /// it, given how many proxies acknowledged each revision.
    pub fn counter(&self, acked: &HashMap<String, usize>) -> Updated<'_> {
        let tables = acked
            .iter()
            .filter_map(|(revision, &n)| Some((*self.revisions.get(revision)?, n)))
            .collect();
        Updated {
            pools: &self.pools,
            tables,
        }
    }
}

/// See [`Rollout::counter`].
#[derive(Debug)]
pub struct Updated<'a> {
    pools: &'a HashMap<String, ([u8; 32], u64)>,
    /// The number of each known table some proxy runs, with how many run it.
    tables: Vec<(u64, usize)>,
}

impl Updated<'_> {
    /// How many proxies run pool `key` as the newest table has it. Zero when the
    /// newest table lacks the pool.
    pub fn updated(&self, key: &str) -> usize {
        let Some(&(_, since)) = self.pools.get(key) else {
            return 0;
        };
        self.tables
            .iter()
            .filter(|(seq, _)| *seq >= since)
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
                endpoints: vec![Endpoint::new(address)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let route = |key: &str| Route::new(key, format!("/{key}"));
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
        // Two proxies still on v1, one on v2, one on a table never recorded here.
        let mut counts = acked(&[(&v1, 2), (&v2, 1)]);
        counts.insert("elsewhere".into(), 1);
        let updated = rollout.counter(&counts);
        assert_eq!(updated.updated("a"), 1, "a changed in v2");
        assert_eq!(updated.updated("b"), 3, "b is the same in both");
        assert_eq!(updated.updated("gone"), 0);
    }

    #[test]
    fn a_pool_changed_back_counts_the_tables_since_its_last_change() {
        let mut rollout = Rollout::default();
        let v1 = table("10.0.0.1:80", "10.0.0.2:80");
        let v2 = table("10.0.0.9:80", "10.0.0.2:80");
        let v3 = table("10.0.0.1:80", "10.0.0.3:80");
        for t in [&v1, &v2, &v3, &v3] {
            rollout.record(t);
        }
        let counts = acked(&[(&v1, 1), (&v2, 1), (&v3, 1)]);
        let updated = rollout.counter(&counts);
        assert_eq!(
            updated.updated("a"),
            1,
            "only v3 is known to have a's form now"
        );
        assert_eq!(updated.updated("b"), 1);
        // The same content again later is the same revision: it counts as the newest.
        rollout.record(&v1);
        let counts = acked(&[(&v1, 1), (&v3, 1)]);
        let updated = rollout.counter(&counts);
        assert_eq!((updated.updated("a"), updated.updated("b")), (2, 1));
    }

    #[test]
    fn revisions_older_than_the_kept_ones_count_as_not_updated() {
        let mut rollout = Rollout::default();
        let first = table("10.0.0.1:80", "10.0.1.0:80");
        rollout.record(&first);
        for i in 1..=KEPT_REVISIONS {
            rollout.record(&table(
                "10.0.0.1:80",
                &format!("10.0.{}.{}:80", i / 250 + 1, i % 250),
            ));
        }
        let counts = acked(&[(&first, 1)]);
        assert_eq!(rollout.counter(&counts).updated("a"), 0, "forgotten");
        let last = table("10.0.0.1:80", "10.0.5.24:80");
        assert_eq!(
            rollout.counter(&acked(&[(&last, 1)])).updated("a"),
            1,
            "the newest is known"
        );
    }
}
