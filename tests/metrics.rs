//! `sluice metrics` lists what the binaries export: every metric family that a proxy and
//! a controller serve on `/metrics` after some traffic is in the list, with the labels it
//! lists. (The dashboard, alert and autoscaling rules of the chart are checked against
//! that list by `scripts/validate-manifests.sh`.) The README's metrics table names
//! every listed metric with the labels it has.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_e2e::{Process, bin, demo_agent, eventually, get, subscribed_proxy, temp_dir};

/// Metric name -> label names, from `sluice metrics` for one binary (`proxy`, `controller`).
fn listed(part: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let out = Command::new(bin("sluice")).arg("metrics").output()?;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut metrics = BTreeMap::new();
    for m in json[part].as_array().context("a list per binary")? {
        let name = m["name"].as_str().context("a name")?.to_owned();
        let labels = m["labels"]
            .as_array()
            .context("labels")?
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        assert!(
            m["help"].as_str().is_some_and(|h| !h.is_empty()),
            "{name} has no help"
        );
        assert!(metrics.insert(name, labels).is_none(), "listed twice");
    }
    Ok(metrics)
}

/// The label names of `labels`, the inside of `{...}` in the text format.
fn label_names(labels: &str) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').to_owned());
        // The value ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .context("an unterminated label value")?;
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// Family name -> the label names of its series, from a `/metrics` text; histogram
/// series (`_bucket`, `_sum`, `_count`) count for their family, without `le`.
fn scraped(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut families = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("# TYPE name kind")?;
            families.insert(name.to_owned(), BTreeSet::new());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, labels) = match line.split_once('{') {
            Some((series, rest)) => (
                series,
                label_names(rest.rsplit_once('}').map_or("", |r| r.0))?,
            ),
            None => (line.split(' ').next().unwrap_or(line), BTreeSet::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.strip_suffix(s).filter(|b| histograms.contains(*b)))
            .unwrap_or(series);
        let Some(known) = families.get_mut(family) else {
            bail!("series {series} before its # TYPE");
        };
        known.extend(labels.into_iter().filter(|l| l != "le"));
    }
    Ok(families)
}

fn assert_listed(
    what: &str,
    scraped: &BTreeMap<String, BTreeSet<String>>,
    listed: &BTreeMap<String, BTreeSet<String>>,
) {
    for (name, labels) in scraped {
        let Some(have) = listed.get(name) else {
            panic!("{what} exports {name}, which `sluice metrics` does not list");
        };
        if !labels.is_empty() {
            assert_eq!(labels, have, "{what}: the labels of {name}");
        }
    }
}

#[test]
fn sluice_metrics_lists_every_family_the_proxy_and_the_controller_serve() -> Result<()> {
    let (_agent, agent) = demo_agent("metrics-agent")?;
    let dir = temp_dir("metrics");
    std::fs::write(
        dir.join("pool.yaml"),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AgentPool\nmetadata: {{name: echo, namespace: e2e}}\n\
             spec:\n  matches: [{{pathPrefix: /agents/echo/}}]\n\
             \x20 backends: [{{endpoints: [\"{agent}\"], maxConcurrency: 4}}]\n\
             \x20 healthCheck: {{path: /healthz, interval: 1s}}\n\
             \x20 queue: {{maxDepth: 10, timeout: 1s}}\n\
             ---\n\
             apiVersion: sluice.dev/v1alpha1\nkind: RatePolicy\nmetadata: {{name: echo-limit, namespace: e2e}}\n\
             spec:\n  targetRefs: [{{kind: AgentPool, name: echo}}]\n  key: {{type: Consumer}}\n\
             \x20 defaultTier: standard\n  tiers: [{{name: standard, limits: [{{requests: 3, period: 1m}}]}}]\n"
        ),
    )?;
    let dir_arg = dir.to_string_lossy().to_string();
    let mut controller = Process::start(
        "controller",
        "sluice",
        &[
            "controller",
            "--from-dir",
            &dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "50ms",
        ],
    )?;
    let controller_addr = controller.logged_addr("controller started", "listen")?;
    let (_proxy, traffic, admin) = subscribed_proxy("proxy", controller_addr, "proxy-1", &[])?;
    eventually(Duration::from_secs(20), "the proxy ready", || {
        Ok((get(admin, "/readyz")?.status == 200).then_some(()))
    })?;

    // Traffic that touches most families: admitted and limited requests, a refusal
    // without a route.
    let mut statuses = BTreeSet::new();
    for _ in 0..5 {
        statuses.insert(get(traffic, "/agents/echo/hello")?.status);
    }
    assert_eq!(statuses, BTreeSet::from([200, 429]), "{statuses:?}");
    assert_eq!(get(traffic, "/nowhere")?.status, 404);

    let proxy_families = eventually(Duration::from_secs(20), "the proxy's metrics", || {
        let families = scraped(&get(admin, "/metrics")?.body)?;
        Ok(families
            .contains_key("sluice_ratelimit_top_consumers")
            .then_some(families))
    })?;
    assert_eq!(
        proxy_families.get("sluice_requests_total"),
        Some(&BTreeSet::from(["code".to_owned(), "pool".to_owned()]))
    );
    assert_listed("the proxy", &proxy_families, &listed("proxy")?);
    let controller_families = scraped(&get(controller_addr, "/metrics")?.body)?;
    assert!(controller_families.contains_key("sluice_controller_proxies"));
    assert_listed(
        "the controller",
        &controller_families,
        &listed("controller")?,
    );
    Ok(())
}

/// The README's metrics table: each row's metric names (`sluice_x_total`, or
/// `_y_total` for `sluice_x` + `_y_total`) with the label names of its second column
/// (each the first word in backquotes of an item of the comma list, outside
/// parentheses).
fn documented() -> Result<Vec<(Vec<String>, BTreeSet<String>)>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .context("a Metrics section")?
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    let quoted = |item: &str| item.split('`').nth(1).map(str::to_owned);
    let mut rows = Vec::new();
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names_cell, labels_cell) = (cells[1], cells[2]);
        let mut names: Vec<String> = Vec::new();
        for item in names_cell.split(", ") {
            let name = quoted(item).context("a metric name in backquotes")?;
            let name = match (name.strip_prefix('_'), names.first()) {
                (Some(_), Some(first)) => {
                    let family: Vec<&str> = first.splitn(3, '_').take(2).collect();
                    format!("{}{name}", family.join("_"))
                }
                _ => name,
            };
            names.push(name);
        }
        let mut labels = BTreeSet::new();
        let (mut depth, mut item) = (0, String::new());
        for c in labels_cell.chars().chain([',']) {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    labels.extend(quoted(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                item.push(c);
            }
        }
        rows.push((names, labels));
    }
    Ok(rows)
}

#[test]
fn the_readme_names_every_metric_with_its_labels() -> Result<()> {
    let mut exported = listed("proxy")?;
    exported.extend(listed("controller")?);
    let mut seen = BTreeSet::new();
    for (names, labels) in documented()? {
        // A row's metrics have the labels it names between them (a label noted for
        // one of them, such as `result` (exports), is not the others').
        let mut union = BTreeSet::new();
        for name in &names {
            let Some(have) = exported.get(name) else {
                panic!("the README documents {name}, which no binary exports");
            };
            assert!(
                have.is_subset(&labels),
                "{name}: the README says {labels:?}, the code has {have:?}"
            );
            union.extend(have.iter().cloned());
            seen.insert(name.clone());
        }
        assert_eq!(union, labels, "the labels of {names:?}");
    }
    let missing: Vec<&String> = exported.keys().filter(|n| !seen.contains(*n)).collect();
    assert!(missing.is_empty(), "not in the README: {missing:?}");
    Ok(())
}
