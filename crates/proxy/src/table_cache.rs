//! The last applied table, persisted to a file so that a proxy restarted while the
//! controller is unreachable can serve at once.
//!
//! The file holds one route table as JSON, exactly as the controller sent it. It is
//! replaced atomically: written to a temporary file in the same folder, flushed to
//! disk, then renamed over the old one, so a crash leaves the old table or the new one,
//! never half of one. It is created readable by its owner only (a table carries the
//! consumers' key digests). A file that cannot be read, parsed or validated is reported
//! and ignored: the proxy then waits for the controller as it would without a cache.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_api::{RouteTable, TableError};
use tokio::sync::watch;

/// The largest cache file read, the same bound as a table line on the stream.
pub const MAX_CACHE_BYTES: u64 = sluice_api::push::MAX_LINE as u64;

/// Why a cache file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is larger than [`MAX_CACHE_BYTES`].
    #[error("{path} is {len} bytes, more than {MAX_CACHE_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The file is not a route table.
    #[error("{path} is not a route table: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The table in the file fails validation.
    #[error("{path} holds an invalid route table: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What validation found.
        source: TableError,
    },
}

/// A table cache file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCache {
    path: PathBuf,
}

impl TableCache {
    /// The cache at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the cached table; `Ok(None)` when there is no file.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is too large, is not a route table or holds an
    /// invalid one.
    pub fn load(&self) -> Result<Option<RouteTable>, CacheError> {
        let path = self.path.clone();
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        if len > MAX_CACHE_BYTES {
            return Err(CacheError::TooLarge { path, len });
        }
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        let table: RouteTable =
            serde_json::from_slice(&bytes).map_err(|source| CacheError::Parse {
                path: path.clone(),
                source,
            })?;
        table
            .validate()
            .map_err(|source| CacheError::Invalid { path, source })?;
        Ok(Some(table))
    }

    /// Replaces the file with `json` (one route table) atomically.
    ///
    /// # Errors
    ///
    /// When the temporary file cannot be written or renamed; the old file stays.
    pub fn save(&self, json: &[u8]) -> io::Result<()> {
        let tmp = self.temp_path();
        let written = write_synced(&tmp, json).and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        // Make the rename itself durable; not every platform or file system can.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Serialises `table` and saves it as [`TableCache::save`] does.
    ///
    /// # Errors
    ///
    /// As [`TableCache::save`].
    pub fn save_table(&self, table: &RouteTable) -> io::Result<()> {
        let json = serde_json::to_vec(table).map_err(io::Error::other)?;
        self.save(&json)
    }

    /// Starts a task that saves the tables handed to the returned writer, one at a
    /// time and in order, the latest only when several arrive during a write. Must be
    /// called within a Tokio runtime; the task ends when the writer is dropped.
    pub fn spawn_writer(self) -> CacheWriter {
        let (tx, mut rx) = watch::channel::<Option<Bytes>>(None);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(json) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let cache = self.clone();
                let path = self.path.display().to_string();
                match tokio::task::spawn_blocking(move || cache.save(&json)).await {
                    Ok(Ok(())) => tracing::info!(path, "route table cached"),
                    Ok(Err(e)) => {
                        tracing::warn!(path, error = %e, "cannot write the table cache; the previous file stays");
                    }
                    Err(e) => tracing::warn!(path, error = %e, "table cache write failed"),
                }
            }
        });
        CacheWriter { tx }
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_else(|| "table-cache".into());
        name.push(format!(".tmp-{}", std::process::id()));
        self.path.with_file_name(name)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Hands tables to the task started by [`TableCache::spawn_writer`].
#[derive(Debug)]
pub struct CacheWriter {
    tx: watch::Sender<Option<Bytes>>,
}

impl CacheWriter {
    /// Asks for `json` (one route table, as received) to be saved.
    pub fn save(&self, json: Bytes) {
        self.tx.send_replace(Some(json));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefix: &str) -> RouteTable {
        crate::test_tables::one_pool(prefix, 7)
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-table-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_saved_table_loads_back_and_replaces_the_previous_one() {
        let dir = dir("roundtrip");
        let cache = TableCache::new(dir.join("table.json"));
        assert!(cache.load().expect("no file is fine").is_none());
        cache.save_table(&table("/a")).expect("saved");
        assert_eq!(cache.load().expect("loads"), Some(table("/a")));
        cache.save_table(&table("/b")).expect("saved");
        assert_eq!(cache.load().expect("loads"), Some(table("/b")));
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["table.json"], "no temporary file is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(cache.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_or_invalid_file_is_reported_not_loaded() {
        let dir = dir("corrupt");
        let cache = TableCache::new(dir.join("table.json"));
        fs::write(cache.path(), b"{\"version\": 3, \"revis").expect("write");
        assert!(matches!(cache.load(), Err(CacheError::Parse { .. })));
        fs::write(cache.path(), b"").expect("write");
        assert!(matches!(cache.load(), Err(CacheError::Parse { .. })));
        let mut invalid = table("/a");
        invalid.routes[0].pool = "d/missing".into();
        invalid.revision = invalid.content_digest();
        fs::write(cache.path(), serde_json::to_vec(&invalid).expect("json")).expect("write");
        let err = cache.load().expect_err("invalid");
        assert!(matches!(err, CacheError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("table.json"), "{err}");
        fs::create_dir_all(dir.join("a-dir")).expect("dir");
        assert!(matches!(
            TableCache::new(dir.join("a-dir")).load(),
            Err(CacheError::Read { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_save_keeps_the_previous_file() {
        let dir = dir("failed");
        let cache = TableCache::new(dir.join("table.json"));
        cache.save_table(&table("/a")).expect("saved");
        // The temporary file's name is taken by a folder: the write fails.
        fs::create_dir_all(cache.temp_path()).expect("dir");
        assert!(cache.save_table(&table("/b")).is_err());
        assert_eq!(cache.load().expect("loads"), Some(table("/a")));
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_writer_saves_the_latest_table() {
        let dir = dir("writer");
        let cache = TableCache::new(dir.join("table.json"));
        let writer = cache.clone().spawn_writer();
        for prefix in ["/a", "/b", "/c"] {
            writer.save(Bytes::from(
                serde_json::to_vec(&table(prefix)).expect("json"),
            ));
        }
        // Bounded polling on the condition: the task writes in the background.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.load().ok().flatten() != Some(table("/c")) {
            assert!(tokio::time::Instant::now() < deadline, "never written");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(writer);
        let _ = fs::remove_dir_all(&dir);
    }
}
