//! Path normalisation: the bypass table against a protected prefix, and properties
//! over generated paths.

use std::borrow::Cow;

use proptest::prelude::*;
use sluice_proxy::hygiene::path::{PathError, PathOptions, normalise};
use sluice_proxy::router::prefix_matches;

const SECURE: &str = "/agents/secure";

/// Each trick, and what the router must see: a path (and whether it falls under the
/// protected prefix) or a rejection.
#[test]
fn bypass_table() {
    use PathError::*;
    let table: &[(&str, Result<&str, PathError>)] = &[
        ("/agents/secure/../public", Ok("/agents/public")),
        ("/agents/public/..%2fsecure", Err(EncodedSlash)),
        ("/agents/public/..%2Fsecure", Err(EncodedSlash)),
        ("/agents/public/%2e%2e/secure", Ok("/agents/secure")),
        ("/agents/public/%2E%2E/secure/run", Ok("/agents/secure/run")),
        ("/agents/public/.%2e/secure", Ok("/agents/secure")),
        ("/agents/public/%2e./secure", Ok("/agents/secure")),
        ("/agents/public/%2e/../secure", Ok("/agents/secure")),
        ("//agents/secure", Ok("/agents/secure")),
        ("/agents//secure", Ok("/agents/secure")),
        ("///agents///secure///", Ok("/agents/secure/")),
        ("/agents/./secure", Ok("/agents/secure")),
        ("/agents/%2e/secure", Ok("/agents/secure")),
        ("/agents/%73ecure", Ok("/agents/secure")),
        ("/agents/%73%65%63%75%72%65/x", Ok("/agents/secure/x")),
        ("/%61gents/secure", Ok("/agents/secure")),
        ("/agents/secure%2F..", Err(EncodedSlash)),
        ("/agents/secure%2f..%2fpublic", Err(EncodedSlash)),
        (
            "/agents/public/../../../../agents/secure",
            Ok("/agents/secure"),
        ),
        ("/../agents/secure", Ok("/agents/secure")),
        ("/agents/secure/./", Ok("/agents/secure/")),
        ("/agents/secure/x/..", Ok("/agents/secure/")),
        ("/agents/public/..\\secure", Err(Backslash)),
        ("/agents/public/..%5csecure", Err(EncodedBackslash)),
        ("/agents/public/..%5Csecure", Err(EncodedBackslash)),
        ("/agents/secure%00/../public", Err(EncodedNul)),
        ("/agents/secure\t", Err(ControlCharacter)),
        ("/agents/secure\r\n", Err(ControlCharacter)),
        ("/agents/secure%", Err(InvalidPercentEncoding)),
        ("/agents/secure%2", Err(InvalidPercentEncoding)),
        ("/agents/secure%g0", Err(InvalidPercentEncoding)),
        // Double encoding stays literal: one decoding pass, and only unreserved.
        (
            "/agents/public/%252e%252e/secure",
            Ok("/agents/public/%252e%252e/secure"),
        ),
        ("/agents/public/%25%32%65", Ok("/agents/public/%252e")),
        // Not dot segments, so not resolved.
        ("/agents/public/..;/secure", Ok("/agents/public/..;/secure")),
        ("/agents/public/.../secure", Ok("/agents/public/.../secure")),
        ("/agents/secure.", Ok("/agents/secure.")),
        // Other escapes stay encoded, upper-cased.
        ("/agents/secure/%e2%82%ac", Ok("/agents/secure/%E2%82%AC")),
        ("/agents/secure/a%20b", Ok("/agents/secure/a%20b")),
        ("*", Err(NotAbsolute)),
        ("agents/secure", Err(NotAbsolute)),
    ];
    let opts = PathOptions::default();
    for (input, expected) in table {
        let got = normalise(input, &opts);
        assert_eq!(got.as_deref().map_err(|e| *e), *expected, "{input:?}");
        if let Ok(path) = got {
            let want_secure = expected.is_ok_and(|e| prefix_matches(SECURE, e));
            assert_eq!(prefix_matches(SECURE, &path), want_secure, "{input:?}");
        }
    }
}

#[test]
fn encoded_slashes_can_be_allowed_and_stay_encoded() {
    let opts = PathOptions {
        allow_encoded_slash: true,
    };
    assert_eq!(
        normalise("/agents/public/..%2fsecure", &opts).expect("ok"),
        "/agents/public/..%2Fsecure"
    );
    // Still not a separator: the `..` before it is part of one segment.
    assert!(!prefix_matches(
        SECURE,
        &normalise("/agents/public/..%2fsecure", &opts).expect("ok")
    ));
    assert_eq!(normalise("/a%5c", &opts), Err(PathError::EncodedBackslash));
}

/// Path pieces that exercise every branch.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "a", "b", "secure", "~", "-", "_", "%41",
        "%7e", "%c3%a9", "%C3", "%25", "%2f", "%2F", "%5c", "%00", "%", "%g", "\\", "\t", ";", "é",
        " ", "?", "#",
    ])
}

fn generated_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..24).prop_map(|p| format!("/{}", p.concat()))
}

fn check(path: &str, opts: &PathOptions) {
    let Ok(normal) = normalise(path, opts) else {
        return;
    };
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!normal.contains(bad), "{path:?} -> {normal:?}");
    }
    assert!(
        !normal.ends_with("/.") && !normal.ends_with("/.."),
        "{normal:?}"
    );
    let again = normalise(&normal, opts).expect("a normal path is valid");
    assert!(
        matches!(again, Cow::Borrowed(_)),
        "{normal:?} not canonical"
    );
    assert_eq!(again, normal);
    // Escapes left are upper-case and never of unreserved characters.
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(!hex.iter().any(u8::is_ascii_lowercase), "{normal:?}");
        let value = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{normal:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normal_form_properties(path in generated_path()) {
        check(&path, &PathOptions::default());
        check(&path, &PathOptions { allow_encoded_slash: true });
    }

    #[test]
    fn arbitrary_strings_never_panic(path in "/\\PC{0,64}") {
        check(&path, &PathOptions::default());
    }
}
