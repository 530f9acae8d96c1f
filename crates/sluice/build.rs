//! Puts the commit the binary is built from into `SLUICE_GIT_COMMIT`, which
//! `sluice --version` prints after the release version.
//!
//! The commit is, in order: the `SLUICE_GIT_COMMIT` environment variable (an image build,
//! whose context has no `.git`), `git rev-parse --short HEAD`, or `unknown`. Cargo reruns
//! this only when `HEAD` or the branch it names moves, not on every edit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=SLUICE_GIT_COMMIT");
    let commit = std::env::var("SLUICE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=SLUICE_GIT_COMMIT={}", commit.trim());
}

/// The short commit of `HEAD`, and the files whose change moves it to watch.
fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // In a worktree, HEAD lives in the worktree's git dir and the branches in the
    // common one.
    if let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]).map(PathBuf::from),
        git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from),
    ) {
        let head = git_dir.join("HEAD");
        println!("cargo::rerun-if-changed={}", head.display());
        if let Some(branch) = std::fs::read_to_string(&head)
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
        {
            watch_if_exists(&common.join(branch));
            watch_if_exists(&common.join("packed-refs"));
        }
    }
    Some(commit)
}

fn watch_if_exists(path: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    // Relative git dirs are relative to where git ran.
    let text = if args.contains(&"--git-dir") || args.contains(&"--git-common-dir") {
        Path::new(&dir).join(&text).display().to_string()
    } else {
        text
    };
    (!text.is_empty()).then_some(text)
}
