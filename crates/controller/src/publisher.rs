//! Stamps and shares published tables.
//!
//! The publisher keeps the current table behind a `tokio::sync::watch` channel. A table
//! whose content (revision) equals the current one is not published again, so a burst
//! of unrelated changes does not wake every proxy.

use std::sync::Arc;

use tokio::time::Instant;

use bytes::Bytes;
use sluice_api::{RouteTable, TableError, push};
use tokio::sync::watch;

/// A table as published: the table and its wire form, serialised once for all
/// subscribers.
#[derive(Debug)]
pub struct Published {
    /// The table with its version stamped.
    pub table: RouteTable,
    /// The table as a line of the stream ([`push::encode_line`]).
    pub line: Bytes,
    /// When the table was published: the start of its push latency.
    pub published_at: Instant,
}

/// Hands out versions and holds the current table.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: watch::Sender<Option<Arc<Published>>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// A publisher with no table yet.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(None),
        }
    }

    /// Publishes `table` unless its content equals the current table's. Returns the
    /// version it was published under, or `None` when nothing changed.
    ///
    /// # Errors
    ///
    /// A table that fails [`RouteTable::validate`] is not published: proxies would
    /// refuse it anyway, and the last good table stays in force.
    pub fn publish(&self, mut table: RouteTable) -> Result<Option<u64>, TableError> {
        table.validate()?;
        let mut published = None;
        self.tx.send_if_modified(|current| {
            let next_version = match current {
                Some(c) if c.table.revision == table.revision => return false,
                Some(c) => c.table.version + 1,
                None => 1,
            };
            table.version = next_version;
            *current = Some(Arc::new(Published {
                line: push::encode_line(&table),
                table: std::mem::take(&mut table),
                published_at: Instant::now(),
            }));
            published = Some(next_version);
            true
        });
        Ok(published)
    }

    /// The current table, if any was published.
    pub fn current(&self) -> Option<Arc<Published>> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees each new table.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::testing::one_pool_table as table;

    #[test]
    fn versions_grow_only_when_content_changes() {
        let p = Publisher::new();
        assert!(p.current().is_none());
        assert_eq!(p.publish(table("/a")), Ok(Some(1)));
        assert_eq!(p.publish(table("/a")), Ok(None));
        assert_eq!(p.publish(table("/b")), Ok(Some(2)));
        let mut broken = table("/c");
        broken.routes[0].pool = "d/missing".into();
        broken.revision = broken.content_digest();
        assert!(
            p.publish(broken).is_err(),
            "an invalid table is not published"
        );
        assert_eq!(p.current().map(|c| c.table.version), Some(2));
        let current = p.current().expect("published");
        assert_eq!(current.table.version, 2);
        let wire: RouteTable = serde_json::from_slice(&current.line).expect("line is a table");
        assert_eq!(wire, current.table);
        assert!(current.line.ends_with(b"\n"));
        assert_eq!(wire.validate(), Ok(()));
    }
}
