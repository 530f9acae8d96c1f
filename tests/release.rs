//! One version for everything a release ships: the binaries (the workspace version in
//! `Cargo.toml`, which `sluice --version` prints), the chart (`version` and `appVersion`
//! in `Chart.yaml`), the image tag (`make image`, the Dockerfile's default, the chart's
//! default tag, the plain manifests and the examples) and the top entry of
//! `CHANGELOG.md`. And the Dockerfile builds what the chart runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The workspace version, which every crate (this one too) inherits.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

/// The value of the first line `key: value` (top level, quotes removed) of a YAML file.
fn yaml_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

#[test]
fn the_chart_the_image_and_the_changelog_carry_the_workspace_version() -> Result<()> {
    let chart = read("charts/sluice/Chart.yaml")?;
    assert_eq!(
        yaml_field(&chart, "version").as_deref(),
        Some(VERSION),
        "Chart.yaml version"
    );
    assert_eq!(
        yaml_field(&chart, "appVersion").as_deref(),
        Some(VERSION),
        "Chart.yaml appVersion (the image tag the chart runs by default)"
    );
    let values = read("charts/sluice/values.yaml")?;
    assert!(
        values.contains("  tag: \"\"\n"),
        "values.yaml image.tag must stay empty (it defaults to appVersion)"
    );

    let image = format!("ghcr.io/sluice-dev/sluice:{VERSION}");
    for path in [
        "deploy/kubernetes/sluice.yaml",
        "deploy/examples/kubernetes/summarizer.yaml",
        "deploy/examples/hpa/classifier.yaml",
        "README.md",
        "docs/quickstart.md",
    ] {
        let text = read(path)?;
        for line in text
            .lines()
            .filter(|l| l.contains("ghcr.io/sluice-dev/sluice:"))
        {
            assert!(line.contains(&image), "{path}: {line:?} is not {image}");
        }
    }
    let dockerfile = read("Dockerfile")?;
    assert!(
        dockerfile.contains(&format!("ARG SLUICE_VERSION={VERSION}\n")),
        "Dockerfile: ARG SLUICE_VERSION={VERSION}"
    );
    assert!(
        dockerfile.contains(&format!("-t {image} .")),
        "Dockerfile's build comment"
    );
    // `make image` tags with the version it reads from Cargo.toml.
    let makefile = read("Makefile")?;
    assert!(makefile.contains("VERSION    := $(shell sed -n 's/^version = "));
    assert!(makefile.contains("-t $(IMAGE):$(VERSION) ."));

    let changelog = read("CHANGELOG.md")?;
    let top = changelog
        .lines()
        .find(|l| l.starts_with("## [") && !l.starts_with("## [Unreleased]"))
        .context("CHANGELOG.md has no release entry")?;
    assert!(
        top.starts_with(&format!("## [{VERSION}]")),
        "the newest release in CHANGELOG.md is {top:?}, not {VERSION}"
    );
    Ok(())
}

#[test]
fn the_dockerfile_builds_and_installs_what_the_chart_runs() -> Result<()> {
    let dockerfile = read("Dockerfile")?;
    // The packages it builds exist, and their binaries are the ones it copies.
    for (package, binary) in [
        ("crates/sluice", "sluice"),
        ("crates/demo-agent", "sluice-demo-agent"),
    ] {
        let manifest = read(&format!("{package}/Cargo.toml"))?;
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{package} builds no {binary}"
        );
        assert!(
            dockerfile.contains(&format!("-p {binary}")),
            "Dockerfile does not build {binary}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}"))
                && dockerfile.contains(&format!("/usr/local/bin/{binary}")),
            "Dockerfile does not install {binary} in /usr/local/bin"
        );
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/sluice\"]"));
    // The chart runs the demo agent by name, and the proxy and controller by the entrypoint.
    let demo = read("charts/sluice/templates/demo-agent.yaml")?;
    assert!(demo.contains("command: [sluice-demo-agent]"));
    // The user the image runs as is the one the chart's securityContext expects.
    let values = read("charts/sluice/values.yaml")?;
    assert!(values.contains("  runAsUser: 65532\n") && values.contains("  runAsGroup: 65532\n"));
    assert!(dockerfile.contains("USER 65532:65532"));
    // The build context has no .git: the commit comes in as a build argument.
    let ignore = read(".dockerignore")?;
    assert!(ignore.lines().any(|l| l.trim() == ".git"));
    assert!(dockerfile.contains("ARG SLUICE_GIT_COMMIT"));
    assert!(read("crates/sluice/build.rs")?.contains("SLUICE_GIT_COMMIT"));
    // `--locked` needs the lock file in the context.
    assert!(!ignore.lines().any(|l| l.trim() == "Cargo.lock"));
    assert!(root().join("Cargo.lock").is_file());
    Ok(())
}
