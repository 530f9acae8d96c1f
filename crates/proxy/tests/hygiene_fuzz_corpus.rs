//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) through the same checks the
//! cargo-fuzz targets run, so stable CI asserts every seed without libFuzzer.
//!
//! The seeds are written by the ignored test below; regenerate them with
//! `cargo test -p sluice-proxy --test hygiene_fuzz_corpus -- --ignored`.

#[path = "../../../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = corpus(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read seed");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its invariants", path.display());
        count += 1;
    }
    count
}

#[test]
fn path_normalise_corpus_holds() {
    assert!(replay("path_normalise", checks::path_normalise) >= 30);
}

#[test]
fn credential_parse_corpus_holds() {
    assert!(replay("credential_parse", checks::credential_parse) >= 30);
    // The corpus reaches the success path, and only through the valid seeds.
    for entry in std::fs::read_dir(corpus("credential_parse")).expect("corpus") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let data = std::fs::read_to_string(&path).unwrap_or_default();
        let expected = name.starts_with("jwt_valid_");
        assert_eq!(checks::verifies(&data), expected, "{name}");
    }
}

/// Path seeds: the bypass classes and the edges of the percent decoder.
const PATH_SEEDS: &[(&str, &str)] = &[
    ("dotdot_plain", "/agents/secure/../public"),
    ("dotdot_encoded_slash", "/agents/public/..%2fsecure"),
    ("dotdot_encoded_slash_upper", "/agents/public/..%2Fsecure"),
    ("dotdot_encoded", "/agents/public/%2e%2e/secure"),
    ("dotdot_half_encoded", "/agents/public/.%2e/secure"),
    ("dotdot_upper", "/agents/public/%2E%2E/secure/run"),
    ("double_slash_lead", "//agents/secure"),
    ("double_slash_mid", "/agents//secure//"),
    ("dot_segment", "/agents/./secure"),
    ("encoded_dot_segment", "/agents/%2e/secure"),
    ("encoded_unreserved", "/agents/%73ecure"),
    ("encoded_all", "/%61%67%65%6e%74%73/%73%65%63%75%72%65"),
    ("slash_then_dotdot", "/agents/secure%2F.."),
    ("climb_above_root", "/../../../agents/secure"),
    ("trailing_dotdot", "/agents/secure/x/.."),
    ("trailing_dot", "/agents/secure/."),
    ("backslash", "/agents/public/..\\secure"),
    ("encoded_backslash", "/agents/public/..%5csecure"),
    ("encoded_nul", "/agents/secure%00.json"),
    ("control_tab", "/agents/\tsecure"),
    ("control_del", "/agents/secure\u{7f}"),
    ("percent_at_end", "/agents/secure%"),
    ("percent_short", "/agents/secure%2"),
    ("percent_not_hex", "/agents/%zzsecure"),
    ("double_encoded", "/agents/public/%252e%252e/secure"),
    ("encoded_percent_then_hex", "/agents/%25%32%65"),
    ("semicolon", "/agents/public/..;/secure"),
    ("triple_dot", "/agents/.../secure"),
    ("utf8_raw", "/agents/caf\u{e9}"),
    ("utf8_encoded_lower", "/agents/caf%c3%a9"),
    ("empty", ""),
    ("root", "/"),
    ("asterisk", "*"),
    ("relative", "agents/secure"),
    ("only_dots", "/./././.."),
    ("many_slashes", "//////"),
    ("query_like", "/agents/secure?x=/../"),
];

/// Plain credential seeds: header values and non-JWT shapes.
const CREDENTIAL_SEEDS: &[(&str, &str)] = &[
    ("bearer_premium", "Bearer demo-premium-key"),
    ("bearer_lower", "bearer demo-standard-key"),
    ("bare_key", "demo-standard-key"),
    ("basic", "Basic YWdlbnQ6cHc="),
    ("bearer_empty", "Bearer"),
    ("bearer_spaces", "Bearer    demo-premium-key   "),
    ("bearer_two_words", "Bearer a b"),
    ("empty", ""),
    ("dots", ".."),
    ("three_parts", "a.b.c"),
    ("bearer_three_parts", "Bearer a.b.c"),
    ("empty_json_parts", "e30.e30.e30"),
    ("bad_base64", "!!!.???.***"),
    ("four_parts", "e30.e30.e30.e30"),
];

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn token_seeds() -> Vec<(&'static str, String)> {
    let pem = |name: &str| {
        std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/jwt")
                .join(name),
        )
        .expect("fixture")
    };
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("rsa");
    let other = EncodingKey::from_rsa_pem(&pem("rsa-other-private.pem")).expect("rsa");
    let ec = EncodingKey::from_ec_pem(&pem("ec-private.pem")).expect("ec");
    let ed = EncodingKey::from_ed_pem(&pem("ed25519-private.pem")).expect("ed");
    let hs = EncodingKey::from_secret(checks::HMAC_SECRET);
    let public_as_secret = EncodingKey::from_secret(&pem("rsa-public.pem"));
    let exp = 4_000_000_000_u64;
    let good = json!({"sub": "alice", "tier": "premium", "iss": checks::ISSUER,
        "aud": checks::AUDIENCE, "exp": exp});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let valid = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &good);
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(with("tier", json!("root")).to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    vec![
        ("jwt_valid_rs256", valid.clone()),
        (
            "jwt_valid_es256",
            sign(Algorithm::ES256, Some("ec-1"), &ec, &good),
        ),
        (
            "jwt_valid_eddsa",
            sign(Algorithm::EdDSA, Some("ed-1"), &ed, &good),
        ),
        (
            "jwt_valid_hs256",
            sign(Algorithm::HS256, Some("hs-1"), &hs, &good),
        ),
        ("jwt_bearer_valid", format!("Bearer {valid}")),
        (
            "jwt_alg_none",
            unsigned(&json!({"alg": "none", "kid": "rsa-1"}), &good, ""),
        ),
        (
            "jwt_alg_none_upper",
            unsigned(&json!({"alg": "NONE"}), &good, ""),
        ),
        (
            "jwt_hs256_public_key",
            sign(Algorithm::HS256, Some("rsa-1"), &public_as_secret, &good),
        ),
        (
            "jwt_hs256_public_key_no_kid",
            sign(Algorithm::HS256, None, &public_as_secret, &good),
        ),
        (
            "jwt_hs256_public_key_hs_kid",
            sign(Algorithm::HS256, Some("hs-1"), &public_as_secret, &good),
        ),
        (
            "jwt_ps256_mismatch",
            sign(Algorithm::PS256, Some("rsa-1"), &rsa, &good),
        ),
        (
            "jwt_expired",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("exp", json!(1)),
            ),
        ),
        (
            "jwt_not_yet_valid",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("nbf", json!(exp)),
            ),
        ),
        (
            "jwt_wrong_audience",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("aud", json!(["x", "y"])),
            ),
        ),
        (
            "jwt_wrong_issuer",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("iss", json!("evil")),
            ),
        ),
        (
            "jwt_unknown_kid",
            sign(Algorithm::RS256, Some("rsa-9"), &rsa, &good),
        ),
        (
            "jwt_foreign_key",
            sign(Algorithm::RS256, Some("rsa-1"), &other, &good),
        ),
        ("jwt_tampered_payload", tampered),
        (
            "jwt_crit",
            unsigned(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"]}),
                &good,
                "AA",
            ),
        ),
        (
            "jwt_sub_number",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("sub", json!(42)),
            ),
        ),
        (
            "jwt_exp_string",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &rsa,
                &with("exp", json!("never")),
            ),
        ),
    ]
}

/// Writes the seed corpus. Ignored: run it by hand after changing the seeds.
#[test]
#[ignore = "writes fuzz/corpus; run by hand to regenerate the seeds"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), data).expect("write seed");
    };
    for (name, path) in PATH_SEEDS {
        write("path_normalise", name, path.as_bytes());
    }
    for (name, value) in CREDENTIAL_SEEDS {
        write("credential_parse", name, value.as_bytes());
    }
    for (name, token) in token_seeds() {
        write("credential_parse", name, token.as_bytes());
    }
    write("credential_parse", "invalid_utf8", b"Bearer \xff\xfe");
    write(
        "credential_parse",
        "long_bearer",
        format!("Bearer {}", "k".repeat(9000)).as_bytes(),
    );
}
