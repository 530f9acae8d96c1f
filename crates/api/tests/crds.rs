//! The committed CRDs (in `crds/` and in the Helm chart) must be exactly what the Rust
//! types generate. Regenerate with `make crds`.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["crds", "charts/sluice/crds"] {
        for (name, generated) in sluice_api::crds() {
            let path = root.join(dir).join(name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
            assert!(
                committed == generated,
                "{} differs from the Rust types; run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn crds_carry_the_agreed_names() {
    let crds = sluice_api::crds();
    let pools = &crds[0].1;
    for needle in [
        "group: sluice.dev",
        "kind: AgentPool",
        "- ap",
        "scope: Namespaced",
        "status: {}",
        "name: Algorithm",
        "jsonPath: .status.readyEndpoints",
    ] {
        assert!(
            pools.contains(needle),
            "AgentPool CRD lacks {needle:?}:\n{pools}"
        );
    }
    assert!(crds[1].1.contains("- rp"), "RatePolicy short name");
}
