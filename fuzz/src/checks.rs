//! The bodies of the fuzz targets: feed one input through the gateway's parsers and
//! assert their invariants. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and
//! by `crates/proxy/tests/hygiene_fuzz_corpus.rs`, which replays the seed corpus on
//! stable Rust, so CI checks every corpus file without libFuzzer.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use sluice_proxy::auth::jwks::KeySet;
use sluice_proxy::auth::jwt::{HmacConfig, JwtConfig, JwtVerifier};
use sluice_proxy::auth::{AuthError, Consumer, KeyStore, extract_credential, hash_key};
use sluice_proxy::hygiene::path::{PathOptions, normalise};

/// The fixed "now" of the credential target: tokens in the corpus expire in 2096.
pub const NOW_SECS: u64 = 1_700_000_000;

/// The issuer the fixed verifier accepts.
pub const ISSUER: &str = "https://issuer.example";

/// The audience the fixed verifier accepts.
pub const AUDIENCE: &str = "sluice";

/// The HMAC secret (kid `hs-1`) the fixed verifier accepts.
pub const HMAC_SECRET: &[u8] = b"fuzz-hmac-secret-0123456789abcdef";

const JWKS: &[u8] = include_bytes!("../../crates/proxy/tests/fixtures/jwt/jwks.json");

struct Fixture {
    keys: KeySet,
    verifier: JwtVerifier,
    store: KeyStore,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let consumer = |name: &str, tier: &str| Consumer {
            name: name.into(),
            tier: tier.into(),
            allowed_pools: None,
        };
        Fixture {
            keys: KeySet::from_json(JWKS).expect("fixture key set"),
            verifier: JwtVerifier::new(JwtConfig {
                issuers: vec![ISSUER.into()],
                audiences: vec![AUDIENCE.into()],
                hmac: Some(HmacConfig {
                    kid: Some("hs-1".into()),
                    ..HmacConfig::new(HMAC_SECRET)
                }),
                ..JwtConfig::default()
            })
            .expect("fixture verifier"),
            store: KeyStore::new([
                (
                    hash_key("demo-premium-key"),
                    consumer("premium-user", "premium"),
                ),
                (
                    hash_key("demo-standard-key"),
                    consumer("standard-user", "standard"),
                ),
            ])
            .expect("fixture key store"),
        }
    })
}

/// Normalises `data` (when it is UTF-8) with both option sets and checks the normal
/// form: absolute, no `//`, `/./`, `/../`, no trailing dot segment, canonical (a second
/// pass returns it borrowed and unchanged), only upper-case escapes of reserved bytes.
pub fn path_normalise(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for opts in [
        PathOptions::default(),
        PathOptions {
            allow_encoded_slash: true,
        },
    ] {
        let Ok(normal) = normalise(path, &opts) else {
            continue;
        };
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        for bad in ["//", "/./", "/../"] {
            assert!(!normal.contains(bad), "{path:?} -> {normal:?}");
        }
        assert!(
            !normal.ends_with("/.") && !normal.ends_with("/.."),
            "{path:?} -> {normal:?}"
        );
        let again = normalise(&normal, &opts).expect("a normal path is valid");
        assert!(
            matches!(again, std::borrow::Cow::Borrowed(_)),
            "{normal:?} is not canonical"
        );
        assert_eq!(again, normal);
        let bytes = normal.as_bytes();
        for (i, _) in normal.match_indices('%') {
            let hex = &bytes[i + 1..i + 3];
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .expect("escapes are hex");
            assert!(!hex.iter().any(u8::is_ascii_lowercase), "{normal:?}");
            assert!(
                !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
                "{normal:?} keeps an unreserved escape"
            );
            assert!(value != 0 && value != b'\\', "{normal:?}");
            assert!(opts.allow_encoded_slash || value != b'/', "{normal:?}");
        }
    }
}

/// Reads `data` as an `Authorization` value, an `x-api-key` value and a bare token, and
/// checks: the credential's `Debug` is the fixed redacted form; errors are known reasons; a token
/// that verifies has an accepted algorithm (never `none`) and a forwardable identity.
pub fn credential_parse(data: &[u8]) {
    let f = fixture();
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        for name in ["authorization", "x-api-key"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            check_headers(f, &headers, now);
        }
    }
    if let Ok(token) = std::str::from_utf8(data) {
        check_token(f, token, now);
    }
}

/// Whether `token` verifies against the fixed key set at [`NOW_SECS`]: lets the replay
/// test confirm that the corpus reaches the success path too.
pub fn verifies(token: &str) -> bool {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    fixture()
        .verifier
        .verify(token, &fixture().keys, now)
        .is_ok()
}

fn check_headers(f: &Fixture, headers: &HeaderMap, now: SystemTime) {
    match extract_credential(headers) {
        Ok(None) => {}
        Ok(Some(credential)) => {
            let secret = credential.secret();
            assert!(!secret.is_empty() && secret.bytes().all(|b| b.is_ascii_graphic()));
            // The Debug form is fixed: no part of the secret can be in it.
            let redacted = format!(
                "Credential {{ source: {:?}, secret: \"[redacted]\" }}",
                credential.source()
            );
            assert_eq!(format!("{credential:?}"), redacted);
            match f.store.lookup_credential(&credential) {
                Ok(consumer) => assert!(consumer.name.ends_with("-user")),
                Err(e) => assert_eq!(e, AuthError::UnknownKey),
            }
            if credential.looks_like_jwt() {
                check_token(f, secret, now);
            }
        }
        Err(e) => assert!(matches!(
            e,
            AuthError::Malformed | AuthError::UnsupportedScheme | AuthError::MultipleCredentials
        )),
    }
}

fn check_token(f: &Fixture, token: &str, now: SystemTime) {
    match f.verifier.verify(token, &f.keys, now) {
        Ok(identity) => {
            for v in [&identity.consumer, &identity.tier] {
                assert!(!v.is_empty() && v.len() <= 256);
                assert!(v.bytes().all(|b| b.is_ascii_graphic()));
            }
            let alg = header_alg(token).expect("a verified token has a readable header");
            assert!(
                ["RS256", "ES256", "EdDSA", "HS256"].contains(&alg.as_str()),
                "verified with alg {alg:?}"
            );
        }
        Err(e) => assert!(AuthError::ALL.contains(&e)),
    }
}

/// The `alg` of a token's header, read independently of the verifier.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}
