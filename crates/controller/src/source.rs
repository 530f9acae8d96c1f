//! Reading manifests from a file or a folder, the way `kubectl apply -f` would.
//!
//! Used by `sluice controller --from-dir` and by the proxy's standalone `--config` mode.

use std::collections::HashMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use sluice_api::Objects;
use sluice_api::manifest::{self, ManifestError};

/// Why a folder of manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or folder could not be read. Retryable: the next poll tries again.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A document is not a valid manifest. Not retryable until the file changes.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// The manifests read from one path, with a digest of the files' content.
#[derive(Debug)]
pub struct Snapshot {
    /// The parsed objects.
    pub objects: Objects,
    /// Digest of every file's name and bytes; equal digests mean nothing changed.
    pub digest: [u8; 32],
    /// The files read, in the order they were read.
    pub files: Vec<PathBuf>,
}

/// Lists the manifest files under `path`: the path itself if it is a file, else every
/// `*.yaml`, `*.yml` and `*.json` below it, sorted, skipping hidden entries (such as the
/// `..data` links of a mounted ConfigMap).
///
/// # Errors
///
/// [`SourceError::Io`] when `path` or a folder below it cannot be read.
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    Ok(list_with_metadata(path)?
        .into_iter()
        .map(|(p, _)| p)
        .collect())
}

/// [`list_files`], with each file's metadata (symlinks followed).
fn list_with_metadata(path: &Path) -> Result<Vec<(PathBuf, Metadata)>, SourceError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta)]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let p = entry.path();
            // Follow symlinks, as a mounted ConfigMap is made of them; other entries
            // are looked up relative to their folder, which is cheaper.
            let symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
            let meta = if symlink {
                std::fs::metadata(&p)
            } else {
                entry.metadata()
            }
            .map_err(io(&p))?;
            if meta.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push((p, meta));
            }
        }
    }
    // By bytes: deterministic, and much cheaper than comparing path components.
    files.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(files)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Io { path, source }
}

/// Reads and parses every manifest under `path`.
///
/// # Errors
///
/// The first file that cannot be read or parsed; nothing is returned in that case, so a
/// half-written edit never yields half a set of objects.
pub fn read(path: &Path) -> Result<Snapshot, SourceError> {
    FolderReader::new(path).read()
}

/// How long after its last change (see `Stamp::changed`) a file's metadata is trusted
/// to show every later write. A write within the same timestamp tick as an earlier one leaves the
/// modification time as it was, so a file modified less than this before it was read
/// is read again at every poll until it is older (the "racily clean" rule of git's
/// index). Two seconds cover the coarsest filesystem timestamps (FAT).
const RACY: Duration = Duration::from_secs(2);

/// What a file's metadata said when it was read: equal stamps mean an unchanged file
/// (for a file older than [`RACY`] when it was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode and status change time: a file swapped by a rename, or edited with
    /// its modification time put back, has a new one.
    #[cfg(unix)]
    inode: (u64, i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The last time the file or its metadata changed: the later of its modification
    /// and status change times (a copy that keeps an old modification time, such as
    /// `cp -p`, still has a new status change time).
    fn changed(&self) -> Option<SystemTime> {
        #[cfg(unix)]
        {
            let (_, secs, nanos) = self.inode;
            let ctime = u64::try_from(secs).ok().and_then(|secs| {
                let nanos = u32::try_from(nanos).unwrap_or(0);
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            });
            self.modified.max(ctime)
        }
        #[cfg(not(unix))]
        self.modified
    }
}

/// One file as last read: its stamp, a digest of its bytes and its objects.
#[derive(Debug)]
struct CachedFile {
    stamp: Stamp,
    read_at: SystemTime,
    digest: [u8; 32],
    objects: Objects,
}

impl CachedFile {
    /// Whether the file had been left alone for [`RACY`] at `now`: a file changed
    /// more recently may still be being written.
    fn settled(&self, now: SystemTime) -> bool {
        self.stamp
            .changed()
            .and_then(|m| m.checked_add(RACY))
            .is_some_and(|settled| settled <= now)
    }

    /// Whether the file, now stamped `stamp`, is known to be as it was read.
    fn unchanged(&self, stamp: &Stamp) -> bool {
        self.stamp == *stamp
            && self
                .stamp
                .changed()
                .and_then(|m| m.checked_add(RACY))
                .is_some_and(|settled| settled <= self.read_at)
    }
}

/// Reads a file or folder of manifests again and again, touching only what changed:
/// a file whose metadata is as it was is neither read nor parsed again, so a poll of
/// a thousand unchanged manifests costs a directory listing and their metadata.
#[derive(Debug)]
pub struct FolderReader {
    path: PathBuf,
    /// The files of the last read, in its order.
    files: Vec<(PathBuf, CachedFile)>,
    digest: Option<[u8; 32]>,
    /// A change read in files still fresh, held until a second poll reads the same.
    pending: Option<[u8; 32]>,
    last_reads: usize,
    /// Added to the clock when a file is read (tests make files look old with it).
    skew: Duration,
}

impl FolderReader {
    /// A reader of `path`, a manifest file or a folder of them. Nothing is read yet.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            files: Vec::new(),
            digest: None,
            pending: None,
            last_reads: 0,
            skew: Duration::ZERO,
        }
    }

    /// The path read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the reader's clock `ahead` of the system's: files changed less than that
    /// ago look settled to it.
    #[cfg(test)]
    fn clock_ahead(&mut self, ahead: Duration) {
        self.skew = ahead;
    }

    /// How many files the last call read from disk (the others were unchanged).
    pub fn last_reads(&self) -> usize {
        self.last_reads
    }

    /// Reads the manifests, or returns `None` when their content is the one the last
    /// successful call returned. After an error, the next success is returned even if
    /// the content is the same as before the error.
    ///
    /// A change in a file modified within the last two seconds is returned only once
    /// a second call reads the same content: a file rewritten in place is empty or cut
    /// short for a moment, and that moment must never become the table in force.
    /// (Writing a temporary file and renaming it over the old one, as ConfigMap volumes
    /// do, is atomic; the rule costs it one poll.)
    ///
    /// # Errors
    ///
    /// As [`read`].
    pub fn read_if_changed(&mut self) -> Result<Option<Snapshot>, SourceError> {
        let last = self.digest.take();
        let digest = match self.refresh() {
            Ok(digest) => digest,
            Err(e) => {
                self.pending = None;
                return Err(e);
            }
        };
        if last == Some(digest) {
            self.digest = last;
            self.pending = None;
            return Ok(None);
        }
        let now = SystemTime::now() + self.skew;
        let fresh = self.files.iter().any(|(_, c)| !c.settled(now));
        if fresh && self.pending != Some(digest) {
            // Keep what was returned last (or nothing, after an error) until then.
            self.digest = last;
            self.pending = Some(digest);
            return Ok(None);
        }
        self.pending = None;
        self.digest = Some(digest);
        Ok(Some(self.snapshot(digest)))
    }

    /// Reads the manifests, taking unchanged files from the cache.
    ///
    /// # Errors
    ///
    /// As [`read`].
    pub fn read(&mut self) -> Result<Snapshot, SourceError> {
        let digest = self.refresh()?;
        self.digest = Some(digest);
        Ok(self.snapshot(digest))
    }

    /// Lists the files, reads those that changed, and digests names and contents.
    fn refresh(&mut self) -> Result<[u8; 32], SourceError> {
        self.last_reads = 0;
        let listed = list_with_metadata(&self.path)?;
        // The listing is almost always the last one: walk both in step, and index
        // the rest by path only once they part.
        let mut previous = std::mem::take(&mut self.files).into_iter().peekable();
        let mut strays: Option<HashMap<PathBuf, CachedFile>> = None;
        let mut hasher = Sha256::new();
        for (file, meta) in listed {
            let stamp = Stamp::of(&meta);
            let cached = match (&mut strays, previous.peek()) {
                (None, Some((p, _))) if *p == file => previous.next().map(|(_, c)| c),
                (strays, _) => strays
                    .get_or_insert_with(|| previous.by_ref().collect())
                    .remove(&file),
            };
            let entry = match cached {
                Some(c) if c.unchanged(&stamp) => c,
                _ => {
                    self.last_reads += 1;
                    read_file(&file, stamp, SystemTime::now() + self.skew)?
                }
            };
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(entry.digest);
            self.files.push((file, entry));
        }
        Ok(hasher.finalize().into())
    }

    /// The objects of the files last read, in their order.
    fn snapshot(&self, digest: [u8; 32]) -> Snapshot {
        let mut objects = Objects::default();
        let mut files = Vec::with_capacity(self.files.len());
        for (file, c) in &self.files {
            files.push(file.clone());
            objects.pools.extend_from_slice(&c.objects.pools);
            objects.policies.extend_from_slice(&c.objects.policies);
            objects.slices.extend_from_slice(&c.objects.slices);
            objects.secrets.extend_from_slice(&c.objects.secrets);
        }
        Snapshot {
            objects,
            digest,
            files,
        }
    }
}

/// Reads and parses one file.
fn read_file(file: &Path, stamp: Stamp, read_at: SystemTime) -> Result<CachedFile, SourceError> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let mut objects = Objects::default();
    manifest::parse_into(&text, &file.display().to_string(), &mut objects)?;
    Ok(CachedFile {
        stamp,
        read_at,
        digest: Sha256::digest(text.as_bytes()).into(),
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {name: a}\nspec:\n  matches: [{pathPrefix: /a}]\n  backends: [{endpoints: [\"127.0.0.1:1\"]}]\n";

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn reads_nested_manifests_and_skips_hidden_and_other_files() {
        let dir = tempdir("nested");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::create_dir_all(dir.join("..data")).expect("mkdir");
        std::fs::write(dir.join("sub/a.yaml"), POOL).expect("write");
        std::fs::write(dir.join("..data/a.yaml"), POOL).expect("write");
        std::fs::write(dir.join("README.md"), "not yaml").expect("write");
        let snap = read(&dir).expect("reads");
        assert_eq!(snap.objects.pools.len(), 1);
        assert_eq!(snap.files, vec![dir.join("sub/a.yaml")]);

        let again = read(&dir).expect("reads");
        assert_eq!(snap.digest, again.digest);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_reader_reads_only_the_files_that_changed() {
        let dir = tempdir("changed");
        for name in ["a", "b", "c"] {
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, POOL.replace("name: a", &format!("name: {name}")))
                .expect("write");
        }
        let mut reader = FolderReader::new(&dir);
        // By the reader's clock the files were written an hour ago: settled.
        reader.clock_ahead(HOUR);
        let first = reader.read_if_changed().expect("reads").expect("first");
        assert_eq!((first.objects.pools.len(), reader.last_reads()), (3, 3));
        assert!(reader.read_if_changed().expect("reads").is_none());
        assert_eq!(
            reader.last_reads(),
            0,
            "settled unchanged files are not read"
        );

        // Same length, so only the modification time and inode change tell.
        reader.clock_ahead(Duration::ZERO);
        std::fs::write(dir.join("b.yaml"), POOL.replace("name: a", "name: x")).expect("write");
        assert!(
            reader.read_if_changed().expect("reads").is_none(),
            "a fresh change waits for a second read"
        );
        let changed = reader.read_if_changed().expect("reads").expect("changed");
        assert_eq!(reader.last_reads(), 1);
        let mut names: Vec<_> = changed
            .objects
            .pools
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "c", "x"]);
        // Just written: read at every poll until it settles, but not reported again.
        assert!(reader.read_if_changed().expect("reads").is_none());
        assert_eq!(
            reader.last_reads(),
            1,
            "a fresh file is read until it settles"
        );
        reader.clock_ahead(HOUR);
        assert!(reader.read_if_changed().expect("reads").is_none());
        assert!(reader.read_if_changed().expect("reads").is_none());
        assert_eq!(reader.last_reads(), 0, "settled");

        std::fs::remove_file(dir.join("c.yaml")).expect("rm");
        let removed = reader.read_if_changed().expect("reads").expect("removed");
        assert_eq!(removed.objects.pools.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_edited_with_its_old_timestamp_put_back_is_read_again() {
        let dir = tempdir("touched");
        let path = dir.join("a.yaml");
        std::fs::write(&path, POOL).expect("write");
        let mut reader = FolderReader::new(&dir);
        reader.clock_ahead(HOUR);
        reader.read_if_changed().expect("reads").expect("first");
        let before = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::fs::write(&path, POOL.replace("/a}", "/b}")).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(before))
            .expect("put mtime back");
        let changed = reader.read_if_changed().expect("reads");
        assert!(
            changed.is_some(),
            "the status change time gives the edit away"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_an_error_the_same_content_is_returned_again() {
        let dir = tempdir("recover");
        let path = dir.join("a.yaml");
        std::fs::write(&path, POOL).expect("write");
        let mut reader = FolderReader::new(&dir);
        reader.clock_ahead(HOUR);
        reader.read_if_changed().expect("reads").expect("first");
        std::fs::write(&path, "kind: [").expect("write");
        reader.read_if_changed().expect_err("broken");
        std::fs::write(&path, POOL).expect("write");
        assert!(reader.read_if_changed().expect("reads").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_caught_half_written_never_becomes_the_content() {
        let dir = tempdir("half");
        let path = dir.join("a.yaml");
        let two = format!("{POOL}---\n{}", POOL.replace("name: a", "name: b"));
        std::fs::write(&path, &two).expect("write");
        let mut reader = FolderReader::new(&dir);
        reader.clock_ahead(HOUR);
        let first = reader.read_if_changed().expect("reads").expect("first");
        assert_eq!(first.objects.pools.len(), 2);
        reader.clock_ahead(Duration::ZERO);
        // Rewritten in place: read once truncated, once cut after the first document,
        // then whole with a third pool.
        std::fs::write(&path, "").expect("truncate");
        assert!(reader.read_if_changed().expect("reads").is_none());
        std::fs::write(&path, POOL).expect("half");
        assert!(reader.read_if_changed().expect("reads").is_none());
        let three = format!("{two}---\n{}", POOL.replace("name: a", "name: c"));
        std::fs::write(&path, &three).expect("whole");
        assert!(reader.read_if_changed().expect("reads").is_none());
        let whole = reader.read_if_changed().expect("reads").expect("settled");
        assert_eq!(whole.objects.pools.len(), 3);
        assert!(reader.read_if_changed().expect("reads").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_broken_file_fails_the_whole_read_with_its_name() {
        let dir = tempdir("broken");
        std::fs::write(dir.join("a.yaml"), POOL).expect("write");
        std::fs::write(dir.join("b.yaml"), "kind: [").expect("write");
        let err = read(&dir).expect_err("broken");
        assert!(err.to_string().contains("b.yaml"), "{err}");
        let missing = read(&dir.join("nope")).expect_err("missing");
        assert!(matches!(missing, SourceError::Io { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
