//! `sluice controller --from-dir`: compile a folder of manifests whenever it changes and
//! publish the result.
//!
//! The folder is polled: a poll lists the files and reads those whose metadata
//! changed (see [`FolderReader`]), and only a change in their content leads to a
//! compile. Polling (rather than file notifications) also sees the symlink
//! swaps with which Kubernetes updates a mounted ConfigMap.

use std::path::Path;
use std::time::Duration;

use sluice_api::{Diagnostics, RouteTable, compile};

use crate::source::{FolderReader, SourceError};

/// What one poll of the folder produced.
#[derive(Debug)]
pub enum Poll {
    /// Content unchanged since the last poll.
    Unchanged,
    /// The manifests could not be read; nothing was compiled.
    Failed(SourceError),
    /// The manifests compiled into this table with these diagnostics.
    Compiled(RouteTable, Diagnostics),
}

/// Watches one path for changes and compiles it.
#[derive(Debug)]
pub struct DirWatcher {
    reader: FolderReader,
    last_error: Option<String>,
}

impl DirWatcher {
    /// Watches `path`, a manifest file or a folder of them.
    pub fn new(path: &Path) -> Self {
        Self {
            reader: FolderReader::new(path),
            last_error: None,
        }
    }

    /// Reads the path and compiles it when its content changed since the last poll.
    /// A failure is reported once per distinct error, not at every poll.
    pub fn poll(&mut self) -> Poll {
        match self.reader.read_if_changed() {
            Ok(None) => {
                self.last_error = None;
                Poll::Unchanged
            }
            Ok(Some(snapshot)) => {
                self.last_error = None;
                let (table, diags) = compile(&snapshot.objects);
                Poll::Compiled(table, diags)
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_error.as_deref() == Some(message.as_str()) {
                    return Poll::Unchanged;
                }
                self.last_error = Some(message);
                Poll::Failed(e)
            }
        }
    }

    /// Polls every `interval` forever, calling `on_poll` with each result other than
    /// [`Poll::Unchanged`].
    pub async fn run(mut self, interval: Duration, mut on_poll: impl FnMut(Poll)) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let path = self.reader.path().to_path_buf();
            // File reads block; keep them off the async workers.
            let result = tokio::task::spawn_blocking(move || {
                let p = self.poll();
                (self, p)
            })
            .await;
            let Ok((watcher, poll)) = result else {
                tracing::error!(path = %path.display(), "manifest reader panicked");
                return;
            };
            self = watcher;
            if !matches!(poll, Poll::Unchanged) {
                on_poll(poll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_on_change_and_reports_errors_once() {
        let dir = std::env::temp_dir().join(format!("sluice-from-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pool = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: a}\nspec:\n  matches: [{pathPrefix: /a}]\n  backends: [{endpoints: [\"127.0.0.1:1\"]}]\n";
        std::fs::write(dir.join("a.yaml"), pool).expect("write");
        let mut w = DirWatcher::new(&dir);
        assert!(
            matches!(w.poll(), Poll::Unchanged),
            "a file just written is taken once a second poll reads it the same"
        );
        let Poll::Compiled(table, diags) = w.poll() else {
            panic!("the second poll compiles")
        };
        assert!(diags.is_empty());
        assert_eq!(table.pools.len(), 1);
        assert!(matches!(w.poll(), Poll::Unchanged));

        std::fs::write(dir.join("a.yaml"), "kind: [").expect("write");
        assert!(matches!(w.poll(), Poll::Failed(_)));
        assert!(
            matches!(w.poll(), Poll::Unchanged),
            "the same error is reported once"
        );

        std::fs::write(dir.join("a.yaml"), pool).expect("write");
        assert!(matches!(w.poll(), Poll::Unchanged));
        assert!(
            matches!(w.poll(), Poll::Compiled(..)),
            "recovers after the fix"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
