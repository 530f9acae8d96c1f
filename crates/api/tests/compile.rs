//! Table tests for the compile step: each `fixtures/compile/NAME.yaml` holds the
//! manifests, and `NAME.expected` what compiling them must give: the diagnostics, one
//! per line, then the table as JSON.
//!
//! After an intended change, regenerate with `SLUICE_BLESS=1 cargo test -p sluice-api
//! --test compile` and review the diff of the `.expected` files.

use std::path::Path;

use sluice_api::compile::ServiceSlice;
use sluice_api::{Objects, compile, manifest};

fn render(objects: &Objects) -> String {
    let (table, diags) = compile(objects);
    let mut out = String::from("# diagnostics\n");
    out.push_str(&diags.to_string());
    out.push_str("# table\n");
    out.push_str(&serde_json::to_string_pretty(&table).expect("table serialises"));
    out.push('\n');
    out
}

#[test]
fn fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compile");
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 5,
        "expected the fixture set, found {entries:?}"
    );
    let mut failures = Vec::new();
    for input in entries {
        let text = std::fs::read_to_string(&input).expect("read fixture");
        let mut objects = Objects::default();
        let name = input
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        manifest::parse_into(&text, &name, &mut objects).expect("fixture parses");
        let actual = render(&objects);
        let expected_path = input.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {name}: expected\n{expected}\n--- actual\n{actual}"
            ));
        }
        // What compile emits, the proxy accepts: validate refuses only what compile
        // would have refused.
        let (table, _) = sluice_api::compile(&objects);
        assert_eq!(
            table.validate(),
            Ok(()),
            "{name}: compiled table is invalid"
        );
        // Compiling the same objects in reverse order gives the same result.
        objects.pools.reverse();
        objects.slices.reverse();
        assert_eq!(
            render(&objects),
            actual,
            "{name}: compile depends on input order"
        );
        // Slices in the controller's compact form compile as the slices they are.
        objects.service_slices = objects
            .slices
            .drain(..)
            .map(|s| std::sync::Arc::new(ServiceSlice::from(&s)))
            .collect();
        assert_eq!(
            render(&objects),
            actual,
            "{name}: compact slices compile differently"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
