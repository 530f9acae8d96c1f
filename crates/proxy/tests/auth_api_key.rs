//! API keys: stored hashed, extracted from `Authorization: Bearer` or `x-api-key` with a
//! documented precedence, never shown.

use http::HeaderMap;
use sluice_proxy::auth::api_key::ApiKeyError;
use sluice_proxy::auth::{
    AuthError, Consumer, CredentialSource, KeyLookup, KeyStore, extract_credential, hash_key,
};

fn consumer(name: &str, tier: &str) -> Consumer {
    Consumer {
        name: name.into(),
        tier: tier.into(),
        allowed_pools: None,
    }
}

fn store() -> KeyStore {
    KeyStore::new([
        (
            hash_key("demo-premium-key"),
            consumer("premium-user", "premium"),
        ),
        (
            hash_key("demo-standard-key"),
            consumer("standard-user", "standard"),
        ),
        // Rotation: a second key for the same consumer.
        (
            hash_key("demo-premium-key-2"),
            consumer("premium-user", "premium"),
        ),
    ])
    .expect("store")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

#[test]
fn keys_are_found_by_hash_from_either_header() {
    let s = store();
    assert_eq!(s.len(), 3);
    assert_eq!(s.consumers().len(), 2);
    let premium = consumer("premium-user", "premium");
    for h in [
        headers(&[("authorization", "Bearer demo-premium-key")]),
        headers(&[("authorization", "bearer   demo-premium-key ")]),
        headers(&[("Authorization", "BEARER demo-premium-key-2")]),
        headers(&[("x-api-key", "demo-premium-key")]),
        headers(&[("X-Api-Key", "demo-premium-key-2")]),
        // Both, with the same key.
        headers(&[
            ("authorization", "Bearer demo-premium-key"),
            ("x-api-key", "demo-premium-key"),
        ]),
        // Another scheme in Authorization is the agent's when x-api-key is present.
        headers(&[
            ("authorization", "Basic YWdlbnQ6cHc="),
            ("x-api-key", "demo-premium-key"),
        ]),
    ] {
        assert_eq!(s.authenticate(&h), KeyLookup::Consumer(&premium), "{h:?}");
    }
}

#[test]
fn missing_and_invalid_credentials() {
    let s = store();
    assert_eq!(s.authenticate(&HeaderMap::new()), KeyLookup::Missing);
    assert_eq!(
        s.authenticate(&headers(&[("x-other", "demo-premium-key")])),
        KeyLookup::Missing
    );
    for (h, reason) in [
        (
            vec![("authorization", "Bearer nope")],
            AuthError::UnknownKey,
        ),
        (
            vec![("x-api-key", "DEMO-PREMIUM-KEY")],
            AuthError::UnknownKey,
        ),
        (
            vec![("authorization", "Basic YWdlbnQ6cHc=")],
            AuthError::UnsupportedScheme,
        ),
        (
            vec![("authorization", "demo-premium-key")],
            AuthError::UnsupportedScheme,
        ),
        (vec![("authorization", "Bearer")], AuthError::Malformed),
        (vec![("authorization", "Bearer a b")], AuthError::Malformed),
        (vec![("x-api-key", "")], AuthError::Malformed),
        (
            vec![
                ("authorization", "Bearer demo-premium-key"),
                ("x-api-key", "demo-standard-key"),
            ],
            AuthError::MultipleCredentials,
        ),
        (
            vec![
                ("authorization", "Bearer demo-premium-key"),
                ("authorization", "Bearer demo-premium-key"),
            ],
            AuthError::MultipleCredentials,
        ),
        (
            vec![("x-api-key", "demo-premium-key"), ("x-api-key", "other")],
            AuthError::MultipleCredentials,
        ),
    ] {
        assert_eq!(
            s.authenticate(&headers(&h)),
            KeyLookup::Invalid(reason),
            "{h:?}"
        );
    }
    let long = format!("Bearer {}", "k".repeat(9000));
    assert_eq!(
        s.authenticate(&headers(&[("authorization", &long)])),
        KeyLookup::Invalid(AuthError::Malformed)
    );
    let mut h = HeaderMap::new();
    h.insert(
        "x-api-key",
        http::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("value"),
    );
    assert_eq!(s.authenticate(&h), KeyLookup::Invalid(AuthError::Malformed));
}

#[test]
fn credential_source_and_jwt_shape() {
    let h = headers(&[("authorization", "Bearer aGVh.cGF5.c2ln")]);
    let c = extract_credential(&h).expect("ok").expect("some");
    assert_eq!(c.source(), CredentialSource::Authorization);
    assert!(c.looks_like_jwt());
    let h = headers(&[("x-api-key", "demo-premium-key")]);
    let c = extract_credential(&h).expect("ok").expect("some");
    assert_eq!(c.source(), CredentialSource::ApiKeyHeader);
    assert!(!c.looks_like_jwt());
    for not_jwt in ["a.b", "a..c", "a.b.c.d", "a.b=.c", "a b.c.d"] {
        let h = headers(&[("x-api-key", not_jwt)]);
        if let Ok(Some(c)) = extract_credential(&h) {
            assert!(!c.looks_like_jwt(), "{not_jwt}");
        }
    }
}

#[test]
fn the_key_never_appears_in_output() {
    let s = store();
    let h = headers(&[("authorization", "Bearer demo-premium-key")]);
    let c = extract_credential(&h).expect("ok").expect("some");
    assert!(!format!("{c:?}").contains("demo-premium-key"));
    let debug = format!("{s:?}");
    assert!(!debug.contains("demo-premium-key"));
    assert!(!debug.contains(&hash_key("demo-premium-key").to_hex()));
    for r in AuthError::ALL {
        assert!(!r.to_string().contains("demo"));
    }
}

#[test]
fn bad_stores_are_refused() {
    let c = consumer("a", "t");
    let h = hash_key("k");
    assert_eq!(
        KeyStore::new([(h, c.clone()), (h, consumer("b", "t"))]),
        Err(ApiKeyError::DuplicateHash {
            first: "a".into(),
            second: "b".into()
        })
    );
    assert_eq!(
        KeyStore::new([
            (h, consumer("a", "premium")),
            (hash_key("k2"), consumer("a", "standard"))
        ]),
        Err(ApiKeyError::ConflictingConsumer {
            consumer: "a".into()
        })
    );
    assert_eq!(
        KeyStore::new([(h, consumer("has space", "t"))]),
        Err(ApiKeyError::InvalidConsumer {
            consumer: "has space".into()
        })
    );
}
