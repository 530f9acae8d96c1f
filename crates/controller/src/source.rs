//! Reading manifests from a file or a folder, the way `kubectl apply -f` would.
//!
//! Used by `sluice controller --from-dir` and by the proxy's standalone `--config` mode.

use std::path::{Path, PathBuf};

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
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SourceError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            // Follow symlinks, as a mounted ConfigMap is made of them.
            let meta = std::fs::metadata(&p).map_err(io(&p))?;
            if meta.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses every manifest under `path`.
///
/// # Errors
///
/// The first file that cannot be read or parsed; nothing is returned in that case, so a
/// half-written edit never yields half a set of objects.
pub fn read(path: &Path) -> Result<Snapshot, SourceError> {
    let (files, texts, digest) = read_files(path)?;
    parse(files, &texts, digest)
}

/// Like [`read`], but returns `None` without parsing anything when the files' digest
/// equals `last`: reading and hashing a folder is cheap, parsing its YAML is not.
///
/// # Errors
///
/// As [`read`].
pub fn read_if_changed(
    path: &Path,
    last: Option<&[u8; 32]>,
) -> Result<Option<Snapshot>, SourceError> {
    let (files, texts, digest) = read_files(path)?;
    if last == Some(&digest) {
        return Ok(None);
    }
    parse(files, &texts, digest).map(Some)
}

/// The manifest files of a path, their text, and a digest of names and contents.
type Files = (Vec<PathBuf>, Vec<String>, [u8; 32]);

/// Reads the manifest files under `path` and hashes them.
fn read_files(path: &Path) -> Result<Files, SourceError> {
    let files = list_files(path)?;
    let mut hasher = Sha256::new();
    let mut texts = Vec::with_capacity(files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| SourceError::Io {
            path: file.clone(),
            source,
        })?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        texts.push(text);
    }
    Ok((files, texts, hasher.finalize().into()))
}

fn parse(files: Vec<PathBuf>, texts: &[String], digest: [u8; 32]) -> Result<Snapshot, SourceError> {
    let mut objects = Objects::default();
    for (file, text) in files.iter().zip(texts) {
        manifest::parse_into(text, &file.display().to_string(), &mut objects)?;
    }
    Ok(Snapshot {
        objects,
        digest,
        files,
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
        assert!(
            read_if_changed(&dir, Some(&snap.digest))
                .expect("reads")
                .is_none(),
            "unchanged files are not parsed again"
        );
        std::fs::write(dir.join("sub/a.yaml"), POOL.replace("/a}", "/b}")).expect("write");
        assert_ne!(read(&dir).expect("reads").digest, snap.digest);
        let changed = read_if_changed(&dir, Some(&snap.digest)).expect("reads");
        assert!(changed.is_some_and(|s| s.objects.pools.len() == 1));
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
