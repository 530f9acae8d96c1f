//! The guides in `docs/` keep up with the code:
//!
//! * every reason code the proxy can put in an error body, and every status condition
//!   reason the controller writes, is explained in `docs/troubleshooting.md` (read from
//!   the source, so a new one without docs fails here);
//! * the README lists every page of `docs/`, and every relative link of the README and
//!   of those pages leads to a file that exists, and to a heading of it when it names one;
//! * no page speaks of the work that made it (an issue number, a session).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

/// The string literals a `fn reason(&self) -> &'static str` of `source` returns: the
/// `=> "code"` arms of its `match`.
fn reason_codes(source: &str) -> Vec<String> {
    let Some(start) = source.find("fn reason(&self) -> &'static str") else {
        return Vec::new();
    };
    let body = &source[start..];
    let end = body.find("\n    }\n").unwrap_or(body.len());
    body[..end]
        .lines()
        .filter_map(|l| l.split("=> \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_reason_code_and_condition_reason_is_in_the_troubleshooting_page() -> Result<()> {
    let page = read("docs/troubleshooting.md")?;
    let mut missing = Vec::new();
    // The proxy's error, and the errors it delegates its reason to.
    for (path, at_least) in [
        ("crates/proxy/src/error.rs", 15),
        ("crates/proxy/src/hygiene/path.rs", 7),
        ("crates/proxy/src/hygiene/host.rs", 4),
        ("crates/proxy/src/auth/mod.rs", 17),
    ] {
        let codes = reason_codes(&read(path)?);
        assert!(
            codes.len() >= at_least,
            "{path}: found {} reason codes ({codes:?}), expected at least {at_least}: \
             has `fn reason` changed shape?",
            codes.len()
        );
        missing.extend(
            codes
                .into_iter()
                .filter(|c| !page.contains(&format!("| `{c}` |")))
                .map(|c| format!("{c} ({path})")),
        );
    }
    // The condition reasons: `pub const REASON_...: &str = "...";`.
    let status = read("crates/controller/src/status.rs")?;
    let reasons: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("pub const REASON_"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(reasons.len() >= 7, "condition reasons: {reasons:?}");
    missing.extend(
        reasons
            .into_iter()
            .filter(|r| !page.contains(&format!("| `{r}` |")))
            .map(|r| format!("{r} (crates/controller/src/status.rs)")),
    );
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no table row (`| `CODE` |`) for: {}",
        missing.join(", ")
    );
    Ok(())
}

/// The relative link targets of a Markdown text, `](target)` without a scheme: the
/// path (empty for a link within the page) and the fragment, if any.
fn relative_links(text: &str) -> Vec<(String, Option<String>)> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://") && !t.starts_with("mailto:"))
        .map(|t| match t.split_once('#') {
            Some((path, fragment)) => (path.to_owned(), Some(fragment.to_owned())),
            None => (t.to_owned(), None),
        })
        .collect()
}

/// The anchors GitHub gives the headings of a Markdown text: lower case, spaces to
/// `-`, other punctuation dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim().to_lowercase();
        out.insert(
            heading
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect(),
        );
    }
    out
}

fn pages() -> Result<BTreeSet<String>> {
    let mut pages = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("docs"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.insert(format!("docs/{name}"));
        }
    }
    Ok(pages)
}

#[test]
fn the_readme_lists_every_page_and_every_link_leads_somewhere() -> Result<()> {
    let readme = read("README.md")?;
    let section = readme
        .split("\n## Documentation\n")
        .nth(1)
        .context("README.md has no `## Documentation` section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    let pages = pages()?;
    for page in &pages {
        assert!(
            section.contains(&format!("]({page})")),
            "README.md's Documentation section does not link {page}"
        );
    }
    let mut broken = Vec::new();
    for path in std::iter::once("README.md".to_owned()).chain(pages.iter().cloned()) {
        let text = read(&path)?;
        let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
        for (target, fragment) in relative_links(&text) {
            let file = if target.is_empty() {
                root().join(&path)
            } else {
                root().join(dir).join(&target)
            };
            if !file.exists() {
                broken.push(format!("{path}: {target}"));
                continue;
            }
            if let Some(fragment) = fragment
                && file.extension().is_some_and(|e| e == "md")
                && !anchors(&std::fs::read_to_string(&file)?).contains(&fragment)
            {
                broken.push(format!("{path}: {target}#{fragment}"));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:?}");
    Ok(())
}

#[test]
fn no_page_speaks_of_issues_or_sessions() -> Result<()> {
    let mut paths: Vec<String> = pages()?.into_iter().collect();
    paths.extend(["README.md", "BENCHMARKS.md", "CHANGELOG.md"].map(str::to_owned));
    for entry in std::fs::read_dir(root().join("bench"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            paths.push(format!("bench/{name}"));
        }
    }
    let mut found = Vec::new();
    for path in &paths {
        for (n, line) in read(path)?.lines().enumerate() {
            let lower = line.to_lowercase();
            let issue = lower.match_indices("issue ").any(|(i, m)| {
                lower[i + m.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '#')
            });
            if issue || lower.contains("this session") || lower.contains("this round") {
                found.push(format!("{path}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "pages are for readers of the repository, not of its history:\n{}",
        found.join("\n")
    );
    Ok(())
}
